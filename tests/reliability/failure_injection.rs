//! Failure injection end to end: client → hyper server → [`StickySessionLayer`] →
//! forwarding account picker → hyper client → a scripted upstream on a raw TCP socket.
//!
//! The upstream writes exactly the bytes each test asks for — a 429/500/503, a stream
//! that ends before any data, a connection reset before or after the first chunk, a first
//! chunk held back until the test releases it — and reports when the proxy hangs up on
//! it. The client disconnects before or after the first chunk; an account whose upstream
//! refuses connections makes the forwarder return an error. Each case checks the binding
//! against the behaviour table in the crate docs at the point the client can observe the outcome. Waits are
//! on events (channels, sockets), never on sleeps; timeouts are hang guards only.

use crate::support::scripted;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tower::{Service, ServiceBuilder};
use tower_sticky_session::store::BindingStore;
use tower_sticky_session::store::MemoryStore;
use tower_sticky_session::*;

use scripted::{Client, TestBody, client, serve};

const LIMIT: Duration = Duration::from_secs(10);

async fn guard<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what}"))
}

/// One step of the upstream's answer.
enum Step {
    Write(Vec<u8>),
    /// Wait until the test releases the next step.
    Wait(oneshot::Receiver<()>),
    /// Abort the connection with a TCP reset.
    Reset,
    /// Keep the connection open until the proxy closes it, then report it.
    AwaitHangUp(oneshot::Sender<()>),
    /// Tell the test that the script got this far.
    Reached(oneshot::Sender<()>),
}

/// The scripted upstream: each accepted connection reads one request head and plays the
/// next script.
#[derive(Clone)]
struct Upstream {
    addr: SocketAddr,
    scripts: Arc<Mutex<VecDeque<Vec<Step>>>>,
}

impl Upstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream {
            addr: listener.local_addr().unwrap(),
            scripts: Arc::default(),
        };
        let scripts = up.scripts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let scripts = scripts.clone();
                tokio::spawn(play(stream, scripts));
            }
        });
        up
    }

    fn script(&self, steps: Vec<Step>) {
        self.scripts.lock().unwrap().push_back(steps);
    }
}

async fn play(mut stream: TcpStream, scripts: Arc<Mutex<VecDeque<Vec<Step>>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let steps = scripts
        .lock()
        .unwrap()
        .pop_front()
        .expect("a script for every upstream request");
    for step in steps {
        match step {
            Step::Write(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
            }
            Step::Wait(rx) => {
                let _ = rx.await;
            }
            Step::Reset => {
                // SO_LINGER 0: close() sends RST (does not block with a zero timeout).
                #[allow(deprecated)]
                stream.set_linger(Some(Duration::ZERO)).unwrap();
                drop(stream);
                return;
            }
            Step::Reached(tx) => {
                let _ = tx.send(());
            }
            Step::AwaitHangUp(tx) => {
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let _ = tx.send(());
                return;
            }
        }
    }
}

fn status(code: u16, body: &str) -> Step {
    Step::Write(
        format!(
            "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn stream_head() -> Step {
    Step::Write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\
          connection: close\r\n\r\n"
            .to_vec(),
    )
}

fn chunk(data: &str) -> Step {
    Step::Write(format!("{:x}\r\n{data}\r\n", data.len()).into_bytes())
}

fn end_chunks() -> Step {
    Step::Write(b"0\r\n\r\n".to_vec())
}

/// The proxy's account picker and forwarder: honours the pin when it knows the account,
/// otherwise rotates; forwards to the account's upstream; reports `ServedBy`. A connect
/// failure is returned as the inner service's error.
#[derive(Clone)]
struct Forwarder {
    accounts: Arc<Vec<(AuthId, SocketAddr)>>,
    next: Arc<AtomicUsize>,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Empty<Bytes>,
    >,
}

impl Forwarder {
    fn pick(&self, pinned: Option<&AuthId>) -> (AuthId, SocketAddr) {
        if let Some(a) = pinned.and_then(|p| self.accounts.iter().find(|(a, _)| a == p)) {
            return a.clone();
        }
        // Rotation over the live accounts (the first entry is the dead one, if any,
        // and is only ever used through a pin).
        let live: Vec<_> = self
            .accounts
            .iter()
            .filter(|(a, _)| a.as_str() != "acct-dead")
            .collect();
        live[self.next.fetch_add(1, Ordering::Relaxed) % live.len()].clone()
    }
}

impl Service<Request<hyper::body::Incoming>> for Forwarder {
    type Response = Response<TestBody>;
    type Error = io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<TestBody>, io::Error>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<hyper::body::Incoming>) -> Self::Future {
        let pinned = req.extensions().get::<PinnedAuth>().map(|p| p.0.clone());
        let (account, addr) = self.pick(pinned.as_ref());
        let http = self.http.clone();
        let method = req.method().clone();
        Box::pin(async move {
            let up = Request::builder()
                .method(method)
                .uri(format!("http://{addr}/v1/responses"))
                .body(Empty::new())
                .unwrap();
            let res = http.request(up).await.map_err(io::Error::other)?;
            let (mut parts, body) = res.into_parts();
            parts
                .headers
                .insert("x-served-by", account.as_str().parse().unwrap());
            if let Some(p) = &pinned {
                parts
                    .headers
                    .insert("x-pinned", p.as_str().parse().unwrap());
            }
            parts.extensions.insert(ServedBy(account));
            Ok(Response::from_parts(
                parts,
                body.map_err(io::Error::other).boxed(),
            ))
        })
    }
}

