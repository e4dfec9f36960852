//! A decided commit or clear takes effect even if the response future or body that
//! decided it is dropped before the store operation finished (a client gone, an outer
//! timeout): dropped unfinished, the operation is handed to the tokio runtime.
//!
//! The store here is one whose operations take effect only after being polled several
//! times (like a networked store that first takes a pooled connection), so a dropped,
//! unfinished operation would be lost.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tower::{Layer, Service};
use tower_sticky_session::{
    AuthId, BindingKey, ServedBy, SessionId, StickySessionLayer, store::BindingStore,
    store::StoreError,
};

/// Polls a store operation needs before it takes effect.
const POLLS: u32 = 4;

type Map = Arc<Mutex<HashMap<BindingKey, AuthId>>>;

/// Takes effect (runs its action) at its `POLLS`-th poll; wakes itself meanwhile.
struct Slow<T> {
    remaining: u32,
    action: Option<Box<dyn FnOnce() -> T + Send>>,
}

impl<T> Future for Slow<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.remaining = self.remaining.saturating_sub(1);
        if self.remaining > 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let action = self.action.take().expect("polled after completion");
        Poll::Ready(Ok(action()))
    }
}

#[derive(Clone, Default)]
struct SlowStore {
    map: Map,
}

impl SlowStore {
    fn get(&self, key: &BindingKey) -> Option<String> {
        self.map
            .lock()
            .unwrap()
            .get(key)
            .map(|a| a.as_str().to_owned())
    }

    fn set(&self, key: &BindingKey, auth: &str) {
        self.map
            .lock()
            .unwrap()
            .insert(key.clone(), AuthId::from(auth));
    }
}

impl BindingStore for SlowStore {
    type LookupFuture = Slow<Option<AuthId>>;
    type CommitFuture = Slow<()>;
    type ClearFuture = Slow<bool>;

    fn lookup(&self, key: &BindingKey) -> Self::LookupFuture {
        // Lookups answer at once: the layer calls the inner service in `call`.
        let found = self.map.lock().unwrap().get(key).cloned();
        Slow {
            remaining: 1,
            action: Some(Box::new(move || found)),
        }
    }

    fn commit(&self, key: &BindingKey, auth: &AuthId) -> Self::CommitFuture {
        let (map, key, auth) = (self.map.clone(), key.clone(), auth.clone());
        Slow {
            remaining: POLLS,
            action: Some(Box::new(move || {
                map.lock().unwrap().insert(key, auth);
            })),
        }
    }

    fn clear_if(&self, key: &BindingKey, expected: &AuthId) -> Self::ClearFuture {
        let (map, key, expected) = (self.map.clone(), key.clone(), expected.clone());
        Slow {
            remaining: POLLS,
            action: Some(Box::new(move || {
                let mut map = map.lock().unwrap();
                if map.get(&key) == Some(&expected) {
                    map.remove(&key);
                    true
                } else {
                    false
                }
            })),
        }
    }
}

type TestBody = BoxBody<Bytes, io::Error>;

const SESSION: &str = "slow-store-1";

fn key() -> BindingKey {
    BindingKey::new(None, SessionId::new(SESSION).unwrap())
}

fn request() -> Request<()> {
    Request::get("/")
        .header("sticky-session-id", SESSION)
        .body(())
        .unwrap()
}

/// A layer over an upstream that answers each request with the next response of
/// `replies`.
fn service(
    layer: &StickySessionLayer<SlowStore>,
    replies: Vec<Response<TestBody>>,
) -> impl Service<
    Request<()>,
    Response = Response<tower_sticky_session::ResponseBody<TestBody, SlowStore>>,
    Error = Infallible,
> {
    let replies = Arc::new(Mutex::new(replies.into_iter()));
    layer.layer(tower::service_fn(move |_req: Request<()>| {
        let res = replies.lock().unwrap().next().expect("a reply per request");
        std::future::ready(Ok::<_, Infallible>(res))
    }))
}

fn respond(status: u16, served: &str, body: TestBody) -> Response<TestBody> {
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::from_u16(status).unwrap();
    res.extensions_mut().insert(ServedBy(AuthId::from(served)));
    res
}

fn full(bytes: &'static [u8]) -> TestBody {
    Full::new(Bytes::from_static(bytes))
        .map_err(|e| match e {})
        .boxed()
}

fn streaming() -> (mpsc::Sender<Result<Frame<Bytes>, io::Error>>, TestBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, StreamBody::new(ReceiverStream::new(rx)).boxed())
}

fn noop_cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

