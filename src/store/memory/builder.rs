//! [`MemoryStoreBuilder`]: a [`MemoryStore`]'s settings, and how they size its parts.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use super::accounts::Accounts;
use super::hot::Hot;
use super::probation::Probation;
use super::{Generations, Inner, MemoryStore, RENEW_DIVISOR, U64Hasher};

/// Default capacity of a [`MemoryStore`], in bindings.
pub const DEFAULT_MAX_BINDINGS: u64 = 100_000;
/// Default time to live of a binding: one hour, renewed by commits ([`MemoryStore`] renews
/// a same-account binding at most once every sixteenth of it; the Redis store on every
/// commit, or likewise at most once every sixteenth when its near cache is invalidated by
/// Redis).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// The probation segment's default share of `max_bindings`: an eighth, so that a tenth
/// of `max_bindings` new sessions fits in it whole although its shards fill unevenly
/// (see the parent module's docs, *Segments*)…
const PROBATION_DIVISOR: u64 = 8;
/// …but at least this many bindings (or half the store, if that is smaller).
const PROBATION_FLOOR: u64 = 1024;

/// The default probation size for a store of `max_bindings`.
fn default_probation(max_bindings: u64) -> u64 {
    (max_bindings / PROBATION_DIVISOR)
        .max(PROBATION_FLOOR.min(max_bindings / 2))
        .max(max_bindings.min(1))
}

/// Builds a [`MemoryStore`].
#[derive(Clone, Debug)]
#[must_use]
pub struct MemoryStoreBuilder {
    max_bindings: u64,
    ttl: Duration,
    probation: Option<u64>,
    promote_after: Duration,
}

impl MemoryStoreBuilder {
    /// The defaults ([`MemoryStore::builder`]).
    pub(super) fn new() -> Self {
        Self {
            max_bindings: DEFAULT_MAX_BINDINGS,
            ttl: DEFAULT_TTL,
            probation: None,
            promote_after: Duration::ZERO,
        }
    }

    /// The capacity bound, in bindings, both segments together (default 100 000).
    pub fn max_bindings(mut self, n: u64) -> Self {
        self.max_bindings = n;
        self
    }

    /// How long a binding lives after its last commit (default 1 hour).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How many of the `max_bindings` go to the probation segment (bindings with one
    /// success); the rest hold proven bindings. Default: an eighth, at least
    /// `min(1024, max_bindings / 2)`. Capped at `max_bindings`; with no room left for
    /// protected, bindings are never promoted. A larger probation gives a new session
    /// longer to make its second request under a flood (`probation / flood rate`), a
    /// smaller one leaves more room for proven sessions. See [`MemoryStore`].
    pub fn probation_bindings(mut self, n: u64) -> Self {
        self.probation = Some(n);
        self
    }

    /// Promote a binding at a later success only once its first success is at least
    /// `age` old (default: zero, the second success promotes whenever it comes).
    ///
    /// A defence against a flood of ids each used twice (which would otherwise promote
    /// every attacker id and turn protected over at the attacker's rate): an id has to
    /// stay in probation for `age` to be promoted, and probation holds `probation`
    /// bindings, so however fast a flood is, at most `probation / age` ids are promoted
    /// per second, and a proven session survives if it is touched once per
    /// `protected · age / probation` (defaults with `age` = 10 s: 1 000 promotions/s,
    /// once per 90 s). The price: a session is proven at its first success after `age`
    /// (a same-account commit before that leaves the binding as it is, its TTL counted
    /// from the first success), and only if it stays in probation until then — under a
    /// one-off flood, by making requests at least once per probation window. Keep `age`
    /// well below the TTL.
    pub fn promote_after(mut self, age: Duration) -> Self {
        self.promote_after = age;
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        let n = self.max_bindings;
        let probation = self
            .probation
            .unwrap_or_else(|| default_probation(n))
            .min(n);
        let keys = RandomState::new();
        let gens = Arc::new(Generations::new(keys.hash_one(0u8) as u32));
        let evicted = gens.clone();
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let renew_ms = ttl_ms / u64::from(RENEW_DIVISOR);
        let hot = Hot::new(n.saturating_sub(probation), renew_ms);
        let evictions = hot.eviction_counter();
        MemoryStore {
            inner: Arc::new(Inner {
                // A protected binding's hint goes stale when moka evicts it, too.
                protected: Cache::builder()
                    .max_capacity(n - probation) // Rule 7, *bounded*.
                    // Reclaims bindings untouched for `ttl`; the binding's own write time
                    // enforces the TTL since the last write, never later than the last
                    // touch.
                    .time_to_idle(self.ttl)
                    .eviction_policy(EvictionPolicy::lru())
                    // Bumps the key's stripe once moka dropped the entry (rule 2, *bump
                    // after write*) and counts the eviction (rule 6); takes no lock: moka
                    // may run it inside a write that holds one (rule 4, *one lock per key*).
                    .eviction_listener(move |k: Arc<u64>, _, cause: RemovalCause| {
                        if cause.was_evicted() {
                            evicted.bump(*k);
                            evictions.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                    .build_with_hasher(U64Hasher),
                probation: Probation::new(probation),
                promote: n > probation,
                promote_after_ms: u64::try_from(self.promote_after.as_millis()).unwrap_or(u64::MAX),
                accounts: Accounts::new(),
                keys,
                epoch: Instant::now(),
                ttl: self.ttl,
                ttl_ms,
                renew_ms,
                gens,
                hot,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probation_is_an_eighth_with_a_floor_of_1024_or_half() {
        assert_eq!(default_probation(100_000), 12_500);
        assert_eq!(default_probation(1_000_000), 125_000);
        assert_eq!(default_probation(10_000), 1_250);
        assert_eq!(default_probation(1_000), 500);
        assert_eq!(default_probation(3), 1);
        assert_eq!(default_probation(1), 1);
        assert_eq!(default_probation(0), 0);
    }
}
