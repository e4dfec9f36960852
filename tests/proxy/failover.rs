//! The example proxy's transparent failover, cooldown, timeouts and load-aware pins,
//! over real sockets against scripted upstream accounts (`tests/support/upstream.rs`).
//!
//! Timeouts are set short through the configuration so that the tests stay fast; no
//! assertion depends on timing beyond "this happened before the bound".

use crate::app;
use crate::harness;
use crate::support::upstream;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_sticky_session::{
    AuthId, BindingKey, SessionId, store::BindingStore, store::MemoryStore,
};

use app::{Drained, ProxyConfig, ServeConfig, Upstream};
use harness::Spawned;
use upstream::{Account, BOUND, Mode, unreachable_url, within};

struct Proxy {
    addr: SocketAddr,
    store: MemoryStore,
    client: Client<HttpConnector, Full<Bytes>>,
    _stop: oneshot::Sender<()>,
    server: JoinHandle<Drained>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Short timeouts for tests.
fn config(upstreams: Vec<Upstream>) -> ProxyConfig {
    let mut cfg = ProxyConfig::new(upstreams);
    cfg.failover.upstream_timeout = Duration::from_millis(300);
    cfg.failover.idle_timeout = Duration::from_millis(300);
    cfg
}

fn ups(accounts: &[&Account]) -> Vec<Upstream> {
    accounts
        .iter()
        .map(|a| Upstream::new(a.name, &a.url()).unwrap())
        .collect()
}

impl Proxy {
    async fn start(cfg: ProxyConfig) -> Self {
        let store = MemoryStore::new();
        let (Spawned { addr, stop, server }, _) = harness::start(&cfg, store.clone()).await;
        Self {
            addr,
            store,
            client: harness::client(),
            _stop: stop,
            server,
        }
    }

    fn req(&self, session: Option<&str>) -> http::request::Builder {
        harness::chat(Method::POST, self.addr, session)
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        harness::send(&self.client, req).await
    }

    /// (x-served-by, status, body) of a request with `session`.
    async fn get_all(&self, session: Option<&str>) -> (String, StatusCode, Bytes) {
        let res = self
            .send(self.req(session).body(Full::default()).unwrap())
            .await;
        let status = res.status();
        let by = served_by(&res);
        let body = within("body", res.into_body().collect())
            .await
            .expect("the body ends cleanly")
            .to_bytes();
        (by, status, body)
    }

    fn bound(&self, session: &str) -> Option<String> {
        self.store
            .get(&key(session))
            .map(|b| b.auth.as_str().to_owned())
    }

    async fn bind(&self, session: &str, account: &str) {
        self.store
            .commit(&key(session), &AuthId::from(account))
            .await
            .unwrap();
    }
}

fn key(session: &str) -> BindingKey {
    BindingKey::new(None, SessionId::new(session).unwrap())
}

fn served_by(res: &Response<Incoming>) -> String {
    res.headers()
        .get("x-served-by")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The pinned account fails with `mode`: the request is served by the next account, the
/// client sees only that success, and the session moves there.
async fn pinned_failure_fails_over(mode: Mode) {
    let a = Account::start("a", mode).await;
    let b = Account::start("b", Mode::Stream).await;
    let proxy = Proxy::start(config(ups(&[&a, &b]))).await;
    proxy.bind("conv-1", "a").await;

    let (by, status, body) = proxy.get_all(Some("conv-1")).await;
    assert_eq!((by.as_str(), status), ("b", StatusCode::OK));
    assert_eq!(body, "chunk-1\nchunk-2\nchunk-3\n");
    assert_eq!(a.count(), 1, "the pinned account was tried first");
    assert_eq!(b.count(), 1);
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("b"));
}

#[tokio::test]
async fn failover_on_429_serves_from_the_next_account_and_moves_the_session() {
    pinned_failure_fails_over(Mode::Status(429, None)).await;
}

#[tokio::test]
async fn failover_on_503_serves_from_the_next_account_and_moves_the_session() {
    pinned_failure_fails_over(Mode::Status(503, None)).await;
}

#[tokio::test]
async fn failover_on_an_empty_200_serves_from_the_next_account() {
    pinned_failure_fails_over(Mode::Empty).await;
}

#[tokio::test]
async fn failover_when_the_response_head_times_out() {
    pinned_failure_fails_over(Mode::Hang).await;
}

#[tokio::test]
async fn failover_when_the_first_chunk_times_out() {
    pinned_failure_fails_over(Mode::HeadThenHang).await;
}

#[tokio::test]
async fn failover_when_the_account_refuses_connections_and_it_cools_down() {
    let b = Account::start("b", Mode::Stream).await;
    let dead = Upstream::new("dead", &unreachable_url().await).unwrap();
    let mut upstreams = vec![dead];
    upstreams.extend(ups(&[&b]));
    let proxy = Proxy::start(config(upstreams)).await;
    proxy.bind("conv-1", "dead").await;

    let (by, status, _) = proxy.get_all(Some("conv-1")).await;
    assert_eq!((by.as_str(), status), ("b", StatusCode::OK));
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("b"));
    // Cooling down: round-robin skips it (it would be next for an unpinned request).
    for _ in 0..3 {
        assert_eq!(proxy.get_all(None).await.0, "b");
    }
    assert_eq!(b.count(), 4);
}

