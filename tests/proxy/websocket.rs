//! The example proxy's WebSocket passthrough, over real sockets: a tokio-tungstenite
//! client, the proxy, and hyper accounts that speak the Responses WebSocket protocol
//! (`response.create` in, `response.created` … `response.completed` out).
//!
//! The upgrade is sticky and fails over before the `101`; after it, messages flow both
//! ways unchanged (text, binary, ping/pong, close codes); the relay renews, clears and
//! learns from what the account sends; idle sockets and oversized messages are closed.

use crate::app;
use crate::harness;
use crate::support::upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower_sticky_session::{
    AuthId, BindingKey, SessionId, Stats, store::BindingStore, store::MemoryStore,
};

use app::{ProxyConfig, Upstream};
use harness::Spawned;
use upstream::{BOUND, within};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a scripted WebSocket account does.
#[derive(Default)]
struct State {
    /// Answer upgrades with this status instead of `101`.
    refuse: Option<u16>,
    /// Upgrade requests' headers, as received.
    upgrades: Vec<HeaderMap>,
    /// Responses created so far.
    created: u32,
}

/// A Responses-WebSocket account: `response.create` → `response.created` (id
/// `resp_NAME_N`) and `response.completed`; `{"type":"fail429"}` → an `error` event
/// with status 429; `{"type":"fail_close"}` → close 1013; binary messages echoed; plain
/// `POST`s answered with one SSE event naming the account.
struct WsAccount {
    name: &'static str,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl WsAccount {
    async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let svc = hyper::service::service_fn(move |req| serve(name, st.clone(), req));
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self { name, addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn refuse(&self, status: Option<u16>) {
        self.state.lock().unwrap().refuse = status;
    }

    fn upgrades(&self) -> Vec<HeaderMap> {
        self.state.lock().unwrap().upgrades.clone()
    }
}

async fn serve(
    name: &'static str,
    state: Arc<Mutex<State>>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if !req.headers().contains_key("upgrade") {
        let sse = format!(
            "data: {{\"type\":\"response.created\",\"response\":{{\"id\":\"resp_http_{name}\"}}}}\n\n"
        );
        let mut res = Response::new(Full::new(Bytes::from(sse)));
        res.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        return Ok(res);
    }
    let refuse = {
        let mut s = state.lock().unwrap();
        s.upgrades.push(req.headers().clone());
        s.refuse
    };
    if let Some(status) = refuse {
        let mut res = Response::new(Full::new(Bytes::from_static(b"refused\n")));
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        if status == 429 {
            res.headers_mut()
                .insert("retry-after", "60".parse().unwrap());
        }
        return Ok(res);
    }
    let key = req.headers()["sec-websocket-key"].clone();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(t) if t.contains("\"response.create\"") => {
                    let n = {
                        let mut s = state.lock().unwrap();
                        s.created += 1;
                        s.created
                    };
                    let id = format!("resp_{name}_{n}");
                    let created = format!(
                        "{{\"type\":\"response.created\",\"response\":{{\"id\":\"{id}\",\"status\":\"in_progress\"}}}}"
                    );
                    let delta = format!(
                        "{{\"type\":\"response.output_text.delta\",\"delta\":\"from {name}\"}}"
                    );
                    let done = format!(
                        "{{\"type\":\"response.completed\",\"response\":{{\"id\":\"{id}\",\"status\":\"completed\"}}}}"
                    );
                    for m in [created, delta, done] {
                        if ws.send(Message::text(m)).await.is_err() {
                            return;
                        }
                    }
                }
                Message::Text(t) if t.contains("fail429") => {
                    let e = r#"{"type":"error","status":429,"error":{"type":"usage_limit_reached","message":"slow down"}}"#;
                    let _ = ws.send(Message::text(e)).await;
                }
                Message::Text(t) if t.contains("fail_close") => {
                    let _ = ws
                        .close(Some(CloseFrame {
                            code: CloseCode::Again,
                            reason: "overloaded".into(),
                        }))
                        .await;
                }
                Message::Binary(b) => {
                    let _ = ws.send(Message::Binary(b)).await;
                }
                Message::Close(frame) => {
                    let _ = ws.close(frame).await;
                    return;
                }
                _ => {}
            }
        }
    });
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert("connection", "upgrade".parse().unwrap());
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert(
        "sec-websocket-accept",
        derive_accept_key(key.as_bytes()).parse().unwrap(),
    );
    h.insert("x-account", name.parse().unwrap());
    Ok(res)
}