struct Env {
    upstream: Upstream,
    proxy: SocketAddr,
    client: Client,
    store: MemoryStore,
    stats: Stats,
}

const SESSION: &str = "conv-e2e";

impl Env {
    async fn start() -> Self {
        let upstream = Upstream::start().await;
        // An account whose upstream refuses connections.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let accounts = vec![
            (AuthId::from("acct-dead"), dead_addr),
            (AuthId::from("acct-a"), upstream.addr),
            (AuthId::from("acct-b"), upstream.addr),
            (AuthId::from("acct-c"), upstream.addr),
        ];
        let forwarder = Forwarder {
            accounts: Arc::new(accounts),
            next: Arc::default(),
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
        };
        let layer = StickySessionLayer::new();
        let (store, stats) = (layer.store().clone(), layer.stats());
        let proxy = serve(ServiceBuilder::new().layer(layer).service(forwarder)).await;
        Env {
            upstream,
            proxy,
            client: client(),
            store,
            stats,
        }
    }

    fn key(&self) -> BindingKey {
        BindingKey::new(None, SessionId::new(SESSION).unwrap())
    }

    fn bound(&self) -> Option<String> {
        self.store
            .get(&self.key())
            .map(|b| b.auth.as_str().to_owned())
    }

    async fn bind(&self, account: &str) {
        self.store
            .commit(&self.key(), &AuthId::from(account))
            .await
            .unwrap();
    }

    async fn send(&self) -> Result<Response<hyper::body::Incoming>, String> {
        let req = Request::get(format!("http://{}/v1/responses", self.proxy))
            .header("sticky-session-id", SESSION)
            .body(Empty::new())
            .unwrap();
        guard("response head", self.client.request(req))
            .await
            .map_err(|e| e.to_string())
    }

    /// A complete successful streamed request; returns the account that served it.
    async fn serve_ok(&self) -> String {
        self.upstream
            .script(vec![stream_head(), chunk("data: ok\n\n"), end_chunks()]);
        let res = self.send().await.unwrap();
        let served = served_by(&res);
        guard("body", res.into_body().collect()).await.unwrap();
        served
    }
}

fn served_by<B>(res: &Response<B>) -> String {
    res.headers()["x-served-by"].to_str().unwrap().to_owned()
}