#[tokio::test]
async fn no_retry_once_a_response_byte_reached_the_client() {
    let a = Account::start("a", Mode::FirstThenBreak).await;
    let b = Account::start("b", Mode::Stream).await;
    let proxy = Proxy::start(config(ups(&[&a, &b]))).await;
    proxy.bind("conv-1", "a").await;

    let res = proxy
        .send(proxy.req(Some("conv-1")).body(Full::default()).unwrap())
        .await;
    assert_eq!(served_by(&res), "a");
    let mut body = res.into_body();
    let first = within("first chunk", body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "chunk-1\n");
    assert!(
        within("body end", body.collect()).await.is_err(),
        "the broken stream ended cleanly"
    );
    assert_eq!(b.count(), 0, "retried after the first byte");
    // The account had delivered: the binding stays.
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"));
}

#[tokio::test]
async fn every_attempt_failing_returns_the_last_answer_and_unbinds_the_pin() {
    let a = Account::start("a", Mode::Status(503, None)).await;
    let b = Account::start("b", Mode::Status(500, None)).await;
    let proxy = Proxy::start(config(ups(&[&a, &b]))).await;
    proxy.bind("conv-1", "a").await;

    let (by, status, body) = proxy.get_all(Some("conv-1")).await;
    assert_eq!(
        (by.as_str(), status),
        ("b", StatusCode::INTERNAL_SERVER_ERROR)
    );
    assert_eq!(body, "status 500 from b\n");
    // The layer judged b; the failed pin a was unbound by compare-and-delete.
    assert_eq!(proxy.bound("conv-1"), None);
}

#[tokio::test]
async fn every_attempt_timing_out_answers_504() {
    let a = Account::start("a", Mode::Hang).await;
    let b = Account::start("b", Mode::HeadThenHang).await;
    let proxy = Proxy::start(config(ups(&[&a, &b]))).await;
    let (by, status, _) = proxy.get_all(Some("conv-1")).await;
    assert_eq!((by.as_str(), status), ("b", StatusCode::GATEWAY_TIMEOUT));
    assert_eq!(proxy.bound("conv-1"), None);
}

