//! The accept loop: HTTP/1.1 and HTTP/2 on one port, hardened against idle, silent and
//! slow clients, with graceful shutdown.
//!
//! - `--header-timeout`: a connection that has not sent a complete request head within
//!   that time is closed, whatever it speaks: HTTP/1, HTTP/2 (preface and HEADERS), or
//!   nothing at all. hyper's HTTP/1 `header_read_timeout` covers neither HTTP/2 nor a
//!   socket that sends nothing before protocol detection, so each connection is raced
//!   here against a timer that only its first request's head stops. Later request heads
//!   on an HTTP/1 keep-alive connection are covered by the idle timer below: on HTTP/1 a
//!   connection with nothing open must send its next complete head within the shorter
//!   of `--header-timeout` and `--conn-idle-timeout`. (hyper's own `header_read_timeout`
//!   did the same with a new timer, allocated and registered for every request.)
//! - `--conn-idle-timeout`: a connection with nothing open on it for that long is shut
//!   down gracefully (HTTP/1: closed; HTTP/2: GOAWAY, then closed), whatever it speaks and
//!   however diligently it answers pings. *Open* is counted per connection
//!   ([`ConnActivity`]): a request from the moment hyper hands it over until its response
//!   body has ended or been dropped, plus any [`Busy`] guard someone else holds (an
//!   upgraded socket, for instance). The timer starts when that count falls to 0.
//! - A connection asked to shut down (idle, draining, a stalled write, a response marked
//!   [`CloseConnection`]) gets GOAWAY at once; once nothing is open on it, hyper has
//!   [`CLOSE_LINGER`] to finish the close (an HTTP/2 peer must acknowledge a ping first),
//!   then the socket is dropped. A peer that never reads cannot keep it.
//! - `--idle-timeout` as a write timeout: a response body that handed hyper a frame and is
//!   not asked for the next one within that time belongs to a client that stopped
//!   reading (HTTP/2 window 0, a full HTTP/1 socket). The body is dropped, which cancels
//!   the upstream request and frees its upstream connection, and the client connection
//!   is shut down as above (its other streams may finish).
//! - HTTP/2 keep-alive pings find dead peers; at most `--max-streams` concurrent streams
//!   per HTTP/2 connection; `--max-connections` bounds the open connections (a semaphore
//!   around `accept`; the excess waits in the kernel's backlog, which `main` sizes by
//!   `--max-connections` too).
//! - Small write buffers (HTTP/1 `max_buf_size`, HTTP/2 `max_send_buf_size`): a client
//!   that stops reading holds at most about [`CONN_BUF`] of response per connection.
//! - Accept failures (e.g. out of file descriptors) back off and are logged at most once
//!   per [`ACCEPT_LOG_EVERY`], with the count of those not logged.
//! - Shutdown: stop accepting, shut every connection down gracefully (idle ones close at
//!   once), let open requests finish for up to `grace`, then cut the rest; [`Drained`]
//!   says which happened (the process's exit code).
//! - HTTP/1 upgrades (`101 Switching Protocols`) are served; a connection stays counted
//!   against `--max-connections` (and in the drain) until every [`Busy`] guard taken for
//!   it is dropped, so the owner of an upgraded socket holds one for the socket's life.
//! - Workers ([`serve_workers`], `--workers`): one thread per core, each a
//!   single-threaded Tokio runtime accepting from the same listening socket, the way
//!   HAProxy's threads and NGINX's worker processes run. A connection, its requests,
//!   their upstream connections (each worker has its own pool, see `failover.rs`) and
//!   their timers stay on one thread: no work stealing, no wake-ups across threads. The
//!   cost: one busy connection (e.g. an HTTP/2 client multiplexing every session) is
//!   served by one core. `--max-connections` holds for all workers together. A worker
//!   holding more than its share of the open connections (the mean plus one) leaves new
//!   ones to the others for a moment ([`Balance`]), so a burst of connections does not
//!   all land on whichever worker was free at that instant.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tower::Service;

