//! The harness of `tests/contract/matrix.rs`: one stack, four transports, two body types.
//!
//! ```text
//! test client ──(tower call | hyper 1 HTTP/1 | hyper 1 HTTP/2 | axum::serve)──▶
//!     [ outer tower timeout? ] ─▶ [ StickySessionLayer<GatedStore> ] ─▶ Picker<U>
//! ```
//!
//! The picker answers each request as the [`Plan`] the test registered for it says
//! (`x-plan` request header), echoes the `PinnedAuth` it saw as `x-pinned`, and sets
//! `ServedBy`. Its response body is either a channel-fed `StreamBody` handed over directly
//! ([`BodyKind::Stream`]), or hyper's `Incoming` of a relayed request to a local upstream
//! server over TCP that streams the same frames ([`BodyKind::Incoming`]).
//!
//! The store is a [`MemoryStore`] behind a gate: with the gate open it answers at once, like
//! the in-memory store does; closed, commits and clears wait until it opens (a networked
//! store's slow round trip), so a test can drop a response future or body while a
//! decided operation is still in flight.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Empty, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_sticky_session::{
    AuthId, BindingKey, PinnedAuth, Scope, ServedBy, SessionId, Stats, StickySessionLayer,
    store::BindingStore, store::BoxStoreFuture, store::MemoryStore, store::StoreError,
};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type FrameResult = Result<Frame<Bytes>, io::Error>;
pub(crate) type FrameTx = mpsc::Sender<FrameResult>;
type ClientBody = UnsyncBoxBody<Bytes, BoxError>;
/// The picker's own body: a channel-fed stream, or a `Full` (exact size, or already ended).
type PlanBodyType = Either<StreamBody<ReceiverStream<FrameResult>>, Full<Bytes>>;

/// The account a picker falls back to when nothing is pinned.
pub(crate) const DEFAULT_ACCOUNT: &str = "acct-b";
/// Every wait is bounded by this, so that a bug fails instead of hanging.
const GUARD: Duration = Duration::from_secs(5);

pub(crate) async fn guard<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ------------------------------------------------------------------ cells

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// The layered service called directly (`ServiceExt::oneshot`).
    Tower,
    /// hyper 1 server and client, HTTP/1.1 over TCP.
    H1,
    /// hyper 1 server and client, HTTP/2 (prior knowledge) over TCP.
    H2,
    /// `axum::serve` over TCP, hyper client over HTTP/1.1; the layered service is the
    /// router's fallback service (behind `HandleErrorLayer`), so the layer sees the
    /// picker's own body type.
    Axum,
    /// The same axum stack, hyper client over HTTP/2 (prior knowledge).
    AxumH2,
    /// `axum::Router::layer`, HTTP/1.1: the layer sees `axum::body::Body` (the picker's
    /// body boxed by axum), and an inner error reaches it as `HandleErrorLayer`'s 502.
    AxumLayer,
}

