//! Upgraded connections: `101 Switching Protocols` (and a 2xx to an HTTP/2 `CONNECT`)
//! with `ServedBy` commits the binding at once, whatever the body type and even though no
//! server ever polls that body; the request's `Binding` handle then renews, clears
//! (compare-and-delete against the accepting account) and learns response ids. Through
//! tower directly, through hyper's HTTP/1.1 upgrade machinery over TCP, and through axum.

use crate::support::scripted;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tower::{Layer, Service, ServiceExt};
use tower_sticky_session::{
    AuthId, Binding, BindingKey, ClearReason, PinnedAuth, ServedBy, SessionId, StickySessionLayer,
    store::BindingStore,
};

use scripted::{TestBody, bound, empty, respond, streaming};

fn upgrade_request(session: Option<&str>) -> Request<()> {
    let mut b = Request::get("/v1/responses")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket");
    if let Some(s) = session {
        b = b.header("sticky-session-id", s);
    }
    b.body(()).unwrap()
}

fn key(session: &str) -> BindingKey {
    scripted::key(None, session)
}

fn response_id_key(id: &str) -> BindingKey {
    BindingKey::response_id(None, SessionId::new(id).unwrap())
}

/// An inner service that answers every request with `status` (served by `account`, unless
/// `None`) and a body that never ends by itself, and hands the request's `Binding` out.
fn accepting(
    status: u16,
    account: Option<&'static str>,
    handles: mpsc::UnboundedSender<Option<Binding>>,
) -> impl Service<Request<()>, Response = Response<TestBody>, Error = Infallible, Future = impl Send>
+ Clone {
    tower::service_fn(move |req: Request<()>| {
        let handles = handles.clone();
        async move {
            handles
                .send(req.extensions().get::<Binding>().cloned())
                .unwrap();
            // A streaming body that is not `is_end_stream()`: a server never polls the body
            // of a 101, so a commit that waited for a first chunk would never come.
            let (frames, body) = streaming();
            std::mem::forget(frames);
            let served = account.map(AuthId::from);
            Ok::<_, Infallible>(respond(status, served.as_ref(), body))
        }
    })
}

