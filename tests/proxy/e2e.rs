//! End-to-end tests of the example proxy (`examples/proxy`) over real sockets.
//!
//! Each test starts the proxy's service in-process on 127.0.0.1:0 in front of upstream
//! accounts it owns on loopback, and checks the behaviour table in the crate docs through what a
//! client sees (`x-served-by`, status, body, stream end) and through the binding store.
//!
//! The proxy runs with one attempt per request, so that each test sees the sticky layer
//! judge one account's answer (failover: `failover.rs`). It answers only once the
//! account's first data chunk is there.
//!
//! Sequencing uses semaphores, the HTTP exchange itself ("the client has the response
//! head", "the client has the first chunk") and, where the proxy is still waiting for a
//! first chunk, polling of what the account has received; there are no timing
//! thresholds. Every wait is bounded by `within` only so that a bug fails instead of
//! hanging.

use crate::app;
use crate::harness;
use crate::support::upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tower_sticky_session::{
    AuthId, BindingKey, Scope, SessionId, Stats, store::BindingStore, store::MemoryStore,
};

use app::{Drained, ProxyConfig, Upstream};
use harness::Spawned;
use upstream::{unreachable_url, within};

// ---------------------------------------------------------------------------------------
// Upstream accounts owned by the tests.
// ---------------------------------------------------------------------------------------

/// What a test account does with the next request.
#[derive(Clone)]
enum Mode {
    /// 200, `text/event-stream`, three chunks `chunk-1\n`..`chunk-3\n`, clean end.
    Stream,
    /// This status with a short body.
    Status(u16),
    /// 200, chunked, ends without a single data frame.
    Empty,
    /// 204 No Content.
    NoContent,
    /// 200, three chunks; each waits for one permit of the semaphore (slow first chunk).
    Gated(Arc<Semaphore>),
    /// 200, the body describes the request the account received (also recorded), sent
    /// with a `Content-Length`.
    Echo,
    /// 200 head, then no data until the reader of the body goes away; then a message on
    /// the channel.
    HoldUntilAbandoned(mpsc::UnboundedSender<()>),
    /// Reads the request, then closes the connection without answering.
    CloseBeforeHeaders,
    /// 200 chunked head, then closes the connection before any chunk.
    CloseBeforeFirst,
    /// 200 chunked head and one chunk, then closes the connection mid-stream.
    CloseMidStream,
}

/// A request as an account received it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

