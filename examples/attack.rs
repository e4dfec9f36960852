//! The load-and-attack run of the example proxy (`benches/attack.sh`): streaming clients
//! that must all be served while idle HTTP/2 connections, body dribblers and large-body
//! clients attack the same proxy at once; the proxy's RSS and open descriptors are
//! sampled every second.
//!
//! ```text
//! cargo build --release --example proxy --example attack
//! PROXY_BIN=target/release/examples/proxy target/release/examples/attack
//! CLIENTS=500 IDLE=2000 DRIBBLERS=1000 LARGE=40 SECS=90 target/release/examples/attack
//! ```
//!
//! - Two mock accounts in this process (hyper HTTP/1 on loopback): each reads a request
//!   body frame by frame and throws it away, then streams server-sent events
//!   (`EVENTS` events, default 5, `GAP_MS` apart, default 100, then `data: [DONE]`).
//!   `examples/bench_server.rs` answers two frames at once and cannot take a body, so
//!   it is not used here.
//! - The proxy binary (`PROXY_BIN`) with its default limits, `--admin` on loopback,
//!   `RUST_LOG=warn`, over those two accounts.
//! - `CLIENTS` streaming clients (default 1 000), each in a loop: POST with a session id
//!   from a pool of `SESSIONS` (default 5 000), read the whole stream. A failure is a
//!   non-200, an error, or a stream without `[DONE]`.
//! - `IDLE` idle HTTP/2 connections (default 2 000; hyper's client, prior knowledge,
//!   answering pings): half never send a request (closed at `--header-timeout`), half
//!   send one GET and then stay idle (closed at `--conn-idle-timeout`); each reconnects
//!   when closed. The time from open (or from the end of the GET) to close is recorded.
//! - `DRIBBLERS` body dribblers (default 1 000): a POST head announcing 1 000 bytes, then
//!   one byte every 3 s; reconnect when closed; the status and time to close recorded.
//! - `LARGE` large-body clients (default 40): POST 15 MiB (`Content-Length`) as fast as
//!   the proxy takes it, read the answer, again. Counted apart from the clients.
//!
//! Exit code 1 when any streaming client saw a failure.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: usize = 1024 * 1024;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Counters and samples of the run.
#[derive(Default)]
struct Tally {
    served: AtomicU64,
    failed: AtomicU64,
    large_ok: AtomicU64,
    large_failed: AtomicU64,
    /// `(status line, seconds from the head to the close)` of each dribbler.
    dribbled: Mutex<Vec<(String, f64)>>,
    /// Seconds to close of idle HTTP/2 connections that never sent a request.
    idle_silent: Mutex<Vec<f64>>,
    /// Seconds to close of idle HTTP/2 connections after their one request.
    idle_after: Mutex<Vec<f64>>,
    first_errors: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut e = self.first_errors.lock().unwrap();
        if e.len() < 10 {
            e.push(why);
        }
    }
}

type SseBody =
    StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// A mock account: drains the request body, then streams `events` events `gap` apart.
async fn account(events: u32, gap: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let mut body = req.into_body();
                    while let Some(f) = body.frame().await {
                        if f.is_err() {
                            break;
                        }
                    }
                    let stream = futures_util::stream::unfold(0u32, move |i| async move {
                        if i > events {
                            return None;
                        }
                        let data = if i == events {
                            Bytes::from_static(b"data: [DONE]\n\n")
                        } else {
                            tokio::time::sleep(gap).await;
                            Bytes::from(format!("data: {i}\n\n"))
                        };
                        Some((Ok(Frame::data(data)), i + 1))
                    });
                    let mut res = Response::new(SseBody::new(Box::pin(stream)));
                    res.headers_mut()
                        .insert("content-type", "text/event-stream".parse().unwrap());
                    Ok::<_, Infallible>(res)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// `VmRSS` of `pid` in KiB, and its open descriptors.
fn sample(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

/// One streaming client, until `stop`.
async fn streamer(
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
    id: usize,
    sessions: usize,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let mut n = id;
    while !stop.load(Ordering::Relaxed) {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let session = format!("attack-{}", (n >> 33) % sessions);
        let req = Request::post(format!("http://{proxy}/v1/chat"))
            .header("session-id", session)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"model":"m","stream":true}"#,
            )))
            .unwrap();
        let res = match client.request(req).await {
            Ok(r) => r,
            Err(e) => {
                tally.fail(format!("request: {e:?}"));
                continue;
            }
        };
        let status = res.status();
        match res.into_body().collect().await.map(|b| b.to_bytes()) {
            Ok(b) if status == StatusCode::OK && b.ends_with(b"[DONE]\n\n") => {
                tally.served.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => tally.fail(format!("status {status} or no [DONE]")),
            Err(e) => tally.fail(format!("body: {e:?}")),
        }
    }
}