#[tokio::test]
async fn switching_protocols_with_served_by_commits_at_once_for_a_streaming_body() {
    let layer = StickySessionLayer::new();
    let store = layer.store().clone();
    let stats = layer.stats();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut svc = layer.layer(accepting(101, Some("acct-a"), tx));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(upgrade_request(Some("conv-1")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    // Before anything polls the body: committed.
    assert_eq!(bound(&store, "conv-1").await.as_deref(), Some("acct-a"));
    let handle = rx
        .recv()
        .await
        .unwrap()
        .expect("an upgrade request gets a Binding");
    assert_eq!(handle.account().map(AuthId::as_str), Some("acct-a"));
    assert_eq!(handle.session().map(SessionId::as_str), Some("conv-1"));
    let s = stats.snapshot();
    assert_eq!((s.upgrades, s.commits), (1, 1));
    drop(res);
}

#[tokio::test]
async fn switching_protocols_commits_even_when_the_classifier_calls_1xx_neutral() {
    let layer = StickySessionLayer::new().classifier(|status: StatusCode, _: &http::HeaderMap| {
        if status.is_success() {
            tower_sticky_session::ResponseClass::Success
        } else {
            tower_sticky_session::ResponseClass::Neutral
        }
    });
    let store = layer.store().clone();
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut svc = layer.layer(accepting(101, Some("acct-b"), tx));
    let _res = svc
        .ready()
        .await
        .unwrap()
        .call(upgrade_request(Some("conv-2")))
        .await
        .unwrap();
    assert_eq!(bound(&store, "conv-2").await.as_deref(), Some("acct-b"));
}

#[tokio::test]
async fn switching_protocols_without_served_by_commits_nothing_and_the_handle_is_inert() {
    let layer = StickySessionLayer::new().learn_response_ids(true);
    let store = layer.store().clone();
    let stats = layer.stats();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut svc = layer.layer(accepting(101, None, tx));
    let _res = svc
        .ready()
        .await
        .unwrap()
        .call(upgrade_request(Some("conv-3")))
        .await
        .unwrap();
    assert_eq!(bound(&store, "conv-3").await, None);
    let handle = rx.recv().await.unwrap().unwrap();
    assert_eq!(handle.account(), None);
    assert!(!handle.renew().await.unwrap());
    assert!(!handle.clear().await.unwrap());
    assert!(!handle.learn_response_id("resp_1").await.unwrap());
    assert_eq!(bound(&store, "conv-3").await, None);
    assert_eq!(
        store.lookup(&response_id_key("resp_1")).await.unwrap(),
        None
    );
    let s = stats.snapshot();
    assert_eq!((s.upgrades, s.commits, s.response_ids_learned), (0, 0, 0));
}

#[tokio::test]
async fn a_refused_upgrade_is_judged_like_any_response() {
    let layer = StickySessionLayer::new();
    let store = layer.store().clone();
    store
        .commit(&key("conv-4"), &AuthId::from("acct-a"))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The pinned account answers the upgrade with 429: compare-and-delete, no account.
    let mut svc = layer.layer(accepting(429, Some("acct-a"), tx));
    let _res = svc
        .ready()
        .await
        .unwrap()
        .call(upgrade_request(Some("conv-4")))
        .await
        .unwrap();
    assert_eq!(bound(&store, "conv-4").await, None);
    let handle = rx.recv().await.unwrap().unwrap();
    assert_eq!(handle.account(), None);
    // A 200 to a GET upgrade (the account ignored `Upgrade`) is an ordinary response:
    // awaiting its first chunk, not committed at once.
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut svc =
        StickySessionLayer::with_store(store.clone()).layer(accepting(200, Some("acct-b"), tx));
    let _res = svc
        .ready()
        .await
        .unwrap()
        .call(upgrade_request(Some("conv-4")))
        .await
        .unwrap();
    assert_eq!(bound(&store, "conv-4").await, None);
}

#[tokio::test]
async fn the_handle_renews_clears_by_compare_and_delete_and_learns() {
    let layer = StickySessionLayer::new().learn_response_ids(true);
    let store = layer.store().clone();
    let stats = layer.stats();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut svc = layer.layer(accepting(101, Some("acct-a"), tx));
    let _res = svc
        .ready()
        .await
        .unwrap()
        .call(upgrade_request(Some("conv-5")))
        .await
        .unwrap();
    let handle = rx.recv().await.unwrap().unwrap();
    assert!(handle.learn_response_id("resp_abc").await.unwrap());
    assert_eq!(
        store
            .lookup(&response_id_key("resp_abc"))
            .await
            .unwrap()
            .map(|a| a.as_str().to_owned())
            .as_deref(),
        Some("acct-a")
    );
    assert!(!handle.learn_response_id("not an id").await.unwrap());
    // Renew brings back a binding that went away (e.g. expired).
    store
        .clear_if(&key("conv-5"), &AuthId::from("acct-a"))
        .await
        .unwrap();
    assert!(handle.renew().await.unwrap());
    assert_eq!(bound(&store, "conv-5").await.as_deref(), Some("acct-a"));
    // A newer request moved the session: the old connection's clear leaves it alone.
    store
        .commit(&key("conv-5"), &AuthId::from("acct-b"))
        .await
        .unwrap();
    assert!(!handle.clear().await.unwrap());
    assert_eq!(bound(&store, "conv-5").await.as_deref(), Some("acct-b"));
    // Bound to the accepting account again: the clear removes it.
    store
        .commit(&key("conv-5"), &AuthId::from("acct-a"))
        .await
        .unwrap();
    assert!(handle.clear().await.unwrap());
    assert_eq!(bound(&store, "conv-5").await, None);
    let s = stats.snapshot();
    assert_eq!(s.clear_attempts(ClearReason::Upgraded), 2);
    assert_eq!(s.cleared, 1);
    assert_eq!(s.response_ids_learned, 1);
    assert_eq!(s.commits, 2, "the 101's commit and one renew");
}

#[tokio::test]
async fn only_upgrade_requests_get_a_handle_and_sessionless_ones_only_learn() {
    let layer = StickySessionLayer::new().learn_response_ids(true);
    let store = layer.store().clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut svc = layer.layer(accepting(101, Some("acct-c"), tx));
    let plain = Request::get("/").header("sticky-session-id", "conv-6");
    let _ = svc
        .ready()
        .await
        .unwrap()
        .call(plain.body(()).unwrap())
        .await
        .unwrap();
    assert!(
        rx.recv().await.unwrap().is_none(),
        "no Upgrade header: no handle"
    );
    let _ = svc
        .ready()
        .await
        .unwrap()
        .call(upgrade_request(None))
        .await
        .unwrap();
    let handle = rx.recv().await.unwrap().expect("learning on: a handle");
    assert_eq!(handle.session(), None);
    assert_eq!(handle.account().map(AuthId::as_str), Some("acct-c"));
    assert!(!handle.renew().await.unwrap(), "no session to renew");
    assert!(handle.learn_response_id("resp_x").await.unwrap());
    assert!(
        store
            .lookup(&response_id_key("resp_x"))
            .await
            .unwrap()
            .is_some()
    );
    // Learning off and no session: nothing to act on, no handle.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut svc = StickySessionLayer::new().layer(accepting(101, Some("acct-c"), tx));
    let _ = svc
        .ready()
        .await
        .unwrap()
        .call(upgrade_request(None))
        .await
        .unwrap();
    assert!(rx.recv().await.unwrap().is_none());
}

#[tokio::test]
async fn a_2xx_to_an_http2_connect_is_an_accepted_upgrade() {
    let layer = StickySessionLayer::new();
    let store = layer.store().clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut svc = layer.layer(accepting(200, Some("acct-a"), tx));
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .version(Version::HTTP_2)
        .uri("https://example.com/v1/realtime")
        .header("sticky-session-id", "conv-7")
        .body(())
        .unwrap();
    *req.version_mut() = Version::HTTP_2;
    let _res = svc.ready().await.unwrap().call(req).await.unwrap();
    // The tunnel's body is the connection: committed at once.
    assert_eq!(bound(&store, "conv-7").await.as_deref(), Some("acct-a"));
    assert!(rx.recv().await.unwrap().is_some());
}

#[tokio::test]
async fn an_explicit_pin_still_wins_and_the_served_account_is_bound() {
    let layer = StickySessionLayer::new();
    let store = layer.store().clone();
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut svc = layer.layer(accepting(101, Some("acct-b"), tx));
    let mut req = upgrade_request(Some("conv-8"));
    req.extensions_mut()
        .insert(PinnedAuth(AuthId::from("acct-a")));
    let _ = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(bound(&store, "conv-8").await.as_deref(), Some("acct-b"));
}

// ---- over TCP: hyper's upgrade machinery -------------------------------------------

/// An echo "protocol" behind an upgrade. Inside the upgraded connection, a line `fail`
/// makes the service clear its binding, `learn ID` learns a response id, `renew` renews;
/// everything else is echoed. Served by `acct-a` (or the pin).
async fn echo_upgrade(
    mut req: Request<hyper::body::Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let binding = req.extensions().get::<Binding>().cloned();
    let account = req
        .extensions()
        .get::<PinnedAuth>()
        .map_or_else(|| AuthId::from("acct-a"), |p| p.0.clone());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let mut buf = [0u8; 256];
        loop {
            let Ok(n) = io.read(&mut buf).await else {
                return;
            };
            if n == 0 {
                return;
            }
            let line = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
            let reply = match (line.split_once(' '), line.as_str(), &binding) {
                (_, "fail", Some(b)) => format!("cleared {}\n", b.clear().await.unwrap()),
                (_, "renew", Some(b)) => format!("renewed {}\n", b.renew().await.unwrap()),
                (Some(("learn", id)), _, Some(b)) => {
                    format!("learned {}\n", b.learn_response_id(id).await.unwrap())
                }
                _ => format!("{line}\n"),
            };
            if io.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut res = Response::new(empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    res.headers_mut()
        .insert("connection", http::HeaderValue::from_static("upgrade"));
    res.headers_mut()
        .insert("upgrade", http::HeaderValue::from_static("echo"));
    res.extensions_mut().insert(ServedBy(account));
    Ok(res)
}

async fn serve_hyper_with_upgrades(layer: StickySessionLayer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = layer.layer(tower::service_fn(echo_upgrade));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Opens an upgraded connection for `session` and returns it after the 101's head.
async fn open(addr: SocketAddr, session: &str) -> (TcpStream, String) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /v1/responses HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: echo\r\nsticky-session-id: {session}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut byte))
            .await
            .expect("the response head arrives")
            .unwrap();
        assert_eq!(n, 1, "connection closed before the response head ended");
        got.push(byte[0]);
    }
    (conn, String::from_utf8(got).unwrap())
}

async fn roundtrip(conn: &mut TcpStream, line: &str) -> String {
    conn.write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("an answer inside the upgraded connection")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).trim().to_owned()
}

