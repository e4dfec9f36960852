//! The example proxy's WebSocket relay: time per message round trip through the proxy,
//! next to the same round trip straight to the account, measured in the same run.
//!
//! Run: `cargo bench --bench ws_relay` (about a minute). Everything is on 127.0.0.1 in
//! one process on a two-worker tokio runtime: an echo account (hyper upgrade +
//! tokio-tungstenite), the proxy (`app::build` + `app::serve`, defaults, in-memory store),
//! and one client socket per case that sends a text message and waits for its echo.
//!
//! - `ws/direct/{small,event}`: client ↔ account.
//! - `ws/proxy/{small,event}`: client ↔ proxy ↔ account, the socket sticky by
//!   `session-id` (so each message is one relay hop each way plus the relay's reading of
//!   the account's text messages).
//!
//! `small` is a 60-byte JSON message; `event` a 2 KiB `response.output_text.delta`-shaped
//! event. `proxy − direct` is what the relay adds per round trip (two messages relayed).

#[allow(dead_code, unused_imports)]
#[path = "../examples/proxy/app.rs"]
mod app;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower_sticky_session::store::MemoryStore;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An account that accepts WebSocket upgrades and echoes every message.
async fn echo_account() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                let key = req.headers()["sec-websocket-key"].clone();
                let on_upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let upgraded = on_upgrade.await.unwrap();
                    let mut ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        None,
                    )
                    .await;
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_close() || ws.send(m).await.is_err() {
                            return;
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
                Ok::<_, std::convert::Infallible>(res)
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn proxy_in_front_of(account: SocketAddr) -> SocketAddr {
    let up = app::Upstream::new("acct-a", &format!("http://{account}")).unwrap();
    let cfg = app::ProxyConfig::new(vec![up]);
    let built = app::build(&cfg, MemoryStore::new()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(app::serve(
        listener,
        built.service,
        std::future::pending(),
        app::ServeConfig::new(Duration::from_secs(1)),
    ));
    addr
}

async fn connect(addr: SocketAddr) -> Ws {
    let mut req = format!("ws://{addr}/v1/responses")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("session-id", "bench-session".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws
}

async fn round_trips(ws: &mut Ws, msg: &str, n: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        ws.send(Message::text(msg)).await.unwrap();
        match ws.next().await {
            Some(Ok(Message::Text(_))) => {}
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (account, proxy) = rt.block_on(async {
        let account = echo_account().await;
        (account, proxy_in_front_of(account).await)
    });
    let small = r#"{"type":"response.output_text.delta","delta":"hello there"}"#;
    let event = format!(
        r#"{{"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"{}"}}"#,
        "x".repeat(2000)
    );
    let mut g = c.benchmark_group("ws");
    g.measurement_time(Duration::from_secs(5));
    for (path, addr) in [("direct", account), ("proxy", proxy)] {
        for (name, msg) in [("small", small), ("event", event.as_str())] {
            let mut ws = rt.block_on(connect(addr));
            g.bench_function(format!("{path}/{name}"), |b| {
                b.iter_custom(|n| run(&rt, &mut ws, msg, n))
            });
        }
    }
    g.finish();
}

fn run(rt: &Runtime, ws: &mut Ws, msg: &str, n: u64) -> Duration {
    rt.block_on(round_trips(ws, msg, n))
}

criterion_group!(benches, bench);
criterion_main!(benches);
