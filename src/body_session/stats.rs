//! Counters of what the body reader did.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::extract::BODY_FIELDS;

#[derive(Default)]
struct Counters {
    header_session: AtomicU64,
    empty: AtomicU64,
    not_json: AtomicU64,
    too_large: AtomicU64,
    errors: AtomicU64,
    invalid_json: AtomicU64,
    scanned: AtomicU64,
    found: [AtomicU64; BODY_FIELDS.len()],
    no_session: AtomicU64,
    previous_response_ids: AtomicU64,
    fingerprints: AtomicU64,
}

/// Shared counters of a [`SessionFromBodyLayer`](super::SessionFromBodyLayer) and every
/// service it made. Cloning shares them.
#[derive(Clone, Default)]
pub struct BodySessionStats(Arc<Counters>);

impl std::fmt::Debug for BodySessionStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

/// Why a body was or was not read, for [`BodySessionStats`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Skip {
    HeaderSession,
    Empty,
    NotJson,
    TooLarge,
}

impl BodySessionStats {
    pub(crate) fn skipped(&self, why: Skip) {
        let c = match why {
            Skip::HeaderSession => &self.0.header_session,
            Skip::Empty => &self.0.empty,
            Skip::NotJson => &self.0.not_json,
            Skip::TooLarge => &self.0.too_large,
        };
        c.fetch_add(1, Relaxed);
    }

    pub(crate) fn error(&self) {
        self.0.errors.fetch_add(1, Relaxed);
    }

    pub(crate) fn invalid_json(&self) {
        self.0.invalid_json.fetch_add(1, Relaxed);
    }

    pub(crate) fn scanned(&self, field: Option<&'static str>, previous: bool, fingerprint: bool) {
        let c = &self.0;
        c.scanned.fetch_add(1, Relaxed);
        match field.and_then(|f| BODY_FIELDS.iter().position(|x| *x == f)) {
            Some(i) => c.found[i].fetch_add(1, Relaxed),
            None => c.no_session.fetch_add(1, Relaxed),
        };
        if previous {
            c.previous_response_ids.fetch_add(1, Relaxed);
        }
        if fingerprint {
            c.fingerprints.fetch_add(1, Relaxed);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> BodySessionStatsSnapshot {
        let c = &self.0;
        let get = |a: &AtomicU64| a.load(Relaxed);
        BodySessionStatsSnapshot {
            header_session: get(&c.header_session),
            empty: get(&c.empty),
            not_json: get(&c.not_json),
            too_large: get(&c.too_large),
            errors: get(&c.errors),
            invalid_json: get(&c.invalid_json),
            scanned: get(&c.scanned),
            found: std::array::from_fn(|i| (BODY_FIELDS[i], get(&c.found[i]))),
            no_session: get(&c.no_session),
            previous_response_ids: get(&c.previous_response_ids),
            fingerprints: get(&c.fingerprints),
        }
    }
}

/// A copy of [`BodySessionStats`]' counters. Every request that reaches the middleware is
/// counted exactly once in one of `header_session`, `empty`, `not_json`, `too_large`,
/// `errors`, `invalid_json` or `scanned`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BodySessionStatsSnapshot {
    /// Not read: a configured header carried a valid session id.
    pub header_session: u64,
    /// Not read: the request has no body (`Content-Length: 0` or an ended stream).
    pub empty: u64,
    /// Not read: the `Content-Type` is not JSON, or a `Content-Encoding` is set.
    pub not_json: u64,
    /// Not buffered, or buffering given up, because the body is larger than the limit:
    /// forwarded unchanged, streaming.
    pub too_large: u64,
    /// The body failed while being read (the error was handed on).
    pub errors: u64,
    /// Read whole, but not JSON.
    pub invalid_json: u64,
    /// Read whole and scanned.
    pub scanned: u64,
    /// Of the scanned bodies, how many had their session in each field of
    /// [`BODY_FIELDS`](super::BODY_FIELDS) (in that order).
    pub found: [(&'static str, u64); BODY_FIELDS.len()],
    /// Of the scanned bodies, how many had no valid session id in any field.
    pub no_session: u64,
    /// Of the scanned bodies, how many had a valid `previous_response_id`.
    pub previous_response_ids: u64,
    /// Of the scanned bodies, how many yielded a fingerprint.
    pub fingerprints: u64,
}

impl BodySessionStatsSnapshot {
    /// How many scanned bodies had their session in `field` (one of
    /// [`BODY_FIELDS`](super::BODY_FIELDS); 0 for any other name).
    pub fn found_in(&self, field: &str) -> u64 {
        self.found
            .iter()
            .find(|(f, _)| *f == field)
            .map_or(0, |(_, n)| *n)
    }
}