#[tokio::test]
async fn over_tcp_a_hyper_upgrade_commits_before_the_client_sees_the_101_and_the_handle_works() {
    let layer = StickySessionLayer::new().learn_response_ids(true);
    let store = layer.store().clone();
    let addr = serve_hyper_with_upgrades(layer).await;
    let (mut conn, head) = open(addr, "ws-1").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The client has the 101: the binding is there.
    assert_eq!(bound(&store, "ws-1").await.as_deref(), Some("acct-a"));
    assert_eq!(roundtrip(&mut conn, "hello").await, "hello");
    assert_eq!(roundtrip(&mut conn, "learn resp_tcp").await, "learned true");
    assert!(
        store
            .lookup(&response_id_key("resp_tcp"))
            .await
            .unwrap()
            .is_some()
    );
    // A second connection of the same session is pinned to the same account.
    let (mut second, _) = open(addr, "ws-1").await;
    assert_eq!(roundtrip(&mut second, "hi").await, "hi");
    // The account fails inside the first socket: the binding goes.
    assert_eq!(roundtrip(&mut conn, "fail").await, "cleared true");
    assert_eq!(bound(&store, "ws-1").await, None);
    assert_eq!(roundtrip(&mut conn, "renew").await, "renewed true");
    assert_eq!(bound(&store, "ws-1").await.as_deref(), Some("acct-a"));
}