/// Waits (yielding to the runtime, at most 5 s) until the store holds `want` for the key.
async fn eventually(store: &SlowStore, want: Option<&str>) {
    let wait = async {
        while store.get(&key()).as_deref() != want {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "binding is {:?}, expected {want:?}: the operation was lost",
                store.get(&key())
            )
        });
}

#[tokio::test]
async fn failure_clear_survives_dropping_the_response_future() {
    let store = SlowStore::default();
    store.set(&key(), "acct-a");
    let layer = StickySessionLayer::with_store(store.clone());
    let stats = layer.stats();
    let mut svc = service(&layer, vec![respond(429, "acct-a", full(b"slow down"))]);

    let mut fut = Box::pin(svc.call(request()));
    // The inner service answered 429: the clear is decided and started, not finished.
    assert!(fut.as_mut().poll(&mut noop_cx()).is_pending());
    assert_eq!(store.get(&key()).as_deref(), Some("acct-a"));
    drop(fut); // the client went away (or an outer timeout fired)

    eventually(&store, None).await;
    let s = stats.snapshot();
    assert_eq!((s.cleared, s.store_errors), (1, 0), "{s:?}");
}

#[tokio::test]
async fn first_chunk_commit_survives_dropping_the_body() {
    let store = SlowStore::default();
    let layer = StickySessionLayer::with_store(store.clone());
    let stats = layer.stats();
    let (tx, body) = streaming();
    let mut svc = service(&layer, vec![respond(200, "acct-b", body)]);

    let res = svc.call(request()).await.unwrap();
    let mut body = Box::pin(res.into_body());
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))))
        .await
        .unwrap();
    // The first chunk arrived: the commit is decided and started, the chunk held back.
    assert!(body.as_mut().poll_frame(&mut noop_cx()).is_pending());
    assert_eq!(store.get(&key()), None);
    drop(body);

    eventually(&store, Some("acct-b")).await;
    let s = stats.snapshot();
    assert_eq!((s.commits, s.store_errors), (1, 0), "{s:?}");
}

#[tokio::test]
async fn empty_stream_clear_survives_dropping_the_body() {
    let store = SlowStore::default();
    store.set(&key(), "acct-c");
    let layer = StickySessionLayer::with_store(store.clone());
    let stats = layer.stats();
    let (tx, body) = streaming();
    let mut svc = service(&layer, vec![respond(200, "acct-c", body)]);

    let res = svc.call(request()).await.unwrap();
    let mut body = Box::pin(res.into_body());
    drop(tx); // the upstream ends the stream without a data frame
    assert!(body.as_mut().poll_frame(&mut noop_cx()).is_pending());
    assert!(!body.is_end_stream(), "the clear is in flight");
    assert_eq!(store.get(&key()).as_deref(), Some("acct-c"));
    drop(body);

    eventually(&store, None).await;
    let s = stats.snapshot();
    assert_eq!((s.cleared, s.store_errors), (1, 0), "{s:?}");
}

#[tokio::test]
async fn operations_polled_to_the_end_are_not_run_twice() {
    // The ordinary path: nothing dropped early, every operation counted once.
    let store = SlowStore::default();
    let layer = StickySessionLayer::with_store(store.clone());
    let stats = layer.stats();
    let mut svc = service(
        &layer,
        vec![
            respond(200, "acct-d", full(b"ok")),
            respond(503, "acct-d", full(b"down")),
        ],
    );
    let res = svc.call(request()).await.unwrap();
    res.into_body().collect().await.unwrap();
    assert_eq!(store.get(&key()).as_deref(), Some("acct-d"));
    let res = svc.call(request()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(
        store.get(&key()),
        None,
        "cleared before the 503 is handed on"
    );
    drop(res);
    tokio::task::yield_now().await;
    let s = stats.snapshot();
    assert_eq!((s.commits, s.cleared, s.store_errors), (1, 1, 0), "{s:?}");
}

#[test]
fn without_a_runtime_an_unfinished_operation_is_dropped_and_counted() {
    // The documented limit: no tokio runtime to hand it to, so the clear is lost and
    // counted as a store error.
    let store = SlowStore::default();
    store.set(&key(), "acct-e");
    let layer = StickySessionLayer::with_store(store.clone());
    let stats = layer.stats();
    let mut svc = service(&layer, vec![respond(500, "acct-e", full(b"oops"))]);
    let mut fut = Box::pin(svc.call(request()));
    assert!(fut.as_mut().poll(&mut noop_cx()).is_pending());
    drop(fut);
    assert_eq!(store.get(&key()).as_deref(), Some("acct-e"));
    let s = stats.snapshot();
    assert_eq!((s.cleared, s.store_errors), (0, 1), "{s:?}");
}
