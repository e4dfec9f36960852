//! The floor of `benches/peers.sh`: the least a hyper reverse proxy can do for the
//! benchmark's requests, to tell what hyper and Tokio cost on this machine from what the
//! example proxy adds on top.
//!
//! ```text
//! cargo run --release --example floor_proxy -- --listen 127.0.0.1:0 --upstream http://A --upstream http://B ...
//! ```
//!
//! It reads no configuration, checks no token, sets no timeout and writes no log: an
//! HTTP/1.1 server that hashes the `session-id` header to one of the upstreams and
//! forwards the request over a pooled HTTP/1.1 connection, streaming the answer back. It
//! is a benchmark baseline, not a gateway: no bounds, no failover, no stickiness beyond
//! the hash. It prints `listening on ADDR` once bound.
//!
//! It does what the example proxy does to be cheap, and nothing else, so that the gap
//! between the two is the proxy's own work: mimalloc as the process's `malloc`, one pool
//! of idle `hyper::client::conn::http1` connections per upstream and thread (no
//! hyper-util client: no pool-key hashing, no checkout race, no task per response), and
//! the upstream's data frames that are ready together handed to hyper's server as one
//! frame, so that they leave in one write.

use std::cell::RefCell;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Uri;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[path = "proxy/gathered.rs"]
mod gathered;

use gathered::{GATHER_MAX, Gathered, gather_settled};

// The allocator as in the example proxy: on Unix mimalloc is the process's `malloc`
// (its `override` feature), linked for it; elsewhere `MiMalloc`.
#[cfg(unix)]
extern crate mimalloc;
#[cfg(not(unix))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor {
    upstreams: Vec<SocketAddr>,
    hasher: RandomState,
}

thread_local! {
    /// Idle connections per upstream, this thread's.
    static IDLE: RefCell<Vec<Vec<SendRequest<Incoming>>>> = const { RefCell::new(Vec::new()) };
}

fn checkout(i: usize) -> Option<SendRequest<Incoming>> {
    IDLE.with_borrow_mut(|idle| {
        let list = idle.get_mut(i)?;
        list.retain(|tx| !tx.is_closed());
        // One whose connection task has not yet taken in the end of its last response
        // is not ready: left for a later request.
        let k = list.iter().rposition(SendRequest::is_ready)?;
        Some(list.swap_remove(k))
    })
}

fn checkin(i: usize, tx: SendRequest<Incoming>) {
    IDLE.with_borrow_mut(|idle| {
        if idle.len() <= i {
            idle.resize_with(i + 1, Vec::new);
        }
        idle[i].push(tx);
    });
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Incoming>, FloorError> {
    let tcp = TcpStream::connect(addr).await.map_err(boxed)?;
    tcp.set_nodelay(true).map_err(boxed)?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(boxed)?;
    tokio::spawn(conn);
    Ok(tx)
}

// One concrete error type for the service (a boxed `dyn Error` trips up the inference of
// `serve_connection`'s bounds through the async block).
type FloorError = std::io::Error;

fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> FloorError {
    std::io::Error::other(e)
}

/// The upstream's response body: ready data frames gathered into one; the connection
/// goes back to this thread's pool once the body has ended.
///
/// hyper's client hands a response body over one frame at a time: its connection task
/// waits until the frame before was taken. So while a poll brings data and then finds
/// nothing, the relay yields (waking itself) to let that task decode what it has already
/// read, and hands on what it gathered once a poll brings nothing, or at [`GATHER_MAX`]:
/// the example proxy's rule (`Streamed::gather` in `examples/proxy/timeouts.rs`), with its
/// buffer, [`Gathered`] (the same file as the proxy's). As
/// there, the frames ready when the response head arrives are gathered before it is
/// answered, and a body that ended by then is sent with its length, in one write with
/// the head. Trailers are dropped (the benchmark's upstream sends none); an upstream
/// error is handed on after the data that came before it.
struct Relay {
    body: Incoming,
    back: Option<(usize, SendRequest<Incoming>)>,
    ready: Gathered,
    failed: Option<hyper::Error>,
    /// Data came in since the last yield.
    grew: bool,
    ended: bool,
}

impl Relay {
    fn new(body: Incoming, back: (usize, SendRequest<Incoming>)) -> Self {
        Self {
            body,
            back: Some(back),
            ready: Gathered::default(),
            failed: None,
            grew: false,
            ended: false,
        }
    }

    fn take(&mut self) -> Option<Bytes> {
        self.grew = false;
        self.ready.take()
    }

    /// Takes in the frames ready now, up to [`GATHER_MAX`]; `true` when the caller
    /// should yield and come back: nothing more was ready, but data came in since the
    /// last yield, so the connection task may well have more.
    fn gather(&mut self, cx: &mut Context<'_>) -> bool {
        while !self.ended && self.failed.is_none() && self.ready.len() < GATHER_MAX {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        self.ready.push(data);
                        self.grew = true;
                    }
                }
                Poll::Ready(Some(Err(e))) => self.failed = Some(e),
                Poll::Ready(None) => {
                    self.ended = true;
                    if let Some((i, tx)) = self.back.take() {
                        checkin(i, tx);
                    }
                }
                Poll::Pending => return std::mem::take(&mut self.grew),
            }
        }
        false
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if this.gather(cx) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(data) = this.take() {
            Poll::Ready(Some(Ok(Frame::data(data))))
        } else if let Some(e) = this.failed.take() {
            Poll::Ready(Some(Err(e)))
        } else if this.ended {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.failed.is_none() && self.ready.is_empty()
    }
}