#[tokio::test]
async fn over_tcp_axum_upgrades_commit_and_the_handle_works() {
    let layer = StickySessionLayer::new();
    let store = layer.store().clone();
    let app = axum::Router::new()
        .route(
            "/v1/responses",
            axum::routing::get(|req: Request<axum::body::Body>| async move {
                let (mut parts, body) = req.into_parts();
                let binding = parts.extensions.get::<Binding>().cloned();
                let on_upgrade = parts
                    .extensions
                    .remove::<hyper::upgrade::OnUpgrade>()
                    .expect("axum::serve keeps upgrades");
                drop(body);
                tokio::spawn(async move {
                    let Ok(upgraded) = on_upgrade.await else {
                        return;
                    };
                    let mut io = hyper_util::rt::TokioIo::new(upgraded);
                    let mut buf = [0u8; 64];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        let cleared = binding.as_ref().unwrap().clear().await.unwrap();
                        let _ = io
                            .write_all(format!("cleared {cleared}\n").as_bytes())
                            .await;
                    }
                });
                let mut res = Response::new(axum::body::Body::from(Bytes::new()));
                *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                res.headers_mut()
                    .insert("connection", http::HeaderValue::from_static("upgrade"));
                res.headers_mut()
                    .insert("upgrade", http::HeaderValue::from_static("echo"));
                res.extensions_mut()
                    .insert(ServedBy(AuthId::from("acct-z")));
                res
            }),
        )
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (mut conn, head) = open(addr, "ws-axum").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(bound(&store, "ws-axum").await.as_deref(), Some("acct-z"));
    assert_eq!(roundtrip(&mut conn, "x").await, "cleared true");
    assert_eq!(bound(&store, "ws-axum").await, None);
}
