//! The response side of an attempt: peeking the first data chunk under
//! `--upstream-timeout`, and the body handed to the client under `--idle-timeout`; and
//! the client's request body, each frame under `--idle-timeout` too and the whole of it
//! under `--body-timeout`.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};
use tower::Service;
use tower_sticky_session::AuthId;

use super::broken::Watch;
use super::gathered::{GATHER_MAX, Gathered, gather_settled};
use super::handoff::Handoff;
use super::picker::InFlight;
use super::serve::CloseConnection;
use super::{BoxError, ErrorChain};

/// How the wait for an upstream body's first data chunk ended.
pub(crate) enum First {
    /// A non-empty data frame.
    Data(Bytes),
    /// The body ended without data (or with trailers only).
    Empty,
    /// The body failed before any data.
    Failed(hyper::Error),
}

/// Waits for the first non-empty data frame of `body` (empty data frames are skipped;
/// trailers before any data mean the stream is empty).
pub(crate) async fn first_data(body: &mut Incoming) -> First {
    loop {
        let frame = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        match frame {
            None => return First::Empty,
            Some(Err(e)) => return First::Failed(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => return First::Data(data),
                Err(_) => return First::Empty,
            },
        }
    }
}

/// A response body's silence exceeded `--idle-timeout`.
#[derive(Debug)]
pub(crate) struct IdleTimeout(pub(crate) Duration);

impl fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no data from the upstream for {:?} (--idle-timeout)",
            self.0
        )
    }
}

impl std::error::Error for IdleTimeout {}

/// The proxy's response body: the upstream's body (its first chunk, already read, then
/// the rest as it arrives, each frame within `--idle-timeout`), or a short message of the
/// proxy's own.
///
/// Upstream data frames that are ready together are handed on as one frame (up to
/// [`GATHER_MAX`]), so hyper writes them to the client in one system call instead of one
/// per frame: an account that sends several server-sent events at once (or the whole
/// answer) reaches the client in one write. The upstream connection is driven by a task
/// of its own that hands over one frame at a time, so after a frame the body *yields*
/// once (wakes itself and returns `Pending`) to let that task deliver the next one; it
/// goes on gathering only while a yield brought new data, and hands on what it has as
/// soon as one did not — a slow stream's frames are never held back waiting for more.
/// [`ProxyBody::gather_ready`] does the same for the first chunk before the response is
/// returned, so the response head goes out with it.
///
/// An upstream body that fails or falls silent yields an error, so hyper aborts the
/// response to the client instead of ending it cleanly; the data received before the
/// failure is written first.
pub(crate) enum ProxyBody {
    /// Streamed from the account.
    Upstream(Box<Streamed>),
    /// A message of the proxy's own (e.g. a 502).
    Message {
        /// The message, until it is sent.
        msg: Option<Bytes>,
    },
}

/// The state of a streamed upstream body.
pub(crate) struct Streamed {
    /// Data read from the upstream and not yet handed on: the first chunk (read before
    /// the response was returned) and the frames gathered with it.
    ready: Gathered,
    body: Incoming,
    idle_for: Duration,
    /// When the upstream's silence reaches `--idle-timeout`: `idle_for` after the first
    /// data, then after each frame handed on.
    idle_at: Instant,
    /// The timer for `idle_at`, made (or set) only when the body has to wait for the
    /// upstream: a body that is there whole (most answers that came in one read) never
    /// builds, registers or cancels one.
    idle: Option<Pin<Box<Sleep>>>,
    /// The account, for the log.
    upstream: AuthId,
    /// The upstream body's error, held back for one poll (see `poll_frame`).
    failed: Option<BoxError>,
    /// The upstream body's error, seen while gathering: handed on after `ready`.
    failing: Option<BoxError>,
    /// The upstream's trailers, seen while gathering: handed on after `ready`.
    trailers: Option<HeaderMap>,
    /// The upstream body ended (seen while gathering).
    ended: bool,
    /// New data arrived since the body last yielded: worth yielding again.
    grew: bool,
    /// Counts the request as in flight on its account while the body is open.
    _in_flight: Option<InFlight>,
    /// Told how the stream ended, if it ends by itself (`--max-broken-streams`).
    watch: Option<Watch>,
}