impl Transport {
    pub(crate) fn is_axum(self) -> bool {
        matches!(
            self,
            Transport::Axum | Transport::AxumH2 | Transport::AxumLayer
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    /// `StreamBody` over a channel (`Full` for the sized and already-ended plans).
    Stream,
    /// hyper's `Incoming` of a relayed request, passed through unchanged.
    Incoming,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cell {
    pub(crate) transport: Transport,
    pub(crate) body: BodyKind,
    /// `learn_response_ids(true)`: the body wrapper also scans first data frames for a
    /// response id, a second path through it that must keep every row.
    pub(crate) learn: bool,
    /// Every store operation is pending once before it takes effect (a networked store's
    /// round trip): lookups take the layer's deferred path, and commits and clears are
    /// in flight when the response head or first frame waits for them.
    pub(crate) deferred: bool,
}

/// Every (transport × body type) cell, each plain, with response-id learning on, and with
/// a store whose operations are pending once.
pub(crate) fn cells() -> Vec<Cell> {
    let mut v = Vec::new();
    for transport in [
        Transport::Tower,
        Transport::H1,
        Transport::H2,
        Transport::Axum,
        Transport::AxumH2,
        Transport::AxumLayer,
    ] {
        for body in [BodyKind::Stream, BodyKind::Incoming] {
            for (learn, deferred) in [(false, false), (true, false), (false, true)] {
                v.push(Cell {
                    transport,
                    body,
                    learn,
                    deferred,
                });
            }
        }
    }
    v
}

// ------------------------------------------------------------------ plans

/// Who the picker reports as `ServedBy`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Served {
    /// The pinned account, else [`DEFAULT_ACCOUNT`].
    Pinned,
    Account(&'static str),
    Nobody,
}

pub(crate) enum PlanBody {
    Frames(mpsc::Receiver<FrameResult>),
    /// An already-ended body (`is_end_stream()` true), without a `Content-Length` header.
    Ended,
    /// A body of exactly these bytes (exact `size_hint`), without a `Content-Length` header.
    Sized(Bytes),
    /// The inner service returns `Err`.
    Fail,
}

/// How the picker answers one request.
pub(crate) struct Plan {
    status: u16,
    served: Served,
    content_length: Option<u64>,
    body: PlanBody,
    head_gate: Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>,
}

impl Plan {
    /// A streaming answer whose frames the test sends through the returned sender.
    pub(crate) fn stream(status: u16, served: Served) -> (Plan, FrameTx) {
        let (tx, rx) = mpsc::channel(8);
        (Plan::with(status, served, PlanBody::Frames(rx)), tx)
    }

    pub(crate) fn with(status: u16, served: Served, body: PlanBody) -> Plan {
        Plan {
            status,
            served,
            content_length: None,
            body,
            head_gate: None,
        }
    }

    pub(crate) fn fail() -> Plan {
        Plan::with(200, Served::Nobody, PlanBody::Fail)
    }

    /// Sets a `Content-Length` header on the answer.
    pub(crate) fn content_length(mut self, n: u64) -> Plan {
        self.content_length = Some(n);
        self
    }

    /// The picker holds its answer (head or error) until the test releases it.
    pub(crate) fn held(mut self) -> (Plan, Held) {
        let (release, gate) = oneshot::channel();
        let (reached_tx, reached) = oneshot::channel();
        self.head_gate = Some((reached_tx, gate));
        (self, Held { release, reached })
    }
}

/// A held answer: `reached` fires once the picker has the request (its pin is decided),
/// sending on `release` lets the answer go.
pub(crate) struct Held {
    pub(crate) release: oneshot::Sender<()>,
    pub(crate) reached: oneshot::Receiver<()>,
}

type Plans = Arc<Mutex<HashMap<u64, Plan>>>;

pub(crate) fn data(b: &'static [u8]) -> FrameResult {
    Ok(Frame::data(Bytes::from_static(b)))
}

pub(crate) fn trailers() -> FrameResult {
    let mut t = HeaderMap::new();
    t.insert("x-trailer", HeaderValue::from_static("1"));
    Ok(Frame::trailers(t))
}

pub(crate) fn broken() -> FrameResult {
    Err(io::Error::other("upstream broke"))
}

/// The picker's own response for a plan (what an upstream answers).
fn plan_response(
    status: u16,
    content_length: Option<u64>,
    body: PlanBody,
) -> Response<PlanBodyType> {
    let body = match body {
        PlanBody::Frames(rx) => Either::Left(StreamBody::new(ReceiverStream::new(rx))),
        PlanBody::Ended => Either::Right(Full::new(Bytes::new())),
        PlanBody::Sized(b) => Either::Right(Full::new(b)),
        PlanBody::Fail => unreachable!("handled by the picker"),
    };
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::from_u16(status).unwrap();
    if let Some(n) = content_length {
        res.headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    res
}

// ------------------------------------------------------------------ upstreams

/// An upstream's answer, on its way.
pub(crate) type Answer<B> = Pin<Box<dyn Future<Output = io::Result<Response<B>>> + Send>>;

pub(crate) trait Upstream: Clone + Send + Sync + 'static {
    type Body: Body<Data = Bytes, Error: Into<BoxError> + Send + Sync> + Send + 'static;

    fn respond(
        &self,
        method: Method,
        status: u16,
        content_length: Option<u64>,
        body: PlanBody,
    ) -> Answer<Self::Body>;
}

/// Hands the plan's own body over.
#[derive(Clone)]
pub(crate) struct Direct;

impl Upstream for Direct {
    type Body = PlanBodyType;

    fn respond(
        &self,
        _method: Method,
        status: u16,
        content_length: Option<u64>,
        body: PlanBody,
    ) -> Answer<Self::Body> {
        let res = plan_response(status, content_length, body);
        Box::pin(async move { Ok(res) })
    }
}

/// An upstream whose body ends with an error after an idle period (tower-http's
/// `TimeoutBody`, as `ResponseBodyTimeoutLayer` puts it), inside the sticky layer.
#[derive(Clone)]
pub(crate) struct Timed<U>(U, Duration);

impl<U: Upstream> Upstream for Timed<U> {
    type Body = tower_http::timeout::TimeoutBody<U::Body>;

    fn respond(
        &self,
        method: Method,
        status: u16,
        content_length: Option<u64>,
        body: PlanBody,
    ) -> Answer<Self::Body> {
        let idle = self.1;
        let res = self.0.respond(method, status, content_length, body);
        Box::pin(async move {
            Ok(res
                .await?
                .map(|b| tower_http::timeout::TimeoutBody::new(idle, b)))
        })
    }
}

type UpPlans = Arc<Mutex<HashMap<u64, (u16, Option<u64>, PlanBody)>>>;

/// Relays to a local hyper HTTP/1 upstream over TCP (one connection per request) and
/// passes its `Incoming` body through. A `Content-Length` the plan did not ask for (the
/// upstream adds one for `Full` bodies) is removed, so that only the body's `size_hint`
/// and `is_end_stream` tell what the body is.
#[derive(Clone)]
pub(crate) struct Relay {
    addr: SocketAddr,
    plans: UpPlans,
    next: Arc<AtomicU64>,
}

impl Relay {
    async fn start() -> Relay {
        let plans: UpPlans = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let p = plans.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let p = p.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let id: u64 = req.headers()["x-up"].to_str().unwrap().parse().unwrap();
                    let (status, cl, body) = p.lock().unwrap().remove(&id).unwrap();
                    async move { Ok::<_, Infallible>(plan_response(status, cl, body)) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Relay {
            addr,
            plans,
            next: Arc::default(),
        }
    }
}

impl Upstream for Relay {
    type Body = Incoming;

    fn respond(
        &self,
        method: Method,
        status: u16,
        content_length: Option<u64>,
        body: PlanBody,
    ) -> Answer<Self::Body> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.plans
            .lock()
            .unwrap()
            .insert(id, (status, content_length, body));
        let addr = self.addr;
        Box::pin(async move {
            let io = TokioIo::new(TcpStream::connect(addr).await?);
            let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(io::Error::other)?;
            tokio::spawn(conn);
            let req = Request::builder()
                .method(method)
                .uri("/")
                .header("host", "upstream")
                .header("x-up", id)
                .header("te", "trailers")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let mut res = tx.send_request(req).await.map_err(io::Error::other)?;
            if content_length.is_none() {
                res.headers_mut().remove(http::header::CONTENT_LENGTH);
            }
            Ok(res)
        })
    }
}

// ------------------------------------------------------------------ picker

/// The account picker behind the layer.
#[derive(Clone)]
pub(crate) struct Picker<U> {
    plans: Plans,
    upstream: U,
}

impl<U: Upstream, B: Send + 'static> Service<Request<B>> for Picker<U> {
    type Response = Response<U::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<U::Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let pinned = req
            .extensions()
            .get::<PinnedAuth>()
            .map(|p| p.0.as_str().to_owned());
        let id: u64 = req.headers()["x-plan"].to_str().unwrap().parse().unwrap();
        let plan = self
            .plans
            .lock()
            .unwrap()
            .remove(&id)
            .expect("a plan for every request");
        let method = req.method().clone();
        let upstream = self.upstream.clone();
        Box::pin(async move {
            if let Some((reached, gate)) = plan.head_gate {
                let _ = reached.send(());
                let _ = gate.await;
            }
            if let PlanBody::Fail = plan.body {
                return Err(io::Error::other("inner service failed").into());
            }
            let served = match plan.served {
                Served::Pinned => Some(pinned.clone().unwrap_or(DEFAULT_ACCOUNT.to_owned())),
                Served::Account(a) => Some(a.to_owned()),
                Served::Nobody => None,
            };
            let mut res = upstream
                .respond(method, plan.status, plan.content_length, plan.body)
                .await?;
            let echo = HeaderValue::from_str(pinned.as_deref().unwrap_or("-")).unwrap();
            res.headers_mut().insert("x-pinned", echo);
            if let Some(s) = served {
                res.extensions_mut()
                    .insert(ServedBy(AuthId::from(s.as_str())));
            }
            Ok(res)
        })
    }
}

// ------------------------------------------------------------------ gated store

/// A [`MemoryStore`] whose commits and clears wait while the gate is closed.
#[derive(Clone)]
pub(crate) struct GatedStore {
    inner: MemoryStore,
    gate: Gate,
    /// Every operation is pending once (see [`Cell::deferred`]).
    deferred: bool,
}

/// Open by default. `started` counts operations that began waiting on the closed gate.
#[derive(Clone)]
pub(crate) struct Gate {
    open: Arc<watch::Sender<bool>>,
    started: Arc<watch::Sender<usize>>,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            open: Arc::new(watch::channel(true).0),
            started: Arc::new(watch::channel(0).0),
        }
    }

    pub(crate) fn close(&self) {
        self.open.send_replace(false);
    }

    pub(crate) fn open(&self) {
        self.open.send_replace(true);
    }

    /// Waits until `n` operations are waiting (or have waited) on the closed gate.
    pub(crate) async fn started(&self, n: usize) {
        let mut rx = self.started.subscribe();
        guard("store operation to start", rx.wait_for(|s| *s >= n))
            .await
            .unwrap();
    }

    fn wait<T: Send + 'static>(
        &self,
        deferred: bool,
        op: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> BoxStoreFuture<T> {
        if *self.open.borrow() {
            if deferred {
                return Box::pin(async move {
                    tokio::task::yield_now().await;
                    op()
                });
            }
            let out = op();
            return Box::pin(std::future::ready(out));
        }
        self.started.send_modify(|n| *n += 1);
        let mut rx = self.open.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|open| *open).await;
            op()
        })
    }
}