struct Proxy {
    spawned: Spawned,
    stats: Stats,
    store: MemoryStore,
}

async fn proxy(accounts: &[&WsAccount], tweak: impl FnOnce(&mut ProxyConfig)) -> Proxy {
    let ups = accounts
        .iter()
        .map(|a| Upstream::new(a.name, &a.url()).unwrap())
        .collect();
    let mut cfg = ProxyConfig::new(ups);
    tweak(&mut cfg);
    let store = MemoryStore::new();
    let (spawned, stats) = harness::start(&cfg, store.clone()).await;
    Proxy {
        spawned,
        stats,
        store,
    }
}

/// Opens a WebSocket through the proxy with Codex's headers and `session-id: session`.
async fn connect(addr: SocketAddr, session: Option<&str>) -> (Ws, http::Response<Option<Vec<u8>>>) {
    let mut req = format!("ws://{addr}/v1/responses")
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert(
        "openai-beta",
        "responses_websockets=2026-02-06".parse().unwrap(),
    );
    h.insert(
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits"
            .parse()
            .unwrap(),
    );
    if let Some(s) = session {
        h.insert("session-id", s.parse().unwrap());
    }
    within(
        "the websocket handshake",
        tokio_tungstenite::connect_async(req),
    )
    .await
    .unwrap()
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match within("a message from the proxy", ws.next()).await {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// One turn: `response.create`, then the account's three events; returns the id.
async fn turn(ws: &mut Ws, extra: &str) -> (String, String) {
    ws.send(Message::text(format!(
        "{{\"type\":\"response.create\",\"model\":\"gpt-5\",\"input\":[]{extra}}}"
    )))
    .await
    .unwrap();
    let created = next_text(ws).await;
    let delta = next_text(ws).await;
    let done = next_text(ws).await;
    assert!(created.contains("response.created"), "{created}");
    assert!(done.contains("response.completed"), "{done}");
    let v: serde_json::Value = serde_json::from_str(&created).unwrap();
    (v["response"]["id"].as_str().unwrap().to_owned(), delta)
}

fn served_by(res: &http::Response<Option<Vec<u8>>>) -> String {
    res.headers()["x-served-by"].to_str().unwrap().to_owned()
}

async fn bound(store: &MemoryStore, session: &str) -> Option<String> {
    store
        .lookup(&BindingKey::new(None, SessionId::new(session).unwrap()))
        .await
        .unwrap()
        .map(|a| a.as_str().to_owned())
}

#[tokio::test]
async fn a_websocket_through_the_proxy_upgrades_and_messages_flow_both_ways() {
    let a = WsAccount::start("acct-a").await;
    let p = proxy(&[&a], |_| {}).await;
    let (mut ws, res) = connect(p.spawned.addr, Some("conv-1")).await;
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(served_by(&res), "acct-a");
    // Committed with the 101.
    assert_eq!(bound(&p.store, "conv-1").await.as_deref(), Some("acct-a"));
    let (id, delta) = turn(&mut ws, "").await;
    assert_eq!(id, "resp_acct-a_1");
    assert_eq!(
        delta,
        r#"{"type":"response.output_text.delta","delta":"from acct-a"}"#
    );
    // Binary passes unchanged.
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    match within("the binary echo", ws.next()).await {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &[0, 1, 2, 255]),
        other => panic!("{other:?}"),
    }
    // What the account received: the upgrade, Codex's headers, no extensions.
    let up = a.upgrades();
    assert_eq!(up.len(), 1);
    assert_eq!(up[0]["upgrade"], "websocket");
    assert_eq!(up[0]["session-id"], "conv-1");
    assert!(up[0].contains_key("openai-beta"));
    assert!(!up[0].contains_key("sec-websocket-extensions"));
    // The client's close code reaches the account, and the account's answer comes back.
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    loop {
        match within("the close answer", ws.next()).await {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(f.code, CloseCode::Normal);
                break;
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break,
        }
    }
    assert_eq!(p.stats.snapshot().upgrades, 1);
}

#[tokio::test]
async fn a_second_socket_of_the_session_lands_on_the_same_account() {
    let a = WsAccount::start("acct-a").await;
    let b = WsAccount::start("acct-b").await;
    let c = WsAccount::start("acct-c").await;
    let p = proxy(&[&a, &b, &c], |_| {}).await;
    let (mut first, res) = connect(p.spawned.addr, Some("conv-2")).await;
    let account = served_by(&res);
    turn(&mut first, "").await;
    for _ in 0..4 {
        // Other sessions move the round-robin on.
        let (_ws, _) = connect(p.spawned.addr, None).await;
        let (mut again, res) = connect(p.spawned.addr, Some("conv-2")).await;
        assert_eq!(served_by(&res), account);
        turn(&mut again, "").await;
    }
}

#[tokio::test]
async fn an_account_answering_the_upgrade_with_429_is_skipped_before_the_101() {
    let a = WsAccount::start("acct-a").await;
    let b = WsAccount::start("acct-b").await;
    let p = proxy(&[&a, &b], |_| {}).await;
    // Bind conv-3 to acct-a, then make acct-a refuse upgrades.
    let (ws, res) = connect(p.spawned.addr, Some("conv-3")).await;
    assert_eq!(served_by(&res), "acct-a");
    drop(ws);
    a.refuse(Some(429));
    let (mut ws, res) = connect(p.spawned.addr, Some("conv-3")).await;
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(served_by(&res), "acct-b");
    assert_eq!(bound(&p.store, "conv-3").await.as_deref(), Some("acct-b"));
    turn(&mut ws, "").await;
    assert_eq!(a.upgrades().len(), 2, "acct-a was tried first");
    // A 426 (no WebSockets) is not a failure: the client gets it.
    b.refuse(Some(426));
    let mut req = format!("ws://{}/v1/responses", p.spawned.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("session-id", "conv-3".parse().unwrap());
    match within("a refused handshake", tokio_tungstenite::connect_async(req)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED)
        }
        other => panic!("expected the account's 426, got {:?}", other.map(|r| r.1)),
    }
}

