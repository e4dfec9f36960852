//! Pooled HTTP/1.1 connections to plain-`http://` accounts, one pool per accept worker.
//!
//! hyper-util's pooled client does more per request than a gateway in front of a handful
//! of accounts needs: a hash of the scheme and authority to find the pool (twice: out and
//! back in), a checkout future raced against a lazy connect, and a task spawned per
//! streamed response only to put its connection back once it is idle again. Here the
//! pool is one list of idle connections per account, indexed by the account, and a
//! connection goes back when the response body that rode it is dropped (see [`Lease`]):
//! by then hyper has read the body's end and the connection is ready for the next
//! request, or (a body dropped before its end) hyper is draining or closing it. Only a
//! connection hyper reports ready is handed out; closed and expired ones are dropped
//! when a request looks for one, and by the sweep.
//!
//! Kept from hyper-util's client, deliberately:
//! - the connector (`HttpConnector`: no Nagle, a 10 s connect timeout), so a connection
//!   error reads the same, and a local one (descriptors) is still told apart;
//! - the read buffer bound (`UPSTREAM_BUF`);
//! - a request that a reused connection could not take (it closed in the meantime) is
//!   sent again on another connection: it never left the proxy, so no account saw it;
//! - idle connections are closed after `IDLE_TIMEOUT` (90 s), by a sweep every
//!   `IDLE_TIMEOUT / 3` on the worker's runtime and whenever a request looks for one.
//!
//! Bounds: at most [`MAX_IDLE`] kept connections per account per worker (one more goes
//! back closed; the count includes closed and draining ones until they are found out,
//! at most one sweep later); the others are in use, one per upstream request in flight,
//! and those are bounded by the client connections the proxy admits
//! (`--max-connections`) times their streams (one for HTTP/1, `--max-streams` for
//! HTTP/2). As with hyper-util's pool before it, idle upstream sockets are not counted
//! in the descriptor budget `--max-connections` is fitted to.
//!
//! `https://` accounts keep hyper-util's client (TLS, and HTTP/2 by ALPN), and so do
//! WebSocket upgrades (never pooled).

use std::error::Error as StdError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::Service;

use super::BoxError;

/// How long a connection may sit idle before it is closed (hyper-util's default, which
/// the proxy used before this pool).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Most idle connections kept per account per worker.
pub(crate) const MAX_IDLE: usize = 1024;

/// An upstream request that failed before its response head.
#[derive(Debug)]
pub(crate) struct Transport {
    /// The connection could not be opened (the account is unreachable).
    connect: bool,
    error: BoxError,
}

impl Transport {
    /// The account could not be reached: no connection was opened.
    pub(crate) fn is_connect(&self) -> bool {
        self.connect
    }

    /// What failed, with its sources.
    pub(crate) fn error(&self) -> &(dyn StdError + 'static) {
        &*self.error
    }

    fn connect(error: impl Into<BoxError>) -> Self {
        Self {
            connect: true,
            error: error.into(),
        }
    }
}

impl From<hyper_util::client::legacy::Error> for Transport {
    fn from(e: hyper_util::client::legacy::Error) -> Self {
        Self {
            connect: e.is_connect(),
            error: Box::new(e),
        }
    }
}

struct Idle<B> {
    tx: http1::SendRequest<B>,
    since: Instant,
}

impl<B> Idle<B> {
    /// Closed by its peer or hyper, or idle for [`IDLE_TIMEOUT`]: not to be kept.
    fn stale(&self) -> bool {
        self.tx.is_closed() || self.since.elapsed() >= IDLE_TIMEOUT
    }
}

/// One worker's connections to the plain-`http://` accounts (see the module docs).
pub(crate) struct Pool<B> {
    /// Idle connections per account (by the picker's index), most recently used last.
    idle: Box<[Mutex<Vec<Idle<B>>>]>,
    connector: HttpConnector,
    /// The idle sweep has been started (on the runtime of this pool's first connection).
    sweeping: AtomicBool,
}

