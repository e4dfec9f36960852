//! The state shared by a layer's services, futures and bodies: [`Shared`] (the layer's
//! configuration) and [`Core`] (the store and the counters), and [`StoreOp`], a decided
//! store operation in flight.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use http::request::Parts;
use tracing::Span;

use crate::extract::Source;
use crate::stats::{ClearReason, Counters, Stats};
use crate::store::{BindingStore, CommitHint, CrateOnly, StoreError, StoreErrorKind};
use crate::types::{AuthId, BindingKey, Scope};

/// `Span::record` only when the span is enabled: on a disabled span `record` still looks
/// the field up by name among the span's fields (a string comparison per field), a cost
/// every request paid with tracing off.
pub(crate) trait RecordEnabled {
    fn rec<V: tracing::Value>(&self, field: &'static str, value: V);
}

impl RecordEnabled for Span {
    #[inline]
    fn rec<V: tracing::Value>(&self, field: &'static str, value: V) {
        if !self.is_disabled() {
            self.record(field, value);
        }
    }
}

pub(crate) type ScopeFn = Arc<dyn Fn(&Parts) -> Option<Scope> + Send + Sync>;

/// A layer's configuration, shared by every service it makes (and their clones), their
/// response futures and bodies, and the response-id learner.
pub(crate) struct Shared<St, C> {
    pub(crate) core: Arc<Core<St>>,
    pub(crate) classifier: C,
    pub(crate) source: Source,
    pub(crate) scope: Option<ScopeFn>,
    pub(crate) max_len: usize,
    pub(crate) strict: bool,
    pub(crate) report_decision: bool,
    pub(crate) learn: bool,
    /// Failures without `ServedBy` (and inner errors) clear the pinned account.
    pub(crate) blame_unserved: bool,
}

impl<St, C: Clone> Clone for Shared<St, C> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            classifier: self.classifier.clone(),
            source: self.source.clone(),
            scope: self.scope.clone(),
            max_len: self.max_len,
            strict: self.strict,
            report_decision: self.report_decision,
            learn: self.learn,
            blame_unserved: self.blame_unserved,
        }
    }
}

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

/// A decided commit or compare-and-delete, in flight.
///
/// Once decided, it takes effect even if nothing polls it any more: dropped unfinished
/// (the response future or body that owns it was dropped: a client gone, an outer
/// timeout), it is polled once more and, if still pending, handed to the tokio runtime
/// the drop runs on, which drives it to completion. Without a runtime it is lost, and
/// counted as a store error. See [`BindingStore`](crate::store::BindingStore)'s "Operations that outlive their
/// request".
pub(crate) struct StoreOp<St: BindingStore> {
    core: Arc<Core<St>>,
    /// `None` once finished.
    kind: Option<OpKind<St>>,
    /// Already handed to the runtime: if the runtime drops it (shutting down), it is
    /// not handed on again.
    detached: bool,
}

enum OpKind<St: BindingStore> {
    Commit(St::CommitFuture),
    Clear(St::ClearFuture),
    /// The commit of a learned response id.
    Learn(St::CommitFuture),
}

impl<St: BindingStore> OpKind<St> {
    fn name(&self) -> &'static str {
        match self {
            OpKind::Commit(_) => "commit",
            OpKind::Clear(_) => "clear",
            OpKind::Learn(_) => "learn_response_id",
        }
    }
}

impl<St: BindingStore> StoreOp<St> {
    pub(crate) fn commit(
        core: &Arc<Core<St>>,
        key: &BindingKey,
        auth: &AuthId,
        hint: CommitHint,
        span: &Span,
    ) -> Self {
        announce_commit(key, auth, span);
        Self::new(
            core,
            OpKind::Commit(core.store.commit_hinted(key, auth, hint, CrateOnly::TOKEN)),
        )
    }

    /// [`commit`](Self::commit), polled once at once: `None` when it finished then (an
    /// in-memory store always does), so the caller needs no state of its own for it.
    pub(crate) fn commit_now(
        core: &Arc<Core<St>>,
        key: &BindingKey,
        auth: &AuthId,
        hint: CommitHint,
        span: &Span,
        cx: &mut Context<'_>,
    ) -> Option<Self> {
        announce_commit(key, auth, span);
        let mut fut = core.store.commit_hinted(key, auth, hint, CrateOnly::TOKEN);
        match Pin::new(&mut fut).poll(cx) {
            Poll::Ready(result) => {
                committed(core, result);
                None
            }
            Poll::Pending => Some(Self::new(core, OpKind::Commit(fut))),
        }
    }

