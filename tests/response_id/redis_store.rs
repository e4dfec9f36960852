//! Response-id affinity over the Redis store: a learned id is shared by replicas, and
//! lives in its own key namespace there too (the store derives its keys from
//! `BindingKey::encode`, which keeps response ids apart from sessions).
//!
//! A real `redis-server` on a free loopback port; two layers play two proxy replicas.

use crate::support::{redis_server, redis_store_util};

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_sticky_session::body_session::{BufferedBody, SessionFromBodyLayer};
use tower_sticky_session::store::RedisStore;
use tower_sticky_session::{
    AuthId, BindingKey, HardPin, PinnedAuth, ServedBy, SessionId, StickySessionLayer,
    store::BindingStore,
};

use redis_server::RedisServer;
use redis_store_util::wait_connected;

fn replica(server: &RedisServer) -> RedisStore {
    RedisStore::builder(&server.url())
        .timeout(Duration::from_millis(500))
        .near_cache(Duration::from_secs(60), 1_000)
        .build()
        .unwrap()
}

/// One request through `SessionFromBodyLayer → StickySessionLayer(learning) → inner`;
/// the inner service serves with the pinned account, else `fallback`, and answers a
/// Responses API body with `reply_id`. Returns (pinned, hard).
async fn send(
    store: &RedisStore,
    body: &'static str,
    fallback: &'static str,
    reply_id: &'static str,
) -> (Option<String>, bool) {
    let layer = StickySessionLayer::with_store(store.clone())
        .known_client_headers()
        .learn_response_ids(true);
    let seen = std::sync::Arc::new(std::sync::Mutex::new((None, false)));
    let log = seen.clone();
    let inner = tower::service_fn(move |req: Request<BufferedBody<Full<Bytes>>>| {
        let pinned = req
            .extensions()
            .get::<PinnedAuth>()
            .map(|p| p.0.as_str().to_owned());
        *log.lock().unwrap() = (pinned.clone(), req.extensions().get::<HardPin>().is_some());
        async move {
            let account = pinned.unwrap_or_else(|| fallback.to_owned());
            let json = format!(r#"{{"id":"{reply_id}","object":"response"}}"#);
            let mut res = Response::new(Full::new(Bytes::from(json)));
            res.extensions_mut()
                .insert(ServedBy(AuthId::from(account.as_str())));
            Ok::<_, Infallible>(res)
        }
    });
    let svc = SessionFromBodyLayer::new().layer(layer.layer(inner));
    let req = Request::post("/v1/responses")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    res.into_body().collect().await.unwrap();
    seen.lock().unwrap().clone()
}

#[tokio::test]
async fn a_response_id_learned_on_one_replica_hard_pins_on_another() {
    let server = RedisServer::start();
    let (one, two) = (replica(&server), replica(&server));
    wait_connected(&one).await;
    wait_connected(&two).await;

    // Replica one serves the first turn on `a` and learns its response id.
    let (pinned, _) = send(&one, r#"{"input":"hi"}"#, "a", "resp_redis1").await;
    assert_eq!(pinned, None);
    let learned = BindingKey::response_id(None, SessionId::new("resp_redis1").unwrap());
    assert_eq!(one.lookup(&learned).await.unwrap(), Some(AuthId::from("a")));

    // Replica two pins the continuation to `a`, hard, though it would pick `b`.
    let next = r#"{"previous_response_id":"resp_redis1","input":"more"}"#;
    let (pinned, hard) = send(&two, next, "b", "resp_redis2").await;
    assert_eq!((pinned.as_deref(), hard), (Some("a"), true));

    // The session namespace is separate: the same string as a session id is unbound,
    // and its Redis key differs.
    let session = BindingKey::new(None, SessionId::new("resp_redis1").unwrap());
    assert_eq!(two.lookup(&session).await.unwrap(), None);
    assert_ne!(two.redis_key(&session), two.redis_key(&learned));
}
