//! The example proxy's per-connection and total limits over real sockets:
//! `--conn-idle-timeout` (HTTP/1 and HTTP/2), the write timeout (a client that stops
//! reading), `--body-timeout` (a body dribbled byte by byte), `--max-buffered-total`, the
//! drain with an idle HTTP/2 client that never reads, local resource errors, and
//! `--max-broken-streams` (an account that breaks its streams after the first byte).

use crate::app;
use crate::harness;
use crate::support::upstream;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tower_sticky_session::{
    AuthId, BindingKey, SessionId, store::BindingStore, store::MemoryStore,
};

use app::broken::BrokenStreams;
use app::picker::Picker;
use app::resources::{ProxyClassifier, fit_connections, local_resource_error, local_unavailable};
use app::{BufferBudget, ProxyConfig, ServeConfig, Upstream};
use harness::Spawned;
use upstream::{Account, BOUND, Mode, within};

const SHORT: Duration = Duration::from_millis(300);

/// What a test looks at besides the proxy's address.
struct Probe {
    picker: Arc<Picker>,
    budget: BufferBudget,
    broken: Arc<BrokenStreams>,
}

/// The proxy for `cfg`, served with `serve`, and its store.
async fn start(cfg: ProxyConfig, serve: ServeConfig) -> (Spawned, Probe, MemoryStore) {
    let store = MemoryStore::new();
    let built = app::build(&cfg, store.clone()).unwrap();
    let probe = Probe {
        picker: built.picker.clone(),
        budget: built.budget.clone(),
        broken: built.broken.clone(),
    };
    let spawned = harness::spawn(built.service, serve).await;
    (spawned, probe, store)
}

fn config(account: &Account) -> ProxyConfig {
    ProxyConfig::new(vec![Upstream::new(account.name, &account.url()).unwrap()])
}

fn serve_config() -> ServeConfig {
    let mut s = ServeConfig::new(BOUND);
    s.conn_idle_timeout = SHORT;
    s
}

