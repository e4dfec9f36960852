//! State shared by a layer's services and the bodies they return.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Instant;

use tracing::Span;

use crate::stats::{ClearReason, Counters, Stats};
use crate::store::{BindingStore, StoreError, StoreErrorKind};
use crate::types::{AuthId, BindingKey};

/// The store and the counters, shared by every service and response body of a layer.
pub(crate) struct Core<St> {
    pub(crate) store: St,
    pub(crate) stats: Stats,
    /// Second (since `epoch`, plus one) of the last store-error warning: at most one
    /// warning a second, the rest go to debug (a store outage must not flood the log).
    /// Monotonic: a wall-clock step cannot silence warnings.
    last_warn: AtomicU64,
    epoch: Instant,
}

impl<St> Core<St> {
    pub(crate) fn new(store: St, stats: Stats) -> Self {
        Self {
            store,
            stats,
            last_warn: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    #[inline]
    pub(crate) fn counters(&self) -> &Counters {
        &self.stats.0
    }

    pub(crate) fn store_error(&self, op: &'static str, err: &StoreError) {
        Counters::inc(&self.counters().store_errors);
        // A store that reports itself unavailable (e.g. Redis behind an open circuit
        // breaker) already logs its own outage, rarely; repeating it here per request
        // would flood the log.
        if err.kind() == StoreErrorKind::Unavailable {
            tracing::debug!(op, error = %err, "sticky session store unavailable");
            return;
        }
        let now = self.epoch.elapsed().as_secs() + 1;
        let last = self.last_warn.load(Relaxed);
        if now > last
            && self
                .last_warn
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            tracing::warn!(op, error = %err, "sticky session store failed; serving without stickiness");
        } else {
            tracing::debug!(op, error = %err, "sticky session store failed");
        }
    }
}

/// A commit or compare-and-delete in flight.
pub(crate) enum StoreOp<St: BindingStore> {
    Commit(St::CommitFuture),
    Clear(St::ClearFuture),
}

impl<St: BindingStore> StoreOp<St> {
    pub(crate) fn commit(core: &Core<St>, key: &BindingKey, auth: &AuthId, span: &Span) -> Self {
        span.record("outcome", "committed");
        span.record("auth", tracing::field::display(auth));
        tracing::debug!(parent: span, session = %key.session().redacted(), auth = %auth, "sticky session: commit");
        StoreOp::Commit(core.store.commit(key, auth))
    }

    pub(crate) fn clear(
        core: &Core<St>,
        key: &BindingKey,
        auth: &AuthId,
        reason: ClearReason,
        span: &Span,
    ) -> Self {
        core.counters().clear_attempt(reason);
        span.record("outcome", "cleared");
        span.record("auth", tracing::field::display(auth));
        tracing::debug!(
            parent: span,
            session = %key.session().redacted(),
            auth = %auth,
            reason = reason.as_str(),
            "sticky session: clear if bound to failed account"
        );
        StoreOp::Clear(core.store.clear_if(key, auth))
    }

    /// Drives the operation and does its accounting. Store failures are absorbed: the
    /// response goes on either way.
    pub(crate) fn poll(&mut self, core: &Core<St>, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            StoreOp::Commit(fut) => match std::task::ready!(Pin::new(fut).poll(cx)) {
                Ok(()) => Counters::inc(&core.counters().commits),
                Err(e) => core.store_error("commit", &e),
            },
            StoreOp::Clear(fut) => match std::task::ready!(Pin::new(fut).poll(cx)) {
                Ok(true) => Counters::inc(&core.counters().cleared),
                Ok(false) => {}
                Err(e) => core.store_error("clear", &e),
            },
        }
        Poll::Ready(())
    }
}