use super::handoff::Handoff;
use super::{BoxError, ErrorChain};

/// Response bytes buffered per connection (HTTP/1 write buffer, HTTP/2 send buffer);
/// hyper's defaults are about 400 KiB each. Also bounds an HTTP/1 request head.
pub(crate) const CONN_BUF: usize = 64 * 1024;

/// At most one accept-failure log line per this period.
pub(crate) const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long a connection that was asked to shut down and has nothing open may take to
/// close by itself (HTTP/2: the peer acknowledges the GOAWAY's ping) before its socket
/// is dropped.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// How the accept loop runs.
#[derive(Clone, Debug)]
pub(crate) struct ServeConfig {
    /// Time for a new connection to send a complete request head.
    pub(crate) header_timeout: Duration,
    /// A connection with nothing open on it for this long is shut down.
    pub(crate) conn_idle_timeout: Duration,
    /// A response body not asked for its next frame this long after handing one over is
    /// dropped (the client stopped reading) and its connection shut down.
    pub(crate) write_timeout: Duration,
    /// Most connections open at once.
    pub(crate) max_connections: usize,
    /// Most concurrent streams per HTTP/2 connection.
    pub(crate) max_streams: u32,
    /// How long open requests may take to finish after shutdown begins.
    pub(crate) grace: Duration,
    /// HTTP/2 keep-alive ping interval (the peer must answer within the same time).
    pub(crate) keep_alive: Duration,
}

impl ServeConfig {
    /// Defaults: 30 s header timeout, 60 s connection idle timeout, 300 s write timeout,
    /// 10 000 connections, 100 streams per HTTP/2 connection, 20 s pings, `grace`.
    pub(crate) fn new(grace: Duration) -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            conn_idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(300),
            max_connections: 10_000,
            max_streams: 100,
            grace,
            keep_alive: Duration::from_secs(20),
        }
    }
}

impl ServeConfig {
    /// Connection permits: `max_connections`, at least one, at most what a semaphore's
    /// `acquire_many` (the drain's wait for all of them) can take.
    fn permits(&self) -> usize {
        self.max_connections.clamp(1, u32::MAX as usize)
    }
}

/// How [`serve`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Every connection finished within the grace period.
    Clean,
    /// This many connections were still open at the end of the grace period and were cut.
    Cut(usize),
}

/// A response extension: shut the connection down gracefully once this response is
/// sent (HTTP/1: `connection: close`; HTTP/2: GOAWAY, its other streams may finish).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CloseConnection;

/// One connection's activity, in every request's [`Handoff`]: take a [`Busy`] guard to
/// keep the connection counted as open (no idle timeout, no drain) for as long as it
/// lives — e.g. for an upgraded (`101`) socket, taken before the 101 is returned and
/// moved into the task that serves the socket.
#[derive(Clone)]
pub(crate) struct ConnActivity(Arc<Activity>);

// For the owners of upgraded sockets (WebSocket passthrough) and the tests.
#[allow(dead_code)]
impl ConnActivity {
    /// Counts the connection as open until the guard is dropped.
    pub(crate) fn busy(&self) -> Busy {
        self.0.busy()
    }

    /// Asks for the connection to be shut down gracefully (see the module docs).
    pub(crate) fn close_soon(&self) {
        self.0.close_soon();
    }

    /// Resolves when the connection is asked to shut down (idle, draining, a stalled
    /// write, [`CloseConnection`]): the owner of an upgraded socket may close it then.
    pub(crate) async fn closing(&self) {
        let mut rx = self.0.epoch.subscribe();
        while !self.0.close.load(Ordering::Acquire) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

impl fmt::Debug for ConnActivity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnActivity")
            .field("busy", &self.0.open())
            .finish()
    }
}

/// Keeps its connection counted as open while it lives ([`ConnActivity::busy`]).
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0
                .idle_at
                .store(self.0.born.elapsed().as_nanos() as u64, Ordering::Release);
            if self.0.after_http.load(Ordering::SeqCst) {
                self.0.bump();
            }
        }
    }
}