#[tokio::test]
async fn a_429_event_inside_the_socket_unbinds_so_the_next_socket_moves() {
    let a = WsAccount::start("acct-a").await;
    let b = WsAccount::start("acct-b").await;
    let p = proxy(&[&a, &b], |_| {}).await;
    let (mut ws, res) = connect(p.spawned.addr, Some("conv-4")).await;
    assert_eq!(served_by(&res), "acct-a");
    ws.send(Message::text(r#"{"type":"fail429"}"#))
        .await
        .unwrap();
    // The event reaches the client unchanged.
    let e = next_text(&mut ws).await;
    assert!(e.contains("\"status\":429"), "{e}");
    within("the binding is cleared", async {
        while bound(&p.store, "conv-4").await.is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (_ws2, res) = connect(p.spawned.addr, Some("conv-4")).await;
    assert_eq!(
        served_by(&res),
        "acct-b",
        "the next socket moves (acct-a cools down)"
    );
    // An overload close code from the account does the same.
    let (mut ws3, res) = connect(p.spawned.addr, Some("conv-4b")).await;
    let acct = served_by(&res);
    ws3.send(Message::text(r#"{"type":"fail_close"}"#))
        .await
        .unwrap();
    match within("the account's close", ws3.next()).await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Again),
        other => panic!("{other:?}"),
    }
    within("the binding is cleared", async {
        while bound(&p.store, "conv-4b").await.is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_ne!(acct, "");
}

#[tokio::test]
async fn an_id_created_on_the_socket_hard_pins_a_later_http_request() {
    let a = WsAccount::start("acct-a").await;
    let b = WsAccount::start("acct-b").await;
    let p = proxy(&[&a, &b], |_| {}).await;
    // No session header: the socket is not sticky, but what it creates is learned.
    let (mut ws, res) = connect(p.spawned.addr, None).await;
    let account = served_by(&res);
    let (id, _) = turn(&mut ws, "").await;
    // A `store: false` turn is not learned.
    let (unstored, _) = turn(&mut ws, ",\"store\":false").await;
    let key = |id: &str| BindingKey::response_id(None, SessionId::new(id).unwrap());
    within("the id is learned", async {
        while p.store.lookup(&key(&id)).await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(p.store.lookup(&key(&unstored)).await.unwrap(), None);
    for _ in 0..3 {
        let body =
            format!("{{\"model\":\"gpt-5\",\"previous_response_id\":\"{id}\",\"input\":[]}}");
        let req = Request::post(format!("http://{}/v1/responses", p.spawned.addr))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let res = within("the chained request", harness::client().request(req))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-served-by"], account.as_str());
        let _ = res.into_body().collect().await;
    }
    assert!(p.stats.snapshot().hard_pins >= 3);
}

#[tokio::test]
async fn an_idle_socket_is_closed_and_an_oversized_message_gets_1009() {
    let a = WsAccount::start("acct-a").await;
    let p = proxy(&[&a], |cfg| {
        cfg.failover.ws.idle_timeout = Duration::from_millis(300);
        cfg.failover.ws.max_message = 1024;
    })
    .await;
    let (mut ws, _) = connect(p.spawned.addr, Some("conv-6")).await;
    let started = tokio::time::Instant::now();
    match within("the idle close", ws.next()).await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < BOUND);
    let (mut ws, _) = connect(p.spawned.addr, Some("conv-6")).await;
    ws.send(Message::binary(vec![7u8; 4096])).await.unwrap();
    match within("the size close", ws.next()).await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Size),
        other => panic!("{other:?}"),
    }
    let _ = AuthId::from("unused");
}

/// The proxy with its own accept-loop settings.
async fn proxy_serving(accounts: &[&WsAccount], serve: app::ServeConfig) -> Spawned {
    let ups = accounts
        .iter()
        .map(|a| Upstream::new(a.name, &a.url()).unwrap())
        .collect();
    let built = app::build(&ProxyConfig::new(ups), MemoryStore::new()).unwrap();
    harness::spawn(built.service, serve).await
}

#[tokio::test]
async fn an_open_socket_holds_its_connection_slot_and_a_drain_closes_it_with_1001() {
    let a = WsAccount::start("acct-a").await;
    let mut serve = app::ServeConfig::new(BOUND);
    serve.max_connections = 1;
    let Spawned { addr, stop, server } = proxy_serving(&[&a], serve).await;
    let (mut ws, _) = connect(addr, Some("conv-7")).await;
    turn(&mut ws, "").await;
    // The upgraded socket still holds the only slot: a second connection is not served
    // while it is open.
    let mut second = Box::pin(connect(addr, Some("conv-8")));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut second)
            .await
            .is_err(),
        "a second connection was served while the socket held the only slot"
    );
    // A drain closes the socket at once (going away), and ends clean.
    drop(stop);
    match within("the drain's close", ws.next()).await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("{other:?}"),
    }
    drop(ws);
    assert_eq!(
        within("the drain", server).await.unwrap(),
        app::Drained::Clean
    );
}
