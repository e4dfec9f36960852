//! The example proxy's accept loop against idle, silent and half-speaking clients:
//! `--header-timeout` for every protocol, `--max-connections`, and the drain result.

use crate::app;
use crate::harness;
use crate::support::upstream;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_sticky_session::store::MemoryStore;

use app::{Drained, ProxyConfig, ServeConfig, Upstream};
use harness::Spawned;
use upstream::{Account, Mode, within};

const HEADER_TIMEOUT: Duration = Duration::from_millis(300);

struct Proxy {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Drained>,
}

async fn start(account: &Account, serve: ServeConfig, upstream_timeout: Duration) -> Proxy {
    let mut cfg = ProxyConfig::new(vec![Upstream::new(account.name, &account.url()).unwrap()]);
    cfg.failover.upstream_timeout = upstream_timeout;
    let built = app::build(&cfg, MemoryStore::new()).unwrap();
    let Spawned { addr, stop, server } = harness::spawn(built.service, serve).await;
    Proxy {
        addr,
        stop: Some(stop),
        server,
    }
}

fn serve_config() -> ServeConfig {
    let mut s = ServeConfig::new(Duration::from_secs(5));
    s.header_timeout = HEADER_TIMEOUT;
    s
}

/// Sends `bytes`, then reads until the proxy closes the connection; returns what it sent.
async fn closed_after(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = within(
        "the proxy closes the connection",
        conn.read_to_end(&mut out),
    )
    .await;
    out
}

#[tokio::test]
async fn header_timeout_closes_a_connection_that_sends_nothing() {
    let a = Account::start("a", Mode::Stream).await;
    let proxy = start(&a, serve_config(), Duration::from_secs(5)).await;
    closed_after(proxy.addr, b"").await;
    assert_eq!(a.count(), 0);
}

#[tokio::test]
async fn header_timeout_closes_a_half_sent_http1_head() {
    let a = Account::start("a", Mode::Stream).await;
    let proxy = start(&a, serve_config(), Duration::from_secs(5)).await;
    closed_after(proxy.addr, b"GET /v1/chat HTTP/1.1\r\nhost: p\r\n").await;
    assert_eq!(a.count(), 0);
}

