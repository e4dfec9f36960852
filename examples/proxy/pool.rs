//! Pooled HTTP/1.1 connections to plain-`http://` accounts, one pool per accept worker.
//!
//! hyper-util's pooled client does more per request than a gateway in front of a handful
//! of accounts needs: a hash of the scheme and authority to find the pool (twice: out and
//! back in), a checkout future raced against a lazy connect, a task spawned per
//! streamed response only to put its connection back once it is idle again, and a task
//! per connection that reads the response and hands its body over one frame at a time,
//! a switch between tasks for every frame. Here the pool is one list of idle connections
//! per account, indexed by the account, and a connection is driven by whoever holds it
//! (see [`Lease`]): the request's own task, which reads the response head and then, in
//! the body's polls ([`Driven`]), every frame the upstream sent, with no other task in
//! between. A connection goes back when the response body that rode it is dropped: by
//! then hyper has read the body's end and the connection is ready for the next request,
//! or (a body dropped before its end) it is handed to a task of its own that drains or
//! closes it. Only a connection hyper reports ready is handed out; closed and expired
//! ones are dropped when a request looks for one, and by the sweep. An idle connection
//! has nobody to wake: the checkout and the sweep let it take in what arrived meanwhile
//! (its peer's close) before they look at it, so a socket the account closed is
//! released at the latest by the next sweep.
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
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
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

/// A connection's I/O: hyper's HTTP/1 state machine over the socket, as a future that
/// ends when the connection closes (logging why, if it failed). It is polled by whoever
/// holds the connection: the request's own task while the request is in flight (see
/// [`Lease`]), the pool's checkout and sweep while it is idle (with no waker: nobody
/// waits on an idle connection), or a task of its own for a response dropped before its
/// end.
type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Polls `driver` once with a waker that does nothing; `true` when the connection has
/// closed.
fn turn_quietly(driver: &mut Driver) -> bool {
    driver
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
        .is_ready()
}

struct Idle<B> {
    tx: http1::SendRequest<B>,
    /// `None`: the connection is driven by a task of its own (it was handed back before
    /// its response's end, and reads the rest there).
    driver: Option<Driver>,
    since: Instant,
}