/// What a connection's task reads of its requests. Requests open and close without
/// waking the task (two wake-ups per request, with their futures rebuilt, were a tenth of
/// the proxy's work per request): its idle timer is lazy, it fires at the earliest
/// moment the connection could have been idle long enough and then reads `busy` and
/// `idle_at`. The task is woken (`epoch`) only to be asked to close, or, once HTTP is
/// over on the connection, when an upgraded socket lets it go.
struct Activity {
    /// Requests, response bodies and other [`Busy`] guards open on the connection.
    busy: AtomicUsize,
    /// When `busy` last reached 0, in nanoseconds since `born`.
    idle_at: AtomicU64,
    born: std::time::Instant,
    /// The connection is done with HTTP (its task now waits for `busy` to reach 0).
    after_http: AtomicBool,
    /// Bumped when `close` is set, and when `busy` reaches 0 after HTTP: the
    /// connection's task and the owners of upgraded sockets wait on it.
    epoch: watch::Sender<u64>,
    /// The connection sent a complete request head.
    got_head: AtomicBool,
    /// Its requests are HTTP/1 (then the next head is due within `--header-timeout`).
    http1: AtomicBool,
    /// The connection is to be shut down.
    close: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            busy: AtomicUsize::new(0),
            idle_at: AtomicU64::new(0),
            born: std::time::Instant::now(),
            after_http: AtomicBool::new(false),
            epoch: watch::Sender::new(0),
            got_head: AtomicBool::new(false),
            http1: AtomicBool::new(false),
            close: AtomicBool::new(false),
        }
    }

    fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    fn open(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    /// When `busy` last reached 0 (the connection's birth if it never has).
    fn idle_since(&self) -> Instant {
        Instant::from_std(self.born + Duration::from_nanos(self.idle_at.load(Ordering::Acquire)))
    }

    fn close_soon(&self) {
        if !self.close.swap(true, Ordering::AcqRel) {
            self.bump();
        }
    }

    fn bump(&self) {
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
    }
}

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The index of the accept worker running on this thread; 0 on any other thread.
pub(crate) fn worker() -> usize {
    WORKER.with(Cell::get)
}

/// Serves `service` on `listener` with `workers` threads (see the module docs), each
/// running [`serve`]'s loop on its own single-threaded runtime over a duplicate of the
/// listening socket, until `stop` turns true. Every worker reports how it ended on the
/// returned channel; one that ends before `stop` has failed (its error is logged).
/// `--max-connections` (`cfg.max_connections`) holds for all workers together.
pub(crate) fn serve_workers<S, B>(
    listener: TcpListener,
    workers: usize,
    service: S,
    stop: watch::Receiver<bool>,
    cfg: ServeConfig,
) -> std::io::Result<mpsc::Receiver<Drained>>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let workers = workers.max(1);
    // Deregistered from this runtime; each worker registers its own duplicate with its
    // own: the kernel hands a new connection to whichever worker accepts first.
    let listening = listener.into_std()?;
    let permits = Arc::new(Semaphore::new(cfg.permits()));
    let (done_tx, done_rx) = mpsc::channel(workers);
    let balance = Arc::new(Balance::new(workers));
    for i in 0..workers {
        let listening = listening.try_clone()?;
        let (service, mut stop, cfg, permits, done) = (
            service.clone(),
            stop.clone(),
            cfg.clone(),
            permits.clone(),
            done_tx.clone(),
        );
        let balance = (balance.clone(), i);
        std::thread::Builder::new()
            .name(format!("proxy-worker-{i}"))
            .spawn(move || {
                WORKER.with(|w| w.set(i));
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(worker = i, error = %e, "cannot start a worker's runtime");
                        return;
                    }
                };
                let drained = runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listening) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(worker = i, error = %e, "cannot register the listener");
                            return None;
                        }
                    };
                    let shutdown = async move {
                        let _ = stop.wait_for(|stopped| *stopped).await;
                    };
                    Some(serve_on(listener, service, shutdown, cfg, permits, Some(balance)).await)
                });
                if let Some(drained) = drained {
                    let _ = done.try_send(drained);
                }
            })?;
    }
    Ok(done_rx)
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops accepting, shuts
/// every connection down gracefully and waits up to `cfg.grace` for their open requests.
pub(crate) async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
    cfg: ServeConfig,
) -> Drained
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let permits = Arc::new(Semaphore::new(cfg.permits()));
    serve_on(listener, service, shutdown, cfg, permits, None).await
}