fn now<F: Future + Unpin>(mut f: F) -> F::Output {
    match Pin::new(&mut f).poll(&mut Context::from_waker(std::task::Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the in-memory store answers at once"),
    }
}

impl BindingStore for GatedStore {
    type LookupFuture = BoxStoreFuture<Option<AuthId>>;
    type CommitFuture = BoxStoreFuture<()>;
    type ClearFuture = BoxStoreFuture<bool>;

    fn lookup(&self, key: &BindingKey) -> Self::LookupFuture {
        if self.deferred {
            let (s, k) = (self.inner.clone(), key.clone());
            return Box::pin(async move {
                tokio::task::yield_now().await;
                now(s.lookup(&k))
            });
        }
        Box::pin(std::future::ready(now(self.inner.lookup(key))))
    }

    fn commit(&self, key: &BindingKey, auth: &AuthId) -> Self::CommitFuture {
        let (s, k, a) = (self.inner.clone(), key.clone(), auth.clone());
        self.gate.wait(self.deferred, move || now(s.commit(&k, &a)))
    }

    fn clear_if(&self, key: &BindingKey, expected: &AuthId) -> Self::ClearFuture {
        let (s, k, a) = (self.inner.clone(), key.clone(), expected.clone());
        self.gate
            .wait(self.deferred, move || now(s.clear_if(&k, &a)))
    }
}

// ------------------------------------------------------------------ environment

pub(crate) type Sticky = StickySessionLayer<GatedStore>;

/// What a test may change about the stack.
pub(crate) struct Options {
    pub(crate) store: MemoryStore,
    pub(crate) layer: fn(Sticky) -> Sticky,
    /// An outer timeout around the sticky layer: `tower::timeout::TimeoutLayer`, or
    /// tower-http's `TimeoutLayer` (504) for `Transport::AxumLayer`.
    pub(crate) outer_timeout: Option<Duration>,
    /// An idle timeout on the picker's response body, inside the sticky layer.
    pub(crate) body_timeout: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            store: MemoryStore::new(),
            layer: |l| l,
            outer_timeout: None,
            body_timeout: None,
        }
    }
}

