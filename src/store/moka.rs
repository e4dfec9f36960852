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
/// Default time to live of a binding: one hour, renewed by commits ([`MokaStore`] renews
/// a same-account binding at most once every sixteenth of it; the Redis store on every
/// commit).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// A commit of the account a binding already points at rewrites it (renewing its TTL)
/// only once the binding is older than `ttl / RENEW_DIVISOR`.
const RENEW_DIVISOR: u32 = 16;

/// The in-memory binding store: a bounded, expiring [`moka`] cache.
///
/// - **Bounded.** At most `max_bindings` entries (default 100 000). When full, moka's
///   TinyLFU policy decides which binding to drop: sessions in active use are looked up
///   on every request, so a flood of one-off session ids cannot push them out, while a
///   new session that keeps making requests gets in (see the crate docs, "Store, capacity and expiry").
/// - **Expiring.** A binding lives `ttl` (default 1 hour) after it was last written;
///   successful responses renew it. Expiry is lazy: no sweeper thread, no task, no walk
///   over the whole map under a lock. Each binding carries its write time and reads as
///   absent once `ttl` has passed; moka reclaims its memory once it has been neither read
///   nor written for `ttl` (moka's time-to-idle, which needs no per-entry write-order
///   list: 32 bytes less per binding than moka's time-to-live; see `BENCHMARKS.md`).
/// - **Renewed at most every `ttl / 16`.** A commit that finds the binding already
///   pointing at the same account, written less than `ttl / 16` ago, leaves it as it is:
///   the common case — every request of a session that stays on its account commits — is
///   then a read, not a write (a moka write costs several times a read; see
///   `BENCHMARKS.md`). So a binding expires between `15/16 · ttl` and `ttl` after the
///   last successful response (56¼ to 60 minutes by default). A commit to another
///   account, or one that creates a binding, always writes.
/// - **Small keys.** A binding's key is a 64-bit SipHash of `(scope, session)` under a
///   random per-store key, so raw session ids are not kept and each entry's key is
///   8 bytes whatever the session id's length (a 128-bit key cost 16 more bytes per
///   binding and a second hash per operation; see `BENCHMARKS.md`). Two live sessions
///   share a key with probability n²/2⁶⁵ for n live bindings (3·10⁻⁸ at 1 000 000); a
///   collision makes them share one binding — a request pinned to the account the other
///   session last used, which the inner service treats as a hint — and cannot be aimed
///   at without the per-store key.
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
    cache: Cache<u64, Binding, U64Hasher>,
    ttl: Duration,
    /// Same-account commits of a binding younger than this are skipped.
    renew_after: Duration,
    keys: RandomState,
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
            // Reclaims bindings untouched for `ttl`; `MokaStore::live` enforces the TTL
            // since the last write, which is never later than the last touch.
            .time_to_idle(self.ttl)
            .eviction_policy(policy)
            .build_with_hasher(U64Hasher);
        MokaStore {
            cache,
            ttl: self.ttl,
            renew_after: self.ttl / RENEW_DIVISOR,
            keys: RandomState::new(),
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
    fn digest(&self, key: &BindingKey) -> u64 {
        let mut h = self.keys.build_hasher();
        key.hash_into(&mut h);
        h.finish()
    }

    /// Whether `b` was written less than `ttl` ago.
    #[inline]
    fn live(&self, b: &Binding) -> bool {
        b.committed.elapsed() < self.ttl
    }

    /// The live binding of `key`, with its age.
    pub fn get(&self, key: &BindingKey) -> Option<BindingInfo> {
        let binding = self.cache.get(&self.digest(key));
        binding.filter(|b| self.live(b)).map(|b| {
            let age = b.committed.elapsed();
            BindingInfo::new(b.auth, Some(age), Some(self.ttl.saturating_sub(age)))
        })
    }

    /// Removes the binding of `key`, whatever it points at. Returns the account it
    /// pointed at, if the binding was live.
    pub fn remove(&self, key: &BindingKey) -> Option<AuthId> {
        let removed = self.cache.remove(&self.digest(key));
        removed.filter(|b| self.live(b)).map(|b| b.auth)
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

    /// The number of bindings held. moka counts lazily: call
    /// [`run_pending_tasks`](Self::run_pending_tasks) first for an exact figure. The count
    /// can include bindings that expired (older than `ttl`) but were read less than `ttl`
    /// ago, until moka reclaims them.
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Applies pending evictions and expiries now (moka otherwise does it as it goes).
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    fn commit_digest(&self, k: u64, auth: &AuthId) {
        // Fast path: already bound to `auth` and renewed recently. Skipping is the same as
        // committing at the moment of the read (the binding already says `auth`), bar the
        // TTL renewal, so compare-and-delete stays atomic: a clear that runs after the
        // read removes the binding, as it would after a real commit.
        if let Some(b) = self.cache.get(&k)
            && b.auth.same(auth)
            && b.committed.elapsed() < self.renew_after
        {
            return;
        }
        let binding = Binding {
            auth: auth.clone(),
            committed: Instant::now(),
        };
        self.cache
            .entry(k)
            .and_compute_with(move |_| Op::Put(binding));
    }

    fn clear_digest(&self, k: u64, expected: &AuthId) -> bool {
        let result = self
            .cache
            .entry(k)
            .and_compute_with(|current| match current {
                Some(entry) if entry.value().auth.same(expected) => Op::Remove,
                _ => Op::Nop,
            });
        // An expired binding is removed too, but it was not there to clear.
        matches!(result, CompResult::Removed(entry) if self.live(entry.value()))
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
        let binding = self.cache.get(&self.digest(key));
        ready(Ok(binding.filter(|b| self.live(b)).map(|b| b.auth)))
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
/// work, so this hasher passes the 64 bits through.
#[derive(Clone, Copy, Default)]
struct U64Hasher;

impl BuildHasher for U64Hasher {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if a non-u64 key is hashed; stay correct anyway.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(b);
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 ^= i;
    }
}

#[cfg(test)]
mod tests {
    use std::thread::sleep;

    use super::*;
    use crate::SessionId;

    fn key(s: &str) -> BindingKey {
        BindingKey::new(None, SessionId::new(s).unwrap())
    }

    fn store(ttl: Duration) -> MokaStore {
        MokaStore::builder().ttl(ttl).build()
    }

    fn lookup(store: &MokaStore, k: &BindingKey) -> Option<AuthId> {
        store.lookup(k).into_inner().unwrap()
    }

    fn age(store: &MokaStore, k: &BindingKey) -> Duration {
        store.get(k).and_then(|b| b.age).expect("bound")
    }

    #[test]
    fn same_account_commit_of_a_young_binding_is_not_rewritten() {
        let store = store(Duration::from_secs(3600));
        let (k, a) = (key("s"), AuthId::from("a"));
        store.commit_digest(store.digest(&k), &a);
        sleep(Duration::from_millis(20));
        store.commit_digest(store.digest(&k), &a);
        // Still the first write: renewing waits until the binding is ttl/16 old.
        assert!(age(&store, &k) >= Duration::from_millis(20));
        assert_eq!(lookup(&store, &k), Some(a));
    }

    #[test]
    fn same_account_commit_renews_once_the_binding_is_older_than_ttl_over_16() {
        // Renewal after 100 ms.
        let store = store(Duration::from_millis(1600));
        let (k, a) = (key("s"), AuthId::from("a"));
        store.commit_digest(store.digest(&k), &a);
        sleep(Duration::from_millis(300));
        store.commit_digest(store.digest(&k), &a);
        assert!(age(&store, &k) < Duration::from_millis(300), "renewed");
    }

    #[test]
    fn commit_to_another_account_always_writes() {
        let store = store(Duration::from_secs(3600));
        let k = key("s");
        store.commit_digest(store.digest(&k), &AuthId::from("a"));
        store.commit_digest(store.digest(&k), &AuthId::from("b"));
        assert_eq!(lookup(&store, &k), Some(AuthId::from("b")));
    }

    #[test]
    fn expired_binding_reads_as_absent_and_is_not_reported_cleared() {
        let store = store(Duration::from_millis(100));
        let (k, a) = (key("s"), AuthId::from("a"));
        store.commit_digest(store.digest(&k), &a);
        assert_eq!(lookup(&store, &k), Some(a.clone()));
        sleep(Duration::from_millis(150));
        assert_eq!(lookup(&store, &k), None);
        assert!(store.get(&k).is_none());
        assert!(!store.clear_digest(store.digest(&k), &a));
        assert_eq!(store.remove(&k), None);
    }

    #[test]
    fn expired_binding_read_meanwhile_still_reads_as_absent() {
        // Reads keep moka's idle timer from firing; the write time still decides.
        let store = store(Duration::from_millis(200));
        let (k, a) = (key("s"), AuthId::from("a"));
        store.commit_digest(store.digest(&k), &a);
        for _ in 0..6 {
            sleep(Duration::from_millis(50));
            let _ = lookup(&store, &k);
        }
        assert_eq!(lookup(&store, &k), None);
        // A commit after expiry writes a fresh binding.
        store.commit_digest(store.digest(&k), &a);
        assert_eq!(lookup(&store, &k), Some(a));
    }
}