/// An HTTP/2-only connection to `addr` (hyper's client, prior knowledge); the returned
/// task ends when the proxy closes the connection.
async fn h2(
    addr: SocketAddr,
    window: Option<u32>,
    frozen: Arc<AtomicBool>,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let io = Freezable {
        inner: TokioIo::new(tcp),
        frozen,
    };
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    if let Some(w) = window {
        b.initial_stream_window_size(w);
    }
    let (send, conn) = b.handshake(io).await.unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

/// A socket that stops reading (and writing) when told to: a client that hangs.
struct Freezable {
    inner: TokioIo<TcpStream>,
    frozen: Arc<AtomicBool>,
}

impl hyper::rt::Read for Freezable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if self.frozen.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Freezable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.frozen.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn get(addr: SocketAddr) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}/v1/chat"))
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn an_http2_connection_with_no_open_stream_is_closed_after_the_idle_timeout() {
    let a = Account::start("a", Mode::Stream).await;
    let (proxy, _app, _) = start(config(&a), serve_config()).await;
    let (mut send, conn) = h2(proxy.addr, None, Arc::default()).await;
    let res = within("h2 answer", send.send_request(get(proxy.addr)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "chunk-1\nchunk-2\nchunk-3\n");
    // hyper's client answers the proxy's pings; the proxy closes the connection anyway.
    within("the proxy closes the idle HTTP/2 connection", conn)
        .await
        .unwrap();
    assert!(send.is_closed());
}

#[tokio::test]
async fn an_http2_stream_longer_than_the_idle_timeout_is_not_cut() {
    let a = Account::start(
        "a",
        Mode::Sse {
            chunks: 8,
            gap: SHORT / 2,
        },
    )
    .await;
    let (proxy, _app, _) = start(config(&a), serve_config()).await;
    let (mut send, conn) = h2(proxy.addr, None, Arc::default()).await;
    let res = within("h2 answer", send.send_request(get(proxy.addr)))
        .await
        .unwrap();
    let body = within("the whole stream", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.ends_with("data: 8\n\ndata: [DONE]\n\n"), "{body}");
    within("then the idle connection closes", conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_http1_keep_alive_connection_with_no_request_is_closed_after_the_idle_timeout() {
    let a = Account::start("a", Mode::Stream).await;
    let (proxy, _app, _) = start(config(&a), serve_config()).await;
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(b"GET /v1/chat HTTP/1.1\r\nhost: p\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    // The connection stays open after the response (keep-alive) until the idle timeout.
    within(
        "the proxy closes the idle keep-alive connection",
        conn.read_to_end(&mut out),
    )
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("chunk-3"), "{out}");
}

#[tokio::test]
async fn a_client_that_stops_reading_has_its_upstream_request_cancelled() {
    // Endless stream; the client's HTTP/2 window is small and never reopened.
    let a = Account::start(
        "a",
        Mode::Sse {
            chunks: 1_000_000,
            gap: Duration::from_millis(1),
        },
    )
    .await;
    let mut cfg = config(&a);
    cfg.failover.idle_timeout = SHORT;
    let mut serve = serve_config();
    serve.write_timeout = SHORT;
    let (proxy, app, _) = start(cfg, serve).await;
    let (mut send, conn) = h2(proxy.addr, Some(1024), Arc::default()).await;
    let res = within("h2 answer", send.send_request(get(proxy.addr)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.picker.in_flight(0), 1);
    // Never read the body: the proxy stops being asked for frames, drops the upstream
    // body (the account's request ends) and closes the connection.
    within("the upstream request is cancelled", async {
        while app.picker.in_flight(0) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    within("the client connection is closed", conn)
        .await
        .unwrap();
    drop(res);
}

#[tokio::test]
async fn drain_with_an_idle_http2_client_that_never_reads_is_clean() {
    let a = Account::start("a", Mode::Stream).await;
    let mut serve = serve_config();
    // Only the drain may close it: the idle timeout is out of the way.
    serve.conn_idle_timeout = BOUND * 10;
    serve.grace = BOUND * 10;
    let (mut proxy, _app, _) = start(config(&a), serve).await;
    let frozen = Arc::new(AtomicBool::new(false));
    let (mut send, _conn) = h2(proxy.addr, None, frozen.clone()).await;
    let res = within("h2 answer", send.send_request(get(proxy.addr)))
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
    frozen.store(true, Ordering::Release);
    proxy.stop.send(()).unwrap();
    let drained = within(
        "the drain ends well before the grace period",
        &mut proxy.server,
    )
    .await
    .unwrap();
    assert_eq!(drained, app::Drained::Clean);
}

/// Sends a POST head announcing `len` bytes, then one byte every `gap`; returns what the
/// proxy answered once it closed the connection.
async fn dribble(addr: SocketAddr, session: &str, len: usize, gap: Duration) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat HTTP/1.1\r\nhost: p\r\nx-session-id: {session}\r\n\
         content-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let writer = tokio::spawn(async move {
        for _ in 0..len {
            if wr.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
    });
    let mut out = Vec::new();
    let _ = within("the proxy answers and closes", rd.read_to_end(&mut out)).await;
    writer.abort();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_dribbled_body_gets_408_past_the_body_timeout_and_no_binding_is_touched() {
    let a = Account::start("a", Mode::Echo).await;
    let mut cfg = config(&a);
    cfg.body_timeout = SHORT;
    let (proxy, _app, store) = start(cfg, serve_config()).await;
    let key = BindingKey::new(None, SessionId::new("dribbler").unwrap());
    store.commit(&key, &AuthId::from("a")).await.unwrap();
    // Each byte well within the frame idle timeout (300 s), the whole far past 300 ms.
    let out = dribble(proxy.addr, "dribbler", 1000, SHORT / 10).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(!out.contains("x-served-by"), "{out}");
    assert_eq!(a.count(), 0);
    assert_eq!(store.lookup(&key).await.unwrap(), Some(AuthId::from("a")));
}

/// `--idle-timeout` bounds the silence between a request body's frames, not the body:
/// frames a third of it apart are read whole though the body takes twice as long.
#[tokio::test]
async fn a_body_whose_frames_each_come_within_the_idle_timeout_is_read_whole() {
    let a = Account::start("a", Mode::Echo).await;
    let mut cfg = config(&a);
    cfg.failover.idle_timeout = SHORT;
    cfg.body_timeout = BOUND;
    let (proxy, _app, _) = start(cfg, serve_config()).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<BoxBody<Bytes, io::Error>>();
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(1);
    let req = Request::post(format!("http://{}/v1/chat", proxy.addr))
        .header("x-session-id", "slow-but-alive")
        .header("content-type", "application/json")
        .body(StreamBody::new(ReceiverStream::new(rx)).boxed())
        .unwrap();
    let answer = tokio::spawn(client.request(req));
    for part in ["{\"a\":", "1", ",\"b\"", ":", "2", "}"] {
        tokio::time::sleep(SHORT / 3).await;
        tx.send(Ok(Frame::data(Bytes::from(part)))).await.unwrap();
    }
    drop(tx);
    let res = within("answer", answer).await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = within("body", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "{\"a\":1,\"b\":2}");
    assert_eq!(a.count(), 1);
}

#[tokio::test]
async fn bodies_beyond_the_buffer_budget_stream_through_and_the_budget_returns_to_zero() {
    const BODY: usize = 256 * 1024;
    const CLIENTS: usize = 8;
    let a = Account::start("a", Mode::Echo).await;
    let mut cfg = config(&a);
    cfg.failover.max_body_buffer = BODY;
    // Room for three bodies at once.
    cfg.max_buffered_total = 3 * BODY;
    let (proxy, app, _) = start(cfg, serve_config()).await;
    let budget: BufferBudget = app.budget.clone();
    let client = Client::builder(TokioExecutor::new()).build_http::<BoxBody<Bytes, io::Error>>();
    let mut senders = Vec::new();
    let mut answers = Vec::new();
    for i in 0..CLIENTS {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(2);
        let req = Request::post(format!("http://{}/v1/chat", proxy.addr))
            .header("x-session-id", format!("big-{i}"))
            .header("content-type", "application/json")
            .header("content-length", BODY)
            .body(StreamBody::new(ReceiverStream::new(rx)).boxed())
            .unwrap();
        let fill = Bytes::from(vec![b'a' + i as u8; BODY / 2]);
        tx.send(Ok(Frame::data(fill))).await.unwrap();
        senders.push(tx);
        answers.push(tokio::spawn(client.clone().request(req)));
    }
    within("every request reached the budget", async {
        while budget.refused() + ((budget.in_use() / BODY) as u64) < CLIENTS as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(budget.in_use(), 3 * BODY);
    assert_eq!(budget.refused(), (CLIENTS - 3) as u64);
    for (i, tx) in senders.into_iter().enumerate() {
        let fill = Bytes::from(vec![b'a' + i as u8; BODY / 2]);
        tx.send(Ok(Frame::data(fill))).await.unwrap();
    }
    for (i, answer) in answers.into_iter().enumerate() {
        let res = within("answer", answer).await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = within("echo", res.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body.len(), BODY);
        assert!(body.iter().all(|&b| b == b'a' + i as u8));
    }
    within("the budget is given back", async {
        while budget.in_use() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(a.count(), CLIENTS);
}

#[tokio::test]
async fn requests_without_a_body_reserve_nothing_in_the_buffer_budget() {
    // The account holds every request: each stays in failover, where a reservation
    // would be held, until the test ends.
    let a = Account::start("a", Mode::Hang).await;
    let mut cfg = config(&a);
    // Room for one unannounced body.
    cfg.max_buffered_total = cfg.failover.max_body_buffer;
    let (proxy, app, _) = start(cfg, serve_config()).await;
    let client = harness::client();
    let mut held = Vec::new();
    for i in 0..3 {
        let req = harness::chat(http::Method::GET, proxy.addr, Some(&format!("get-{i}")))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        held.push(tokio::spawn(client.request(req)));
    }
    a.wait_seen(3).await;
    assert_eq!(app.budget.in_use(), 0);
    assert_eq!(app.budget.refused(), 0);
    for s in a.seen() {
        assert!(
            !s.headers.contains_key("transfer-encoding"),
            "{:?}",
            s.headers
        );
    }
    for h in held {
        h.abort();
    }
}

#[tokio::test]
async fn a_max_body_buffer_above_the_budget_is_refused() {
    let a = Account::start("a", Mode::Stream).await;
    let mut cfg = config(&a);
    cfg.max_buffered_total = cfg.failover.max_body_buffer - 1;
    assert!(app::build(&cfg, MemoryStore::new()).is_err());
}

// The local-resource classifier over constructed errors.

#[derive(Debug)]
struct Wrapped(&'static str, Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.1)
    }
}

/// An error shaped like hyper-util's: client error → connect error → io::Error.
fn chain(io: io::Error) -> Wrapped {
    Wrapped(
        "client error (Connect)",
        Box::new(Wrapped("tcp connect error", Box::new(io))),
    )
}

#[test]
fn local_resource_errors_are_found_anywhere_in_the_chain() {
    for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
        let io = io::Error::from_raw_os_error(code);
        assert!(local_resource_error(&io).is_some(), "{code} bare");
        let e = chain(io::Error::from_raw_os_error(code));
        let found = local_resource_error(&e).expect("found through the chain");
        assert_eq!(found.raw_os_error(), Some(code));
    }
}

#[test]
fn the_accounts_own_connect_failures_are_not_local() {
    for code in [
        libc::ECONNREFUSED,
        libc::ETIMEDOUT,
        libc::EHOSTUNREACH,
        libc::ECONNRESET,
    ] {
        let e = chain(io::Error::from_raw_os_error(code));
        assert!(local_resource_error(&e).is_none(), "{code}");
    }
    let e = chain(io::Error::other("dns error"));
    assert!(local_resource_error(&e).is_none());
}

#[test]
fn the_local_503_is_neutral_for_the_binding_and_other_5xx_still_fail() {
    use tower_sticky_session::{ClassifyResponse, ResponseClass};
    let c = ProxyClassifier::default();
    let local = local_unavailable();
    assert!(!local.headers().contains_key("x-served-by"));
    assert_eq!(
        c.classify(local.status(), local.headers()),
        ResponseClass::Neutral
    );
    let h = http::HeaderMap::new();
    assert_eq!(
        c.classify(StatusCode::SERVICE_UNAVAILABLE, &h),
        ResponseClass::Failure
    );
    assert_eq!(
        c.classify(StatusCode::TOO_MANY_REQUESTS, &h),
        ResponseClass::Failure
    );
    assert_eq!(c.classify(StatusCode::OK, &h), ResponseClass::Success);
}

#[test]
fn connections_fit_under_the_descriptor_limit() {
    use app::resources::RESERVED_FDS;
    assert_eq!(fit_connections(1_048_576, 10_000), Ok(10_000));
    assert_eq!(
        fit_connections(1024, 10_000),
        Ok(((1024 - RESERVED_FDS) / 2) as usize)
    );
    assert!(fit_connections(RESERVED_FDS + 1, 10).is_err());
}

#[test]
fn budget_grants_fit_shrink_and_are_released_on_drop() {
    let b = BufferBudget::new(100);
    let g1 = b.try_reserve(60).unwrap();
    assert!(b.try_reserve(50).is_none());
    let g2 = b.try_reserve(40).unwrap();
    assert_eq!(b.in_use(), 100);
    g1.shrink_to(10);
    assert_eq!(b.in_use(), 50);
    let clone = g2.clone();
    drop(g2);
    assert_eq!(b.in_use(), 50);
    drop(clone);
    drop(g1);
    assert_eq!(b.in_use(), 0);
}

// --max-broken-streams: an account that breaks its streams after the first byte.

/// Accounts `a` (index 0) and `b`, at most 3 broken streams in a row, a cooldown that
/// outlasts the test, short idle and write timeouts; `sessions` bound to `a`.
async fn broken_streams_setup(
    a: &Account,
    b: &Account,
    sessions: &[&str],
) -> (Spawned, Probe, MemoryStore) {
    let mut cfg = ProxyConfig::new(vec![
        Upstream::new(a.name, &a.url()).unwrap(),
        Upstream::new(b.name, &b.url()).unwrap(),
    ]);
    cfg.failover.max_broken_streams = 3;
    cfg.failover.cooldown = BOUND * 10;
    cfg.failover.idle_timeout = SHORT;
    let mut serve = serve_config();
    serve.conn_idle_timeout = BOUND;
    serve.write_timeout = SHORT;
    let (proxy, probe, store) = start(cfg, serve).await;
    for s in sessions {
        store.commit(&key(s), &AuthId::from("a")).await.unwrap();
    }
    (proxy, probe, store)
}

fn key(session: &str) -> BindingKey {
    BindingKey::new(None, SessionId::new(session).unwrap())
}

async fn bound(store: &MemoryStore, session: &str) -> Option<String> {
    store
        .lookup(&key(session))
        .await
        .unwrap()
        .map(|a| a.as_str().to_owned())
}

/// Waits until none of `sessions` is bound (the unbinding runs on a task of its own).
async fn unbound(store: &MemoryStore, sessions: &[&str], what: &str) {
    within(what, async {
        for s in sessions {
            while bound(store, s).await.is_some() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await;
}

/// A streamed request of `session` through the proxy: the account that served it and its
/// body (an error when the stream broke).
async fn stream(addr: SocketAddr, session: &str) -> (String, Result<Bytes, String>) {
    let req = harness::chat(http::Method::POST, addr, Some(session))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let res = harness::send(&harness::client(), req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let by = res.headers()["x-served-by"].to_str().unwrap().to_owned();
    let body = within("the stream ends", res.into_body().collect()).await;
    (by, body.map(|b| b.to_bytes()).map_err(|e| e.to_string()))
}

/// A stream of `session` that account `a` breaks after its first chunk.
async fn broken_by_a(addr: SocketAddr, session: &str) {
    let (by, body) = stream(addr, session).await;
    assert_eq!(by, "a");
    assert!(body.is_err(), "the stream should break: {body:?}");
}

#[tokio::test]
async fn three_streams_broken_after_the_first_byte_unbind_their_sessions_and_cool_the_account() {
    let a = Account::start("a", Mode::FirstThenBreak).await;
    let b = Account::start("b", Mode::Stream).await;
    let sessions = ["brk-0", "brk-1", "brk-2"];
    let (proxy, app, store) = broken_streams_setup(&a, &b, &sessions).await;
    for (k, s) in sessions.iter().enumerate() {
        broken_by_a(proxy.addr, s).await;
        if k < 2 {
            // One break (or two) is the stream's: the bindings stay, nothing cools.
            assert!(!app.picker.cooldowns.is_cooling(0));
            for s in &sessions {
                assert_eq!(bound(&store, s).await.as_deref(), Some("a"));
            }
        }
    }
    assert!(app.picker.cooldowns.is_cooling(0));
    assert_eq!((app.broken.broken(0), app.broken.tripped(0)), (3, 1));
    unbound(&store, &sessions, "the three bindings are removed").await;
    for s in &sessions {
        let (by, body) = stream(proxy.addr, s).await;
        assert_eq!(by, "b");
        assert!(body.unwrap().ends_with(b"chunk-3\n"));
        assert_eq!(bound(&store, s).await.as_deref(), Some("b"));
    }
    assert_eq!(a.count(), 3);
    assert_eq!(app.broken.broken(1), 0);
}

#[tokio::test]
async fn a_client_that_goes_away_or_stops_reading_mid_stream_does_not_count() {
    let a = Account::start("a", Mode::FirstThenBreak).await;
    let b = Account::start("b", Mode::Stream).await;
    let sessions = ["gone-0", "gone-1", "gone-2", "gone-3"];
    let (proxy, app, store) = broken_streams_setup(&a, &b, &sessions).await;
    broken_by_a(proxy.addr, "gone-0").await;
    broken_by_a(proxy.addr, "gone-1").await;

    // An endless stream whose client hangs up after the first event.
    a.set(Mode::Sse {
        chunks: 1_000_000,
        gap: Duration::from_millis(5),
    });
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(b"GET /v1/chat HTTP/1.1\r\nhost: p\r\nx-session-id: gone-2\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    within("the first event", async {
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&seen).contains("data: 1") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(String::from_utf8_lossy(&seen).contains("x-served-by: a"));
    drop(conn);
    within("the proxy drops the stream", async {
        while app.picker.in_flight(0) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // An endless stream whose HTTP/2 client stops reading: cut by the write timeout.
    let (mut send, conn) = h2(proxy.addr, Some(1024), Arc::default()).await;
    let req = Request::get(format!("http://{}/v1/chat", proxy.addr))
        .header("x-session-id", "gone-3")
        .body(Empty::new())
        .unwrap();
    let res = within("h2 answer", send.send_request(req)).await.unwrap();
    assert_eq!(res.headers()["x-served-by"], "a");
    within("the client connection is closed", conn)
        .await
        .unwrap();
    within("the proxy drops the stream", async {
        while app.picker.in_flight(0) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    drop(res);

    // Neither counted (nor reset the count): still two breaks, nothing unbound.
    assert_eq!(app.broken.broken(0), 2);
    assert!(!app.picker.cooldowns.is_cooling(0));
    for s in &sessions {
        assert_eq!(bound(&store, s).await.as_deref(), Some("a"));
    }
    // The third break in a row trips it.
    a.set(Mode::FirstThenBreak);
    broken_by_a(proxy.addr, "gone-2").await;
    assert!(app.picker.cooldowns.is_cooling(0));
    unbound(
        &store,
        &["gone-0", "gone-1", "gone-2"],
        "the broken streams' sessions are unbound",
    )
    .await;
    assert_eq!(bound(&store, "gone-3").await.as_deref(), Some("a"));
}

#[tokio::test]
async fn a_clean_stream_resets_the_count_and_an_idle_timeout_counts() {
    let a = Account::start("a", Mode::FirstThenBreak).await;
    let b = Account::start("b", Mode::Stream).await;
    let sessions = ["cl-0", "cl-1", "cl-2", "cl-3", "cl-4", "cl-5"];
    let (proxy, app, store) = broken_streams_setup(&a, &b, &sessions).await;
    broken_by_a(proxy.addr, "cl-0").await;
    broken_by_a(proxy.addr, "cl-1").await;
    a.set(Mode::Stream);
    let (by, body) = stream(proxy.addr, "cl-2").await;
    assert_eq!(by, "a");
    assert!(body.unwrap().ends_with(b"chunk-3\n"));
    a.set(Mode::FirstThenBreak);
    broken_by_a(proxy.addr, "cl-3").await;
    broken_by_a(proxy.addr, "cl-4").await;
    // Four breaks, but only two since the clean stream.
    assert_eq!(app.broken.broken(0), 4);
    assert!(!app.picker.cooldowns.is_cooling(0));
    for s in &sessions {
        assert_eq!(bound(&store, s).await.as_deref(), Some("a"));
    }
    // The third in a row: the account falls silent after its first chunk
    // (--idle-timeout).
    a.set(Mode::FirstThenHang);
    broken_by_a(proxy.addr, "cl-5").await;
    assert!(app.picker.cooldowns.is_cooling(0));
    assert_eq!((app.broken.broken(0), app.broken.tripped(0)), (5, 1));
    unbound(
        &store,
        &["cl-3", "cl-4", "cl-5"],
        "the last three streams' sessions are unbound",
    )
    .await;
    // Those before the clean stream keep their account.
    for s in ["cl-0", "cl-1", "cl-2"] {
        assert_eq!(bound(&store, s).await.as_deref(), Some("a"));
    }
}