type TowerSvc = BoxCloneService<Request<Empty<Bytes>>, Response<ClientBody>, BoxError>;

/// One running stack for one cell.
pub(crate) struct Env {
    pub(crate) cell: Cell,
    pub(crate) store: MemoryStore,
    pub(crate) gate: Gate,
    pub(crate) stats: Stats,
    plans: Plans,
    next: AtomicU64,
    tower: Option<Mutex<TowerSvc>>,
    addr: Option<SocketAddr>,
}

impl Env {
    pub(crate) async fn start(cell: Cell) -> Env {
        Env::start_with(cell, Options::default()).await
    }

    pub(crate) async fn start_with(cell: Cell, opts: Options) -> Env {
        let gate = Gate::new();
        let store = GatedStore {
            inner: opts.store.clone(),
            gate: gate.clone(),
            deferred: cell.deferred,
        };
        let layer =
            (opts.layer)(StickySessionLayer::with_store(store).learn_response_ids(cell.learn));
        let stats = layer.stats();
        let plans: Plans = Arc::default();
        let (t, outer) = (cell.transport, opts.outer_timeout);
        let (tower, addr) = match (cell.body, opts.body_timeout) {
            (BodyKind::Stream, None) => {
                let p = Picker {
                    plans: plans.clone(),
                    upstream: Direct,
                };
                serve(t, layer, p, outer).await
            }
            (BodyKind::Incoming, None) => {
                let p = Picker {
                    plans: plans.clone(),
                    upstream: Relay::start().await,
                };
                serve(t, layer, p, outer).await
            }
            (BodyKind::Stream, Some(d)) => {
                let p = Picker {
                    plans: plans.clone(),
                    upstream: Timed(Direct, d),
                };
                serve(t, layer, p, outer).await
            }
            (BodyKind::Incoming, Some(d)) => {
                let p = Picker {
                    plans: plans.clone(),
                    upstream: Timed(Relay::start().await, d),
                };
                serve(t, layer, p, outer).await
            }
        };
        Env {
            cell,
            store: opts.store,
            gate,
            stats,
            plans,
            next: AtomicU64::new(0),
            tower: tower.map(Mutex::new),
            addr,
        }
    }