/// [`serve`] with the connection permits given: [`serve_workers`] shares one set.
async fn serve_on<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
    cfg: ServeConfig,
    permits: Arc<Semaphore>,
    balance: Option<(Arc<Balance>, usize)>,
) -> Drained
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Later heads: the connection's idle timer (see the module docs).
        .header_read_timeout(None)
        .max_buf_size(CONN_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(cfg.keep_alive)
        .keep_alive_timeout(cfg.keep_alive)
        .max_concurrent_streams(cfg.max_streams)
        .max_send_buf_size(CONN_BUF)
        .max_header_list_size(CONN_BUF as u32);
    let builder = Arc::new(builder);
    // Every connection holds a permit until it is closed: all permits back means
    // every connection is closed.
    let total = cfg.permits();
    let (drain_tx, drain_rx) = watch::channel(false);
    let (cut_tx, cut_rx) = watch::channel(false);
    let mut accept_errors = AcceptErrors::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        // A worker with more than its share of the open connections leaves the next ones
        // to the others for a moment (they are woken by the same new connection).
        if let Some((balance, me)) = &balance {
            let changed = balance.changed.notified();
            if balance.above_share(*me) {
                drop(permit);
                // Until a connection opens or closes anywhere (then the share is
                // checked again), at most BALANCE_PAUSE.
                tokio::select! {
                    () = changed => continue,
                    () = tokio::time::sleep(BALANCE_PAUSE) => continue,
                    () = &mut shutdown => break,
                }
            }
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    accept_errors.ok();
                    a
                }
                Err(e) => {
                    let pause = accept_errors.failed(&e);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let svc = TowerToHyperService::new(Track {
            inner: service.clone(),
            activity: activity.clone(),
            write_timeout: cfg.write_timeout,
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let task = ConnTask {
            peer,
            activity,
            header_timeout: cfg.header_timeout,
            idle_timeout: cfg.conn_idle_timeout,
            drain: drain_rx.clone(),
            cut: cut_rx.clone(),
        };
        let counted = balance.as_ref().map(|(b, me)| b.opened(*me));
        tokio::spawn(async move {
            let _permit = permit;
            let _counted = counted;
            task.run(conn).await;
        });
    }
    drop(listener);
    if worker() == 0 {
        tracing::info!("shutting down: no new connections; waiting for open requests to finish");
    }
    let _ = drain_tx.send(true);
    let all_closed = permits.acquire_many(total as u32);
    tokio::select! {
        _ = all_closed => {
            if worker() == 0 {
                tracing::info!("all connections closed");
            }
            Drained::Clean
        }
        () = tokio::time::sleep(cfg.grace) => {
            let n = total - permits.available_permits();
            let _ = cut_tx.send(true);
            if n == 0 {
                Drained::Clean
            } else {
                if worker() == 0 {
                    tracing::warn!(grace = ?cfg.grace, connections = n, "grace period over; cutting the remaining connections");
                }
                // Let the connection tasks see the cut before the runtime goes away.
                tokio::task::yield_now().await;
                Drained::Cut(n)
            }
        }
    }
}

/// The longest a worker above its share of connections leaves accepting to the others
/// before it checks again (it also checks at every connection opened or closed).
const BALANCE_PAUSE: Duration = Duration::from_millis(50);

/// Open connections per worker. All workers are woken by a new connection on the shared
/// socket and the first to call `accept` takes it, so without a rule the least busy
/// thread at each instant collects them: a burst of new connections can land mostly on
/// one worker and leave one core idle for the connections' whole life. A worker with
/// more than its share (the mean, plus one) lets the others accept for a moment.
pub(crate) struct Balance {
    open: Box<[AtomicUsize]>,
    /// Told of every connection opened or closed, for the workers that wait.
    changed: tokio::sync::Notify,
}

impl Balance {
    fn new(workers: usize) -> Self {
        Self {
            open: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn above_share(&self, me: usize) -> bool {
        let mine = self.open[me].load(Ordering::Relaxed);
        let total: usize = self.open.iter().map(|n| n.load(Ordering::Relaxed)).sum();
        mine > total / self.open.len() + 1
    }

    fn opened(self: &Arc<Self>, me: usize) -> Opened {
        self.open[me].fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
        Opened(self.clone(), me)
    }
}

/// One connection counted in [`Balance`] while it lives.
struct Opened(Arc<Balance>, usize);

impl Drop for Opened {
    fn drop(&mut self) {
        self.0.open[self.1].fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }
}

/// What woke a connection's task to act.
enum ConnEvent {
    Ended(Result<(), BoxError>),
    HeaderTimer,
    /// `Activity::epoch` moved: asked to close (or, after HTTP, an upgrade let go).
    Asked,
    IdleTimer,
    Drain,
    Cut,
}

/// The waker a connection's task hands its timers and watchers: it notes that one of
/// them is ready to be polled, then wakes the task. The connection itself wakes the task
/// several times per request; polling the others only when they asked for it keeps those
/// wake-ups to the connection's own work.
#[derive(Default)]
struct RareWake {
    woken: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for RareWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// What a connection's task needs besides the connection.
struct ConnTask {
    peer: std::net::SocketAddr,
    activity: Arc<Activity>,
    header_timeout: Duration,
    idle_timeout: Duration,
    drain: watch::Receiver<bool>,
    cut: watch::Receiver<bool>,
}

impl ConnTask {
    /// Drives `conn` until it closes, is closed for a timeout, or is cut.
    async fn run<C>(self, conn: C)
    where
        C: Future<Output = Result<(), BoxError>> + GracefulConn,
    {
        let ConnTask {
            peer,
            activity,
            header_timeout,
            idle_timeout,
            mut drain,
            mut cut,
        } = self;
        let mut epoch = activity.epoch.subscribe();
        // The connection is dropped at the end of this block: with it, hyper drops the
        // requests still in flight on it (a client that went away) and their guards.
        {
            let mut conn = std::pin::pin!(conn);
            let header_deadline = Instant::now() + header_timeout;
            let mut header_checked = false;
            let mut header_timer = std::pin::pin!(tokio::time::sleep_until(header_deadline));
            // When the connection was shut down gracefully, if it was.
            let mut shut_at: Option<Instant> = None;
            // How long the connection may have nothing open: HTTP/1 must send its next
            // head within the header timeout too.
            let idle_limit = || {
                if activity.http1.load(Ordering::Relaxed) {
                    idle_timeout.min(header_timeout)
                } else {
                    idle_timeout
                }
            };
            // Lazy: fires when the connection could have been idle for the idle limit
            // (once shut down: the linger), then checks (see `Activity`). The protocol
            // is not known yet: the first check comes at the shorter limit.
            let mut idle_timer = std::pin::pin!(tokio::time::sleep_until(
                Instant::now() + idle_timeout.min(header_timeout)
            ));
            let mut drained = std::pin::pin!(drain.wait_for(|d| *d).fuse());
            let mut cut_off = std::pin::pin!(cut.wait_for(|c| *c).fuse());
            // The connection future is polled at every wake-up of the task; the rest
            // (timers, the drain, the cut, a request to close) only after one of them
            // woke it, through `rare`'s waker (see `RareWake`).
            let rare = Arc::new(RareWake::default());
            let rare_waker = std::task::Waker::from(rare.clone());
            loop {
                if shut_at.is_none() && activity.close.load(Ordering::Acquire) {
                    tracing::debug!(%peer, "shutting the connection down as asked");
                    conn.as_mut().shut_down();
                    let now = Instant::now();
                    shut_at = Some(now);
                    idle_timer.as_mut().reset(now + CLOSE_LINGER);
                    continue;
                }
                let mut changed = std::pin::pin!(epoch.changed());
                // New or reset futures: poll each once.
                rare.woken.store(true, Ordering::Release);
                let draining = shut_at.is_none();
                let event = std::future::poll_fn(|cx| {
                    rare.task.register(cx.waker());
                    if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                        return Poll::Ready(ConnEvent::Ended(r));
                    }
                    if !rare.woken.swap(false, Ordering::AcqRel) {
                        return Poll::Pending;
                    }
                    let mut rcx = Context::from_waker(&rare_waker);
                    if !header_checked && header_timer.as_mut().poll(&mut rcx).is_ready() {
                        return Poll::Ready(ConnEvent::HeaderTimer);
                    }
                    if changed.as_mut().poll(&mut rcx).is_ready() {
                        return Poll::Ready(ConnEvent::Asked);
                    }
                    if idle_timer.as_mut().poll(&mut rcx).is_ready() {
                        return Poll::Ready(ConnEvent::IdleTimer);
                    }
                    if draining && drained.as_mut().poll(&mut rcx).is_ready() {
                        return Poll::Ready(ConnEvent::Drain);
                    }
                    if cut_off.as_mut().poll(&mut rcx).is_ready() {
                        return Poll::Ready(ConnEvent::Cut);
                    }
                    Poll::Pending
                })
                .await;
                match event {
                    ConnEvent::Ended(r) => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %ErrorChain(&*e), "connection ended with an error");
                        }
                        break;
                    }
                    ConnEvent::HeaderTimer => {
                        if activity.got_head.load(Ordering::Acquire) {
                            header_checked = true;
                        } else {
                            tracing::debug!(%peer, header_timeout = ?header_timeout, "closing a connection that sent no complete request head");
                            return;
                        }
                    }
                    ConnEvent::Asked => {}
                    ConnEvent::IdleTimer => {
                        let limit = if shut_at.is_some() {
                            CLOSE_LINGER
                        } else {
                            idle_limit()
                        };
                        let now = Instant::now();
                        if activity.open() > 0 {
                            idle_timer.as_mut().reset(now + limit);
                            continue;
                        }
                        let since = match shut_at {
                            Some(at) => activity.idle_since().max(at),
                            None => activity.idle_since(),
                        };
                        if now < since + limit {
                            idle_timer.as_mut().reset(since + limit);
                            continue;
                        }
                        if shut_at.is_some() {
                            tracing::debug!(%peer, "dropping a shut-down connection with nothing open");
                            return;
                        }
                        tracing::debug!(%peer, idle_timeout = ?limit, "shutting down an idle connection");
                        activity.close_soon();
                    }
                    ConnEvent::Drain => activity.close_soon(),
                    ConnEvent::Cut => {
                        tracing::debug!(%peer, "connection cut at the end of the grace period");
                        return;
                    }
                }
            }
        }
        // The connection is done with HTTP; an upgraded socket may still hold it open. A
        // drain asks it to close (its owner watches `ConnActivity::closing`).
        activity.after_http.store(true, Ordering::SeqCst);
        let mut asked = false;
        while activity.open() > 0 {
            tokio::select! {
                r = epoch.changed() => if r.is_err() { return },
                _ = drain.wait_for(|d| *d), if !asked => {
                    asked = true;
                    activity.close_soon();
                }
                _ = cut.wait_for(|c| *c) => return,
            }
        }
    }
}

/// A connection that can be shut down gracefully (hyper-util's `auto` connections).
trait GracefulConn {
    fn shut_down(self: Pin<&mut Self>);
}

impl<I, S, E, B> GracefulConn for auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    E: auto::HttpServerConnExec<S::Future, B>,
{
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// The per-connection service: marks the connection as having sent a request head (hyper
/// calls the service only once it has parsed one, for HTTP/1 and HTTP/2 alike), counts
/// the request as open until its response body ends, and times the body's writes.
#[derive(Clone)]
struct Track<S> {
    inner: S,
    activity: Arc<Activity>,
    write_timeout: Duration,
}

impl<S, ReqB, B> Service<Request<ReqB>> for Track<S>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        self.activity.got_head.store(true, Ordering::Release);
        if req.version() < http::Version::HTTP_2 {
            self.activity.http1.store(true, Ordering::Relaxed);
        }
        let busy = self.activity.busy();
        if req.extensions().is_empty() {
            *req.extensions_mut() = presized_extensions();
        }
        Handoff::of(req.extensions_mut()).conn = Some(ConnActivity(self.activity.clone()));
        TrackFuture {
            inner: self.inner.call(req),
            busy: Some(busy),
            write_timeout: self.write_timeout,
        }
    }
}

