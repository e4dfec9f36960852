//! The embedded binding store, on a `moka` cache.

use std::future::{Ready, ready};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::time::{Duration, Instant};

use moka::ops::compute::{CompResult, Op};
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use super::{BindingInfo, BindingStore, StoreError};
use crate::types::{AuthId, BindingKey};

/// Default capacity of a [`MokaStore`], in bindings.
pub const DEFAULT_MAX_BINDINGS: u64 = 100_000;
/// Default time to live of a binding: one hour, renewed by every commit.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// The in-memory binding store: a bounded, expiring [`moka`] cache.
///
/// - **Bounded.** At most `max_bindings` entries (default 100 000). When full, moka's
///   TinyLFU policy decides which binding to drop: sessions in active use are looked up
///   on every request, so a flood of one-off session ids cannot push them out, while a
///   new session that keeps making requests gets in (see the crate docs, "Capacity").
/// - **Expiring.** A binding lives `ttl` (default 1 hour) after its last commit; each
///   successful response renews it. Expiry is lazy: no sweeper thread, no task, no walk
///   over the whole map under a lock.
/// - **Small keys.** A binding's key is a 128-bit SipHash of `(scope, session)` under a
///   random per-store key, so raw session ids are not kept and each entry's key is
///   16 bytes whatever the session id's length. A collision needs ~2⁶⁴ ids and would only
///   pin a request to another session's account, which the inner service treats as a hint.
/// - **Atomic.** [`commit`](BindingStore::commit) and [`clear_if`](BindingStore::clear_if)
///   go through moka's per-key `and_compute_with`, so a late compare-and-delete never
///   removes a binding committed in between.
///
/// Cloning is cheap and clones share the cache: keep a clone to inspect or edit bindings.
///
/// ```
/// use std::time::Duration;
/// use tower_sticky_session::{MokaStore, StickySessionLayer};
///
/// let store = MokaStore::builder()
///     .max_bindings(10_000)
///     .ttl(Duration::from_secs(600))
///     .build();
/// let layer = StickySessionLayer::with_store(store.clone());
/// assert_eq!(store.entry_count(), 0);
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct MokaStore {
    cache: Cache<u128, Binding, U128Hasher>,
    ttl: Duration,
    k0: RandomState,
    k1: RandomState,
}

#[derive(Clone)]
struct Binding {
    auth: AuthId,
    committed: Instant,
}

/// Builds a [`MokaStore`].
#[derive(Clone, Debug)]
#[must_use]
pub struct MokaStoreBuilder {
    max_bindings: u64,
    ttl: Duration,
    lru: bool,
}

impl MokaStoreBuilder {
    /// The capacity bound, in bindings (default 100 000).
    pub fn max_bindings(mut self, n: u64) -> Self {
        self.max_bindings = n;
        self
    }

    /// How long a binding lives after its last commit (default 1 hour).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Evict the least recently used binding instead of using TinyLFU admission.
    ///
    /// LRU admits every new binding at once, but a flood of one-off session ids evicts
    /// sessions that are in use but idle for longer than the flood takes to fill the
    /// store. The default (TinyLFU) is the better choice for a proxy that faces clients.
    pub fn lru(mut self) -> Self {
        self.lru = true;
        self
    }

    /// Builds the store.
    pub fn build(self) -> MokaStore {
        let policy = if self.lru {
            EvictionPolicy::lru()
        } else {
            EvictionPolicy::tiny_lfu()
        };
        let cache = Cache::builder()
            .max_capacity(self.max_bindings)
            .time_to_live(self.ttl)
            .eviction_policy(policy)
            .build_with_hasher(U128Hasher);
        MokaStore {
            cache,
            ttl: self.ttl,
            k0: RandomState::new(),
            k1: RandomState::new(),
        }
    }
}

impl MokaStore {
    /// A store with the defaults (100 000 bindings, 1 hour TTL, TinyLFU).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for a store with other settings.
    pub fn builder() -> MokaStoreBuilder {
        MokaStoreBuilder {
            max_bindings: DEFAULT_MAX_BINDINGS,
            ttl: DEFAULT_TTL,
            lru: false,
        }
    }

