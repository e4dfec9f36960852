//! Counters of what the layer decided.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::extract::InvalidSessionId;
use crate::types::SessionSourceKind;

/// Why a binding was cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClearReason {
    /// The response was classified as a failure (default: 429 or 5xx).
    FailureStatus,
    /// The inner service returned an error.
    InnerError,
    /// A successful response's body ended without a single data frame.
    EmptyStream,
    /// A successful response's body failed before its first data frame.
    StreamError,
    /// The account failed inside an upgraded connection (a WebSocket): the inner
    /// service called [`Binding::clear`](crate::Binding::clear).
    Upgraded,
}

impl ClearReason {
    /// All reasons, in a fixed order (crate-internal: the enum may grow; a snapshot's
    /// [`clear_attempts_by_reason`](StatsSnapshot::clear_attempts_by_reason) lists them).
    pub(crate) const ALL: [ClearReason; 5] = [
        Self::FailureStatus,
        Self::InnerError,
        Self::EmptyStream,
        Self::StreamError,
        Self::Upgraded,
    ];

    /// A short machine-readable name, used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailureStatus => "failure_status",
            Self::InnerError => "inner_error",
            Self::EmptyStream => "empty_stream",
            Self::StreamError => "stream_error",
            Self::Upgraded => "upgraded",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::FailureStatus => 0,
            Self::InnerError => 1,
            Self::EmptyStream => 2,
            Self::StreamError => 3,
            Self::Upgraded => 4,
        }
    }
}

/// Each request increments as few shared counters as it can (they are shared by every
/// core): `requests` and `lookups` are sums of others, computed when read.
///
/// Every request is counted in `call`: under exactly one of `no_session`, `invalid`,
/// `explicit_pins`, `hits`/`misses` (a lookup that resolved in `call`, the in-memory
/// case) or `deferred_lookups` (a lookup still pending in `call`, a networked store).
/// A deferred lookup's result is counted later under `deferred_hits`/`deferred_misses`;
/// its future may be dropped before that, so the difference is the lookups never
/// resolved. The hot path stays one increment.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) no_session: AtomicU64,
    pub(crate) invalid: [AtomicU64; 4],
    pub(crate) rejected: AtomicU64,
    pub(crate) explicit_pins: AtomicU64,
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) deferred_lookups: AtomicU64,
    pub(crate) deferred_hits: AtomicU64,
    pub(crate) deferred_misses: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) clear_attempts: [AtomicU64; 5],
    pub(crate) cleared: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) sources: [AtomicU64; 5],
    pub(crate) hard_pins: AtomicU64,
    pub(crate) response_ids_unknown: AtomicU64,
    pub(crate) response_ids_learned: AtomicU64,
    pub(crate) upgrades: AtomicU64,
    pub(crate) response_ids_not_stored: AtomicU64,
    pub(crate) response_ids_undecodable: AtomicU64,
}

impl Counters {
    #[inline]
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub(crate) fn invalid(&self, reason: InvalidSessionId) {
        Self::inc(&self.invalid[reason.index()]);
    }

    pub(crate) fn clear_attempt(&self, reason: ClearReason) {
        Self::inc(&self.clear_attempts[reason.index()]);
    }

    /// Counts a request's session source. Headers, the common case, are not counted:
    /// every request under `explicit_pins` or `lookups` has exactly one source of its own,
    /// so the header count is derived in [`Stats::snapshot`] (one shared-line increment
    /// less per request).
    #[inline]
    pub(crate) fn source(&self, kind: SessionSourceKind) {
        if kind != SessionSourceKind::Header {
            Self::inc(&self.sources[kind.index()]);
        }
    }
}

/// A cheap, cloneable handle to a layer's counters.
///
/// Every layer built from one [`StickySessionLayer`](crate::StickySessionLayer) (and every
/// service it makes) shares one set of counters. Counting is a relaxed atomic increment.
///
/// ```
/// use tower_sticky_session::StickySessionLayer;
///
/// let layer = StickySessionLayer::new();
/// let stats = layer.stats();
/// assert_eq!(stats.snapshot().requests, 0);
/// ```
#[derive(Clone, Default)]
pub struct Stats(pub(crate) Arc<Counters>);