/// An empty [`http::Extensions`] with room for fourteen values: a request gets six to
/// nine on its way through the proxy (the proxy's [`Handoff`], the tenant, the body's
/// signals, the sticky layer's session, source, key, pin and, for an upgrade, its slot).
/// Into an empty map they would be inserted with one or two reallocations and rehashes
/// (at the fourth and the eighth); a clone of a map that once held eight values keeps
/// its sixteen slots, so this costs one allocation.
fn presized_extensions() -> http::Extensions {
    static PROTO: std::sync::OnceLock<http::Extensions> = std::sync::OnceLock::new();
    PROTO
        .get_or_init(|| {
            let mut e = http::Extensions::new();
            e.insert(0u8);
            e.insert(0u16);
            e.insert(0u32);
            e.insert(0u64);
            e.insert(0u128);
            e.insert(0i8);
            e.insert(0i16);
            e.insert(0i32);
            e.clear();
            e
        })
        .clone()
}

pin_project_lite::pin_project! {
    /// [`Track`]'s future: the request stays open, then its response body.
    struct TrackFuture<F> {
        #[pin]
        inner: F,
        busy: Option<Busy>,
        write_timeout: Duration,
    }
}

impl<F, B, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx))?;
        let busy = this.busy.take().expect("polled after completion");
        if res.extensions().get::<CloseConnection>().is_some() {
            busy.0.close_soon();
        }
        let write_timeout = *this.write_timeout;
        Poll::Ready(Ok(
            res.map(|body| TrackedBody::new(body, busy, write_timeout))
        ))
    }
}

