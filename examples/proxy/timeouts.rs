//! The response side of an attempt: peeking the first data chunk under
//! `--upstream-timeout`, and the body handed to the client under `--idle-timeout`; and
//! the client's request body, each frame under `--idle-timeout` too.

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};
use tower::Service;
use tower_http::timeout::TimeoutBody;
use tower_sticky_session::AuthId;

use super::picker::InFlight;
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
/// the rest frame by frame as it arrives, each within `--idle-timeout`), or a short
/// message of the proxy's own.
///
/// An upstream body that fails or falls silent yields an error, so hyper aborts the
/// response to the client instead of ending it cleanly.
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
    /// The first data chunk, read before the response was returned.
    first: Option<Bytes>,
    body: Incoming,
    idle_for: Duration,
    idle: Pin<Box<Sleep>>,
    /// The account, for the log.
    upstream: AuthId,
    /// The upstream body's error, held back for one poll (see `poll_frame`).
    failed: Option<BoxError>,
    /// Counts the request as in flight on its account while the body is open.
    _in_flight: Option<InFlight>,
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
        ProxyBody::Upstream(Box::new(Streamed {
            first,
            body,
            idle_for,
            idle: Box::pin(tokio::time::sleep(idle_for)),
            upstream,
            failed: None,
            _in_flight: in_flight,
        }))
    }

    /// A message of the proxy's own.
    pub(crate) fn message(msg: impl Into<Bytes>) -> Self {
        ProxyBody::Message {
            msg: Some(msg.into()),
        }
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
            ProxyBody::Upstream(s) => {
                if let Some(e) = s.failed.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                if let Some(first) = s.first.take() {
                    return Poll::Ready(Some(Ok(Frame::data(first))));
                }
                let frame = match Pin::new(&mut s.body).poll_frame(cx) {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        ready!(s.idle.as_mut().poll(cx));
                        tracing::warn!(
                            upstream = %s.upstream, idle_timeout = ?s.idle_for,
                            "upstream response body fell silent; aborting the client's response"
                        );
                        s.idle.as_mut().reset(Instant::now() + s.idle_for);
                        return Poll::Ready(Some(Err(Box::new(IdleTimeout(s.idle_for)))));
                    }
                };
                match frame {
                    Some(Err(e)) => {
                        tracing::warn!(
                            upstream = %s.upstream, error = %ErrorChain(&e),
                            "upstream response body failed; aborting the client's response"
                        );
                        // hyper's HTTP/1 server discards what it has buffered but not yet
                        // written when a body fails. Yield once (and ask to be polled again
                        // at once) so it flushes the head and the chunks already received:
                        // the client then sees exactly where the upstream broke.
                        s.failed = Some(Box::new(e));
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    Some(Ok(frame)) => {
                        s.idle.as_mut().reset(Instant::now() + s.idle_for);
                        Poll::Ready(Some(Ok(frame)))
                    }
                    None => Poll::Ready(None),
                }
            }
            ProxyBody::Message { msg } => Poll::Ready(msg.take().map(|m| Ok(Frame::data(m)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(s) => {
                s.first.is_none() && s.failed.is_none() && s.body.is_end_stream()
            }
            ProxyBody::Message { msg } => msg.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(s) => {
                let pre = s.first.as_ref().map_or(0, |b| b.len() as u64);
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
/// `--idle-timeout` of the previous one (tower-http's `TimeoutBody`, boxed so that the
/// body reader and the replay buffer can poll it in place). A client that stops sending
/// its body mid-way then fails like a broken body: 400, no binding touched — instead of
/// holding its request, and up to `--max-body-buffer` of memory, open for good.
pub(crate) type ClientBody = Pin<Box<TimeoutBody<Incoming>>>;

/// Wraps every request body in [`ClientBody`] before the rest of the stack runs.
#[derive(Clone)]
pub(crate) struct ClientBodyTimeout<S> {
    inner: S,
    idle: Duration,
}

impl<S> ClientBodyTimeout<S> {
    /// `inner` gets request bodies whose frames each arrive within `idle`.
    pub(crate) fn new(inner: S, idle: Duration) -> Self {
        Self { inner, idle }
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

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let idle = self.idle;
        self.inner
            .call(req.map(|body| Box::pin(TimeoutBody::new(idle, body))))
    }
}