/// Sends a GET on `conn` and reads its answer until `done` says it is whole.
async fn exchange(conn: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    conn.write_all(b"GET /v1/chat HTTP/1.1\r\nhost: p\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    within("the answer, whole", async {
        while !done(&seen) {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before the answer ended: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    seen
}

/// On a keep-alive HTTP/1 connection the next head is due within the header timeout too:
/// one sent by halves after a first answer is cut as the first would be, though the
/// connection idle timeout is far off.
#[tokio::test]
async fn header_timeout_closes_a_half_sent_second_http1_head() {
    let a = Account::start("a", Mode::Stream).await;
    let mut serve = serve_config();
    serve.conn_idle_timeout = upstream::BOUND * 10;
    let proxy = start(&a, serve, Duration::from_secs(5)).await;
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    let first = exchange(&mut conn, |seen| seen.ends_with(b"chunk-3\n")).await;
    assert!(first.starts_with(b"HTTP/1.1 200"));
    conn.write_all(b"GET /v1/chat HTTP/1.1\r\nhost: p\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = within(
        "the proxy closes the connection",
        conn.read_to_end(&mut rest),
    )
    .await;
    assert!(!rest.starts_with(b"HTTP/1.1 200"));
    assert_eq!(a.count(), 1);
}

/// ...and the rule is about heads, not answers: a second answer on a keep-alive
/// connection that streams for twice the header timeout is not cut.
#[tokio::test]
async fn header_timeout_spares_a_long_second_answer_on_a_keep_alive_connection() {
    let a = Account::start("a", Mode::Stream).await;
    let proxy = start(&a, serve_config(), Duration::from_secs(5)).await;
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    exchange(&mut conn, |seen| seen.ends_with(b"chunk-3\n")).await;
    a.set(Mode::Sse {
        chunks: 6,
        gap: HEADER_TIMEOUT / 3,
    });
    let seen = exchange(&mut conn, |seen| seen.windows(6).any(|w| w == b"[DONE]")).await;
    let text = String::from_utf8_lossy(&seen);
    for i in 1..=6 {
        assert!(text.contains(&format!("data: {i}\n\n")), "{text}");
    }
    assert_eq!(a.count(), 2);
}

#[tokio::test]
async fn header_timeout_closes_an_http2_connection_without_a_request() {
    let a = Account::start("a", Mode::Stream).await;
    let proxy = start(&a, serve_config(), Duration::from_secs(5)).await;
    // Half a preface.
    closed_after(proxy.addr, b"PRI * HTTP/2.0\r\n").await;
    // The whole preface and an empty SETTINGS frame, then no HEADERS.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    closed_after(proxy.addr, &hello).await;
    assert_eq!(a.count(), 0);
}

#[tokio::test]
async fn header_timeout_spares_a_connection_whose_request_is_in_flight() {
    // The account holds its answer longer than the header timeout: the connection stays
    // until the proxy answers 504 at the upstream timeout.
    let a = Account::start("a", Mode::Hang).await;
    let proxy = start(&a, serve_config(), HEADER_TIMEOUT * 3).await;
    let raw = closed_after(
        proxy.addr,
        b"GET /v1/chat HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n",
    )
    .await;
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 504"), "{raw}");
}

#[tokio::test]
async fn max_connections_holds_further_connections_until_one_closes() {
    let a = Account::start("a", Mode::Stream).await;
    let mut serve = serve_config();
    serve.header_timeout = upstream::BOUND;
    serve.max_connections = 1;
    let proxy = start(&a, serve, Duration::from_secs(5)).await;

    let idle = TcpStream::connect(proxy.addr).await.unwrap();
    // Let the proxy accept it (the only permit).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = TcpStream::connect(proxy.addr).await.unwrap();
    second
        .write_all(b"GET /v1/chat HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond --max-connections");
    drop(idle);
    let mut out = Vec::new();
    within("served once a permit is free", second.read_to_end(&mut out))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn drain_reports_cut_connections_at_the_end_of_the_grace_period() {
    let a = Account::start("a", Mode::FirstThenHang).await;
    let mut serve = serve_config();
    serve.grace = Duration::from_millis(300);
    let mut proxy = start(&a, serve, Duration::from_secs(5)).await;
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(b"GET /v1/chat HTTP/1.1\r\nhost: p\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = within("head", conn.read(&mut buf)).await.unwrap();
    assert!(n > 0);
    proxy.stop.take().unwrap().send(()).unwrap();
    let drained = within("drain", &mut proxy.server).await.unwrap();
    assert_eq!(drained, Drained::Cut(1));
    let mut rest = Vec::new();
    let _ = within("cut", conn.read_to_end(&mut rest)).await;
}

#[tokio::test]
async fn http2_requests_are_served_past_the_header_timeout() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let a = Account::start("a", Mode::Stream).await;
    let proxy = start(&a, serve_config(), Duration::from_secs(5)).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    for _ in 0..2 {
        let req = http::Request::get(format!("http://{}/v1/chat", proxy.addr))
            .body(Empty::new())
            .unwrap();
        let res = within("h2 answer", client.request(req)).await.unwrap();
        assert_eq!(res.version(), http::Version::HTTP_2);
        assert_eq!(res.headers()["x-served-by"], "a");
        let body = within("h2 body", res.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, "chunk-1\nchunk-2\nchunk-3\n");
        // Idle for longer than the header timeout before the next request (on the same
        // connection while it stays open).
        tokio::time::sleep(HEADER_TIMEOUT * 2).await;
    }
    assert_eq!(a.count(), 2);
}
