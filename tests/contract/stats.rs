//! Every request is counted when the layer's `call` runs, even with a store whose lookup
//! is still pending when the response future is dropped (a networked store, a client that
//! went away, an outer timeout), and the snapshot stays consistent:
//! `requests == no_session + invalid + explicit_pins + lookups` and
//! `lookups == hits + misses + unresolved`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};
use tower_sticky_session::{
    AuthId, BindingKey, ServedBy, StatsSnapshot, StickySessionLayer, store::BindingStore,
    store::StoreError,
};

type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// A store whose lookups wait for a permit of `gate` and then answer `acct-a`: a networked
/// store whose replies the test releases one by one.
#[derive(Clone)]
struct GatedStore {
    gate: Arc<Semaphore>,
}

impl BindingStore for GatedStore {
    type LookupFuture = Boxed<Option<AuthId>>;
    type CommitFuture = std::future::Ready<Result<(), StoreError>>;
    type ClearFuture = std::future::Ready<Result<bool, StoreError>>;

    fn lookup(&self, _: &BindingKey) -> Self::LookupFuture {
        let gate = self.gate.clone();
        Box::pin(async move {
            gate.acquire().await.unwrap().forget();
            Ok(Some(AuthId::from("acct-a")))
        })
    }

    fn commit(&self, _: &BindingKey, _: &AuthId) -> Self::CommitFuture {
        std::future::ready(Ok(()))
    }

    fn clear_if(&self, _: &BindingKey, _: &AuthId) -> Self::ClearFuture {
        std::future::ready(Ok(false))
    }
}

fn request(session: &str) -> Request<()> {
    Request::get("/")
        .header("sticky-session-id", session)
        .body(())
        .unwrap()
}

/// Polls `fut` once with the test task's waker.
async fn poll_once<F: Future>(mut fut: Pin<&mut F>) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await
}

fn consistent(s: &StatsSnapshot) {
    assert_eq!(
        s.requests,
        s.no_session + s.invalid_total() + s.explicit_pins + s.lookups,
        "{s:?}"
    );
    assert_eq!(s.lookups, s.hits + s.misses + s.unresolved, "{s:?}");
}

fn service(
    layer: &StickySessionLayer<GatedStore>,
) -> impl Service<
    Request<()>,
    Response = Response<tower_sticky_session::ResponseBody<Full<Bytes>, GatedStore>>,
    Error = Infallible,
    Future: Send,
> + Clone {
    layer.layer(tower::service_fn(|_req: Request<()>| async {
        let mut res = Response::new(Full::new(Bytes::from_static(b"ok")));
        res.extensions_mut()
            .insert(ServedBy(AuthId::from("acct-a")));
        Ok::<_, Infallible>(res)
    }))
}

#[tokio::test]
async fn request_is_counted_when_call_runs_even_if_dropped_while_the_lookup_is_pending() {
    let gate = Arc::new(Semaphore::new(0));
    let layer = StickySessionLayer::with_store(GatedStore { gate: gate.clone() });
    let stats = layer.stats();
    let mut svc = service(&layer);

    let fut = svc.ready().await.unwrap().call(request("pending-1"));
    // Counted in `call`, before the future is ever polled.
    let s = stats.snapshot();
    assert_eq!((s.requests, s.lookups, s.unresolved), (1, 1, 1), "{s:?}");
    consistent(&s);

    // Polled once (the lookup is pending), then dropped: a client gone.
    let mut fut = Box::pin(fut);
    assert!(poll_once(fut.as_mut()).await.is_pending());
    drop(fut);
    let s = stats.snapshot();
    assert_eq!(
        (s.requests, s.lookups, s.hits, s.misses, s.unresolved),
        (1, 1, 0, 0, 1),
        "{s:?}"
    );
    consistent(&s);
}

#[tokio::test]
async fn resolved_deferred_lookups_move_from_unresolved_to_hits() {
    let gate = Arc::new(Semaphore::new(0));
    let layer = StickySessionLayer::with_store(GatedStore { gate: gate.clone() });
    let stats = layer.stats();
    let mut svc = service(&layer);

    let kept = svc.ready().await.unwrap().call(request("pending-kept"));
    let dropped = svc.ready().await.unwrap().call(request("pending-dropped"));
    let never_polled = svc
        .ready()
        .await
        .unwrap()
        .call(request("pending-never-polled"));
    let s = stats.snapshot();
    assert_eq!((s.requests, s.unresolved), (3, 3), "{s:?}");
    consistent(&s);
    drop(dropped);
    drop(never_polled);

    gate.add_permits(1);
    let res = kept.await.unwrap();
    assert_eq!(
        res.extensions().get::<ServedBy>().unwrap().0.as_str(),
        "acct-a"
    );
    let s = stats.snapshot();
    assert_eq!(
        (s.requests, s.lookups, s.hits, s.misses, s.unresolved),
        (3, 3, 1, 0, 2),
        "{s:?}"
    );
    consistent(&s);
}

#[tokio::test]
async fn in_memory_lookups_are_never_unresolved() {
    let layer = StickySessionLayer::new();
    let stats = layer.stats();
    let mut svc = layer.layer(tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }));
    let fut = svc.ready().await.unwrap().call(request("memory-1"));
    drop(fut);
    let fut = svc.ready().await.unwrap().call(Request::new(()));
    drop(fut);
    let s = stats.snapshot();
    assert_eq!(
        (s.requests, s.lookups, s.misses, s.no_session, s.unresolved),
        (2, 1, 1, 1, 0),
        "{s:?}"
    );
    consistent(&s);
}
