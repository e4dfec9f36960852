//! The response future: reads the body (when it must), then calls the inner service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::request::Parts;
use http::{HeaderMap, Request};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::BufferedBody;
use super::layer::Config;
use super::signals::scan_body;

pin_project! {
    /// The response future of [`SessionFromBody`](super::SessionFromBody): reads the
    /// request body when it has to, then calls the inner service and resolves to its
    /// response. Every wait is a wait on the request body itself; memory is bounded by
    /// the buffer limit.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<BufferedBody<B>>>,
        B: Body,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<BufferedBody<B>>>,
        B: Body,
    {
        Reading { read: Option<Reading<S, B>> },
        Called { #[pin] future: S::Future },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<BufferedBody<B>>>,
    B: Body,
{
    pub(crate) fn called(future: S::Future) -> Self {
        Self {
            state: State::Called { future },
        }
    }

    /// `expected` is the request's `Content-Length`, as the service parsed it.
    pub(crate) fn reading(
        parts: Parts,
        body: B,
        expected: Option<u64>,
        inner: S,
        config: Arc<Config>,
    ) -> Self {
        Self {
            state: State::Reading {
                read: Some(Reading {
                    parts,
                    body,
                    inner,
                    buf: Buffer::Empty,
                    trailers: None,
                    expected,
                    config,
                }),
            },
        }
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<BufferedBody<B>>>,
    B: Body,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

struct Reading<S, B: Body> {
    parts: Parts,
    body: B,
    inner: S,
    buf: Buffer,
    trailers: Option<HeaderMap>,
    /// The request's `Content-Length`, if any: the buffer never grows past it.
    expected: Option<u64>,
    config: Arc<Config>,
}

enum Done<E> {
    End,
    OverLimit(Bytes),
    Failed(E),
}

impl<S, B> Reading<S, B>
where
    B: Body + Unpin,
{
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Done<B::Error>> {
        loop {
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => return Poll::Ready(Done::End),
                Some(Err(e)) => return Poll::Ready(Done::Failed(e)),
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    let limit = self.config.max_buffer;
                    if let Err(chunk) = self.buf.push(chunk, limit, self.expected) {
                        return Poll::Ready(Done::OverLimit(chunk));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        match &mut self.trailers {
                            Some(t) => t.extend(trailers),
                            None => self.trailers = Some(trailers),
                        }
                    }
                }
            }
            if self.body.is_end_stream() {
                return Poll::Ready(Done::End);
            }
        }
    }

    /// Builds the request for the inner service from what reading ended with.
    fn finish(self, done: Done<B::Error>) -> (S, Request<BufferedBody<B>>) {
        let Reading {
            mut parts,
            body,
            inner,
            buf,
            trailers,
            config,
            ..
        } = self;
        let stats = &config.stats;
        let bytes = buf.freeze();
        let body = match done {
            Done::End if bytes.is_empty() => {
                // A stream that turned out to hold no data (chunked, zero bytes).
                stats.skipped(super::stats::Skip::Empty);
                BufferedBody::buffered(bytes, trailers)
            }
            Done::End => {
                match scan_body(&bytes, &config.scan) {
                    Ok(outcome) => {
                        let s = &outcome.signals;
                        stats.scanned(
                            s.session.as_ref().map(|s| s.field),
                            s.previous_response_id.is_some(),
                            s.fingerprint.is_some(),
                        );
                        if let Some((field, reason)) = outcome.rejected {
                            tracing::debug!(
                                field,
                                reason = reason.as_str(),
                                "request body field holds no valid session id"
                            );
                        }
                        if let Some(session) = &s.session {
                            tracing::debug!(
                                field = session.field,
                                session = %session.id.redacted(),
                                "session id read from the request body"
                            );
                        }
                        parts.extensions.insert(outcome.signals);
                    }
                    Err(_) => {
                        stats.invalid_json();
                        tracing::debug!(
                            bytes = bytes.len(),
                            "request body is not valid JSON; passed on unsticky"
                        );
                    }
                }
                BufferedBody::buffered(bytes, trailers)
            }
            Done::OverLimit(chunk) => {
                stats.skipped(super::stats::Skip::TooLarge);
                tracing::debug!(
                    limit = config.max_buffer,
                    "request body outgrew the buffer limit; passed on unread"
                );
                BufferedBody::over_limit(bytes, chunk, body)
            }
            Done::Failed(error) => {
                stats.error();
                tracing::debug!(
                    read = bytes.len(),
                    "request body failed while being read; the error is passed on"
                );
                BufferedBody::failed(bytes, error, body)
            }
        };
        (inner, Request::from_parts(parts, body))
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<BufferedBody<B>>>,
    B: Body + Unpin,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => return future.poll(cx),
                StateProj::Reading { read } => {
                    let Some(reading) = read.as_mut() else {
                        // Unreachable: the state changes as soon as `read` is taken.
                        return Poll::Pending;
                    };
                    let done = ready!(reading.poll_read(cx));
                    let Some(reading) = read.take() else {
                        return Poll::Pending;
                    };
                    let (mut inner, req) = reading.finish(done);
                    let future = inner.call(req);
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// The bytes read so far. One chunk is kept as it is (no copy: a body that arrives in one
/// frame is handed on as that frame); more are gathered into one allocation that grows
/// by doubling, never past the limit or the announced `Content-Length`.
enum Buffer {
    Empty,
    One(Bytes),
    Many(Vec<u8>),
}

const MIN_GROWTH: usize = 64 * 1024;

impl Buffer {
    fn len(&self) -> usize {
        match self {
            Buffer::Empty => 0,
            Buffer::One(b) => b.len(),
            Buffer::Many(v) => v.len(),
        }
    }

    /// Appends `chunk`, or hands it back if it would take the buffer past `limit`.
    fn push(&mut self, chunk: Bytes, limit: usize, expected: Option<u64>) -> Result<(), Bytes> {
        let len = self.len();
        if chunk.len() > limit.saturating_sub(len) {
            return Err(chunk);
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let need = len + chunk.len();
        // Never allocate more than the limit, nor (while it holds) more than the
        // Content-Length; otherwise double, so copies stay linear. A body that outgrows
        // its Content-Length grows by doubling too, not one chunk at a time.
        let cap_for = |current: usize| {
            let ceiling = expected
                .and_then(|e| usize::try_from(e).ok())
                .filter(|&e| e >= need)
                .map_or(limit, |e| e.min(limit));
            need.max(current.saturating_mul(2))
                .max(MIN_GROWTH)
                .min(ceiling)
                .max(need)
        };
        *self = match std::mem::replace(self, Buffer::Empty) {
            Buffer::Empty => Buffer::One(chunk),
            Buffer::One(first) => {
                let mut v = Vec::with_capacity(cap_for(len));
                v.extend_from_slice(&first);
                v.extend_from_slice(&chunk);
                Buffer::Many(v)
            }
            Buffer::Many(mut v) => {
                if need > v.capacity() {
                    let cap = cap_for(v.capacity());
                    v.reserve_exact(cap - v.len());
                }
                v.extend_from_slice(&chunk);
                Buffer::Many(v)
            }
        };
        Ok(())
    }

    fn freeze(self) -> Bytes {
        match self {
            Buffer::Empty => Bytes::new(),
            Buffer::One(b) => b,
            Buffer::Many(v) => Bytes::from(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_keeps_a_single_chunk_without_copying() {
        let chunk = Bytes::from_static(b"{\"a\":1}");
        let mut b = Buffer::Empty;
        b.push(chunk.clone(), 100, None).unwrap();
        let out = b.freeze();
        assert_eq!(out.as_ptr(), chunk.as_ptr());
    }

    #[test]
    fn buffer_refuses_a_chunk_past_the_limit_and_hands_it_back() {
        let mut b = Buffer::Empty;
        b.push(Bytes::from(vec![1; 60]), 100, None).unwrap();
        b.push(Bytes::from(vec![2; 40]), 100, None).unwrap();
        let back = b.push(Bytes::from(vec![3; 1]), 100, None).unwrap_err();
        assert_eq!(&back[..], &[3]);
        let out = b.freeze();
        assert_eq!(out.len(), 100);
        assert_eq!(&out[59..61], &[1, 2]);
    }

    #[test]
    fn buffer_capacity_never_exceeds_limit_or_content_length() {
        let limit = 1 << 20;
        let mut b = Buffer::Empty;
        for _ in 0..(limit / 1000) {
            b.push(Bytes::from(vec![0; 1000]), limit, None).unwrap();
            if let Buffer::Many(v) = &b {
                assert!(v.capacity() <= limit);
            }
        }
        // A Content-Length that claims the whole limit does not make a tiny body
        // allocate it.
        let mut b = Buffer::Empty;
        b.push(Bytes::from(vec![0; 10]), limit, Some(limit as u64))
            .unwrap();
        b.push(Bytes::from(vec![0; 10]), limit, Some(limit as u64))
            .unwrap();
        match &b {
            Buffer::Many(v) => assert!(v.capacity() <= MIN_GROWTH),
            _ => panic!("two chunks are gathered"),
        }
        // And a small Content-Length caps the growth.
        let mut b = Buffer::Empty;
        b.push(Bytes::from(vec![0; 10]), limit, Some(30)).unwrap();
        b.push(Bytes::from(vec![0; 10]), limit, Some(30)).unwrap();
        match &b {
            Buffer::Many(v) => assert_eq!(v.capacity(), 30),
            _ => panic!("two chunks are gathered"),
        }
        // Once the body outgrows its Content-Length, the buffer doubles again rather
        // than growing by exactly one chunk per push.
        b.push(Bytes::from(vec![0; 20]), limit, Some(30)).unwrap();
        match &b {
            Buffer::Many(v) => assert!(v.capacity() >= MIN_GROWTH.min(limit)),
            _ => panic!("three chunks are gathered"),
        }
    }
}