/// A response body that keeps its request open on the connection until it ends or is
/// dropped, and that is dropped early (cancelling what it streams from) when hyper does
/// not come back for the next frame within the write timeout.
pub(crate) struct TrackedBody<B> {
    slot: Arc<Slot<B>>,
    write_timeout: Duration,
    /// The write-timeout watchdog, started with the first frame.
    watchdog: Option<AbortHandle>,
    /// `size_hint` and `is_end_stream` as they were when the body was last polled (or
    /// built): read without the lock.
    hint: SizeHint,
    ended: bool,
}

struct Slot<B> {
    /// The body and its guard; `None` once it ended or was cut for a stalled write.
    live: Mutex<Option<(Pin<Box<B>>, Busy)>>,
    /// When the body last handed hyper a frame that hyper has not come back for yet
    /// (nanoseconds since `base`, plus 1); 0 when hyper is not owed a poll.
    waiting_since: AtomicU64,
    base: Instant,
    /// The body was cut for a stalled write.
    stalled: AtomicBool,
}

/// The client did not read the response for the write timeout.
#[derive(Debug)]
pub(crate) struct WriteStalled(pub(crate) Duration);

impl fmt::Display for WriteStalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the client did not read the response for {:?} (--idle-timeout)",
            self.0
        )
    }
}