/// One idle HTTP/2 slot, until `stop`: connect, (one GET,) wait for the proxy to close.
async fn idle(proxy: SocketAddr, one_request: bool, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(tcp) = TcpStream::connect(proxy).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok((mut send, conn)) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
            .await
        else {
            continue;
        };
        let conn = tokio::spawn(conn);
        if one_request {
            let req = Request::get(format!("http://{proxy}/v1/models"))
                .body(Empty::new())
                .unwrap();
            if let Ok(res) = send.send_request(req).await {
                let _ = res.into_body().collect().await;
            }
        }
        let since = Instant::now();
        let _ = conn.await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let took = since.elapsed().as_secs_f64();
        let list = if one_request {
            &tally.idle_after
        } else {
            &tally.idle_silent
        };
        list.lock().unwrap().push(took);
        drop(send);
    }
}

/// One body dribbler, until `stop`.
async fn dribbler(proxy: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(conn) = TcpStream::connect(proxy).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (mut rd, mut wr) = conn.into_split();
        let head = "POST /v1/chat HTTP/1.1\r\nhost: p\r\nsession-id: dribble\r\n\
                    content-type: application/json\r\ncontent-length: 1000\r\n\r\n";
        if wr.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        let since = Instant::now();
        let writer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                if wr.write_all(b" ").await.is_err() {
                    return;
                }
            }
        });
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        writer.abort();
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let line = String::from_utf8_lossy(&out)
            .lines()
            .next()
            .unwrap_or("(closed without an answer)")
            .to_owned();
        tally
            .dribbled
            .lock()
            .unwrap()
            .push((line, since.elapsed().as_secs_f64()));
    }
}