impl Stats {
    /// Reads every counter. Each counter is read atomically, the set is not a single
    /// atomic snapshot (counters may move while it is taken).
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &*self.0;
        let get = |a: &AtomicU64| a.load(Relaxed);
        let no_session = get(&c.no_session);
        let invalid = InvalidSessionId::ALL.map(|r| (r, get(&c.invalid[r.index()])));
        let explicit_pins = get(&c.explicit_pins);
        // Results before starts: a deferred lookup's start is counted before its result,
        // so reading in this order never sees more results than starts.
        let deferred_hits = get(&c.deferred_hits);
        let deferred_misses = get(&c.deferred_misses);
        let deferred = get(&c.deferred_lookups);
        let hits = get(&c.hits) + deferred_hits;
        let misses = get(&c.misses) + deferred_misses;
        let unresolved = deferred.saturating_sub(deferred_hits + deferred_misses);
        let lookups = hits + misses + unresolved;
        let invalid_total: u64 = invalid.iter().map(|(_, n)| n).sum();
        // Every request with a session of its own (`explicit_pins + lookups`) has one
        // source; all but headers are counted, read here after the totals they are part
        // of, so the difference never goes below the truth by more than in-flight counts.
        let mut sources = SessionSourceKind::ALL.map(|k| (k, get(&c.sources[k.index()])));
        let own = sources
            .iter()
            .filter(|(k, _)| !matches!(k, SessionSourceKind::ResponseId))
            .map(|(_, n)| n)
            .sum::<u64>();
        sources[SessionSourceKind::Header.index()].1 =
            (explicit_pins + lookups).saturating_sub(own);
        StatsSnapshot {
            // Every request is exactly one of these, counted when the layer's `call` ran.
            requests: no_session + invalid_total + explicit_pins + lookups,
            no_session,
            invalid,
            rejected: get(&c.rejected),
            explicit_pins,
            lookups,
            hits,
            misses,
            unresolved,
            commits: get(&c.commits),
            clear_attempts: ClearReason::ALL.map(|r| (r, get(&c.clear_attempts[r.index()]))),
            cleared: get(&c.cleared),
            store_errors: get(&c.store_errors),
            sources,
            hard_pins: get(&c.hard_pins),
            response_ids_unknown: get(&c.response_ids_unknown),
            response_ids_learned: get(&c.response_ids_learned),
            upgrades: get(&c.upgrades),
            response_ids_not_stored: get(&c.response_ids_not_stored),
            response_ids_undecodable: get(&c.response_ids_undecodable),
        }
    }
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

/// A copy of the counters at one moment; plain data, easy to export.
///
/// Each request is counted when the layer's `call` runs, even if its response future is
/// dropped right after (a client gone, an outer timeout), under exactly one of
/// `no_session`, `invalid`, `explicit_pins` and `lookups`:
///
/// - `requests == no_session + invalid_total() + explicit_pins + lookups`
/// - `lookups == hits + misses + unresolved`
///
/// A request is classed by its *own* session (header, body field, fingerprint, session
/// function). With [response-id learning](crate::StickySessionLayer::learn_response_ids)
/// on, a request whose `previous_response_id` is looked up counts that lookup in
/// `hard_pins` or `response_ids_unknown`; with a session of its own, the request is one
/// lookup (a hard pin is its hit; an unknown id goes on to the session's lookup, which
/// decides hit or miss); without one, it stays under `no_session` (or `invalid`) even when
/// hard pinned, and its [`SessionSource::ResponseId`](crate::SessionSource::ResponseId)
/// is counted in `sources`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Requests seen by the layer, counted when its `call` ran.
    pub requests: u64,
    /// Requests without any session id.
    pub no_session: u64,
    /// Requests whose session id was invalid, by reason.
    invalid: [(InvalidSessionId, u64); 4],
    /// Requests answered with 400 by strict mode (a subset of `invalid`).
    pub rejected: u64,
    /// Requests that arrived with an explicit [`PinnedAuth`](crate::PinnedAuth), which won
    /// over the store.
    pub explicit_pins: u64,
    /// Store lookups started (`hits + misses + unresolved`).
    pub lookups: u64,
    /// Lookups that found a binding.
    pub hits: u64,
    /// Lookups that found none (or failed: see `store_errors`).
    pub misses: u64,
    /// Lookups without a result (yet): still in flight, or abandoned because the response
    /// future was dropped before the store answered. Only a store whose lookup does not
    /// resolve at once (a networked one) has any; their requests had no decision.
    pub unresolved: u64,
    /// Bindings committed (created or renewed).
    pub commits: u64,
    /// Compare-and-delete attempts, by reason.
    clear_attempts: [(ClearReason, u64); 5],
    /// Compare-and-delete attempts that removed a binding.
    pub cleared: u64,
    /// Store operations that failed (the request was served unsticky).
    pub store_errors: u64,
    /// Requests with a valid session id, by where it came from (the
    /// [`SessionSource`](crate::SessionSource) the layer inserted). Each such request is
    /// counted once, whatever the store said.
    sources: [(SessionSourceKind, u64); 5],
    /// Requests pinned by a learned `previous_response_id` ([`HardPin`](crate::HardPin)).
    /// Those with a session of their own are also counted in `hits`.
    pub hard_pins: u64,
    /// Requests whose `previous_response_id` was looked up and not found among learned
    /// response ids (they fell back to the other sources).
    pub response_ids_unknown: u64,
    /// Response ids learned (committed as `resp_… → account`) from successful responses
    /// and through [`Binding::learn_response_id`](crate::Binding::learn_response_id).
    pub response_ids_learned: u64,
    /// Upgrades accepted by an account (`101 Switching Protocols`, or a 2xx to an HTTP/2
    /// `CONNECT`, with [`ServedBy`](crate::ServedBy)): each committed its binding at once.
    pub upgrades: u64,
    /// Successes whose id was not looked for because their request said `"store": false`
    /// ([`BodySignals::store`](crate::body_session::BodySignals::store)): such a response cannot be
    /// continued with `previous_response_id`, so learning it would only fill the store.
    pub response_ids_not_stored: u64,
    /// Successes whose id was not looked for because the learner cannot decode their
    /// `Content-Encoding`: several codings (`gzip, br`), an unknown one, or, without the
    /// `learn-compressed` feature, any.
    pub response_ids_undecodable: u64,
}