impl<B> Idle<B> {
    /// Closed by its peer or hyper, or idle for [`IDLE_TIMEOUT`]: not to be kept. First
    /// lets the connection take in what arrived while it sat idle (its peer's close).
    fn stale(&mut self) -> bool {
        if let Some(driver) = &mut self.driver
            && turn_quietly(driver)
        {
            return true;
        }
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
    /// URL, to connect to), on an idle connection or a new one, and waits for the
    /// response head, driving the connection from this task. The connection comes back
    /// to the pool when the returned [`Lease`] is dropped; until then whoever holds it
    /// drives it (the response body does: [`Driven`]).
    pub(crate) async fn send(
        self: &Arc<Self>,
        i: usize,
        uri: &Uri,
        mut req: Request<B>,
    ) -> Result<(Response<Incoming>, Lease<B>), Transport> {
        loop {
            let (mut tx, driver, reused) = match self.checkout(i) {
                Some((tx, driver)) => (tx, driver, true),
                // Boxed: a new connection's handshake is rare, and would otherwise make
                // every request's future larger.
                None => {
                    let (tx, driver) = Box::pin(self.connect(uri)).await?;
                    (tx, Some(driver), false)
                }
            };
            let mut response = std::pin::pin!(tx.try_send_request(req));
            let mut lease = Lease {
                pool: Arc::downgrade(self),
                i,
                tx: Some(tx),
                driver,
            };
            let sent = poll_fn(|cx| {
                lease.drive(cx);
                response.as_mut().poll(cx)
            })
            .await;
            match sent {
                Ok(res) => return Ok((res, lease)),
                Err(mut e) => match e.take_message() {
                    // The idle connection closed before it took the request: nothing was
                    // sent, so it goes out again. A new connection ends this loop.
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

    /// The most recently used idle connection to account `i` that is ready for a
    /// request, closing the expired and closed ones met on the way.
    fn checkout(&self, i: usize) -> Option<(http1::SendRequest<B>, Option<Driver>)> {
        let mut idle = self.idle[i].lock().unwrap_or_else(PoisonError::into_inner);
        let mut k = idle.len();
        while k > 0 {
            k -= 1;
            let c = &mut idle[k];
            if c.stale() {
                idle.swap_remove(k);
            } else if c.tx.is_ready() {
                let c = idle.swap_remove(k);
                return Some((c.tx, c.driver));
            }
            // Else its connection (on a task of its own) is still reading the end of a
            // response dropped before it: left for a later request.
        }
        None
    }

    async fn connect(
        self: &Arc<Self>,
        uri: &Uri,
    ) -> Result<(http1::SendRequest<B>, Driver), Transport> {
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
        let driver: Driver = Box::pin(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %super::ErrorChain(&e), "upstream connection failed");
            }
        });
        Ok((tx, driver))
    }
}

impl<B> Pool<B> {
    /// Keeps `tx` as an idle connection to account `i`, unless [`MAX_IDLE`] are kept.
    fn put(&self, i: usize, tx: http1::SendRequest<B>, driver: Option<Driver>) {
        let mut idle = self.idle[i].lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                tx,
                driver,
                since: Instant::now(),
            });
        }
    }

    /// Closes the idle connections that expired or closed.
    fn sweep_once(&self) {
        for list in &self.idle {
            list.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain_mut(|c| !c.stale());
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

/// A request's hold on its connection, and the connection's driver while the request
/// is in flight: the response body polls it ([`Driven`]), so the upstream's frames are
/// read by the task that hands them on, with no task switch per frame.
///
/// Dropped with the response body (or with the response, if it fails before its body
/// is read), it puts the connection back in the pool: ready for the next request when
/// the response was read to its end; else (a body dropped before its end) driven by a
/// task of its own, as hyper-util's client does, until hyper has drained or closed it.
pub(crate) struct Lease<B> {
    pool: Weak<Pool<B>>,
    i: usize,
    tx: Option<http1::SendRequest<B>>,
    /// `None` once the connection closed, or while a task of its own drives it.
    driver: Option<Driver>,
}

impl<B> Lease<B> {
    /// Lets the connection read and write what it can, waking `cx` when it can do more.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = &mut self.driver
            && driver.as_mut().poll(cx).is_ready()
        {
            self.driver = None;
        }
    }
}

impl<B> Drop for Lease<B> {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        let mut driver = self.driver.take();
        // One more turn when hyper has the response's end read but is not yet ready for
        // the next request (usually it is: the poll that read the end went on to that).
        if !tx.is_ready()
            && let Some(d) = &mut driver
            && turn_quietly(d)
        {
            return;
        }
        if tx.is_closed() {
            return;
        }
        if let Some(d) = driver.take_if(|_| !tx.is_ready()) {
            // A response dropped before its end: hyper reads the rest (or closes) on a
            // task of its own. Without a runtime (shutting down) it is just closed.
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(d)),
                Err(_) => return,
            }
        }
        if let Some(pool) = self.pool.upgrade() {
            pool.put(self.i, tx, driver);
        }
    }
}

/// What [`Driven`] needs of a [`Lease`] whatever its request body type.
trait Drive: Send {
    fn drive(&mut self, cx: &mut Context<'_>);
}

impl<B: Send> Drive for Lease<B> {
    fn drive(&mut self, cx: &mut Context<'_>) {
        Lease::drive(self, cx);
    }
}

/// An upstream response body, and the connection that carries it when the pool's (the
/// body polls the connection before itself, see [`Lease`]); hyper-util's client drives
/// its connections on tasks of their own.
pub(crate) struct Driven {
    body: Incoming,
    lease: Option<Box<dyn Drive>>,
}

impl Driven {
    /// A body on a connection of the pool's, driven through `lease`.
    pub(crate) fn new<B: Send + 'static>(body: Incoming, lease: Lease<B>) -> Self {
        Self {
            body,
            lease: Some(Box::new(lease)),
        }
    }

    /// A body whose connection is driven elsewhere.
    pub(crate) fn elsewhere(body: Incoming) -> Self {
        Self { body, lease: None }
    }

    /// Whether this body's polls drive its connection: then a `Pending` means the
    /// upstream sent nothing more yet, not that another task has a frame to hand over.
    pub(crate) fn drives_its_connection(&self) -> bool {
        self.lease.is_some()
    }
}

impl Body for Driven {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(lease) = &mut this.lease {
            lease.drive(cx);
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