impl ProxyBody {
    /// `body` (after `first`, if given), timed by `idle_for`.
    pub(crate) fn upstream(
        first: Option<Bytes>,
        body: Incoming,
        idle_for: Duration,
        upstream: AuthId,
        in_flight: Option<InFlight>,
    ) -> Self {
        let mut ready = Gathered::default();
        if let Some(first) = first {
            ready.push(first);
        }
        ProxyBody::Upstream(Box::new(Streamed {
            ready,
            body,
            idle_for,
            idle_at: Instant::now() + idle_for,
            idle: None,
            upstream,
            failed: None,
            failing: None,
            trailers: None,
            ended: false,
            grew: true,
            _in_flight: in_flight,
            watch: None,
        }))
    }

    /// Reports to `watch` how the upstream body ends: cleanly, or broken by the account
    /// (a body error or `--idle-timeout`). A body the proxy drops reports nothing.
    pub(crate) fn watched(mut self, watch: Option<Watch>) -> Self {
        if let ProxyBody::Upstream(s) = &mut self {
            s.watch = watch;
        }
        self
    }

    /// A message of the proxy's own.
    pub(crate) fn message(msg: impl Into<Bytes>) -> Self {
        ProxyBody::Message {
            msg: Some(msg.into()),
        }
    }

    /// Gathers the upstream frames that are ready now (yielding while that brings more,
    /// see the type's docs) behind the first chunk, before the response is returned: the
    /// response head and the data are then written to the client at once. Never waits
    /// for data that has not arrived; an error or the end of the upstream body is kept
    /// for `poll_frame`, after the data.
    pub(crate) async fn gather_ready(&mut self) {
        let ProxyBody::Upstream(s) = self else { return };
        if s.ready.is_empty() {
            return;
        }
        gather_settled(|cx| s.gather(cx)).await;
    }
}