/// One large-body client, until `stop`.
async fn large(proxy: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    type Chunks = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;
    let client = Client::builder(TokioExecutor::new()).build_http::<Chunks>();
    let mib = Bytes::from(vec![b' '; MIB]);
    let mut k = 0usize;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let chunks: Vec<_> = (0..15).map(|_| Ok(Frame::data(mib.clone()))).collect();
        let req = Request::post(format!("http://{proxy}/v1/chat"))
            .header("session-id", format!("large-{k}"))
            .header("content-type", "application/json")
            .header("content-length", 15 * MIB)
            .body(StreamBody::new(futures_util::stream::iter(chunks)))
            .unwrap();
        let failure = match client.request(req).await {
            Ok(res) if res.status() == StatusCode::OK => {
                match res.into_body().collect().await.map(|b| b.to_bytes()) {
                    Ok(b) if b.ends_with(b"[DONE]\n\n") => None,
                    Ok(_) => Some("a 200 whose stream has no [DONE]".to_owned()),
                    Err(e) => Some(format!("a 200 whose stream broke: {e}")),
                }
            }
            Ok(res) => {
                let status = res.status();
                let body = res.into_body().collect().await.map(|b| b.to_bytes());
                Some(format!("{status}: {:?}", body.unwrap_or_default()))
            }
            Err(e) => Some(format!("no answer: {e:?}")),
        };
        let ok = failure.is_none();
        if let Some(why) = failure
            && tally.large_failed.load(Ordering::Relaxed) < 5
        {
            eprintln!("large-body request failed: {why}");
        }
        let c = if ok {
            &tally.large_ok
        } else {
            &tally.large_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// `GET path` on `addr`, the body as text.
async fn get_text(addr: SocketAddr, path: &str) -> String {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    match client.request(req).await {
        Ok(res) => res
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default(),
        Err(e) => format!("(metrics: {e})"),
    }
}

fn stats(v: &[f64]) -> String {
    if v.is_empty() {
        return "none closed".into();
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize];
    format!(
        "{} closed, min {:.1} s, median {:.1} s, max {:.1} s",
        v.len(),
        v[0],
        q(0.5),
        v[v.len() - 1]
    )
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let clients: usize = env_or("CLIENTS", 1000);
    let idles: usize = env_or("IDLE", 2000);
    let dribblers: usize = env_or("DRIBBLERS", 1000);
    let larges: usize = env_or("LARGE", 40);
    let secs: u64 = env_or("SECS", 90);
    let sessions: usize = env_or("SESSIONS", 5000).max(1);
    let events: u32 = env_or("EVENTS", 5);
    let gap = Duration::from_millis(env_or("GAP_MS", 100));
    let bin = std::env::var("PROXY_BIN").unwrap_or("target/release/examples/proxy".into());
    let extra: Vec<String> = std::env::var("PROXY_ARGS")
        .map(|a| a.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();

    let a = account(events, gap).await;
    let b = account(events, gap).await;
    let (listen, admin) = (free_port(), free_port());
    let mut cmd = std::process::Command::new(&bin);
    cmd.args([
        "--listen",
        &listen.to_string(),
        "--admin",
        &admin.to_string(),
    ])
    .args(["--upstream", &format!("a=http://{a}")])
    .args(["--upstream", &format!("b=http://{b}")])
    .args(&extra)
    .env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or("warn".into()),
    )
    .stdout(std::process::Stdio::null());
    let mut proxy = cmd.spawn().unwrap_or_else(|e| panic!("{bin}: {e}"));
    let pid = proxy.id();
    let ready = Instant::now();
    while TcpStream::connect(listen).await.is_err() {
        assert!(
            ready.elapsed() < Duration::from_secs(20),
            "the proxy did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "proxy pid {pid} on {listen}; {clients} streaming clients, {idles} idle HTTP/2 \
         connections, {dribblers} dribblers, {larges} large-body clients, {secs} s"
    );

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // The attackers first, each kind spread over the first seconds.
    for i in 0..idles {
        tasks.push(tokio::spawn(idle(
            listen,
            i % 2 == 1,
            tally.clone(),
            stop.clone(),
        )));
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for i in 0..dribblers {
        tasks.push(tokio::spawn(dribbler(listen, tally.clone(), stop.clone())));
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for _ in 0..larges {
        tasks.push(tokio::spawn(large(listen, tally.clone(), stop.clone())));
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for i in 0..clients {
        tasks.push(tokio::spawn(streamer(
            client.clone(),
            listen,
            i,
            sessions,
            tally.clone(),
            stop.clone(),
        )));
    }

    let start = Instant::now();
    let (mut max_rss, mut max_fds) = (0u64, 0usize);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while start.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let Some((rss, fds)) = sample(pid) else {
            eprintln!("the proxy exited");
            break;
        };
        max_rss = max_rss.max(rss);
        max_fds = max_fds.max(fds);
        println!(
            "t={:>3}s rss={:>4} MiB fds={:>5} served={:>7} failed={} large_ok={} large_failed={} \
             dribblers_closed={} idle_closed={}+{}",
            start.elapsed().as_secs(),
            rss / 1024,
            fds,
            tally.served.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
            tally.large_ok.load(Ordering::Relaxed),
            tally.large_failed.load(Ordering::Relaxed),
            tally.dribbled.lock().unwrap().len(),
            tally.idle_silent.lock().unwrap().len(),
            tally.idle_after.lock().unwrap().len(),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let metrics = get_text(admin, "/metrics").await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    for t in &tasks {
        t.abort();
    }
    let _ = proxy.wait();

    let served = tally.served.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    println!("--- summary ({secs} s)");
    println!(
        "streaming clients: {served} streams served ({:.0}/s), {failed} failures",
        served as f64 / secs as f64
    );
    for e in tally.first_errors.lock().unwrap().iter() {
        println!("  failure: {e}");
    }
    println!(
        "proxy: max RSS {} MiB, max open descriptors {max_fds}",
        max_rss / 1024
    );
    println!(
        "large-body clients: {} answered 200 with the whole stream, {} not",
        tally.large_ok.load(Ordering::Relaxed),
        tally.large_failed.load(Ordering::Relaxed)
    );
    println!(
        "idle HTTP/2, no request: {}",
        stats(&tally.idle_silent.lock().unwrap())
    );
    println!(
        "idle HTTP/2, after one request: {}",
        stats(&tally.idle_after.lock().unwrap())
    );
    let dribbled = tally.dribbled.lock().unwrap();
    let times: Vec<f64> = dribbled.iter().map(|d| d.1).collect();
    let mut lines: Vec<&str> = dribbled.iter().map(|d| d.0.as_str()).collect();
    lines.sort_unstable();
    lines.dedup();
    println!("dribblers: {} (answers: {lines:?})", stats(&times));
    for l in metrics.lines().filter(|l| {
        l.starts_with("sticky_proxy_buffer")
            || l.starts_with("sticky_proxy_broken_streams_total")
            || l.starts_with("sticky_proxy_retries")
    }) {
        println!("metrics at the end: {l}");
    }
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
