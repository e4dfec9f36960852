//! What the public types ask of their users: `ResponseBody` is a body whatever the inner
//! body's data type (no `From<Bytes>` bound), strict mode's message where the data type
//! is `Bytes`, and a custom store written with `BoxStoreFuture` works end to end.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_sticky_session::store::{BoxStoreFuture, boxed};
use tower_sticky_session::{
    AuthId, BindingKey, PinnedAuth, ServedBy, SessionId, StickySessionLayer, store::BindingStore,
};

fn request(session: &str) -> Request<()> {
    Request::get("/")
        .header("sticky-session-id", session)
        .body(())
        .unwrap()
}

fn upstream<D>(
    data: D,
) -> impl Service<Request<()>, Response = Response<Full<D>>, Error = Infallible> + Clone
where
    D: Buf + Clone + Send + 'static,
{
    tower::service_fn(move |req: Request<()>| {
        let auth = req
            .extensions()
            .get::<PinnedAuth>()
            .map_or_else(|| AuthId::from("acct-a"), |p| p.0.clone());
        let mut res = Response::new(Full::new(data.clone()));
        res.extensions_mut().insert(ServedBy(auth));
        std::future::ready(Ok::<_, Infallible>(res))
    })
}

async fn collect<B: Body>(body: B) -> Vec<u8>
where
    B::Error: std::fmt::Debug,
{
    let mut out = Vec::new();
    let collected = body.collect().await.unwrap().aggregate();
    out.extend_from_slice(collected.chunk());
    out
}

#[tokio::test]
async fn response_body_is_a_body_when_the_data_type_is_not_made_from_bytes() {
    // `&'static [u8]` has no `From<Bytes>`.
    let layer = StickySessionLayer::new().reject_invalid(true);
    let store = layer.store().clone();
    let mut svc = layer.layer(upstream::<&'static [u8]>(b"data: hi\n\n"));

    let res = svc
        .ready()
        .await
        .unwrap()
        .call(request("s-1"))
        .await
        .unwrap();
    assert_eq!(res.body().size_hint().exact(), Some(10));
    assert_eq!(collect(res.into_body()).await, b"data: hi\n\n");
    let key = BindingKey::new(None, SessionId::new("s-1").unwrap());
    assert_eq!(
        store.lookup(&key).await.unwrap(),
        Some(AuthId::from("acct-a"))
    );

    // Strict mode still answers 400; this data type cannot carry the message.
    let bad = Request::get("/")
        .header("sticky-session-id", "has space")
        .body(())
        .unwrap();
    let res = svc.ready().await.unwrap().call(bad).await.unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.body().is_end_stream());
    assert_eq!(res.body().size_hint().exact(), Some(0));
    assert!(collect(res.into_body()).await.is_empty());
}

#[tokio::test]
async fn strict_mode_message_reaches_bytes_bodies_and_other_data_types_get_an_empty_400() {
    let bad = || {
        Request::get("/")
            .header("sticky-session-id", "has space")
            .body(())
            .unwrap()
    };
    let want = "invalid session id in sticky-session-id";

    let mut svc = StickySessionLayer::new()
        .reject_invalid(true)
        .layer(upstream(Bytes::from_static(b"x")));
    let res = svc.ready().await.unwrap().call(bad()).await.unwrap();
    let len = res.body().size_hint().exact().unwrap();
    let text = String::from_utf8(collect(res.into_body()).await).unwrap();
    assert!(text.starts_with(want), "{text}");
    assert_eq!(len, text.len() as u64);

    let mut svc = StickySessionLayer::new()
        .reject_invalid(true)
        .layer(upstream(std::io::Cursor::new(b"x".to_vec())));
    // `Cursor<Vec<u8>>` cannot carry it either: 400, empty.
    let res = svc.ready().await.unwrap().call(bad()).await.unwrap();
    assert_eq!(res.status(), 400);
    assert!(collect(res.into_body()).await.is_empty());
}

/// A custom store written with `BoxStoreFuture`: `async` operations that complete on a
/// later poll (a yield first), like a networked client.
#[derive(Clone, Default)]
struct AsyncMapStore {
    map: Arc<Mutex<HashMap<BindingKey, AuthId>>>,
}

impl BindingStore for AsyncMapStore {
    type LookupFuture = BoxStoreFuture<Option<AuthId>>;
    type CommitFuture = BoxStoreFuture<()>;
    type ClearFuture = BoxStoreFuture<bool>;

    fn lookup(&self, key: &BindingKey) -> Self::LookupFuture {
        let (map, key) = (self.map.clone(), key.clone());
        boxed(async move {
            tokio::task::yield_now().await;
            Ok(map.lock().unwrap().get(&key).cloned())
        })
    }

    fn commit(&self, key: &BindingKey, auth: &AuthId) -> Self::CommitFuture {
        let (map, key, auth) = (self.map.clone(), key.clone(), auth.clone());
        boxed(async move {
            tokio::task::yield_now().await;
            map.lock().unwrap().insert(key, auth);
            Ok(())
        })
    }

    fn clear_if(&self, key: &BindingKey, expected: &AuthId) -> Self::ClearFuture {
        let (map, key, expected) = (self.map.clone(), key.clone(), expected.clone());
        boxed(async move {
            tokio::task::yield_now().await;
            let mut map = map.lock().unwrap();
            let hit = map.get(&key) == Some(&expected);
            if hit {
                map.remove(&key);
            }
            Ok(hit)
        })
    }
}

#[tokio::test]
async fn custom_store_with_boxed_futures_binds_and_pins() {
    let store = AsyncMapStore::default();
    let layer = StickySessionLayer::with_store(store.clone());
    let stats = layer.stats();
    let mut svc = layer.layer(upstream(Bytes::from_static(b"data: 1\n\n")));

    let res = svc
        .ready()
        .await
        .unwrap()
        .call(request("c-1"))
        .await
        .unwrap();
    assert_eq!(
        res.extensions().get::<ServedBy>().unwrap().0.as_str(),
        "acct-a"
    );
    res.into_body().collect().await.unwrap();
    let key = BindingKey::new(None, SessionId::new("c-1").unwrap());
    assert_eq!(
        store.map.lock().unwrap().get(&key),
        Some(&AuthId::from("acct-a"))
    );

    store
        .map
        .lock()
        .unwrap()
        .insert(key.clone(), AuthId::from("acct-z"));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(request("c-1"))
        .await
        .unwrap();
    assert_eq!(
        res.extensions().get::<ServedBy>().unwrap().0.as_str(),
        "acct-z",
        "pinned by the store's (deferred) lookup"
    );
    let s = stats.snapshot();
    assert_eq!((s.requests, s.hits, s.misses, s.unresolved), (2, 1, 1, 0));
}
