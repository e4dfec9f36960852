//! The accept loop: HTTP/1.1 and HTTP/2 on one port, hardened against idle, silent and
//! slow clients, with graceful shutdown.
//!
//! - `--header-timeout`: a connection that has not sent a complete request head within
//!   that time is closed, whatever it speaks: HTTP/1, HTTP/2 (preface and HEADERS), or
//!   nothing at all. hyper's HTTP/1 `header_read_timeout` covers neither HTTP/2 nor a
//!   socket that sends nothing before protocol detection, so each connection is raced
//!   here against a timer that only its first request's head stops. Later request heads
//!   on an HTTP/1 keep-alive connection are covered by hyper's own timeout.
//! - HTTP/2 keep-alive pings find dead peers; `--max-connections` bounds the open
//!   connections (a semaphore around `accept`; the excess waits in the kernel's backlog).
//! - Small write buffers (HTTP/1 `max_buf_size`, HTTP/2 `max_send_buf_size`): a client
//!   that stops reading holds at most about [`CONN_BUF`] of response per connection.
//! - Accept failures (e.g. out of file descriptors) back off and are logged at most once
//!   per [`ACCEPT_LOG_EVERY`], with the count of those not logged.
//! - Shutdown: stop accepting, let open requests finish for up to `grace`, then cut the
//!   rest; [`Drained`] says which happened (the process's exit code).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower::Service;

use super::{BoxError, ErrorChain};

/// Response bytes buffered per connection (HTTP/1 write buffer, HTTP/2 send buffer);
/// hyper's defaults are about 400 KiB each. Also bounds an HTTP/1 request head.
pub(crate) const CONN_BUF: usize = 64 * 1024;

/// At most one accept-failure log line per this period.
pub(crate) const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// How the accept loop runs.
#[derive(Clone, Debug)]
pub(crate) struct ServeConfig {
    /// Time for a new connection to send a complete request head.
    pub(crate) header_timeout: Duration,
    /// Most connections open at once.
    pub(crate) max_connections: usize,
    /// How long open requests may take to finish after shutdown begins.
    pub(crate) grace: Duration,
    /// HTTP/2 keep-alive ping interval (the peer must answer within the same time).
    pub(crate) keep_alive: Duration,
}

impl ServeConfig {
    /// Defaults: 30 s header timeout, 10 000 connections, 20 s pings, `grace`.
    pub(crate) fn new(grace: Duration) -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            grace,
            keep_alive: Duration::from_secs(20),
        }
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

/// Serves `service` on `listener` until `shutdown` resolves, then stops accepting and
/// waits up to `cfg.grace` for the open connections to finish their requests.
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .max_buf_size(CONN_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(cfg.keep_alive)
        .keep_alive_timeout(cfg.keep_alive)
        .max_send_buf_size(CONN_BUF)
        .max_header_list_size(CONN_BUF as u32);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let open = Arc::new(AtomicUsize::new(0));
    let (cut_tx, cut_rx) = watch::channel(false);
    let mut accept_errors = AcceptErrors::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
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
        let got_head = Arc::new(AtomicBool::new(false));
        let svc = TowerToHyperService::new(MarkHead {
            inner: service.clone(),
            got_head: got_head.clone(),
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        let header_timeout = cfg.header_timeout;
        let mut cut = cut_rx.clone();
        let open = open.clone();
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            let deadline = Instant::now() + header_timeout;
            let head_timer = async {
                tokio::time::sleep_until(deadline).await;
                if got_head.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                r = &mut conn => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %ErrorChain(&*e), "connection ended with an error");
                    }
                }
                () = head_timer => {
                    tracing::debug!(%peer, ?header_timeout, "closing a connection that sent no complete request head");
                }
                _ = cut.wait_for(|c| *c) => {
                    tracing::debug!(%peer, "connection cut at the end of the grace period");
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for open requests to finish");
    tokio::select! {
        () = graceful.shutdown() => {
            tracing::info!("all connections closed");
            Drained::Clean
        }
        () = tokio::time::sleep(cfg.grace) => {
            let n = open.load(Ordering::Relaxed);
            let _ = cut_tx.send(true);
            if n == 0 {
                Drained::Clean
            } else {
                tracing::warn!(grace = ?cfg.grace, connections = n, "grace period over; cutting the remaining connections");
                // Let the connection tasks see the cut before the runtime goes away.
                tokio::task::yield_now().await;
                Drained::Cut(n)
            }
        }
    }
}

/// Marks its connection as having sent a complete request head (hyper calls the service
/// only once it has parsed one, for HTTP/1 and HTTP/2 alike).
#[derive(Clone)]
struct MarkHead<S> {
    inner: S,
    got_head: Arc<AtomicBool>,
}

impl<S, R> Service<R> for MarkHead<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.got_head.store(true, Ordering::Relaxed);
        self.inner.call(req)
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