fn pinned<B>(res: &Response<B>) -> Option<String> {
    res.headers()
        .get("x-pinned")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn upstream_429_500_503_clear_the_binding_before_the_client_sees_them() {
    for code in [429u16, 500, 503] {
        let env = Env::start().await;
        env.bind("acct-b").await;
        env.upstream.script(vec![status(code, "try later")]);
        let res = env.send().await.unwrap();
        assert_eq!(pinned(&res).as_deref(), Some("acct-b"));
        assert_eq!(res.status().as_u16(), code);
        // Cleared by the time the client holds the status: its retry is not pinned again.
        assert_eq!(env.bound(), None, "status {code}");
        assert_eq!(
            guard("body", res.into_body().collect())
                .await
                .unwrap()
                .to_bytes(),
            "try later"
        );
        let s = env.stats.snapshot();
        assert_eq!(s.clear_attempts(ClearReason::FailureStatus), 1);
        assert_eq!(s.cleared, 1);
        // The retry lands on whatever the picker chooses, and binds it.
        let served = env.serve_ok().await;
        assert_eq!(env.bound(), Some(served));
    }
}

#[tokio::test]
async fn upstream_failure_status_never_creates_a_binding() {
    let env = Env::start().await;
    env.upstream.script(vec![status(503, "")]);
    let res = env.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    guard("body", res.into_body().collect()).await.unwrap();
    assert_eq!(env.bound(), None);
    assert_eq!(env.stats.snapshot().commits, 0);
}

#[tokio::test]
async fn upstream_neutral_404_keeps_the_binding() {
    let env = Env::start().await;
    env.bind("acct-c").await;
    env.upstream.script(vec![status(404, "no such model")]);
    let res = env.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    guard("body", res.into_body().collect()).await.unwrap();
    assert_eq!(env.bound().as_deref(), Some("acct-c"));
}

#[tokio::test]
async fn upstream_empty_stream_clears_the_binding() {
    let env = Env::start().await;
    env.bind("acct-a").await;
    // 200, chunked, and the terminating chunk at once: no data at all.
    env.upstream.script(vec![stream_head(), end_chunks()]);
    let res = env.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(pinned(&res).as_deref(), Some("acct-a"));
    let body = guard("body", res.into_body().collect()).await.unwrap();
    assert!(body.to_bytes().is_empty());
    assert_eq!(env.bound(), None);
    assert_eq!(
        env.stats
            .snapshot()
            .clear_attempts(ClearReason::EmptyStream),
        1
    );
}

#[tokio::test]
async fn upstream_content_length_zero_success_commits_at_once() {
    let env = Env::start().await;
    env.upstream.script(vec![status(200, "")]);
    let res = env.send().await.unwrap();
    let served = served_by(&res);
    // A body known to be empty has proved all it will: bound before the head arrives.
    assert_eq!(env.bound(), Some(served));
    guard("body", res.into_body().collect()).await.unwrap();
}

#[tokio::test]
async fn head_request_success_commits_at_once() {
    let env = Env::start().await;
    // A HEAD response announces a length but carries no body: hyper's client body for it
    // is known empty.
    env.upstream.script(vec![Step::Write(
        b"HTTP/1.1 200 OK\r\ncontent-length: 42\r\nconnection: close\r\n\r\n".to_vec(),
    )]);
    let req = Request::head(format!("http://{}/v1/responses", env.proxy))
        .header("sticky-session-id", SESSION)
        .body(Empty::new())
        .unwrap();
    let res = guard("head", env.client.request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let served = served_by(&res);
    assert_eq!(env.bound(), Some(served));
    assert!(
        guard("body", res.into_body().collect())
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    assert_eq!(env.stats.snapshot().commits, 1);
}

#[tokio::test]
async fn upstream_reset_before_first_chunk_clears_the_binding() {
    let env = Env::start().await;
    env.bind("acct-b").await;
    // The reset waits until the head has reached the client (a reset that overtakes
    // the head would be a failed request, the inner-error row, not this one).
    let (release, gate) = oneshot::channel();
    env.upstream
        .script(vec![stream_head(), Step::Wait(gate), Step::Reset]);
    let res = env.send().await.unwrap();
    assert_eq!(pinned(&res).as_deref(), Some("acct-b"));
    assert_eq!(
        env.bound().as_deref(),
        Some("acct-b"),
        "the head alone changes nothing"
    );
    release.send(()).unwrap();
    let err = guard("body", res.into_body().collect()).await;
    assert!(err.is_err(), "the client sees the broken stream");
    assert_eq!(env.bound(), None);
    assert_eq!(
        env.stats
            .snapshot()
            .clear_attempts(ClearReason::StreamError),
        1
    );
}

#[tokio::test]
async fn upstream_reset_mid_stream_keeps_the_binding() {
    let env = Env::start().await;
    let (release, gate) = oneshot::channel();
    env.upstream.script(vec![
        stream_head(),
        chunk("data: partial\n\n"),
        Step::Wait(gate),
        Step::Reset,
    ]);
    let res = env.send().await.unwrap();
    let served = served_by(&res);
    let mut body = res.into_body();
    let first = guard("first chunk", body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: partial\n\n");
    assert_eq!(env.bound().as_deref(), Some(served.as_str()));
    release.send(()).unwrap();
    let rest = guard("rest", body.collect()).await;
    assert!(rest.is_err(), "the client sees the broken stream");
    // The account delivered; the failure is the stream's.
    assert_eq!(env.bound(), Some(served));
    assert_eq!(env.stats.snapshot().cleared, 0);
}

#[tokio::test]
async fn slow_first_chunk_binds_only_when_the_chunk_arrives() {
    let env = Env::start().await;
    let (release, gate) = oneshot::channel();
    env.upstream.script(vec![
        stream_head(),
        Step::Wait(gate),
        chunk("data: late\n\n"),
        end_chunks(),
    ]);
    let res = env.send().await.unwrap();
    let served = served_by(&res);
    // The head is here, the first chunk is not: nothing is bound, so a second request of
    // the session now is not pinned.
    assert_eq!(env.bound(), None);
    let second = env.serve_ok().await;
    assert_ne!(second, served, "the picker rotated: no pin was applied");
    assert_eq!(env.bound().as_deref(), Some(second.as_str()));
    // The slow upstream's first chunk arrives: its account is bound from then on.
    release.send(()).unwrap();
    let mut body = res.into_body();
    let first = guard("first chunk", body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: late\n\n");
    assert_eq!(env.bound(), Some(served));
    guard("rest", body.collect()).await.unwrap();
}

#[tokio::test]
async fn client_disconnect_before_first_chunk_leaves_the_binding_alone() {
    let env = Env::start().await;
    env.bind("acct-c").await;
    let (hung_up, proxy_gone) = oneshot::channel();
    env.upstream
        .script(vec![stream_head(), Step::AwaitHangUp(hung_up)]);
    let res = env.send().await.unwrap();
    assert_eq!(pinned(&res).as_deref(), Some("acct-c"));
    drop(res); // the client goes away before any data
    // The proxy notices and hangs up on the upstream (dropping the layer's body).
    guard("proxy hangs up on the upstream", proxy_gone)
        .await
        .unwrap();
    assert_eq!(env.bound().as_deref(), Some("acct-c"));
    let s = env.stats.snapshot();
    assert_eq!((s.commits, s.cleared), (0, 0));
    assert_eq!(s.clear_attempts_total(), 0);
}

#[tokio::test]
async fn client_disconnect_before_first_chunk_creates_no_binding() {
    let env = Env::start().await;
    let (hung_up, proxy_gone) = oneshot::channel();
    env.upstream
        .script(vec![stream_head(), Step::AwaitHangUp(hung_up)]);
    let res = env.send().await.unwrap();
    drop(res);
    guard("proxy hangs up on the upstream", proxy_gone)
        .await
        .unwrap();
    assert_eq!(env.bound(), None);
    assert_eq!(env.stats.snapshot().commits, 0);
}

#[tokio::test]
async fn client_disconnect_before_the_response_head_leaves_the_binding_alone() {
    let env = Env::start().await;
    env.bind("acct-b").await;
    let (reached, upstream_has_request) = oneshot::channel();
    let (hung_up, proxy_gone) = oneshot::channel();
    env.upstream
        .script(vec![Step::Reached(reached), Step::AwaitHangUp(hung_up)]);
    let pending = tokio::spawn({
        let (client, proxy) = (env.client.clone(), env.proxy);
        async move {
            let req = Request::get(format!("http://{proxy}/v1/responses"))
                .header("sticky-session-id", SESSION)
                .body(Empty::new())
                .unwrap();
            let _ = client.request(req).await;
        }
    });
    // The request is at the upstream, which has not answered: the client gives up.
    guard("request reaches the upstream", upstream_has_request)
        .await
        .unwrap();
    pending.abort();
    guard("proxy hangs up on the upstream", proxy_gone)
        .await
        .unwrap();
    assert_eq!(env.bound().as_deref(), Some("acct-b"));
    let s = env.stats.snapshot();
    assert_eq!((s.commits, s.cleared), (0, 0));
    assert_eq!(s.clear_attempts_total(), 0);
}

#[tokio::test]
async fn client_disconnect_after_first_chunk_keeps_the_committed_binding() {
    let env = Env::start().await;
    let (hung_up, proxy_gone) = oneshot::channel();
    env.upstream.script(vec![
        stream_head(),
        chunk("data: first\n\n"),
        Step::AwaitHangUp(hung_up),
    ]);
    let res = env.send().await.unwrap();
    let served = served_by(&res);
    let mut body = res.into_body();
    guard("first chunk", body.frame()).await.unwrap().unwrap();
    assert_eq!(env.bound().as_deref(), Some(served.as_str()));
    drop(body);
    guard("proxy hangs up on the upstream", proxy_gone)
        .await
        .unwrap();
    assert_eq!(env.bound(), Some(served));
    assert_eq!(env.stats.snapshot().cleared, 0);
}

#[tokio::test]
async fn inner_service_error_clears_the_pinned_account_and_the_session_fails_over() {
    let env = Env::start().await;
    env.bind("acct-dead").await;
    // The pinned account's upstream refuses the connection: the forwarder errors, and
    // hyper closes the client's connection without a response.
    let res = env.send().await;
    assert!(res.is_err(), "no response for an inner error");
    assert_eq!(env.bound(), None);
    let s = env.stats.snapshot();
    assert_eq!(s.clear_attempts(ClearReason::InnerError), 1);
    assert_eq!(s.cleared, 1);
    // The next request is not pinned to the dead account; it binds a live one.
    let served = env.serve_ok().await;
    assert_ne!(served, "acct-dead");
    assert_eq!(env.bound(), Some(served));
}

/// A body that yields one empty data frame and then reports its end through
/// `is_end_stream()`, as hyper's HTTP/2 body does for an empty DATA frame with
/// END_STREAM ("200 and then nothing" from an HTTP/2 upstream).
struct EmptyFrameThenEnd {
    yielded: bool,
}

impl http_body::Body for EmptyFrameThenEnd {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        if self.yielded {
            return std::task::Poll::Ready(None);
        }
        self.yielded = true;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::new()))))
    }

    fn is_end_stream(&self) -> bool {
        self.yielded
    }
}