fn main() {
    // FLOOR_RUNTIME=per-core: one current-thread runtime per worker, each with its own
    // SO_REUSEPORT listener and connection pool (no work stealing, no cross-thread
    // wake-ups), as the example proxy's workers.
    let threads: usize = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    if std::env::var("FLOOR_RUNTIME").as_deref() == Ok("per-core") {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                std::thread::spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime")
                        .block_on(run(true))
                })
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(run(false));
    }
}

async fn run(reuse_port: bool) {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().expect("a valid address");
    let mut upstreams = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value.parse().expect("--listen ADDR"),
            "--upstream" => {
                let uri = value.parse::<Uri>().expect("--upstream URL");
                let authority = uri.authority().expect("--upstream http://HOST:PORT");
                let addr = tokio::net::lookup_host(authority.as_str())
                    .await
                    .expect("--upstream: a reachable host")
                    .next()
                    .expect("--upstream: an address");
                upstreams.push(addr);
            }
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!upstreams.is_empty(), "--upstream URL, once or more");
    let floor = Arc::new(Floor {
        upstreams,
        hasher: RandomState::new(),
    });
    let listener = if reuse_port {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseport(true).expect("SO_REUSEPORT");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(listen).expect("bind");
        socket.listen(1024).expect("listen")
    } else {
        TcpListener::bind(listen).await.expect("bind")
    };
    println!("listening on {}", listener.local_addr().expect("bound"));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let floor = floor.clone();
        let task = async move {
            let service = service_fn(move |mut req: http::Request<Incoming>| {
                let floor = floor.clone();
                async move {
                    let i = req
                        .headers()
                        .get("session-id")
                        .map_or(0, |v| floor.hasher.hash_one(v.as_bytes()) as usize)
                        % floor.upstreams.len();
                    // Origin-form target; the client's `Host` goes on as it came.
                    if let Some(pq) = req.uri().path_and_query().cloned() {
                        *req.uri_mut() = Uri::from(pq);
                    }
                    let head_request = req.method() == http::Method::HEAD;
                    // A pooled connection that closed before it took the request gets it
                    // back unsent: the request goes out again, on a new one if need be.
                    let (res, tx) = loop {
                        let (mut tx, reused) = match checkout(i) {
                            Some(tx) => (tx, true),
                            None => (connect(floor.upstreams[i]).await?, false),
                        };
                        match tx.try_send_request(req).await {
                            Ok(res) => break (res, tx),
                            Err(mut e) => match e.take_message() {
                                Some(back) if reused => req = back,
                                _ => return Err(boxed(e.into_error())),
                            },
                        }
                    };
                    let (mut head, body) = res.into_parts();
                    let mut relay = Relay::new(body, (i, tx));
                    gather_settled(|cx| relay.gather(cx)).await;
                    // A body that ended goes with its length, unless the answer has no
                    // body of its own (HEAD, 1xx, 204, 304: their headers say what they
                    // say).
                    let bodiless = head_request
                        || head.status.is_informational()
                        || head.status == http::StatusCode::NO_CONTENT
                        || head.status == http::StatusCode::NOT_MODIFIED;
                    if relay.ended && relay.failed.is_none() && !bodiless {
                        head.headers.remove(http::header::TRANSFER_ENCODING);
                        head.headers
                            .insert(http::header::CONTENT_LENGTH, relay.ready.len().into());
                    }
                    Ok::<_, std::io::Error>(http::Response::from_parts(head, relay))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        };
        tokio::spawn(task);
    }
}