impl std::error::Error for WriteStalled {}

impl<B: Body> TrackedBody<B> {
    fn new(body: B, busy: Busy, write_timeout: Duration) -> Self {
        let hint = body.size_hint();
        let ended = body.is_end_stream();
        Self {
            slot: Arc::new(Slot {
                live: Mutex::new(Some((Box::pin(body), busy))),
                waiting_since: AtomicU64::new(0),
                base: Instant::now(),
                stalled: AtomicBool::new(false),
            }),
            write_timeout,
            watchdog: None,
            hint,
            ended,
        }
    }
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        let live = self.slot.live.lock().map(|mut l| l.take());
        drop(live);
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.get_mut();
        let slot = &this.slot;
        slot.waiting_since.store(0, Ordering::Release);
        let mut live = slot.live.lock().unwrap_or_else(|p| p.into_inner());
        let Some((body, _)) = live.as_mut() else {
            this.ended = true;
            if slot.stalled.swap(false, Ordering::AcqRel) {
                return Poll::Ready(Some(Err(Box::new(WriteStalled(this.write_timeout)))));
            }
            return Poll::Ready(None);
        };
        let frame = ready!(body.as_mut().poll_frame(cx));
        this.hint = body.size_hint();
        this.ended = body.is_end_stream();
        match frame {
            Some(Ok(frame)) => {
                if !this.ended {
                    let since = slot.base.elapsed().as_nanos() as u64 + 1;
                    slot.waiting_since.store(since, Ordering::Release);
                    if this.watchdog.is_none() {
                        let watch = watchdog(Arc::downgrade(slot), this.write_timeout);
                        this.watchdog = Some(tokio::spawn(watch).abort_handle());
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                let done = live.take();
                drop(live);
                drop(done);
                this.ended = true;
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                let done = live.take();
                drop(live);
                drop(done);
                this.ended = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && !self.slot.stalled.load(Ordering::Acquire)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Cuts the body in `slot` when hyper owes it a poll for longer than `timeout`.
async fn watchdog<B>(slot: Weak<Slot<B>>, timeout: Duration) {
    loop {
        let (since, wake) = {
            let Some(s) = slot.upgrade() else { return };
            let since = s.waiting_since.load(Ordering::Acquire);
            let wake = if since == 0 {
                Instant::now() + timeout
            } else {
                s.base + Duration::from_nanos(since - 1) + timeout
            };
            (since, wake)
        };
        tokio::time::sleep_until(wake).await;
        let Some(s) = slot.upgrade() else { return };
        if since == 0 || s.waiting_since.load(Ordering::Acquire) != since {
            continue;
        }
        let cut = s.live.lock().map(|mut l| l.take()).ok().flatten();
        if let Some((body, busy)) = cut {
            s.stalled.store(true, Ordering::Release);
            tracing::warn!(
                write_timeout = ?timeout,
                "the client stopped reading a response; cancelling its upstream request and closing the connection"
            );
            busy.0.close_soon();
            drop(body);
            drop(busy);
        }
        return;
    }
}

/// Backoff and rate-limited logging of accept failures.
#[derive(Default)]
struct AcceptErrors {
    /// Consecutive failures.
    streak: u32,
    /// When a failure was last logged.
    logged: Option<Instant>,
    /// Failures since then that were not logged.
    quiet: u64,
}

impl AcceptErrors {
    fn ok(&mut self) {
        self.streak = 0;
    }

    /// Records a failure; returns how long to pause (10 ms doubling up to 1 s).
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.streak = self.streak.saturating_add(1);
        let now = Instant::now();
        if self
            .logged
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_EVERY)
        {
            tracing::warn!(error = %e, not_logged = self.quiet, "accept failed; backing off");
            self.logged = Some(now);
            self.quiet = 0;
        } else {
            self.quiet += 1;
        }
        Duration::from_millis(10u64 << self.streak.min(7).saturating_sub(1))
            .min(Duration::from_secs(1))
    }
}
