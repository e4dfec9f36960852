//! The server side of the end-to-end benchmark (`benches/e2e.sh`): a hyper 1 HTTP/1.1
//! server on loopback whose trivial inner service streams a small body in two frames and
//! sets `ServedBy`, with or without [`StickySessionLayer`] in front of it.
//!
//! ```text
//! cargo run --release --example bench_server -- [--layer | --bare | --naive] [--listen 127.0.0.1:0]... [--threads 1] [--events 2] [--event-gap MS]
//! ```
//!
//! `--layer` (the default) puts `StickySessionLayer::new()` (the default `MemoryStore`) in
//! front of the inner service, `--naive` the same layer over the benchmarks' naive
//! `RwLock<HashMap>` store, `--bare` nothing.
//!
//! `--events N` (default 2) streams N server-sent events instead: N − 1 OpenAI-style
//! `chat.completion.chunk` events and `data: [DONE]`, all ready at once (an upstream that
//! has the whole answer); with `--event-gap MS` each event after the first comes that long
//! after the previous one (an upstream that generates its answer: `benches/peers.sh`'s
//! `GAP_MS`). `--listen` may be given several times (e.g. three listeners
//! standing for three accounts of one upstream, `benches/peers.sh`); the same service
//! answers on each.
//!
//! It prints `listening on ADDR` (one line per listener) once bound (`--listen 127.0.0.1:0`, the default, picks a
//! free port) and, on `SIGINT` or `SIGTERM`, the layer's counters (`hits`, `misses`, `commits`, ...) on
//! one line, then exits. The inner service honours `PinnedAuth` and otherwise picks one of
//! four accounts round-robin; the accounts are built once, as the crate docs recommend.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{Layer, Service};
use tower_sticky_session::store::BindingStore;
use tower_sticky_session::{AuthId, PinnedAuth, ServedBy, StickySessionLayer};

#[allow(dead_code)]
#[path = "../benches/support/naive_store.rs"]
mod naive_store;

/// A body of a few data frames, all ready or each `gap` after the previous one, length
/// unknown to hyper (sent chunked, like a stream).
struct Frames {
    frames: std::collections::VecDeque<Bytes>,
    gap: Option<Duration>,
    /// The wait before the next frame (after the first), with a gap.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    sent: bool,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let (Some(gap), true) = (self.gap, self.sent) {
            if self.frames.is_empty() {
                return Poll::Ready(None);
            }
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
            std::task::ready!(timer.as_mut().poll(cx));
            self.timer = None;
        }
        self.sent = true;
        Poll::Ready(self.frames.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The account picker: honours the pin, else round-robin; reports who served.
#[derive(Clone)]
struct Picker {
    accounts: Arc<[AuthId]>,
    next: Arc<AtomicUsize>,
    /// The body's frames, built once.
    frames: Arc<[Bytes]>,
    /// `--event-gap`.
    gap: Option<Duration>,
}

/// The frames of a response of `events` server-sent events (see the module docs); two
/// short ones for the default of 2, as before.
fn frames(events: usize) -> Arc<[Bytes]> {
    if events == 2 {
        return Arc::new([
            Bytes::from_static(b"data: {\"delta\":\"hello\"}\n\n"),
            Bytes::from_static(b"data: [DONE]\n\n"),
        ]);
    }
    (1..events.max(1))
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {i}\"}}}}]}}\n\n"
            ))
        })
        .chain(std::iter::once(Bytes::from_static(b"data: [DONE]\n\n")))
        .collect()
}

impl Service<Request<Incoming>> for Picker {
    type Response = Response<Frames>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Frames>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let account = match req.extensions().get::<PinnedAuth>() {
            Some(PinnedAuth(a)) => a.clone(),
            None => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % self.accounts.len();
                self.accounts[i].clone()
            }
        };
        let body = Frames {
            frames: self.frames.iter().cloned().collect(),
            gap: self.gap,
            timer: None,
            sent: false,
        };
        let mut res = Response::new(body);
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        res.extensions_mut().insert(ServedBy(account));
        std::future::ready(Ok(res))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Bare,
    Layer,
    Naive,
}

struct Args {
    mode: Mode,
    listen: Vec<SocketAddr>,
    threads: usize,
    events: usize,
    gap: Option<Duration>,
}

fn args() -> Args {
    let mut out = Args {
        mode: Mode::Layer,
        listen: Vec::new(),
        threads: 1,
        events: 2,
        gap: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--layer" => out.mode = Mode::Layer,
            "--bare" => out.mode = Mode::Bare,
            "--naive" => out.mode = Mode::Naive,
            "--listen" => {
                let v = it.next().expect("--listen ADDR");
                let at: SocketAddr = v.parse().expect("--listen takes IP:PORT");
                assert!(at.ip().is_loopback(), "loopback addresses only");
                out.listen.push(at);
            }
            "--threads" => {
                out.threads = it.next().and_then(|v| v.parse().ok()).expect("--threads N");
            }
            "--event-gap" => {
                let ms: f64 = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--event-gap MS");
                out.gap = (ms > 0.0).then(|| Duration::from_secs_f64(ms / 1000.0));
            }
            "--events" => {
                out.events = it.next().and_then(|v| v.parse().ok()).expect("--events N");
            }
            other => panic!(
                "unknown argument {other:?}; usage: [--layer|--bare|--naive] [--listen IP:PORT]... [--threads N] [--events N] [--event-gap MS]"
            ),
        }
    }
    if out.listen.is_empty() {
        out.listen.push(SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    out
}

/// Serves `svc` on every listener.
async fn serve<S, B>(listeners: Vec<TcpListener>, svc: S)
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut loops = tokio::task::JoinSet::new();
    for listener in listeners {
        loops.spawn(serve_one(listener, svc.clone()));
    }
    while loops.join_next().await.is_some() {}
}

async fn serve_one<S, B>(listener: TcpListener, svc: S)
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(svc.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Serves `picker` behind `layer` until stopped, then prints the layer's counters.
async fn with_layer<St: BindingStore>(
    listener: Vec<TcpListener>,
    layer: StickySessionLayer<St>,
    picker: Picker,
) {
    let stats = layer.stats();
    let svc = layer.layer(picker);
    tokio::select! {
        () = serve(listener, svc) => {}
        () = stopped() => {}
    }
    let s = stats.snapshot();
    println!(
        "stats requests={} hits={} misses={} commits={} no_session={} store_errors={}",
        s.requests, s.hits, s.misses, s.commits, s.no_session, s.store_errors
    );
}

/// `SIGINT` or `SIGTERM`.
async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let mut listener = Vec::new();
        for at in &args.listen {
            let l = TcpListener::bind(at).await.expect("bind");
            println!("listening on {}", l.local_addr().expect("local addr"));
            listener.push(l);
        }
        let accounts: Arc<[AuthId]> = (0..4).map(|i| AuthId::from(format!("acct-{i}"))).collect();
        let picker = Picker {
            accounts,
            next: Arc::new(AtomicUsize::new(0)),
            frames: frames(args.events),
            gap: args.gap,
        };
        match args.mode {
            Mode::Layer => with_layer(listener, StickySessionLayer::new(), picker).await,
            Mode::Naive => {
                let store = naive_store::NaiveStore::new(Duration::from_secs(3600));
                with_layer(listener, StickySessionLayer::with_store(store), picker).await;
            }
            Mode::Bare => {
                tokio::select! {
                    () = serve(listener, picker) => {}
                    () = stopped() => {}
                }
                println!("stats bare");
            }
        }
    });
    // Don't wait for connection tasks still parked on keep-alive sockets.
    std::process::exit(0);
}