impl<B> Pool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A pool for `accounts` accounts, connecting with `connector`.
    pub(crate) fn new(accounts: usize, connector: HttpConnector) -> Self {
        Self {
            idle: (0..accounts).map(|_| Mutex::new(Vec::new())).collect(),
            connector,
            sweeping: AtomicBool::new(false),
        }
    }

    /// Sends `req` (origin-form, with its `Host`) to account `i` at `uri` (its absolute
    /// URL, to connect to), on an idle connection or a new one. The connection comes
    /// back to the pool when the returned [`Lease`] is dropped.
    ///
    /// Not an `async fn`: an async fn's future keeps its arguments twice (as arguments
    /// and as the locals its body moves them into), and the request is the largest
    /// thing in every request's future; this one holds it once.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub(crate) fn send(
        self: &Arc<Self>,
        i: usize,
        uri: &Uri,
        mut req: Request<B>,
    ) -> impl Future<Output = Result<(Response<Incoming>, Lease<B>), Transport>> {
        async move {
            loop {
                let (mut tx, reused) = match self.checkout(i) {
                    Some(tx) => (tx, true),
                    // Boxed: connecting is the rare case, and its future would otherwise
                    // add to every request's (this one is inside the boxed future of each).
                    None => (Box::pin(self.connect(uri)).await?, false),
                };
                match tx.try_send_request(req).await {
                    Ok(res) => {
                        let lease = Lease {
                            pool: Arc::downgrade(self),
                            i,
                            tx: Some(tx),
                        };
                        return Ok((res, lease));
                    }
                    Err(mut e) => match e.take_message() {
                        // The idle connection closed before it took the request: nothing
                        // was sent, so it goes out again. A new connection ends this loop.
                        Some(back) if reused => req = back,
                        _ => {
                            return Err(Transport {
                                connect: false,
                                error: Box::new(e.into_error()),
                            });
                        }
                    },
                }
            }
        }
    }

    /// The most recently used idle connection to account `i` that is ready for a
    /// request, closing the expired and closed ones met on the way.
    fn checkout(&self, i: usize) -> Option<http1::SendRequest<B>> {
        let mut idle = self.idle[i].lock().unwrap_or_else(PoisonError::into_inner);
        let mut k = idle.len();
        while k > 0 {
            k -= 1;
            let c = &idle[k];
            if c.stale() {
                idle.swap_remove(k);
            } else if c.tx.is_ready() {
                return Some(idle.swap_remove(k).tx);
            }
            // Else its connection task has not yet taken in the end of the last
            // response: left for a later request.
        }
        None
    }

    async fn connect(self: &Arc<Self>, uri: &Uri) -> Result<http1::SendRequest<B>, Transport> {
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
        let io = self
            .connector
            .clone()
            .call(uri.clone())
            .await
            .map_err(Transport::connect)?;
        let (tx, conn) = http1::Builder::new()
            .max_buf_size(super::failover::UPSTREAM_BUF)
            .handshake(io)
            .await
            .map_err(Transport::connect)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %super::ErrorChain(&e), "upstream connection failed");
            }
        });
        Ok(tx)
    }
}

impl<B> Pool<B> {
    /// Keeps `tx` as an idle connection to account `i`, unless [`MAX_IDLE`] are kept.
    fn put(&self, i: usize, tx: http1::SendRequest<B>) {
        let mut idle = self.idle[i].lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    /// Closes the idle connections that expired or closed.
    fn sweep_once(&self) {
        for list in &self.idle {
            list.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|c| !c.stale());
        }
    }
}

/// Sweeps `pool`'s idle connections every third of [`IDLE_TIMEOUT`] while it exists.
async fn sweep<B>(pool: Weak<Pool<B>>) {
    let mut every = tokio::time::interval(IDLE_TIMEOUT / 3);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sweep_once();
    }
}

/// A request's hold on its connection: dropped with the response body (or with the
/// response, if it fails before its body is read), it puts the connection back in the
/// pool unless it is closed. A body dropped before its end closes the connection (hyper
/// cannot reuse it), which the pool then finds closed.
pub(crate) struct Lease<B> {
    pool: Weak<Pool<B>>,
    i: usize,
    tx: Option<http1::SendRequest<B>>,
}

impl<B> Drop for Lease<B> {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        if tx.is_closed() {
            return;
        }
        if let Some(pool) = self.pool.upgrade() {
            pool.put(self.i, tx);
        }
    }
}