    pub(crate) fn clear(
        core: &Arc<Core<St>>,
        key: &BindingKey,
        auth: &AuthId,
        reason: ClearReason,
        span: &Span,
    ) -> Self {
        core.counters().clear_attempt(reason);
        span.rec("outcome", "cleared");
        span.rec("auth", tracing::field::display(auth));
        tracing::debug!(
            parent: span,
            session = %key.session().redacted(),
            auth = %auth,
            reason = reason.as_str(),
            "sticky session: clear if bound to failed account"
        );
        Self::new(core, OpKind::Clear(core.store.clear_if(key, auth)))
    }

    /// Commits a learned response id's binding (`key` is a response-id key). Leaves the
    /// span's `outcome` and `auth` (the session's) alone.
    pub(crate) fn learn(
        core: &Arc<Core<St>>,
        key: &BindingKey,
        auth: &AuthId,
        span: &Span,
    ) -> Self {
        tracing::debug!(
            parent: span,
            response_id = %key.session().redacted(),
            auth = %auth,
            "sticky session: learned response id"
        );
        Self::new(core, OpKind::Learn(core.store.commit(key, auth)))
    }

    fn new(core: &Arc<Core<St>>, kind: OpKind<St>) -> Self {
        Self {
            core: core.clone(),
            kind: Some(kind),
            detached: false,
        }
    }

    /// Drives the operation and does its accounting. Store failures are absorbed: the
    /// response goes on either way. Ready at once when polled again after completion.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let counters = self.core.counters();
        match &mut self.kind {
            None => {}
            Some(OpKind::Commit(fut)) => {
                committed(&self.core, std::task::ready!(Pin::new(fut).poll(cx)))
            }
            Some(OpKind::Learn(fut)) => match std::task::ready!(Pin::new(fut).poll(cx)) {
                Ok(()) => Counters::inc(&counters.response_ids_learned),
                Err(e) => self.core.store_error("learn_response_id", &e),
            },
            Some(OpKind::Clear(fut)) => match std::task::ready!(Pin::new(fut).poll(cx)) {
                Ok(true) => Counters::inc(&counters.cleared),
                Ok(false) => {}
                Err(e) => self.core.store_error("clear", &e),
            },
        }
        self.kind = None;
        Poll::Ready(())
    }
}

/// Records a commit about to start: the span's outcome and account, a debug event.
fn announce_commit(key: &BindingKey, auth: &AuthId, span: &Span) {
    span.rec("outcome", "committed");
    span.rec("auth", tracing::field::display(auth));
    tracing::debug!(parent: span, session = %key.session().redacted(), auth = %auth, "sticky session: commit");
}

/// Accounts for a finished commit: counted, or a store error.
fn committed<St>(core: &Core<St>, result: Result<(), StoreError>) {
    match result {
        Ok(()) => Counters::inc(&core.counters().commits),
        Err(e) => core.store_error("commit", &e),
    }
}

impl<St: BindingStore> Drop for StoreOp<St> {
    fn drop(&mut self) {
        if self.kind.is_none() {
            return;
        }
        // Most stores take effect eagerly (in-memory ones are `Ready`): one more poll
        // finishes them without a task.
        if self
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
        {
            return;
        }
        let Some(kind) = self.kind.take() else {
            return;
        };
        let op = kind.name();
        if self.detached {
            // The runtime dropped the task it was handed to (it is shutting down).
            let err = StoreError::new(
                StoreErrorKind::Other,
                Some("unfinished when the runtime shut down".into()),
            );
            self.core.store_error(op, &err);
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                tracing::trace!(op, "sticky session: store operation handed to the runtime");
                let detached = StoreOp {
                    core: self.core.clone(),
                    kind: Some(kind),
                    detached: true,
                };
                drop(handle.spawn(Detached(detached)));
            }
            Err(_) => {
                let err = StoreError::new(
                    StoreErrorKind::Other,
                    Some("dropped unfinished outside a tokio runtime".into()),
                );
                self.core.store_error(op, &err);
            }
        }
    }
}

/// A [`StoreOp`] as a task of its own.
struct Detached<St: BindingStore>(StoreOp<St>);

impl<St: BindingStore> Future for Detached<St> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // `StoreOp` is `Unpin`: its futures are.
        self.get_mut().0.poll(cx)
    }
}