/// A success whose stream ends without a data frame must clear (failure mode 4), also
/// when the stream's end is its last frame rather than a final `None`: hyper's HTTP/1
/// server never polls a body again after a trailers frame, nor after an empty data frame
/// once `is_end_stream()` is true, so the layer must act on that frame itself.
#[tokio::test]
async fn stream_ending_in_trailers_or_an_empty_last_frame_clears_the_binding() {
    // 1. An upstream that answers 200 with no data, only a trailer field (reporting its
    //    failure in trailers).
    let env = Env::start().await;
    env.bind("acct-a").await;
    env.upstream.script(vec![Step::Write(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-upstream-error\r\n\
          connection: close\r\n\r\n0\r\nx-upstream-error: quota\r\n\r\n"
            .to_vec(),
    )]);
    let req = Request::get(format!("http://{}/v1/responses", env.proxy))
        .header("sticky-session-id", SESSION)
        .header("te", "trailers")
        .body(Empty::new())
        .unwrap();
    let res = guard("head", env.client.request(req)).await.unwrap();
    assert_eq!(pinned(&res).as_deref(), Some("acct-a"));
    let body = guard("body", res.into_body().collect()).await.unwrap();
    assert!(body.trailers().is_some(), "the trailers reached the client");
    assert!(body.to_bytes().is_empty());
    assert_eq!(env.bound(), None, "a trailers-only stream must clear");

    // 2. A body whose last frame is empty data, its end reported by is_end_stream().
    let inner = tower::service_fn(|_req: Request<hyper::body::Incoming>| async {
        let mut res = Response::new(EmptyFrameThenEnd { yielded: false });
        res.extensions_mut()
            .insert(ServedBy(AuthId::from("acct-a")));
        Ok::<_, io::Error>(res)
    });
    let layer = StickySessionLayer::new();
    let (store, stats) = (layer.store().clone(), layer.stats());
    let proxy = serve(ServiceBuilder::new().layer(layer).service(inner)).await;
    let key = BindingKey::new(None, SessionId::new(SESSION).unwrap());
    store.commit(&key, &AuthId::from("acct-a")).await.unwrap();
    let req = Request::get(format!("http://{proxy}/"))
        .header("sticky-session-id", SESSION)
        .body(Empty::new())
        .unwrap();
    let res = guard("head", client().request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = guard("body", res.into_body().collect()).await.unwrap();
    assert!(body.to_bytes().is_empty());
    assert_eq!(
        store.get(&key).map(|b| b.auth),
        None,
        "an empty last frame must clear"
    );
    assert_eq!(stats.snapshot().clear_attempts(ClearReason::EmptyStream), 1);
}