    pub(crate) fn key(&self, session: &str) -> BindingKey {
        BindingKey::new(None, SessionId::new(session).unwrap())
    }

    pub(crate) fn scoped_key(&self, scope: &'static str, session: &str) -> BindingKey {
        BindingKey::new(
            Some(Scope::from_static(scope)),
            SessionId::new(session).unwrap(),
        )
    }

    pub(crate) async fn bind(&self, session: &str, auth: &str) {
        self.store
            .commit(&self.key(session), &AuthId::from(auth))
            .await
            .unwrap();
    }

    pub(crate) async fn bound_key(&self, key: &BindingKey) -> Option<String> {
        self.store
            .lookup(key)
            .await
            .unwrap()
            .map(|a| a.as_str().to_owned())
    }

    pub(crate) async fn bound(&self, session: &str) -> Option<String> {
        self.bound_key(&self.key(session)).await
    }

    /// Polls the store until `session` is bound to `want`, for at most a few seconds.
    pub(crate) async fn eventually(&self, session: &str, want: Option<&str>) {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let got = self.bound(session).await;
            if got.as_deref() == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}: {session} is bound to {got:?}, want {want:?}",
                self.cell
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A `GET` with the default session header.
    pub(crate) fn get(&self, session: &str) -> http::request::Builder {
        Request::builder()
            .uri("/m")
            .header("sticky-session-id", session)
    }

    /// Sends `req` (with an empty body) for the picker to answer as `plan` says.
    pub(crate) async fn send(
        &self,
        req: http::request::Builder,
        plan: Plan,
    ) -> Result<Reply, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.plans.lock().unwrap().insert(id, plan);
        let req = req
            .header("x-plan", id)
            .header("host", "sticky.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let what = format!("{:?}: response head", self.cell);
        let (res, conn) = match (self.cell.transport, &self.tower) {
            (Transport::Tower, Some(svc)) => {
                let svc = svc.lock().unwrap().clone();
                let res = guard(&what, svc.oneshot(req))
                    .await
                    .map_err(|e| e.to_string())?;
                (res, None)
            }
            (t, _) => {
                let io = TokioIo::new(TcpStream::connect(self.addr.unwrap()).await.unwrap());
                if matches!(t, Transport::H2 | Transport::AxumH2) {
                    let (mut tx, conn) =
                        hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                            .await
                            .unwrap();
                    let conn = tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    let res = guard(&what, tx.send_request(req))
                        .await
                        .map_err(|e| e.to_string())?;
                    (
                        res.map(|b| b.map_err(Into::into).boxed_unsync()),
                        Some(conn),
                    )
                } else {
                    let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                    let conn = tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    let res = guard(&what, tx.send_request(req))
                        .await
                        .map_err(|e| e.to_string())?;
                    (
                        res.map(|b| b.map_err(Into::into).boxed_unsync()),
                        Some(conn),
                    )
                }
            }
        };
        let (parts, body) = res.into_parts();
        Ok(Reply {
            cell: self.cell,
            status: parts.status,
            headers: parts.headers,
            body: Some(body),
            conn,
        })
    }

    /// Which account a request of `session` is pinned to now, by a neutral request (404:
    /// the table's "nothing" row, so it changes no binding).
    pub(crate) async fn probe(&self, session: &str) -> Option<String> {
        self.probe_req(self.get(session)).await
    }