impl Streamed {
    /// Appends the upstream's ready data frames to `ready`, up to [`GATHER_MAX`]; stops at
    /// trailers, an error or the end (kept for later). Returns `true` when the caller
    /// should yield and come back: the upstream had nothing ready, but the last yield
    /// brought data, so its connection task may well have more.
    fn gather(&mut self, cx: &mut Context<'_>) -> bool {
        while self.ready.len() < GATHER_MAX
            && !self.ended
            && self.failing.is_none()
            && self.trailers.is_none()
        {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if !data.is_empty() {
                            self.ready.push(data);
                            self.grew = true;
                        }
                    }
                    Err(frame) => self.trailers = frame.into_trailers().ok(),
                },
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(
                        upstream = %self.upstream, error = %ErrorChain(&e),
                        "upstream response body failed; aborting the client's response"
                    );
                    self.failing = Some(Box::new(e));
                }
                Poll::Ready(None) => self.ended = true,
                Poll::Pending => return std::mem::take(&mut self.grew),
            }
        }
        false
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if self.ready.is_empty() {
            if let Some(e) = self.failing.take() {
                // The data before the error has been handed on: fail as below.
                self.failed = Some(e);
                if let Some(w) = self.watch.take() {
                    w.broke("body error");
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if let Some(trailers) = self.trailers.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            if self.ended {
                if let Some(w) = self.watch.take() {
                    w.ended();
                }
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    let at = self.idle_at;
                    let idle = match &mut self.idle {
                        Some(idle) => {
                            if idle.deadline() != at {
                                idle.as_mut().reset(at);
                            }
                            idle
                        }
                        None => self.idle.insert(Box::pin(tokio::time::sleep_until(at))),
                    };
                    ready!(idle.as_mut().poll(cx));
                    tracing::warn!(
                        upstream = %self.upstream, idle_timeout = ?self.idle_for,
                        "upstream response body fell silent; aborting the client's response"
                    );
                    self.idle_at = Instant::now() + self.idle_for;
                    if let Some(w) = self.watch.take() {
                        w.broke("idle timeout");
                    }
                    return Poll::Ready(Some(Err(Box::new(IdleTimeout(self.idle_for)))));
                }
            };
            match frame {
                Some(Err(e)) => {
                    tracing::warn!(
                        upstream = %self.upstream, error = %ErrorChain(&e),
                        "upstream response body failed; aborting the client's response"
                    );
                    // hyper's HTTP/1 server discards what it has buffered but not yet
                    // written when a body fails. Yield once (and ask to be polled again
                    // at once) so it flushes the head and the chunks already received:
                    // the client then sees exactly where the upstream broke.
                    self.failed = Some(Box::new(e));
                    if let Some(w) = self.watch.take() {
                        w.broke("body error");
                    }
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => {
                        self.ready.push(data);
                        self.grew = true;
                    }
                    Ok(empty) => {
                        self.idle_at = Instant::now() + self.idle_for;
                        return Poll::Ready(Some(Ok(Frame::data(empty))));
                    }
                    Err(frame) => {
                        self.idle_at = Instant::now() + self.idle_for;
                        return Poll::Ready(Some(Ok(frame)));
                    }
                },
                None => {
                    if let Some(w) = self.watch.take() {
                        w.ended();
                    }
                    return Poll::Ready(None);
                }
            }
        }
        if self.gather(cx) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.idle_at = Instant::now() + self.idle_for;
        // A body of known length ends with its last data frame (hyper may never poll it
        // again): that is a clean end for the broken-stream count.
        if self.failing.is_none()
            && (self.ended || self.body.is_end_stream())
            && let Some(w) = self.watch.take()
        {
            w.ended();
        }
        Poll::Ready(self.ready.take().map(|data| Ok(Frame::data(data))))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(s) => s.poll_frame(cx),
            ProxyBody::Message { msg } => Poll::Ready(msg.take().map(|m| Ok(Frame::data(m)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(s) => {
                s.ready.is_empty()
                    && s.failed.is_none()
                    && s.failing.is_none()
                    && s.trailers.is_none()
                    && (s.ended || s.body.is_end_stream())
            }
            ProxyBody::Message { msg } => msg.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(s) => {
                let pre = s.ready.len() as u64;
                if s.ended {
                    return SizeHint::with_exact(pre);
                }
                let inner = s.body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + pre);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + pre);
                }
                hint
            }
            ProxyBody::Message { msg } => {
                SizeHint::with_exact(msg.as_ref().map_or(0, |m| m.len() as u64))
            }
        }
    }
}

/// A client's request body as the proxy reads it: each frame must arrive within
/// `--idle-timeout` of the previous one, and the whole body
/// within `--body-timeout` of the request head ([`Deadline`]); boxed so that the body
/// reader and the replay buffer can poll it in place. A client that stops sending its
/// body mid-way fails like a broken body (400, no binding touched); one that dribbles it
/// past the deadline gets 408 and its connection is closed — instead of holding its
/// request, and up to `--max-body-buffer` of memory, open for good.
pub(crate) type ClientBody = Pin<Box<Deadline<Incoming>>>;

/// Wraps every request body in [`ClientBody`] before the rest of the stack runs, and
/// puts its [`BodyDeadline`] in the request's [`Handoff`].
#[derive(Clone)]
pub(crate) struct ClientBodyTimeout<S> {
    inner: S,
    idle: Duration,
    total: Duration,
}

impl<S> ClientBodyTimeout<S> {
    /// `inner` gets request bodies whose frames each arrive within `idle`, all of them
    /// within `total` of the request head.
    pub(crate) fn new(inner: S, idle: Duration, total: Duration) -> Self {
        Self { inner, idle, total }
    }
}

impl<S> Service<Request<Incoming>> for ClientBodyTimeout<S>
where
    S: Service<Request<ClientBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let deadline = BodyDeadline {
            expired: Arc::new(AtomicBool::new(false)),
            limit: self.total,
        };
        let empty = req.body().is_end_stream();
        if !empty {
            Handoff::of(req.extensions_mut()).deadline = Some(deadline.clone());
        }
        let idle = self.idle;
        self.inner.call(req.map(|body| {
            Box::pin(Deadline {
                inner: body,
                ends_by: Instant::now() + deadline.limit,
                timers: None,
                idle_for: idle,
                idle_armed: false,
                deadline,
                empty,
            })
        }))
    }
}

