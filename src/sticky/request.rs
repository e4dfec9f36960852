//! What travels from the request side to the response side: [`RequestCtx`] (with the
//! session's [`Tracking`]), and what a store lookup's answer does to the request
//! ([`apply_lookup`], [`apply_response_id`]). The service applies a lookup that its
//! store answered at once; the response future one that was pending.

use std::sync::Arc;

use http::Extensions;
use tracing::Span;

use crate::core::{Core, RecordEnabled, Shared};
use crate::learn::LearnCtx;
use crate::stats::{Counters, Decision};
use crate::store::{CommitHint, StoreError};
use crate::types::{AuthId, BindingKey, HardPin, PinnedAuth, SessionSource, SessionSourceKind};
use crate::upgrade::Slot;

/// Everything the request side hands the response side.
pub(crate) struct RequestCtx<St, C> {
    /// The session's binding, for a request with a valid session id.
    pub(crate) tracking: Option<Tracking<St, C>>,
    /// Response-id learning, when on: becomes the body's learner on a success. Boxed,
    /// like the pending response-id lookup's key: both are opt-in, and every request
    /// moves its response future around.
    pub(crate) learn: Option<Box<LearnCtx<St, C>>>,
    /// The request's `sticky_session` span.
    pub(crate) span: Span,
    /// The layer's decision so far (the `sticky-session` response header); while a
    /// response id's lookup is pending, the one without a hard pin.
    pub(crate) decision: Decision,
    /// Whether the response reports `decision` in a header.
    pub(crate) report: bool,
}

/// What the response side needs to know about a request with a valid session id.
pub(crate) struct Tracking<St, C> {
    pub(crate) shared: Arc<Shared<St, C>>,
    pub(crate) key: BindingKey,
    /// The account the request was pinned to (explicitly or by the store).
    pub(crate) pinned: Option<AuthId>,
    /// A `HEAD` request: its response never carries a body, whatever the body type says.
    pub(crate) is_head: bool,
    /// What the session's lookup told the store's commit (only ever used with `pinned`,
    /// when the pinned account served).
    pub(crate) hint: CommitHint,
    /// An upgrade request's [`Binding`](crate::Binding) slot.
    pub(crate) upgrade: Option<Arc<Slot<St>>>,
}

impl<St, C> Tracking<St, C> {
    pub(crate) fn key(&self) -> &BindingKey {
        &self.key
    }

    pub(crate) fn new(
        shared: Arc<Shared<St, C>>,
        key: BindingKey,
        pinned: Option<AuthId>,
        is_head: bool,
    ) -> Self {
        Self {
            shared,
            key,
            pinned,
            is_head,
            hint: CommitHint::NONE,
            upgrade: None,
        }
    }
}

/// Accounts for a lookup's result and inserts the pin on a hit. `deferred`: the lookup
/// did not resolve in `call` (it was counted there as started).
pub(crate) fn apply_lookup<St>(
    core: &Core<St>,
    span: &Span,
    result: Result<Option<AuthId>, StoreError>,
    extensions: &mut Extensions,
    deferred: bool,
) -> (Decision, Option<AuthId>) {
    let counters = core.counters();
    let (hits, misses) = if deferred {
        (&counters.deferred_hits, &counters.deferred_misses)
    } else {
        (&counters.hits, &counters.misses)
    };
    let (decision, pinned) = match result {
        Ok(Some(auth)) => {
            Counters::inc(hits);
            span.rec("auth", tracing::field::display(&auth));
            extensions.insert(PinnedAuth(auth.clone()));
            (Decision::Hit, Some(auth))
        }
        Ok(None) => {
            Counters::inc(misses);
            (Decision::Miss, None)
        }
        Err(e) => {
            Counters::inc(misses);
            core.store_error("lookup", &e);
            (Decision::Miss, None)
        }
    };
    span.rec("decision", decision.as_str());
    (decision, pinned)
}

/// Accounts for the lookup of a request's `previous_response_id` among learned response
/// ids. On a hit, inserts the hard pin (and, for a request without a session of its own,
/// the response id as its session) and returns the account. `own_session`: the request
/// has a session of its own, counted as a lookup (a miss then goes on to that session's
/// lookup, which counts itself).
pub(crate) fn apply_response_id<St>(
    core: &Core<St>,
    span: &Span,
    result: Result<Option<AuthId>, StoreError>,
    extensions: &mut Extensions,
    key: BindingKey,
    own_session: bool,
    deferred: bool,
) -> Option<AuthId> {
    let counters = core.counters();
    let auth = match result {
        Ok(Some(auth)) => auth,
        Ok(None) => {
            Counters::inc(&counters.response_ids_unknown);
            return None;
        }
        Err(e) => {
            Counters::inc(&counters.response_ids_unknown);
            core.store_error("lookup_response_id", &e);
            return None;
        }
    };
    Counters::inc(&counters.hard_pins);
    if own_session {
        Counters::inc(if deferred {
            &counters.deferred_hits
        } else {
            &counters.hits
        });
    } else {
        counters.source(SessionSourceKind::ResponseId);
        span.rec("session", tracing::field::display(key.session().redacted()));
        span.rec("source", SessionSourceKind::ResponseId.as_str());
        extensions.insert(key.session().clone());
        extensions.insert(SessionSource::ResponseId);
        extensions.insert(key);
    }
    span.rec("decision", Decision::Hit.as_str());
    span.rec("hard_pin", true);
    span.rec("auth", tracing::field::display(&auth));
    extensions.insert(PinnedAuth(auth.clone()));
    extensions.insert(HardPin);
    Some(auth)
}