#[tokio::test]
async fn attempts_flag_limits_the_accounts_tried() {
    let a = Account::start("a", Mode::Status(503, None)).await;
    let b = Account::start("b", Mode::Status(503, None)).await;
    let c = Account::start("c", Mode::Stream).await;
    let mut cfg = config(ups(&[&a, &b, &c]));
    cfg.failover.attempts = 2;
    let proxy = Proxy::start(cfg).await;
    let (by, status, _) = proxy.get_all(None).await;
    assert_eq!(
        (by.as_str(), status),
        ("b", StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(c.count(), 0);
}

#[tokio::test]
async fn request_body_is_replayed_byte_for_byte_on_the_next_account() {
    replayed_byte_for_byte(true).await;
}

#[tokio::test]
async fn request_body_is_replayed_byte_for_byte_without_the_body_session_reader() {
    replayed_byte_for_byte(false).await;
}

/// Account `a` answers 429 and `b` echoes the request, behind a proxy with or without
/// the JSON body reader: what `b` sends back is what the proxy replayed.
async fn refused_then_echoed(body_session: bool) -> (Account, Account, Proxy) {
    let a = Account::start("a", Mode::Status(429, None)).await;
    let b = Account::start("b", Mode::Echo).await;
    let mut cfg = config(ups(&[&a, &b]));
    cfg.body_session = body_session;
    let proxy = Proxy::start(cfg).await;
    (a, b, proxy)
}

async fn replayed_byte_for_byte(body_session: bool) {
    let (a, b, proxy) = refused_then_echoed(body_session).await;
    let mut payload = br#"{"model":"m","prompt_cache_key":"conv-9","input":""#.to_vec();
    payload.extend(std::iter::repeat_n(b'x', 100_000));
    payload.extend_from_slice(br#""}"#);
    let payload = Bytes::from(payload);
    let res = proxy
        .send(proxy.req(None).body(Full::new(payload.clone())).unwrap())
        .await;
    assert_eq!(
        (served_by(&res), res.status()),
        ("b".into(), StatusCode::OK)
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, payload);
    assert_eq!(a.seen()[0].body, payload);
    assert_eq!(b.seen()[0].body, payload);
}

/// The same over HTTP/2, with a body the client streams in several frames: the replay
/// buffer gathers them (without the JSON reader, frame by frame) and the next account
/// gets every byte in order.
#[tokio::test]
async fn streamed_http2_request_body_is_replayed_byte_for_byte_on_the_next_account() {
    streamed_http2_replayed(true).await;
}

#[tokio::test]
async fn streamed_http2_request_body_is_replayed_byte_for_byte_without_the_body_session_reader() {
    streamed_http2_replayed(false).await;
}

async fn streamed_http2_replayed(body_session: bool) {
    use http_body::Frame;
    use http_body_util::StreamBody;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_stream::wrappers::ReceiverStream;

    let (a, b, proxy) = refused_then_echoed(body_session).await;
    // Four frames, the JSON split across them.
    let frames: Vec<Bytes> = vec![
        Bytes::from_static(br#"{"model":"m","prompt_cache_key":"conv-"#),
        Bytes::from_static(br#"h2","input":""#),
        Bytes::from(vec![b'y'; 50_000]),
        Bytes::from_static(br#""}"#),
    ];
    let payload: Bytes = frames.concat().into();

    let tcp = within("connect", TcpStream::connect(proxy.addr))
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    let req = proxy
        .req(None)
        .header("content-type", "application/json")
        .body(StreamBody::new(ReceiverStream::new(rx)))
        .unwrap();
    let feeder = tokio::spawn(async move {
        for f in frames {
            tx.send(Ok(Frame::data(f))).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let res = within("response head", send.send_request(req))
        .await
        .unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(
        (served_by(&res), res.status()),
        ("b".into(), StatusCode::OK)
    );
    let body = within("body", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, payload);
    assert_eq!(a.seen()[0].body, payload);
    assert_eq!(b.seen()[0].body, payload);
    feeder.await.unwrap();
    conn.abort();
}

#[tokio::test]
async fn body_over_max_body_buffer_gets_one_attempt_and_arrives_whole() {
    let a = Account::start("a", Mode::Echo).await;
    let b = Account::start("b", Mode::Echo).await;
    let mut cfg = config(ups(&[&a, &b]));
    cfg.failover.max_body_buffer = 1000;
    let proxy = Proxy::start(cfg).await;
    // 20 MiB, over the limit: streamed through, byte for byte.
    let payload = Bytes::from(
        (0..20 << 20)
            .map(|i: u32| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let res = proxy
        .send(proxy.req(None).body(Full::new(payload.clone())).unwrap())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), payload);

    // Over the limit and failing: one attempt, the client gets the account's answer.
    a.set(Mode::Status(503, None));
    b.set(Mode::Status(503, None));
    let res = proxy
        .send(proxy.req(None).body(Full::new(payload.clone())).unwrap())
        .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        a.count() + b.count(),
        2,
        "retried a body it could not replay"
    );
}

#[tokio::test]
async fn cooldown_honours_retry_after_for_pins_and_round_robin() {
    let a = Account::start("a", Mode::Status(429, Some("1"))).await;
    let b = Account::start("b", Mode::Stream).await;
    let mut cfg = config(ups(&[&a, &b]));
    cfg.failover.cooldown = Duration::from_secs(3600);
    let proxy = Proxy::start(cfg).await;
    proxy.bind("conv-1", "a").await;

    assert_eq!(proxy.get_all(Some("conv-1")).await.0, "b");
    a.set(Mode::Stream);
    // Pinned elsewhere now; a new pin to a is not honoured while a cools down.
    proxy.bind("conv-2", "a").await;
    assert_eq!(proxy.get_all(Some("conv-2")).await.0, "b");
    for _ in 0..2 {
        assert_eq!(proxy.get_all(None).await.0, "b");
    }
    assert_eq!(a.count(), 1);
    // retry-after: 1 (not the hour of --cooldown): a serves again afterwards.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    proxy.bind("conv-3", "a").await;
    assert_eq!(proxy.get_all(Some("conv-3")).await.0, "a");
}

#[test]
fn retry_after_reads_seconds_and_http_dates() {
    use app::cooldown::{parse_imf_fixdate, retry_after};
    let epoch = |s| UNIX_EPOCH + Duration::from_secs(s);
    assert_eq!(
        parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT"),
        Some(epoch(784_111_777))
    );
    assert_eq!(
        parse_imf_fixdate("Tue, 29 Feb 2028 00:00:00 GMT"),
        Some(epoch(1_835_395_200))
    );
    assert_eq!(parse_imf_fixdate("Sunday, 06-Nov-94 08:49:37 GMT"), None);
    let mut h = http::HeaderMap::new();
    h.insert("retry-after", "7".parse().unwrap());
    assert_eq!(
        retry_after(&h, SystemTime::now()),
        Some(Duration::from_secs(7))
    );
    h.insert(
        "retry-after",
        "Sun, 06 Nov 1994 08:50:07 GMT".parse().unwrap(),
    );
    assert_eq!(
        retry_after(&h, epoch(784_111_777)),
        Some(Duration::from_secs(30))
    );
    h.insert("retry-after", "soon".parse().unwrap());
    assert_eq!(retry_after(&h, SystemTime::now()), None);
}

#[tokio::test]
async fn idle_timeout_ends_the_stream_with_an_error_and_keeps_the_binding() {
    let a = Account::start("a", Mode::FirstThenHang).await;
    let proxy = Proxy::start(config(ups(&[&a]))).await;
    let res = proxy
        .send(proxy.req(Some("conv-1")).body(Full::default()).unwrap())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let first = within("first", body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "chunk-1\n");
    assert!(within("idle end", body.collect()).await.is_err());
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"));
}

/// `--idle-timeout` bounds the silence between the upstream's frames, not the answer:
/// events each within it, over several times it in all, all reach the client and the
/// stream ends cleanly (the timer counts from the last frame handed on, and a body that
/// waits builds it only then).
#[tokio::test]
async fn an_answer_longer_than_the_idle_timeout_whose_events_each_come_within_it_is_whole() {
    let a = Account::start(
        "a",
        Mode::Sse {
            chunks: 8,
            gap: Duration::from_millis(120),
        },
    )
    .await;
    // 300 ms idle timeout (config), about 1 s of events.
    let proxy = Proxy::start(config(ups(&[&a]))).await;
    let started = std::time::Instant::now();
    let res = proxy
        .send(proxy.req(Some("conv-1")).body(Full::default()).unwrap())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = within("whole answer", res.into_body().collect())
        .await
        .expect("no idle timeout between events 120 ms apart")
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    for i in 1..=8 {
        assert!(
            text.contains(&format!("data: {i}\n\n")),
            "event {i}: {text}"
        );
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        started.elapsed() > Duration::from_millis(600),
        "the answer outlasted the idle timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"));
}

#[tokio::test]
async fn malformed_chunked_request_body_gets_400_and_clears_nothing() {
    let a = Account::start("a", Mode::Echo).await;
    let proxy = Proxy::start(config(ups(&[&a]))).await;
    proxy.bind("conv-1", "a").await;

    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(
        b"POST /v1/chat HTTP/1.1\r\nhost: p\r\nx-session-id: conv-1\r\n\
          transfer-encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ\r\n",
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    let _ = within("answer", conn.read_to_end(&mut raw)).await;
    let raw = String::from_utf8_lossy(&raw).to_lowercase();
    assert!(raw.starts_with("http/1.1 400"), "{raw}");
    assert!(!raw.contains("x-served-by"), "{raw}");
    assert_eq!(a.count(), 0, "a broken body was forwarded");
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"));
}

/// A client that sends its request head and part of its body, then nothing (but keeps
/// the connection open), is answered 400 once `--idle-timeout` passes without a body frame
/// — with and without the JSON-body reader in front — and no binding is touched.
#[tokio::test]
async fn request_body_that_stalls_past_the_idle_timeout_gets_400_and_clears_nothing() {
    for body_session in [true, false] {
        let a = Account::start("a", Mode::Echo).await;
        let mut cfg = config(ups(&[&a]));
        cfg.body_session = body_session;
        let proxy = Proxy::start(cfg).await;
        proxy.bind("conv-1", "a").await;

        let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
        conn.write_all(
            b"POST /v1/chat HTTP/1.1\r\nhost: p\r\nx-session-id: conv-1\r\n\
              content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":",
        )
        .await
        .unwrap();
        // The write side stays open: only the idle timeout can end the wait.
        let mut raw = Vec::new();
        let _ = within("answer", conn.read_to_end(&mut raw)).await;
        let raw = String::from_utf8_lossy(&raw).to_lowercase();
        assert!(
            raw.starts_with("http/1.1 400"),
            "body_session={body_session}: {raw}"
        );
        assert!(!raw.contains("x-served-by"), "{raw}");
        assert_eq!(a.count(), 0, "a stalled body was forwarded");
        assert_eq!(proxy.bound("conv-1").as_deref(), Some("a"));
    }
}

#[tokio::test]
async fn overloaded_pin_moves_to_the_least_loaded_account() {
    let a = Account::start("a", Mode::FirstThenHang).await;
    let b = Account::start("b", Mode::Stream).await;
    let mut cfg = config(ups(&[&a, &b]));
    cfg.failover.idle_timeout = BOUND;
    cfg.max_load_factor = Some(1.0);
    let proxy = Proxy::start(cfg).await;
    // Three streams held open on a (each has its first chunk).
    let mut open = Vec::new();
    for i in 0..3 {
        proxy.bind(&format!("held-{i}"), "a").await;
        let res = proxy
            .send(
                proxy
                    .req(Some(&format!("held-{i}")))
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
        assert_eq!(served_by(&res), "a");
        open.push(res);
    }
    // a: 3 in flight, b: 0; mean 1.5, 3 > 1.0 × 1.5 + 1: the pin is not honoured.
    proxy.bind("conv-1", "a").await;
    let (by, status, _) = proxy.get_all(Some("conv-1")).await;
    assert_eq!((by.as_str(), status), ("b", StatusCode::OK));
    assert_eq!(proxy.bound("conv-1").as_deref(), Some("b"));
    drop(open);
}

#[tokio::test]
async fn hard_pin_is_never_retried_elsewhere() {
    use tower::ServiceExt;
    let a = Account::start("a", Mode::Status(503, None)).await;
    let b = Account::start("b", Mode::Stream).await;
    let cfg = config(ups(&[&a, &b]));
    let built = app::build(&cfg, MemoryStore::new()).unwrap();
    // What the sticky layer does for a learned response id: pin, hard.
    let svc = built.service.map_request(|mut req: Request<Incoming>| {
        req.extensions_mut()
            .insert(tower_sticky_session::PinnedAuth(AuthId::from("a")));
        req.extensions_mut().insert(tower_sticky_session::HardPin);
        req
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(app::serve(
        listener,
        svc,
        std::future::pending(),
        ServeConfig::new(BOUND),
    ));
    let client = harness::client();
    let res = within(
        "head",
        client.request(
            Request::post(format!("http://{addr}/v1/responses"))
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        (served_by(&res), res.status()),
        ("a".into(), StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(b.count(), 0);
    server.abort();
}

#[tokio::test]
async fn account_key_replaces_the_client_credentials_and_reaches_only_its_account() {
    use http::{HeaderName, HeaderValue};
    let a = Account::start("a", Mode::Stream).await;
    let b = Account::start("b", Mode::Stream).await;
    let mut key = HeaderValue::from_static("Bearer sk-a-only");
    key.set_sensitive(true);
    let upstreams = vec![
        Upstream::new("a", &a.url())
            .unwrap()
            .with_key((HeaderName::from_static("authorization"), key)),
        Upstream::new("b", &b.url()).unwrap(),
    ];
    let proxy = Proxy::start(config(upstreams)).await;
    for _ in 0..2 {
        let req = proxy
            .req(None)
            .header("authorization", "Bearer client-own")
            .header("x-api-key", "client-x")
            .body(Full::default())
            .unwrap();
        let res = proxy.send(req).await;
        assert_eq!(res.status(), StatusCode::OK);
        res.into_body().collect().await.unwrap();
    }
    let seen_a = &a.seen()[0].headers;
    assert_eq!(seen_a.get_all("authorization").iter().count(), 1);
    assert_eq!(seen_a["authorization"], "Bearer sk-a-only");
    assert!(seen_a.get("x-api-key").is_none());
    // b has no key: the client's own credentials pass through, a's key does not.
    let seen_b = &b.seen()[0].headers;
    assert_eq!(seen_b["authorization"], "Bearer client-own");
    assert_eq!(seen_b["x-api-key"], "client-x");
}

/// POST `body` as JSON; (x-served-by, status).
async fn post_json(proxy: &Proxy, body: &'static str) -> (String, StatusCode) {
    let req = proxy
        .req(None)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let res = proxy.send(req).await;
    let (by, status) = (served_by(&res), res.status());
    within("body", res.into_body().collect()).await.unwrap();
    (by, status)
}

#[tokio::test]
async fn session_field_in_the_json_body_keeps_its_account() {
    let a = Account::start("a", Mode::Stream).await;
    let b = Account::start("b", Mode::Stream).await;
    let proxy = Proxy::start(config(ups(&[&a, &b]))).await;
    let body = r#"{"model":"gpt-5","prompt_cache_key":"019a-codex-thread","input":"hi"}"#;
    for _ in 0..3 {
        assert_eq!(post_json(&proxy, body).await, ("a".into(), StatusCode::OK));
    }
    assert_eq!(proxy.bound("019a-codex-thread").as_deref(), Some("a"));
    // Without the body reader the field is not read: round-robin.
    let mut cfg = config(ups(&[&a, &b]));
    cfg.body_session = false;
    let proxy = Proxy::start(cfg).await;
    assert_eq!(post_json(&proxy, body).await.0, "a");
    assert_eq!(post_json(&proxy, body).await.0, "b");
}

#[tokio::test]
async fn learned_response_id_pins_hard_to_its_account_without_failover() {
    let a = Account::start(
        "a",
        Mode::Json(r#"{"id":"resp_0a1b2c","object":"response"}"#),
    )
    .await;
    let b = Account::start(
        "b",
        Mode::Json(r#"{"id":"resp_9z8y7x","object":"response"}"#),
    )
    .await;
    let proxy = Proxy::start(config(ups(&[&a, &b]))).await;
    // A first response, created by a (round-robin).
    let first = r#"{"model":"gpt-5","input":"hi"}"#;
    assert_eq!(post_json(&proxy, first).await, ("a".into(), StatusCode::OK));
    // Its continuation goes to a, though round-robin would pick b.
    let next = r#"{"model":"gpt-5","previous_response_id":"resp_0a1b2c","input":"more"}"#;
    assert_eq!(post_json(&proxy, next).await, ("a".into(), StatusCode::OK));
    assert_eq!(b.count(), 0);
    // a fails: the chain cannot move, the client gets a's answer and b is not tried.
    a.set(Mode::Status(503, None));
    assert_eq!(
        post_json(&proxy, next).await,
        ("a".into(), StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(b.count(), 0);
    // An unknown id falls back to the usual routing, with failover.
    let unknown = r#"{"model":"gpt-5","previous_response_id":"resp_unknown","input":"x"}"#;
    assert_eq!(
        post_json(&proxy, unknown).await,
        ("b".into(), StatusCode::OK)
    );
}