impl StatsSnapshot {
    /// Invalid session ids of every reason.
    pub fn invalid_total(&self) -> u64 {
        self.invalid.iter().map(|(_, n)| n).sum()
    }

    /// Invalid session ids of one reason.
    pub fn invalid(&self, reason: InvalidSessionId) -> u64 {
        self.invalid[reason.index()].1
    }

    /// Clear attempts of one reason.
    pub fn clear_attempts(&self, reason: ClearReason) -> u64 {
        self.clear_attempts[reason.index()].1
    }

    /// Requests whose session came from one kind of source.
    pub fn sessions_from(&self, kind: SessionSourceKind) -> u64 {
        self.sources[kind.index()].1
    }

    /// Invalid session ids by reason, every reason listed (zero included), in a fixed
    /// order: what a metrics exporter labels.
    pub fn invalid_by_reason(&self) -> impl ExactSizeIterator<Item = (InvalidSessionId, u64)> {
        self.invalid.into_iter()
    }

    /// Clear attempts of every reason.
    pub fn clear_attempts_total(&self) -> u64 {
        self.clear_attempts.iter().map(|(_, n)| n).sum()
    }

    /// Clear attempts by reason, every reason listed (zero included), in a fixed order.
    pub fn clear_attempts_by_reason(&self) -> impl ExactSizeIterator<Item = (ClearReason, u64)> {
        self.clear_attempts.into_iter()
    }

    /// Requests with a session id by where it came from, every kind listed (zero
    /// included), in a fixed order.
    pub fn sessions_by_source(&self) -> impl ExactSizeIterator<Item = (SessionSourceKind, u64)> {
        self.sources.into_iter()
    }
}

/// What the layer decided for a request, reported in its tracing span and, when
/// [`StickySessionLayer::report_decision`](crate::StickySessionLayer::report_decision) is
/// on, in the [`DECISION_HEADER`] response header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Decision {
    /// No session id: served without stickiness.
    NoSession,
    /// Invalid session id: served without stickiness (or rejected in strict mode).
    Invalid,
    /// The request arrived with an explicit [`PinnedAuth`](crate::PinnedAuth).
    Pinned,
    /// The store held a binding: the request was pinned to it.
    Hit,
    /// No binding (or the store failed): the inner service picks freely.
    Miss,
}

impl Decision {
    /// The header value and span field: `none`, `invalid`, `pinned`, `hit`, `miss`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSession => "none",
            Self::Invalid => "invalid",
            Self::Pinned => "pinned",
            Self::Hit => "hit",
            Self::Miss => "miss",
        }
    }

    pub(crate) fn header_value(self) -> http::HeaderValue {
        http::HeaderValue::from_static(self.as_str())
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The response header that reports the layer's [`Decision`] when enabled:
/// `sticky-session: hit`.
pub const DECISION_HEADER: http::HeaderName = http::HeaderName::from_static("sticky-session");
