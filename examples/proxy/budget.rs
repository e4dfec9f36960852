//! `--max-buffered-total`: one budget for the request bodies held in memory, shared by
//! every connection and stream.
//!
//! Two parts of the proxy buffer a request body: the JSON-body session reader (to find a
//! session field) and failover (to replay the body on another account), each up to
//! `--max-body-buffer`, and the second reuses the first's buffer. Before either reads a
//! byte, [`Budgeted`] reserves what the body may take from the budget: its
//! `Content-Length`, or `--max-body-buffer` when the length is not announced (failover
//! gives back what a complete body did not use, as soon as it has it). Nothing is
//! reserved for a body over `--max-body-buffer` (nobody buffers it) or an empty one.
//!
//! When the reservation does not fit, the body is **streamed through unbuffered**, like
//! a body over `--max-body-buffer`: it is not read for a session (sticky by header
//! only), and it gets one attempt (no replay). The request is served, never refused;
//! what the budget gives up is failover for that one request. The reservation is a
//! [`Buffering`], carried in the request's [`Handoff`]; it is released when the
//! request's last holder drops it (failover keeps it until the response is returned).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Request, header};
use http_body::Body;
use tower::Service;
use tower_sticky_session::body_session::BufferedBody;

use super::handoff::Handoff;

/// The budget: how many bytes of request bodies may be buffered at once. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct BufferBudget(Arc<Counter>);

#[derive(Debug)]
struct Counter {
    limit: usize,
    used: AtomicUsize,
    /// Requests streamed through because the budget was spent.
    refused: AtomicU64,
}

impl BufferBudget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Self(Arc::new(Counter {
            limit,
            used: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }))
    }

    /// Bytes reserved now.
    pub(crate) fn in_use(&self) -> usize {
        self.0.used.load(Ordering::Acquire)
    }

    /// The budget.
    pub(crate) fn limit(&self) -> usize {
        self.0.limit
    }

    /// Requests streamed through unbuffered because the budget was spent.
    pub(crate) fn refused(&self) -> u64 {
        self.0.refused.load(Ordering::Relaxed)
    }

    /// Reserves `n` bytes, or `None` when they do not fit.
    pub(crate) fn try_reserve(&self, n: usize) -> Option<Grant> {
        let c = &self.0;
        let mut used = c.used.load(Ordering::Acquire);
        loop {
            let next = used.checked_add(n).filter(|&u| u <= c.limit)?;
            match c
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Some(Grant(Arc::new(Held {
                        budget: self.clone(),
                        bytes: AtomicUsize::new(n),
                    })));
                }
                Err(now) => used = now,
            }
        }
    }
}

/// A request's place in the budget (in the request's [`Handoff`]).
#[derive(Clone, Debug)]
pub(crate) enum Buffering {
    /// Its body may be buffered; the bytes are released when the last clone is dropped.
    Granted(Grant),
    /// The budget was spent: stream the body through, unread and unbuffered.
    Refused,
}

/// Bytes reserved for one request body. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Grant(Arc<Held>);

#[derive(Debug)]
struct Held {
    budget: BufferBudget,
    bytes: AtomicUsize,
}

impl Grant {
    /// Keeps only `n` of the reserved bytes (the body turned out smaller).
    pub(crate) fn shrink_to(&self, n: usize) {
        let before = self.0.bytes.swap(n.min(self.held()), Ordering::AcqRel);
        let freed = before.saturating_sub(n);
        if freed > 0 {
            self.0.budget.0.used.fetch_sub(freed, Ordering::AcqRel);
        }
    }

    fn held(&self) -> usize {
        self.0.bytes.load(Ordering::Acquire)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let n = *self.bytes.get_mut();
        self.budget.0.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Reserves each request body's buffer in the budget before anything reads it (see the
/// module docs) and marks the request with its [`Buffering`].
#[derive(Clone)]
pub(crate) struct Budgeted<S> {
    inner: S,
    budget: BufferBudget,
    max_body: usize,
}

impl<S> Budgeted<S> {
    /// `max_body` is `--max-body-buffer`.
    pub(crate) fn new(inner: S, budget: BufferBudget, max_body: usize) -> Self {
        Self {
            inner,
            budget,
            max_body,
        }
    }
}

impl<S, B> Service<Request<B>> for Budgeted<S>
where
    B: Body,
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let want = if req.body().is_end_stream() {
            0
        } else {
            match req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            {
                Some(n) if n > self.max_body as u64 => 0,
                Some(n) => n as usize,
                None => self.max_body,
            }
        };
        if want > 0 {
            let buffering = match self.budget.try_reserve(want) {
                Some(grant) => Buffering::Granted(grant),
                None => {
                    self.budget.0.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        want,
                        in_use = self.budget.in_use(),
                        budget = self.budget.limit(),
                        "--max-buffered-total spent: the request body streams through unbuffered (one attempt)"
                    );
                    Buffering::Refused
                }
            };
            Handoff::of(req.extensions_mut()).buffering = Some(buffering);
        }
        self.inner.call(req)
    }
}

/// In front of the JSON-body session reader: a request marked [`Buffering::Refused`]
/// skips the reader (`direct`, its body passed on unread); the others go to `reader`.
#[derive(Clone)]
pub(crate) struct ReadUnlessRefused<R, D> {
    reader: R,
    direct: D,
}

impl<R, D> ReadUnlessRefused<R, D> {
    pub(crate) fn new(reader: R, direct: D) -> Self {
        Self { reader, direct }
    }
}

impl<R, D, B> Service<Request<B>> for ReadUnlessRefused<R, D>
where
    B: Body,
    R: Service<Request<B>>,
    D: Service<Request<BufferedBody<B>>, Response = R::Response, Error = R::Error>,
{
    type Response = R::Response;
    type Error = R::Error;
    type Future = Either<R::Future, D::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both are the same sticky stack over failover, which is always ready.
        std::task::ready!(self.reader.poll_ready(cx))?;
        self.direct.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if matches!(
            Handoff::buffering(req.extensions()),
            Some(Buffering::Refused)
        ) {
            Either::Right(self.direct.call(req.map(BufferedBody::new)))
        } else {
            Either::Left(self.reader.call(req))
        }
    }
}