    #[inline]
    fn digest(&self, key: &BindingKey) -> u128 {
        let mut h0 = self.k0.build_hasher();
        let mut h1 = self.k1.build_hasher();
        key.hash_into(&mut h0);
        key.hash_into(&mut h1);
        (u128::from(h0.finish()) << 64) | u128::from(h1.finish())
    }

    /// The live binding of `key`, with its age.
    pub fn get(&self, key: &BindingKey) -> Option<BindingInfo> {
        self.cache.get(&self.digest(key)).map(|b| {
            let age = b.committed.elapsed();
            BindingInfo::new(b.auth, Some(age), Some(self.ttl.saturating_sub(age)))
        })
    }

    /// Removes the binding of `key`, whatever it points at. Returns the account it
    /// pointed at.
    pub fn remove(&self, key: &BindingKey) -> Option<AuthId> {
        self.cache.remove(&self.digest(key)).map(|b| b.auth)
    }

    /// Removes every binding that points at `auth` (e.g. a revoked account), each by
    /// compare-and-delete so bindings re-committed meanwhile to another account stay.
    /// Returns how many were removed. Walks the cache without blocking requests.
    pub fn remove_account(&self, auth: &AuthId) -> usize {
        let mut removed = 0;
        for (k, b) in self.cache.iter() {
            if b.auth.same(auth) && self.clear_digest(*k, auth) {
                removed += 1;
            }
        }
        removed
    }

    /// The number of live bindings. moka counts lazily: call
    /// [`run_pending_tasks`](Self::run_pending_tasks) first for an exact figure.
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Applies pending evictions and expiries now (moka otherwise does it as it goes).
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    fn commit_digest(&self, k: u128, auth: &AuthId) {
        let binding = Binding {
            auth: auth.clone(),
            committed: Instant::now(),
        };
        self.cache
            .entry(k)
            .and_compute_with(move |_| Op::Put(binding));
    }

    fn clear_digest(&self, k: u128, expected: &AuthId) -> bool {
        let result = self
            .cache
            .entry(k)
            .and_compute_with(|current| match current {
                Some(entry) if entry.value().auth.same(expected) => Op::Remove,
                _ => Op::Nop,
            });
        matches!(result, CompResult::Removed(_))
    }
}

impl Default for MokaStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MokaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MokaStore")
            .field("entries", &self.cache.entry_count())
            .field("policy", &self.cache.policy())
            .finish()
    }
}

impl BindingStore for MokaStore {
    type LookupFuture = Ready<Result<Option<AuthId>, StoreError>>;
    type CommitFuture = Ready<Result<(), StoreError>>;
    type ClearFuture = Ready<Result<bool, StoreError>>;

    fn lookup(&self, key: &BindingKey) -> Self::LookupFuture {
        ready(Ok(self.cache.get(&self.digest(key)).map(|b| b.auth)))
    }

    fn commit(&self, key: &BindingKey, auth: &AuthId) -> Self::CommitFuture {
        self.commit_digest(self.digest(key), auth);
        ready(Ok(()))
    }

    fn clear_if(&self, key: &BindingKey, expected: &AuthId) -> Self::ClearFuture {
        ready(Ok(self.clear_digest(self.digest(key), expected)))
    }
}

/// The keys are already keyed SipHash output: moka's own hashing of them would be wasted
/// work, so this hasher folds the 128 bits into 64.
#[derive(Clone, Copy, Default)]
struct U128Hasher;

impl BuildHasher for U128Hasher {
    type Hasher = Fold;
    fn build_hasher(&self) -> Fold {
        Fold(0)
    }
}

struct Fold(u64);

impl Hasher for Fold {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if a non-u128 key is hashed; stay correct anyway.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, i: u128) {
        self.0 ^= (i as u64) ^ ((i >> 64) as u64);
    }
}