/// An upstream account on loopback. Connections are not kept alive (every response
/// closes its connection), so the mode at accept time is the mode of the request.
struct Account {
    name: &'static str,
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Account {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type UpBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, std::io::Error>>>;

impl Account {
    async fn start(name: &'static str, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (m, s) = (mode.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let mode = m.lock().unwrap().clone();
                let seen = s.clone();
                tokio::spawn(serve_one(stream, mode, seen, name));
            }
        });
        Self {
            name,
            addr,
            mode,
            seen,
            task,
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn upstream(&self) -> Upstream {
        Upstream::new(self.name, &self.url()).unwrap()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until the account has received `n` requests in all.
    async fn wait_seen(&self, n: usize) {
        within("the account receives the request", async {
            while self.seen.lock().unwrap().len() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
}

async fn serve_one(
    mut stream: TcpStream,
    mode: Mode,
    seen: Arc<Mutex<Vec<Seen>>>,
    name: &'static str,
) {
    match mode {
        Mode::CloseBeforeHeaders | Mode::CloseBeforeFirst | Mode::CloseMidStream => {
            // Read the whole request head first: closing with unread input would reset
            // the connection and could discard what was written before.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let mut out = String::new();
            if !matches!(mode, Mode::CloseBeforeHeaders) {
                out.push_str(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                     transfer-encoding: chunked\r\n\r\n",
                );
            }
            if matches!(mode, Mode::CloseMidStream) {
                out.push_str("8\r\nchunk-1\n\r\n");
            }
            let _ = stream.write_all(out.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        mode => {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                respond(mode.clone(), seen.clone(), name, req)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        }
    }
}

async fn respond(
    mode: Mode,
    seen: Arc<Mutex<Vec<Seen>>>,
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let record = Seen {
        method: parts.method.clone(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body,
    };
    seen.lock().unwrap().push(record.clone());

    let (tx, rx) = mpsc::channel(4);
    let mut res = Response::new(StreamBody::new(ReceiverStream::new(rx)));
    res.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    res.headers_mut().insert("x-account", name.parse().unwrap());
    let data = |s: String| Ok(Frame::data(Bytes::from(s)));
    match mode {
        Mode::Stream => {
            tokio::spawn(async move {
                for i in 1..=3 {
                    let _ = tx.send(data(format!("chunk-{i}\n"))).await;
                }
            });
        }
        Mode::Status(code) => {
            *res.status_mut() = StatusCode::from_u16(code).unwrap();
            let _ = tx.try_send(data(format!("status {code} from {name}\n")));
        }
        Mode::Empty => drop(tx),
        Mode::NoContent => *res.status_mut() = StatusCode::NO_CONTENT,
        Mode::Gated(gate) => {
            tokio::spawn(async move {
                for i in 1..=3 {
                    gate.acquire().await.unwrap().forget();
                    let _ = tx.send(data(format!("chunk-{i}\n"))).await;
                }
            });
        }
        Mode::Echo => {
            // Hop-by-hop headers in the response too: the proxy must not pass them on.
            res.headers_mut()
                .insert("x-hop-back", "secret-hop".parse().unwrap());
            res.headers_mut()
                .insert("connection", "x-hop-back".parse().unwrap());
            let echo = format!(
                "{} {} {}",
                record.method,
                record.uri,
                String::from_utf8_lossy(&record.body)
            );
            res.headers_mut()
                .insert("content-length", echo.len().into());
            let _ = tx.try_send(data(echo));
        }
        Mode::HoldUntilAbandoned(abandoned) => {
            tokio::spawn(async move {
                tx.closed().await;
                let _ = abandoned.send(());
            });
        }
        Mode::CloseBeforeHeaders | Mode::CloseBeforeFirst | Mode::CloseMidStream => {
            unreachable!("served raw")
        }
    }
    Ok(res)
}

// ---------------------------------------------------------------------------------------
// The proxy under test.
// ---------------------------------------------------------------------------------------

struct Proxy {
    addr: SocketAddr,
    store: MemoryStore,
    stats: Stats,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Drained>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Options {
    session_headers: Vec<&'static str>,
    scope_header: Option<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            session_headers: vec!["x-session-id"],
            scope_header: None,
        }
    }
}

impl Proxy {
    async fn start(upstreams: Vec<Upstream>) -> Self {
        Self::start_with(upstreams, Options::default()).await
    }

    async fn start_with(upstreams: Vec<Upstream>, opts: Options) -> Self {
        let store = MemoryStore::builder()
            .max_bindings(1000)
            .ttl(Duration::from_secs(3600))
            .build();
        let mut cfg = ProxyConfig::new(upstreams);
        cfg.session_headers = opts
            .session_headers
            .iter()
            .map(|h| h.parse().unwrap())
            .collect();
        cfg.scope_header = opts.scope_header.map(|h| h.parse().unwrap());
        // One attempt per request: these tests watch the sticky layer judge each account's
        // answer directly (failover has its own tests in failover.rs).
        cfg.failover.attempts = 1;
        let (Spawned { addr, stop, server }, stats) = harness::start(&cfg, store.clone()).await;
        Self {
            addr,
            store,
            stats,
            client: harness::client(),
            stop: Some(stop),
            server,
        }
    }

    fn request(&self, session: Option<&str>) -> http::request::Builder {
        harness::chat(Method::GET, self.addr, session)
    }

    /// Sends `req` and returns the response as soon as its head arrives.
    async fn send(&self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        harness::send(&self.client, req).await
    }

    /// GET with an optional session id; the response head.
    async fn get(&self, session: Option<&str>) -> Response<Incoming> {
        self.send(self.request(session).body(Full::default()).unwrap())
            .await
    }

    /// GET with an optional session id, read to the end: (account, status, body).
    async fn get_all(&self, session: Option<&str>) -> (String, StatusCode, Bytes) {
        let res = self.get(session).await;
        let status = res.status();
        let by = served_by(&res);
        let body = within("response body", res.into_body().collect())
            .await
            .expect("the body ends cleanly")
            .to_bytes();
        (by, status, body)
    }

    /// The account `session` (unscoped) is bound to.
    fn bound(&self, session: &str) -> Option<String> {
        self.bound_in(None, session)
    }

    fn bound_in(&self, scope: Option<&'static str>, session: &str) -> Option<String> {
        let key = key(scope, session);
        self.store.get(&key).map(|b| b.auth.as_str().to_owned())
    }

    async fn bind(&self, session: &str, account: &str) {
        self.store
            .commit(&key(None, session), &AuthId::from(account))
            .await
            .unwrap();
    }
}

fn key(scope: Option<&'static str>, session: &str) -> BindingKey {
    BindingKey::new(
        scope.map(Scope::from_static),
        SessionId::new(session).unwrap(),
    )
}

fn served_by(res: &Response<Incoming>) -> String {
    res.headers()
        .get("x-served-by")
        .expect("every proxied response names its account")
        .to_str()
        .unwrap()
        .to_owned()
}

async fn next_data(body: &mut Incoming) -> Bytes {
    loop {
        let frame = within("next frame", body.frame())
            .await
            .expect("a frame before the end")
            .expect("no body error");
        if let Ok(data) = frame.into_data() {
            return data;
        }
    }
}

async fn three_accounts() -> (Account, Account, Account) {
    (
        Account::start("a", Mode::Stream).await,
        Account::start("b", Mode::Stream).await,
        Account::start("c", Mode::Stream).await,
    )
}

// ---------------------------------------------------------------------------------------
// Routing.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn requests_without_session_rotate_in_command_line_order() {
    let (a, b, c) = three_accounts().await;
    let proxy = Proxy::start(vec![a.upstream(), b.upstream(), c.upstream()]).await;
    let mut order = Vec::new();
    for _ in 0..6 {
        let (by, status, body) = proxy.get_all(None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "chunk-1\nchunk-2\nchunk-3\n");
        order.push(by);
    }
    assert_eq!(order, ["a", "b", "c", "a", "b", "c"]);
    let stats = proxy.stats.snapshot();
    assert_eq!(stats.no_session, 6);
    assert_eq!(stats.commits, 0);
}

#[tokio::test]
async fn session_sticks_to_the_account_that_streamed_its_first_chunk() {
    let (a, b, c) = three_accounts().await;
    let proxy = Proxy::start(vec![a.upstream(), b.upstream(), c.upstream()]).await;

    assert_eq!(proxy.get_all(Some("conv-1")).await.0, "a");
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"));
    // Unpinned requests rotate on...
    assert_eq!(proxy.get_all(None).await.0, "b");
    assert_eq!(proxy.get_all(None).await.0, "c");
    // ...while the session keeps landing on its account.
    for _ in 0..3 {
        let (by, status, _) = proxy.get_all(Some("conv-1")).await;
        assert_eq!((by.as_str(), status), ("a", StatusCode::OK));
    }
    // Pinned requests do not advance the round-robin counter: after a, b, c comes a.
    assert_eq!(proxy.get_all(None).await.0, "a");
    assert_eq!(proxy.stats.snapshot().hits, 3);
}

#[tokio::test]
async fn stale_binding_to_an_unknown_account_falls_back_to_round_robin() {
    let (a, b, _c) = three_accounts().await;
    let proxy = Proxy::start(vec![a.upstream(), b.upstream()]).await;
    proxy.bind("conv-1", "removed-account").await;

    let (by, status, _) = proxy.get_all(Some("conv-1")).await;
    assert_eq!((by.as_str(), status), ("a", StatusCode::OK));
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"));
}

#[tokio::test]
async fn session_headers_are_read_in_priority_order() {
    let (a, b, _c) = three_accounts().await;
    let proxy = Proxy::start_with(
        vec![a.upstream(), b.upstream()],
        Options {
            session_headers: vec!["x-first", "x-second"],
            scope_header: None,
        },
    )
    .await;
    let get = |headers: &[(&str, &str)]| {
        let mut req = Request::get(format!("http://{}/", proxy.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Full::default()).unwrap()
    };

    let res = proxy.send(get(&[("x-second", "s-1")])).await;
    assert_eq!(served_by(&res), "a");
    within("body", res.into_body().collect()).await.unwrap();
    assert_eq!(proxy.bound("s-1").as_deref(), Some("a"));

    // x-first wins over x-second: a new session, so round-robin (b), not s-1's account.
    let res = proxy
        .send(get(&[("x-second", "s-1"), ("x-first", "f-1")]))
        .await;
    assert_eq!(served_by(&res), "b");
    within("body", res.into_body().collect()).await.unwrap();
    assert_eq!(proxy.bound("f-1").as_deref(), Some("b"));

    let res = proxy.send(get(&[("x-second", "s-1")])).await;
    assert_eq!(served_by(&res), "a");
}

#[tokio::test]
async fn scope_header_keeps_one_binding_per_scope() {
    let (a, b, _c) = three_accounts().await;
    let proxy = Proxy::start_with(
        vec![a.upstream(), b.upstream()],
        Options {
            scope_header: Some("x-model"),
            ..Options::default()
        },
    )
    .await;
    let get = |model: &str| {
        proxy
            .request(Some("conv-1"))
            .header("x-model", model)
            .body(Full::default())
            .unwrap()
    };
    let mut seen = Vec::new();
    for model in ["m1", "m2", "m1", "m2"] {
        let res = proxy.send(get(model)).await;
        seen.push(served_by(&res));
        within("body", res.into_body().collect()).await.unwrap();
    }
    assert_eq!(seen, ["a", "b", "a", "b"]);
    assert_eq!(proxy.bound_in(Some("m1"), "conv-1").as_deref(), Some("a"));
    assert_eq!(proxy.bound_in(Some("m2"), "conv-1").as_deref(), Some("b"));
    assert_eq!(proxy.bound("conv-1"), None);
}

// ---------------------------------------------------------------------------------------
// Forwarding and streaming.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn forwards_method_path_query_headers_and_body_but_not_hop_by_hop_headers() {
    let a = Account::start("a", Mode::Echo).await;
    let up = Upstream::new("a", &format!("{}/base/", a.url())).unwrap();
    let proxy = Proxy::start(vec![up]).await;

    let req = Request::post(format!("http://{}/v1/chat?stream=true&n=2", proxy.addr))
        .header("x-session-id", "conv-1")
        .header("authorization", "Bearer client-token")
        .header("x-custom", "kept")
        .header("x-hop", "dropped")
        .header("connection", "x-hop")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic cHJveHk=")
        .body(Full::from("{\"prompt\":\"hi\"}"))
        .unwrap();
    let expected = "POST /base/v1/chat?stream=true&n=2 {\"prompt\":\"hi\"}";
    let res = proxy.send(req).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(served_by(&res), "a");
    assert_eq!(res.headers()["x-account"], "a");
    assert!(res.headers().get("x-hop-back").is_none());
    // A length-delimited upstream response stays length-delimited.
    assert_eq!(
        res.headers()["content-length"],
        expected.len().to_string().as_str()
    );
    assert!(res.headers().get("transfer-encoding").is_none());
    let body = within("body", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, expected);

    let seen = a.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, Method::POST);
    assert_eq!(s.uri, "/base/v1/chat?stream=true&n=2");
    assert_eq!(s.body, "{\"prompt\":\"hi\"}");
    assert_eq!(s.headers["x-custom"], "kept");
    assert_eq!(s.headers["authorization"], "Bearer client-token");
    assert_eq!(s.headers["x-session-id"], "conv-1");
    assert_eq!(s.headers["host"], a.addr.to_string().as_str());
    for hop in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert!(s.headers.get(hop).is_none(), "{hop} was forwarded");
    }
    assert!(
        s.headers.get_all("connection").iter().all(|v| v != "x-hop"),
        "the client's Connection header was forwarded"
    );
}

#[tokio::test]
async fn frames_reach_the_client_before_the_upstream_sends_the_next_one() {
    let gate = Arc::new(Semaphore::new(0));
    let a = Account::start("a", Mode::Gated(gate.clone())).await;
    let proxy = Proxy::start(vec![a.upstream()]).await;

    // The proxy answers once the first chunk is there (it may still try another account
    // until then).
    gate.add_permits(1);
    let res = proxy.get(Some("conv-1")).await;
    assert_eq!(served_by(&res), "a");
    let mut body = res.into_body();
    assert_eq!(next_data(&mut body).await, "chunk-1\n");
    for i in 2..=3 {
        // The upstream cannot send chunk i+1 before the gate opens again, so receiving
        // chunk i here shows the proxy passes each frame on as it arrives.
        gate.add_permits(1);
        assert_eq!(next_data(&mut body).await, format!("chunk-{i}\n"));
    }
    assert!(within("end", body.frame()).await.is_none());
}

// ---------------------------------------------------------------------------------------
// The binding table, end to end.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn request_during_pending_first_chunk_is_not_pinned_but_one_after_the_first_chunk_is() {
    let gate = Arc::new(Semaphore::new(0));
    let a = Account::start("a", Mode::Gated(gate.clone())).await;
    let b = Account::start("b", Mode::Status(404)).await;
    let c = Account::start("c", Mode::Stream).await;
    let proxy = Proxy::start(vec![a.upstream(), b.upstream(), c.upstream()]).await;

    // First request: a answers 200 and then holds its first chunk; the proxy holds the
    // response until that chunk arrives.
    let first = {
        let req = proxy.request(Some("conv-1")).body(Full::default()).unwrap();
        let client = proxy.client.clone();
        tokio::spawn(async move { client.request(req).await })
    };
    a.wait_seen(1).await;
    assert_eq!(proxy.bound("conv-1"), None, "bound before any data");

    // Second request while the first chunk is pending: not pinned, so round-robin (b).
    // b answers 404, which neither creates nor clears a binding.
    let (by, status, _) = proxy.get_all(Some("conv-1")).await;
    assert_eq!((by.as_str(), status), ("b", StatusCode::NOT_FOUND));
    assert_eq!(proxy.bound("conv-1"), None);

    // The first chunk arrives: the client has it, so the binding exists.
    gate.add_permits(1);
    let first = within("first head", first).await.unwrap().unwrap();
    assert_eq!(
        (served_by(&first), first.status()),
        ("a".into(), StatusCode::OK)
    );
    let mut body = first.into_body();
    assert_eq!(next_data(&mut body).await, "chunk-1\n");
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"));

    // A request sent now is pinned to a, though round-robin would pick c. (The gate is
    // shared: enough permits for the rest of both responses.)
    gate.add_permits(5);
    let third = proxy.get(Some("conv-1")).await;
    assert_eq!(served_by(&third), "a");

    within("first body", body.collect()).await.unwrap();
    within("third body", third.into_body().collect())
        .await
        .unwrap();
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"));
}

async fn failure_status_unbinds_and_the_session_moves_on(code: u16) {
    let (a, b, c) = three_accounts().await;
    let proxy = Proxy::start(vec![a.upstream(), b.upstream(), c.upstream()]).await;
    assert_eq!(proxy.get_all(Some("conv-1")).await.0, "a");
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"));

    a.set(Mode::Status(code));
    let (by, status, _) = proxy.get_all(Some("conv-1")).await;
    assert_eq!((by.as_str(), status.as_u16()), ("a", code));
    assert_eq!(proxy.bound("conv-1"), None);
    assert_eq!(proxy.stats.snapshot().cleared, 1);

    // Unbound: the next request goes round-robin (b) and binds there.
    let (by, status, _) = proxy.get_all(Some("conv-1")).await;
    assert_eq!((by.as_str(), status), ("b", StatusCode::OK));
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("b"));
}

#[tokio::test]
async fn status_429_unbinds_and_the_session_moves_to_the_next_account() {
    failure_status_unbinds_and_the_session_moves_on(429).await;
}

#[tokio::test]
async fn status_503_unbinds_and_the_session_moves_to_the_next_account() {
    failure_status_unbinds_and_the_session_moves_on(503).await;
}

#[tokio::test]
async fn failure_status_on_a_new_session_creates_no_binding() {
    let a = Account::start("a", Mode::Status(429)).await;
    let proxy = Proxy::start(vec![a.upstream()]).await;
    let (by, status, _) = proxy.get_all(Some("conv-1")).await;
    assert_eq!((by.as_str(), status), ("a", StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(proxy.bound("conv-1"), None);
}

#[tokio::test]
async fn neutral_status_keeps_the_binding_and_creates_none() {
    let (a, b, _c) = three_accounts().await;
    let proxy = Proxy::start(vec![a.upstream(), b.upstream()]).await;
    assert_eq!(proxy.get_all(Some("conv-1")).await.0, "a");

    a.set(Mode::Status(404));
    b.set(Mode::Status(404));
    let (by, status, _) = proxy.get_all(Some("conv-1")).await;
    assert_eq!((by.as_str(), status), ("a", StatusCode::NOT_FOUND));
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"));

    let (by, status, _) = proxy.get_all(Some("conv-2")).await;
    assert_eq!((by.as_str(), status), ("b", StatusCode::NOT_FOUND));
    assert_eq!(proxy.bound("conv-2"), None);
}

#[tokio::test]
async fn empty_stream_unbinds_and_binds_nothing() {
    let a = Account::start("a", Mode::Stream).await;
    let proxy = Proxy::start(vec![a.upstream()]).await;
    assert_eq!(proxy.get_all(Some("conv-1")).await.0, "a");
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"));

    a.set(Mode::Empty);
    // The proxy reads the first chunk before answering: an empty 200 is the account's
    // failure, answered 502 in its name.
    let (by, status, _) = proxy.get_all(Some("conv-1")).await;
    assert_eq!((by.as_str(), status), ("a", StatusCode::BAD_GATEWAY));
    assert_eq!(proxy.bound("conv-1"), None);

    let (_, status, _) = proxy.get_all(Some("conv-2")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(proxy.bound("conv-2"), None);
}

#[tokio::test]
async fn client_leaving_before_the_first_chunk_neither_binds_nor_unbinds() {
    let (abandoned_tx, mut abandoned) = mpsc::unbounded_channel();
    let a = Account::start("a", Mode::Stream).await;
    let proxy = Proxy::start(vec![a.upstream()]).await;
    assert_eq!(proxy.get_all(Some("conv-1")).await.0, "a");

    a.set(Mode::HoldUntilAbandoned(abandoned_tx));
    for (n, session) in [(2, "conv-1"), (3, "conv-2")] {
        // A client of its own, so that dropping the request closes its connection.
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let req = proxy.request(Some(session)).body(Full::default()).unwrap();
        let pending = tokio::spawn(async move { client.request(req).await });
        a.wait_seen(n).await;
        // The account has answered 200 and holds its first chunk; the client leaves.
        pending.abort();
        // The account learns that its reader went away only after the proxy dropped
        // the attempt: the sticky layer has made its decision by then.
        within("upstream abandoned", abandoned.recv())
            .await
            .unwrap();
    }
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"), "unbound");
    assert_eq!(proxy.bound("conv-2"), None, "bound without a single chunk");
}

#[tokio::test]
async fn no_content_success_binds_at_once() {
    let a = Account::start("a", Mode::NoContent).await;
    let proxy = Proxy::start(vec![a.upstream()]).await;
    let res = proxy.get(Some("conv-1")).await;
    assert_eq!(
        (served_by(&res), res.status()),
        ("a".into(), StatusCode::NO_CONTENT)
    );
    // Committed before the response head reached the client, no body needed.
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"));
}

#[tokio::test]
async fn upstream_closing_before_the_first_chunk_unbinds_and_the_client_sees_502() {
    let a = Account::start("a", Mode::Stream).await;
    let proxy = Proxy::start(vec![a.upstream()]).await;
    assert_eq!(proxy.get_all(Some("conv-1")).await.0, "a");

    a.set(Mode::CloseBeforeFirst);
    // No byte had reached the client: the proxy answers 502 in the account's name.
    let (by, status, _) = proxy.get_all(Some("conv-1")).await;
    assert_eq!((by.as_str(), status), ("a", StatusCode::BAD_GATEWAY));
    assert_eq!(proxy.bound("conv-1"), None);

    // A new session through the same failure binds nothing.
    let (_, status, _) = proxy.get_all(Some("conv-2")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(proxy.bound("conv-2"), None);
}

#[tokio::test]
async fn upstream_closing_mid_stream_keeps_the_binding_and_the_client_sees_no_clean_end() {
    let a = Account::start("a", Mode::CloseMidStream).await;
    let proxy = Proxy::start(vec![a.upstream()]).await;

    // A raw client, to see exactly what goes over the wire.
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(b"GET /v1/chat HTTP/1.1\r\nhost: proxy\r\nx-session-id: conv-1\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    // The proxy must close the connection: reading to the end terminates.
    let _ = within("connection close", conn.read_to_end(&mut raw)).await;
    let raw = String::from_utf8_lossy(&raw).to_lowercase();
    assert!(raw.starts_with("http/1.1 200 ok\r\n"), "{raw}");
    assert!(raw.contains("x-served-by: a\r\n"), "{raw}");
    assert!(raw.contains("transfer-encoding: chunked\r\n"), "{raw}");
    assert!(raw.contains("chunk-1\n"), "{raw}");
    assert!(
        !raw.ends_with("0\r\n\r\n"),
        "the broken stream ended with a clean chunked terminator: {raw:?}"
    );
    // The account sent data: the failure is the stream's, the binding stays.
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"));

    // Through a regular client: the first chunk, then an error.
    let res = proxy.get(Some("conv-1")).await;
    assert_eq!(served_by(&res), "a");
    let mut body = res.into_body();
    assert_eq!(next_data(&mut body).await, "chunk-1\n");
    let end = within("body end", body.collect()).await;
    assert!(
        end.is_err(),
        "the client saw a clean end of a broken stream"
    );
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"));
}

#[tokio::test]
async fn unreachable_account_answers_502_with_served_by_unbinds_and_cools_down() {
    let a = Account::start("a", Mode::Stream).await;
    let dead = Upstream::new("dead", &unreachable_url().await).unwrap();
    let proxy = Proxy::start(vec![a.upstream(), dead]).await;
    proxy.bind("conv-1", "dead").await;

    let (by, status, body) = proxy.get_all(Some("conv-1")).await;
    assert_eq!((by.as_str(), status), ("dead", StatusCode::BAD_GATEWAY));
    assert!(!body.is_empty());
    assert_eq!(proxy.bound("conv-1"), None);

    // The session moves on (round-robin: a) and binds there.
    assert_eq!(proxy.get_all(Some("conv-1")).await.0, "a");
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"));
    // The dead account cools down: round-robin skips it.
    for _ in 0..2 {
        let (by, status, _) = proxy.get_all(None).await;
        assert_eq!((by.as_str(), status), ("a", StatusCode::OK));
    }
}

#[tokio::test]
async fn account_closing_before_its_headers_answers_502_and_unbinds() {
    let a = Account::start("a", Mode::Stream).await;
    let proxy = Proxy::start(vec![a.upstream()]).await;
    assert_eq!(proxy.get_all(Some("conv-1")).await.0, "a");

    a.set(Mode::CloseBeforeHeaders);
    let (by, status, _) = proxy.get_all(Some("conv-1")).await;
    assert_eq!((by.as_str(), status), ("a", StatusCode::BAD_GATEWAY));
    assert_eq!(proxy.bound("conv-1"), None);
}

// ---------------------------------------------------------------------------------------
// Shutdown.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn graceful_shutdown_lets_an_open_stream_finish() {
    let gate = Arc::new(Semaphore::new(0));
    let a = Account::start("a", Mode::Gated(gate.clone())).await;
    let mut proxy = Proxy::start(vec![a.upstream()]).await;

    gate.add_permits(1);
    let res = proxy.get(Some("conv-1")).await;
    assert_eq!(served_by(&res), "a");
    proxy.stop.take().unwrap().send(()).unwrap();

    gate.add_permits(2);
    let body = within("body", res.into_body().collect())
        .await
        .expect("the open stream finishes cleanly")
        .to_bytes();
    assert_eq!(body, "chunk-1\nchunk-2\nchunk-3\n");
    let drained = within("server exit", &mut proxy.server).await.unwrap();
    assert_eq!(drained, Drained::Clean);
}