    pub(crate) async fn probe_req(&self, req: http::request::Builder) -> Option<String> {
        let (plan, tx) = Plan::stream(404, Served::Pinned);
        drop(tx);
        let mut r = self.send(req, plan).await.expect("probe");
        assert_eq!(r.status, 404);
        r.finish().await.expect("probe body");
        r.pinned()
    }

    /// A success that delivers one chunk, read to its end: binds `session` to whoever
    /// served it.
    pub(crate) async fn succeed(&self, req: http::request::Builder, served: Served) -> Reply {
        let (plan, tx) = Plan::stream(200, served);
        tx.send(data(b"ok")).await.unwrap();
        drop(tx);
        let mut r = self.send(req, plan).await.expect("success");
        assert_eq!(r.status, 200, "{:?}", self.cell);
        assert_eq!(
            r.finish().await.as_deref(),
            Ok(&b"ok"[..]),
            "{:?}",
            self.cell
        );
        r
    }
}

/// `HandleErrorLayer`'s answer: 504 for an outer timeout, 502 for the picker's error.
async fn axum_error(e: BoxError) -> StatusCode {
    if e.is::<tower::timeout::error::Elapsed>() {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    }
}

async fn serve<U: Upstream>(
    transport: Transport,
    layer: Sticky,
    picker: Picker<U>,
    outer_timeout: Option<Duration>,
) -> (Option<TowerSvc>, Option<SocketAddr>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    if transport == Transport::AxumLayer {
        let inner = ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(axum_error))
            .map_response(|res: Response<U::Body>| res.map(axum::body::Body::new))
            .service(picker);
        let mut app = axum::Router::new().fallback_service(inner).layer(layer);
        if let Some(d) = outer_timeout {
            app = app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::GATEWAY_TIMEOUT,
                d,
            ));
        }
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        return (None, Some(addr));
    }
    let svc = ServiceBuilder::new()
        .option_layer(outer_timeout.map(tower::timeout::TimeoutLayer::new))
        .layer(layer)
        .service(picker);
    if transport == Transport::Tower {
        let svc = ServiceExt::<Request<Empty<Bytes>>>::map_response(svc, |res| {
            res.map(|b| b.map_err(Into::into).boxed_unsync())
        });
        return (Some(BoxCloneService::new(svc)), None);
    }
    if transport.is_axum() {
        let app = axum::Router::new().fallback_service(
            ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(axum_error))
                .service(svc),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        return (None, Some(addr));
    }
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = TowerToHyperService::new(svc.clone());
            let io = TokioIo::new(stream);
            tokio::spawn(async move {
                let _ = match transport {
                    Transport::H2 => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await
                    }
                    _ => {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await
                    }
                };
            });
        }
    });
    (None, Some(addr))
}

// ------------------------------------------------------------------ client side

/// A response as the client sees it. Dropping it is the client going away: the body is
/// dropped and the connection closed.
pub(crate) struct Reply {
    cell: Cell,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    body: Option<ClientBody>,
    conn: Option<JoinHandle<()>>,
}

impl Reply {
    /// The `PinnedAuth` the picker saw.
    pub(crate) fn pinned(&self) -> Option<String> {
        match self.headers.get("x-pinned")?.to_str().unwrap() {
            "-" => None,
            p => Some(p.to_owned()),
        }
    }

    pub(crate) fn body(&self) -> &ClientBody {
        self.body.as_ref().unwrap()
    }

    pub(crate) async fn frame(&mut self) -> Option<Result<Frame<Bytes>, String>> {
        let what = format!("{:?}: next frame", self.cell);
        let body = self.body.as_mut().unwrap();
        guard(&what, body.frame())
            .await
            .map(|r| r.map_err(|e| e.to_string()))
    }

    /// The next non-empty data frame; panics on anything else.
    pub(crate) async fn first_data(&mut self) -> Bytes {
        loop {
            match self.frame().await {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) if !d.is_empty() => return d,
                    _ => continue,
                },
                other => panic!("{:?}: expected a data frame, got {other:?}", self.cell),
            }
        }
    }

    /// Reads to the end: the data, or the error that ended the body.
    pub(crate) async fn finish(&mut self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while let Some(f) = self.frame().await {
            if let Ok(d) = f?.into_data() {
                out.extend_from_slice(&d);
            }
        }
        Ok(out)
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        drop(self.body.take());
        if let Some(c) = self.conn.take() {
            c.abort();
        }
    }
}