/// Whether a request's body missed its `--body-timeout` (in the request's [`Handoff`];
/// failover answers 408 instead of 400 when it did).
#[derive(Clone, Debug)]
pub(crate) struct BodyDeadline {
    expired: Arc<AtomicBool>,
    limit: Duration,
}

impl BodyDeadline {
    /// The body did not arrive whole in time.
    pub(crate) fn expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }

    /// 408 for a body that missed its deadline: no `ServedBy` (no account to blame, no
    /// binding touched), and the connection is closed once it is sent.
    pub(crate) fn response(&self) -> Response<ProxyBody> {
        let mut res = Response::new(ProxyBody::message(format!(
            "408 request timeout: the request body did not arrive within {} s (--body-timeout)\n",
            self.limit.as_secs_f64()
        )));
        *res.status_mut() = StatusCode::REQUEST_TIMEOUT;
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        res.extensions_mut().insert(CloseConnection);
        res
    }
}

/// No frame of the body arrived within `--idle-timeout` of the previous one.
#[derive(Debug)]
pub(crate) struct BodyIdle(pub(crate) Duration);

impl fmt::Display for BodyIdle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no part of the request body arrived for {:?} (--idle-timeout)",
            self.0
        )
    }
}

impl std::error::Error for BodyIdle {}

/// The body missed its `--body-timeout`.
#[derive(Debug)]
pub(crate) struct BodyTimedOut(pub(crate) Duration);

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request body did not arrive within {:?} (--body-timeout)",
            self.0
        )
    }
}

impl std::error::Error for BodyTimedOut {}

pin_project_lite::pin_project! {
    /// A request body that fails with [`BodyIdle`] when no frame comes within
    /// `--idle-timeout` of the previous one (or of the first read), and with [`BodyTimedOut`]
    /// when it has not ended by its deadline (the timer runs from the request head).
    /// Both timers are looked at only while the body has nothing to hand on, so bytes
    /// that did arrive in time are never refused, and a body that is there with its
    /// head (most are) never builds a timer at all.
    pub(crate) struct Deadline<B> {
        #[pin]
        inner: B,
        // When the whole body must have arrived (`--body-timeout` from the head).
        ends_by: Instant,
        // The timers, built the first time the body has nothing to hand on: `ends_by`'s,
        // and the idle one, `idle_for` from the first poll that finds nothing, and again
        // after each frame. (Not from the head: time the proxy takes before it first
        // reads the body, e.g. connecting upstream before hyper sends `100 Continue`,
        // is not the client's.)
        timers: Option<Pin<Box<Timers>>>,
        idle_for: Duration,
        // `idle`'s deadline is current; a frame makes it stale.
        idle_armed: bool,
        deadline: BodyDeadline,
        // The request had no body: `Incoming` says so, but the budget and the upstream
        // request must see it through this wrapper too (else every bodyless GET would
        // look like a body of unknown length, reserving --max-body-buffer in the budget,
        // and be sent upstream chunked).
        empty: bool,
    }
}

pin_project_lite::pin_project! {
    /// A [`Deadline`]'s two timers, in one allocation.
    struct Timers {
        #[pin]
        ends: Sleep,
        #[pin]
        idle: Sleep,
    }
}

impl<B> Body for Deadline<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.idle_armed = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timers = match this.timers {
            Some(timers) => {
                if !*this.idle_armed {
                    // The first wait since a frame: the silence starts now.
                    timers
                        .as_mut()
                        .project()
                        .idle
                        .reset(Instant::now() + *this.idle_for);
                }
                timers
            }
            // The first wait of all: the silence starts now.
            None => this.timers.insert(Box::pin(Timers {
                ends: tokio::time::sleep_until(*this.ends_by),
                idle: tokio::time::sleep(*this.idle_for),
            })),
        };
        *this.idle_armed = true;
        let timers = timers.as_mut().project();
        if timers.idle.poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyIdle(*this.idle_for)))));
        }
        ready!(timers.ends.poll(cx));
        this.deadline.expired.store(true, Ordering::Release);
        Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.deadline.limit)))))
    }

    fn is_end_stream(&self) -> bool {
        self.empty || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.empty {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}
