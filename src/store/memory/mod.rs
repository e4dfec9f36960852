//! The embedded binding store, [`MemoryStore`]: a probation segment for bindings with one
//! success and a protected segment for bindings proven by a second one.
//!
//! # Parts
//!
//! - `probation.rs`: the probation segment, a purpose-built sharded LRU (shards picked by
//!   bits 32.. of the key digest, each a mutex around an open-addressing index and a slab
//!   of 24-byte nodes), which also remembers the live keys it pushed out to make room.
//! - The protected segment: a `moka` cache (LRU, time-to-idle `ttl`) keyed by the digest.
//! - `hot.rs`: a direct-mapped table of proven bindings just read from protected, read
//!   under a sequence number, so a session in steady use is found without a moka read.
//! - `accounts.rs`: interned accounts; a binding's value is 8 bytes, the account's 24-bit
//!   index and the write time (40 bits of milliseconds since the store was built).
//! - The stripe generations ([`Generations`]): 4 096 counters per store, a key's stripe
//!   picked by the digest's low 12 bits.
//! - `builder.rs`: the settings and how they size the parts.
//!
//! A key is a 64-bit keyed SipHash of `(scope, session)`, computed once per operation and
//! used for every part: raw session ids are not kept, and an entry's key is 8 bytes
//! whatever the session id's length.
//!
//! # Invariants
//!
//! The code that keeps each rule names it (`rule N, *name*`). Rules 1–3 are model-checked
//! with `loom` (`model_check.rs`, built with `--cfg sticky_loom` and run by `.ci/run`);
//! rules 4–7 are held by the unit tests of this module, `hot.rs` and `probation.rs`.
//! `docs/store-model-check.md` records what breaking each rule does to those checks.
//!
//! 1. **Slot seqlock.** A slot of the hot table is written only by a filler that moved its
//!    sequence number from even to odd by compare-and-swap, and published by storing the
//!    next even number (release). A reader returns a slot's binding only if it read the
//!    same even sequence number before (acquire) and after (behind an acquire fence) the
//!    slot's fields. So a reader never returns a binding of one fill with the digest,
//!    generation or fill time of another (no torn slot), and a busy slot reads as empty.
//! 2. **Bump after write.** Every change of a key's binding — a commit that writes, a
//!    promotion, a compare-and-delete, a removal, and moka's eviction of a protected
//!    binding — bumps the generation of the key's stripe *after* the change took effect
//!    and before the operation returns.
//! 3. **Generation before read.** A hinted lookup reads the stripe's generation *before*
//!    it reads the binding (from a slot or from moka); a slot is filled with the
//!    generation read before its moka read; a slot is served, and a [`CommitHint`] lets a
//!    commit skip its store access, only while the stripe's generation still equals the
//!    one recorded. With rule 2: a lookup that starts after a write, clear or removal of
//!    its key returned never returns the binding from before it (nothing stale after a
//!    clear), and a skipped commit is one that nothing wrote in between; a lookup that
//!    overlaps a write may return the binding as it was just before, as a moka read
//!    racing the write would.
//! 4. **One lock per key.** Every write of a key, in either segment, holds the lock of the
//!    key's probation shard from its first read to its last write, the moka insert or
//!    remove included; protected's eviction listener takes no lock (it only bumps
//!    counters), so there is no lock-order cycle. So writes of one key are serialized
//!    whichever segment holds it, and a compare-and-delete never removes a binding that a
//!    commit wrote after the compare. A poisoned shard lock is taken over: no shard
//!    operation leaves its list half-linked.
//! 5. **Promote before remove.** A promotion inserts the binding into protected *before*
//!    it removes it from probation (under the lock of rule 4); a lookup reads protected,
//!    then probation, then — only if both missed — protected again. So a lookup never
//!    misses a binding that is being promoted. (A probation read takes the shard lock,
//!    so today the order inside the lock is not observable and the third read is what
//!    matters; the order keeps a lock-free probation read correct.) A binding is in at
//!    most one segment between two writes of its key.
//! 6. **Renewal window.** A commit of the account a proven binding already holds leaves
//!    it as it is while it is younger than `ttl / 16` ([`RENEW_DIVISOR`]); any other
//!    commit writes. A slot serves only while it was filled less than `ttl / 16` ago and
//!    fewer than `protected / 16` protected evictions happened since; a hint skips only a
//!    binding still younger than `ttl / 16` at the commit. So a binding expires between
//!    `15/16 · ttl` and `ttl` after its last success, a binding in use is read in moka at
//!    least once per `ttl / 16` (moka's idle timer, `ttl`, never reclaims it) and per
//!    `protected / 16` evictions (its place in protected's LRU order lags by at most
//!    that). Expiry itself is lazy: a binding reads as absent once `ttl` has passed since
//!    its write time.
//! 7. **Bounded.** Protected holds at most `max_bindings − probation` bindings (moka's
//!    capacity, counted after its pending work); each probation shard at most its share,
//!    the shares adding up to `probation`; each shard remembers at most twice its share of
//!    pushed-out keys (at most 2²⁰); the hot table has at most 131 072 slots of 32 bytes;
//!    the stripes are 4 096; at most 2²⁴ distinct accounts are interned (a commit of one
//!    more fails).
//!
//! # Segments
//!
//! A commit that creates a binding puts it in probation, so one-off session ids compete
//! only with each other there. A commit of the account a probation binding already points
//! at promotes it to protected (rule 5); later commits keep it there. A commit of a key
//! that probation pushed out to make room and still remembers promotes it at once, on
//! whichever account served it, if its first success is still within `ttl` (and at least
//! `promote_after` old): without this, sessions that come back a little slower than the
//! probation window would never be proven. With `promote_after` set, a key is remembered
//! only if it was already that old when pushed out, so promotions stay bounded by
//! `probation / promote_after` per second. A binding evicted from a full protected is
//! dropped, not demoted: a demotion would happen in moka's housekeeping, outside rule 4.
//!
//! Probation is sharded (4 per core, at most 64, at least 1 024 bindings each): each shard
//! is an exact LRU of its own share, so the store-wide window is `probation` other new
//! bindings within a few percent. Its default share of `max_bindings` is an eighth rather
//! than a tenth because new sessions fill the shards unevenly (a binomial share): with
//! the default 12 500 in 8 shards, a cycle of 10 000 sessions keeps each one's first
//! account.
//!
//! # A hit's commit without a store access
//!
//! `lookup_hinted` returns a [`CommitHint`]: the key's digest, the binding it read, and
//! the stripe generation read before it (rule 3). `commit_hinted` returns at once — no
//! hash, no moka read — when the hint is of a *proven* binding on the committed account,
//! younger than `ttl / 16` now (rule 6), and the generation is unchanged: the binding is
//! then exactly what the lookup read, and [`commit`](BindingStore::commit) would have
//! left it as it is too. Otherwise (a probation binding, whose commit is the promotion;
//! anything written, cleared or evicted in the stripe since; another account; time to
//! renew) it is a plain commit, so a compare-and-delete between a hit's lookup and its
//! commit is never undone by a skip. A hint carries the store's salt mixed into the
//! generation, so a hint from another store is stale but for a 2⁻³² chance.
//!
//! # Hits without a moka read
//!
//! A lookup that finds a proven binding in protected records it in its slot of the hot
//! table (one slot per four protected bindings), with the stripe generation read before
//! the moka read. The next lookup of that key takes it from the slot while rules 3 and 6
//! allow. An eviction by moka takes effect, for the table, when moka's eviction listener
//! runs, a moment after moka dropped the entry: in between a plain lookup may miss a
//! binding a hinted one still serves. Under many writes slots go stale sooner and lookups
//! read moka: it costs speed, never correctness.

mod accounts;
mod builder;
mod hot;
#[cfg(all(test, sticky_loom))]
mod model_check;
mod probation;
mod sync;

use std::future::{Ready, ready};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use self::accounts::Accounts;
pub use self::builder::{DEFAULT_MAX_BINDINGS, DEFAULT_TTL, MemoryStoreBuilder};
use self::hot::Hot;
use self::probation::Probation;
use self::sync::AtomicU32;
use super::{
    BindingInfo, BindingStore, CommitHint, CrateOnly, HintedLookup, StoreError, StoreErrorKind,
};
use crate::types::{AuthId, BindingKey};

/// A commit of the account a binding already points at rewrites it (renewing its TTL)
/// only once the binding is older than `ttl / RENEW_DIVISOR`.
const RENEW_DIVISOR: u32 = 16;

/// Bits of a binding's value that hold its write time (milliseconds since the store was
/// built: 2⁴⁰ ms is 34 years); the 24 above them hold the interned account.
const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// Generation counters per store: one per stripe of keys (indexed by the key digest's low
/// bits), 16 KiB per store.
#[cfg(not(sticky_loom))]
const STRIPES: usize = 1 << 12;
/// The model check uses four stripes.
#[cfg(sticky_loom)]
const STRIPES: usize = 4;

/// The in-memory binding store: two bounded, expiring segments, for a proxy that runs as
/// one process.
///
/// Pick it when one process serves all the requests of a session (the default store of
/// [`StickySessionLayer::new`](crate::StickySessionLayer::new)): its operations answer at
/// once, without a network round trip or an allocation. Replicas that must share bindings
/// use the Redis store instead (feature `redis`).
///
/// # Segments: proven sessions are never evicted by one-off ids
///
/// A binding lives in one of two segments, both LRU:
///
/// - **Probation** holds bindings with one success behind them. A commit that creates a
///   binding puts it here, so session ids that are used once — however many, however
///   fast — compete only with each other: the least recently used probation binding
///   makes room.
/// - **Protected** holds bindings proven by a *second* success on the same account (a
///   [`moka`] cache). Later commits (TTL renewals, a move to another account after a
///   failover) keep the binding here. Nothing in probation can evict a protected binding;
///   when protected is full, the proven binding least recently read or written makes room
///   for a newly promoted one.
///
/// A session whose first binding was pushed out of probation before its second request
/// is still proven by its next success: probation remembers the keys it pushed out, and a
/// commit of one promotes it straight to protected (if its first success is within the
/// TTL). That request itself was not pinned (its lookup missed); the next one is.
///
/// # Sizing
///
/// [`max_bindings`](MemoryStoreBuilder::max_bindings) (default 100 000) bounds both
/// segments together at every moment (protected once moka's pending work has run:
/// [`run_pending_tasks`](Self::run_pending_tasks)). Probation gets
/// `max(max_bindings / 8, min(1024, max_bindings / 2))` of it (default 12 500) and
/// protected the rest; [`probation_bindings`](MemoryStoreBuilder::probation_bindings) sets
/// it. Protected holds the sessions that matter (conversations with more than one turn),
/// so it gets most of the room; probation only has to hold a new session from its first
/// success until its second request, which must therefore come within
/// **`probation / r`** seconds, where `r` is the rate of *other* new bindings per second
/// (one-off ids of a flood included): with the defaults, 12.5 s against 1 000 one-off
/// ids/s. [`promote_after`](MemoryStoreBuilder::promote_after) caps the rate of
/// promotions, against a flood of ids each used twice (`RELIABILITY.md`, section
/// *Flood*).
///
/// The memory a binding costs in each segment is measured in `BENCHMARKS.md`, section
/// *Memory per binding*; the cost of each operation in *The segmented store (probation +
/// protected) against one raw moka read* and *The hit path by instruction count*.
///
/// # Expiry and renewal
///
/// A binding lives [`ttl`](MemoryStoreBuilder::ttl) (default 1 hour) after it was last
/// written; successful responses renew it. A commit that finds a proven binding already
/// on the same account rewrites it only once it is older than `ttl / 16`, so the common
/// case — every request of a session that stays on its account commits — is a read, not
/// a write, and a binding expires between `15/16 · ttl` and `ttl` after the last
/// successful response (56¼ to 60 minutes by default). A commit to another account, one
/// that creates a binding and one that promotes it always write. Expiry is lazy: no
/// sweeper thread, no task; an expired binding reads as absent and its memory is reused
/// later ([`entry_count`](Self::entry_count) may count it until then).
///
/// # Keys and accounts
///
/// A binding's key is a 64-bit keyed hash of `(scope, session)` under a random per-store
/// key, so session ids are not kept and a binding costs the same whatever the id's
/// length. Two live sessions share a key with probability n²/2⁶⁵ for n live bindings; a
/// collision makes them share one binding (a request pinned to the account the other
/// session last used, which the inner service treats as a hint) and cannot be aimed at
/// without the per-store key. Accounts are interned at their first commit and kept for the
/// store's life: at most 2²⁴ distinct accounts, beyond which a commit of a new account
/// fails with [`StoreErrorKind::Other`].
///
/// # Concurrency
///
/// Writes of one key are serialized whichever segment holds it, so
/// [`clear_if`](BindingStore::clear_if) never removes a binding committed in between, and
/// a lookup never misses a binding that is being promoted. Lookups of proven bindings take
/// no lock. A lookup that overlaps a write may return the binding as it was just before;
/// one that starts after a write has returned never does. (The rules behind this are the
/// invariants in this module's source, `src/store/memory/mod.rs`.)
///
/// Cloning is cheap and clones share the segments: keep a clone to inspect or edit
/// bindings.
///
/// ```
/// use std::time::Duration;
/// use tower_sticky_session::{store::MemoryStore, StickySessionLayer};
///
/// let store = MemoryStore::builder()
///     .max_bindings(10_000)
///     .ttl(Duration::from_secs(600))
///     .build();
/// let layer = StickySessionLayer::with_store(store.clone());
/// assert_eq!(store.entry_count(), 0);
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    protected: Cache<u64, Binding, U64Hasher>,
    /// Also the per-key lock of every write, in either segment.
    probation: Probation,
    /// Whether protected has room at all (a store of `max_bindings` ≤ the probation size
    /// has none: bindings stay in probation).
    promote: bool,
    /// A second success promotes only once the first is at least this old (ms).
    promote_after_ms: u64,
    accounts: Accounts,
    keys: RandomState,
    /// Write times are milliseconds since this instant.
    epoch: Instant,
    ttl: Duration,
    ttl_ms: u64,
    /// Same-account commits of a protected binding younger than this are skipped.
    renew_ms: u64,
    /// Bumped after every write of a key of the stripe and every eviction from protected:
    /// a [`CommitHint`] holds the generation read before its lookup.
    gens: Arc<Generations>,
    /// Proven bindings just read from protected, found again without a moka read.
    hot: Hot,
}

/// One generation counter per stripe of keys, and a per-store salt mixed into the value a
/// hint carries (so a hint from another store is stale with probability 1 − 2⁻³²).
struct Generations {
    counters: Box<[AtomicU32]>,
    salt: u32,
}

impl Generations {
    fn new(salt: u32) -> Self {
        Self {
            counters: (0..STRIPES).map(|_| AtomicU32::new(0)).collect(),
            salt,
        }
    }

    #[inline]
    fn slot(&self, k: u64) -> &AtomicU32 {
        &self.counters[(k as usize) & (STRIPES - 1)]
    }

    /// The stripe's generation, read before the binding (rule 3, *generation before
    /// read*; `Acquire`: a reader that sees a bump also sees the write that preceded it).
    #[inline]
    fn read(&self, k: u64) -> u32 {
        self.slot(k).load(Ordering::Acquire) ^ self.salt
    }

    /// Whether the stripe of `k` is still at `generation` (a value [`read`](Self::read)
    /// returned): nothing wrote, cleared, removed or evicted a key of the stripe since.
    #[inline]
    fn unchanged(&self, k: u64, generation: u32) -> bool {
        self.read(k) == generation
    }

    /// Called *after* a write or eviction of `k` took effect, before the operation returns
    /// (rule 2, *bump after write*).
    #[inline]
    fn bump(&self, k: u64) {
        self.slot(k).fetch_add(1, Ordering::AcqRel);
    }

    /// Runs `write`, a change of `k`'s binding, then bumps `k`'s stripe (rule 2, *bump
    /// after write*): every write of the store goes through here.
    #[inline(always)]
    fn after_write<R>(&self, k: u64, write: impl FnOnce() -> R) -> R {
        let r = write();
        self.bump(k);
        r
    }
}

/// The read side of a hinted lookup (rule 3, *generation before read*): the stripe's
/// generation first, then the binding from `k`'s slot of `hot` if the slot is current,
/// else from `read` (protected, probation, protected: rule 5), recording a proven one in
/// the slot with the generation read before it. Returns the binding, whether it is proven,
/// and that generation (the hint's).
#[inline(always)]
fn hinted_read(
    gens: &Generations,
    hot: &Hot,
    k: u64,
    now: u64,
    read: impl FnOnce() -> Option<(Binding, bool)>,
) -> Option<(Binding, bool, u32)> {
    let generation = gens.read(k);
    match hot.get(k, generation, now) {
        Some(b) => Some((Binding(b), true, generation)),
        None => {
            let (b, proven) = read()?;
            if proven {
                hot.fill(k, b.0, generation, now);
            }
            Some((b, proven, generation))
        }
    }
}

/// A binding: interned account (24 bits) and write time (40 bits, ms since `epoch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Binding(u64);

impl Binding {
    #[inline]
    fn new(account: u32, at_ms: u64) -> Self {
        Self((u64::from(account) << TIME_BITS) | (at_ms & TIME_MASK))
    }
    #[inline]
    fn account(self) -> u32 {
        (self.0 >> TIME_BITS) as u32
    }
    #[inline]
    fn at_ms(self) -> u64 {
        self.0 & TIME_MASK
    }
}

impl MemoryStore {
    /// A store with the defaults (100 000 bindings, of which 12 500 in probation; 1 hour
    /// TTL).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for a store with other settings.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::new()
    }

    #[inline]
    fn digest(&self, key: &BindingKey) -> u64 {
        let mut h = self.inner.keys.build_hasher();
        key.hash_into(&mut h);
        h.finish()
    }

    /// The live binding of `key`, with its age.
    pub fn get(&self, key: &BindingKey) -> Option<BindingInfo> {
        let now = self.inner.now_ms();
        let b = self.inner.find(self.digest(key), now)?;
        let auth = self.inner.accounts.get(b.account())?.clone();
        let age = Duration::from_millis(now.saturating_sub(b.at_ms()));
        Some(BindingInfo::new(
            auth,
            Some(age),
            Some(self.inner.ttl.saturating_sub(age)),
        ))
    }

    /// Removes the binding of `key`, whatever it points at. Returns the account it
    /// pointed at, if the binding was live.
    pub fn remove(&self, key: &BindingKey) -> Option<AuthId> {
        self.inner.remove_digest(self.digest(key))
    }

    /// Removes every binding that points at `auth` (e.g. a revoked account), each by
    /// compare-and-delete so bindings re-committed meanwhile to another account stay.
    /// Returns how many were removed. Walks both segments without blocking requests for
    /// long: a probation shard is locked only while its matching keys are collected.
    pub fn remove_account(&self, auth: &AuthId) -> usize {
        let inner = &self.inner;
        let mut removed = 0;
        for (k, b) in inner.protected.iter() {
            if inner.is(b, auth) && inner.clear_digest(*k, auth) {
                removed += 1;
            }
        }
        // Collected first, one shard at a time: each clear takes its key's shard lock.
        for k in inner.probation.keys_where(|b| inner.is(b, auth)) {
            if inner.clear_digest(k, auth) {
                removed += 1;
            }
        }
        removed
    }

    /// The number of bindings held, both segments together. moka counts the protected
    /// segment lazily: call [`run_pending_tasks`](Self::run_pending_tasks) first for an
    /// exact figure. The count can include bindings that expired (older than `ttl`) but
    /// whose memory is not reclaimed yet: in protected, until moka reclaims them (once
    /// they have not been read for `ttl`); in probation, until they reach the tail of
    /// their shard's LRU list.
    pub fn entry_count(&self) -> u64 {
        self.inner.protected.entry_count() + self.inner.probation.len()
    }

    /// The number of bindings in the protected segment (proven by a second success); as
    /// lazy as [`entry_count`](Self::entry_count).
    pub fn protected_count(&self) -> u64 {
        self.inner.protected.entry_count()
    }

    /// The number of bindings in the probation segment (one success so far); exact (the
    /// probation segment is not a moka cache and has no pending work), expired bindings
    /// included as in [`entry_count`](Self::entry_count).
    pub fn probation_count(&self) -> u64 {
        self.inner.probation.len()
    }

    /// Applies the protected segment's pending evictions and expiries now (moka otherwise
    /// does it as it goes; the probation segment applies its own at once).
    pub fn run_pending_tasks(&self) {
        self.inner.protected.run_pending_tasks();
    }
}

impl Inner {
    #[inline]
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether `b` was written less than `ttl` ago.
    #[inline]
    fn live(&self, b: Binding, now: u64) -> bool {
        now.saturating_sub(b.at_ms()) < self.ttl_ms
    }

    /// Whether `b` points at `auth`.
    #[inline]
    fn is(&self, b: Binding, auth: &AuthId) -> bool {
        self.accounts.get(b.account()).is_some_and(|a| a.same(auth))
    }

    /// The live binding of `k`: protected first, then probation, then — only if both
    /// missed — protected once more.
    ///
    /// Rule 5, *promote before remove*: a promotion inserts into protected (t1) before it
    /// removes from probation (t2). A
    /// lookup that read protected before t1 and probation after t2 would miss a binding
    /// that never stopped existing; its third read, after t2, sees the protected copy. So
    /// a proven binding costs one read, a probation one two, a miss three.
    #[inline]
    fn find(&self, k: u64, now: u64) -> Option<Binding> {
        self.read(k).map(|(b, _)| b).filter(|&b| self.live(b, now))
    }

    /// The binding of `k`, live or not, in [`find`](Self::find)'s order, and whether the
    /// first read (protected) found it: only then is it known to be proven.
    #[inline]
    fn read(&self, k: u64) -> Option<(Binding, bool)> {
        match self.protected.get(&k) {
            Some(b) => Some((b, true)),
            None => Some((
                self.probation.get(k).or_else(|| self.protected.get(&k))?,
                false,
            )),
        }
    }

    fn lookup_digest(&self, k: u64) -> Option<AuthId> {
        let b = self.find(k, self.now_ms())?;
        self.accounts.get(b.account()).cloned()
    }

    /// [`find`](Self::find), with a hint that is valid only for a proven binding: the
    /// stripe's generation is read *before* the binding, so any write or eviction of the
    /// key that the read may have missed shows as a changed generation.
    fn lookup_hinted_digest(&self, k: u64) -> Option<(AuthId, CommitHint)> {
        let now = self.now_ms();
        let (b, proven, generation) = hinted_read(&self.gens, &self.hot, k, now, || self.read(k))?;
        if !self.live(b, now) {
            return None;
        }
        let auth = self.accounts.get(b.account())?.clone();
        let hint = CommitHint {
            a: k,
            b: b.0,
            c: generation,
            valid: proven,
        };
        Some((auth, hint))
    }

    /// Whether a commit of `auth` given `hint` can be skipped without a store access: the
    /// hint is of a proven binding on `auth`, nothing wrote or evicted a key of its stripe
    /// since the lookup read it, and it is younger than `ttl / 16` now. Then the binding is
    /// still exactly what the lookup read, and [`commit_digest`](Self::commit_digest)
    /// would take its fast path: skipping is that commit. A probation binding's hint is
    /// never valid (its commit is the promotion).
    #[inline]
    fn hint_says_skip(&self, hint: CommitHint, auth: &AuthId) -> bool {
        hint.valid
            && self.gens.unchanged(hint.a, hint.c)
            && self.needs_no_renewal(Binding(hint.b), auth, self.now_ms())
    }

    /// Whether a commit of `auth` may leave the proven binding `b` as it is at `now`: it
    /// already points at `auth` and was written less than `ttl / 16` ago (rule 6,
    /// *renewal window*).
    #[inline]
    fn needs_no_renewal(&self, b: Binding, auth: &AuthId, now: u64) -> bool {
        now.saturating_sub(b.at_ms()) < self.renew_ms && self.is(b, auth)
    }

    fn commit_digest(&self, k: u64, auth: &AuthId) -> Result<(), StoreError> {
        let now = self.now_ms();
        // Fast path: a proven binding already on `auth`, renewed recently. Skipping is the
        // same as committing at the moment of the read (the binding already says `auth`),
        // bar the TTL renewal, so compare-and-delete stays atomic: a clear that runs after
        // the read removes the binding, as it would after a real commit.
        if let Some(b) = self.protected.get(&k)
            && self.needs_no_renewal(b, auth, now)
        {
            return Ok(());
        }
        let Some(account) = self.accounts.intern(auth) else {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                Some("too many distinct accounts for one MemoryStore (2^24)".into()),
            ));
        };
        let fresh = Binding::new(account, now);
        self.gens
            .after_write(k, || self.write_locked(k, fresh, account, now));
        Ok(())
    }

    /// The write of a commit that does not skip: under `k`'s shard lock (rule 4, *one lock
    /// per key*), dropped before the stripe's bump.
    #[inline]
    fn write_locked(&self, k: u64, fresh: Binding, account: u32, now: u64) {
        let mut shard = self.probation.lock(k);
        let live = |b: Binding| self.live(b, now);
        'write: {
            if let Some(p) = self.protected.get(&k) {
                if live(p) {
                    // Proven: renew, or move to another account; stays proven (and out of
                    // probation, where a concurrent expiry may have let a first success
                    // land before this renewal).
                    self.protected.insert(k, fresh);
                    shard.remove(k);
                    break 'write;
                }
                // Expired: the session starts over in probation.
                self.protected.invalidate(&k);
            }
            match shard.peek(k) {
                // A second success on the same account: promote. Into protected first,
                // then out of probation, so lookups always find it (rule 5, *promote
                // before remove*).
                Some(b) if self.promote && b.account() == account && live(b) => {
                    if now.saturating_sub(b.at_ms()) < self.promote_after_ms {
                        // Too young to promote (`promote_after`): leave it as it is, but
                        // keep it at the front of its shard.
                        shard.get(k);
                        break 'write;
                    }
                    self.protected.insert(k, fresh);
                    shard.remove(k);
                }
                // A second success after the first one's binding was pushed out of
                // probation by newer ones: a session that came back, not a one-off id.
                // Promoted on whichever account served it (the first binding is gone,
                // so the picker chose afresh), if the first success is still within
                // the TTL and old enough for `promote_after`.
                None if self.promote
                    && shard.take_ghost(k).is_some_and(|first| {
                        live(first) && now.saturating_sub(first.at_ms()) >= self.promote_after_ms
                    }) =>
                {
                    self.protected.insert(k, fresh);
                }
                _ => shard.insert_remembering(k, fresh, live, |b| {
                    now.saturating_sub(b.at_ms()) >= self.promote_after_ms
                }),
            }
        }
    }

    fn clear_digest(&self, k: u64, expected: &AuthId) -> bool {
        let now = self.now_ms();
        self.gens
            .after_write(k, || self.clear_locked(k, expected, now))
    }

    /// The compare-and-delete of `k`, in both segments, under `k`'s shard lock (rule 4,
    /// *one lock per key*).
    fn clear_locked(&self, k: u64, expected: &AuthId, now: u64) -> bool {
        let mut removed = false;
        let mut shard = self.probation.lock(k);
        if let Some(p) = self.protected.get(&k)
            && self.is(p, expected)
            && let Some(p) = self.protected.remove(&k)
        {
            // An expired binding is removed too, but it was not there to clear.
            removed |= self.live(p, now);
        }
        if let Some(b) = shard.peek(k)
            && self.is(b, expected)
        {
            shard.remove(k);
            removed |= self.live(b, now);
        }
        removed
    }

    fn remove_digest(&self, k: u64) -> Option<AuthId> {
        let now = self.now_ms();
        // Under `k`'s shard lock (rule 4, *one lock per key*).
        let (protected, probation) = self.gens.after_write(k, || {
            let mut shard = self.probation.lock(k);
            (self.protected.remove(&k), shard.remove(k))
        });
        let found = protected.or(probation).filter(|&b| self.live(b, now))?;
        self.accounts.get(found.account()).cloned()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("protected", &self.inner.protected.entry_count())
            .field("probation", &self.inner.probation.len())
            .field("ttl", &self.inner.ttl)
            .finish()
    }
}

impl BindingStore for MemoryStore {
    type LookupFuture = Ready<Result<Option<AuthId>, StoreError>>;
    type CommitFuture = Ready<Result<(), StoreError>>;
    type ClearFuture = Ready<Result<bool, StoreError>>;

    fn lookup(&self, key: &BindingKey) -> Self::LookupFuture {
        ready(Ok(self.inner.lookup_digest(self.digest(key))))
    }

    fn commit(&self, key: &BindingKey, auth: &AuthId) -> Self::CommitFuture {
        ready(self.inner.commit_digest(self.digest(key), auth))
    }

    fn clear_if(&self, key: &BindingKey, expected: &AuthId) -> Self::ClearFuture {
        ready(Ok(self.inner.clear_digest(self.digest(key), expected)))
    }

    fn lookup_hinted(&self, key: &BindingKey, _: CrateOnly) -> HintedLookup<Self::LookupFuture> {
        HintedLookup::ready(Ok(self.inner.lookup_hinted_digest(self.digest(key))))
    }

    /// Returns at once, with no hash and no cache read, when the hint says the binding
    /// is proven, on `auth`, younger than `ttl / 16`, and its key's stripe has not been
    /// written since the lookup; otherwise it is [`commit`](BindingStore::commit).
    fn commit_hinted(
        &self,
        key: &BindingKey,
        auth: &AuthId,
        hint: CommitHint,
        _: CrateOnly,
    ) -> Self::CommitFuture {
        if self.inner.hint_says_skip(hint, auth) {
            return ready(Ok(()));
        }
        self.commit(key, auth)
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

    fn store(ttl: Duration) -> MemoryStore {
        MemoryStore::builder().ttl(ttl).build()
    }

    fn small(max: u64, probation: u64) -> MemoryStore {
        MemoryStore::builder()
            .max_bindings(max)
            .probation_bindings(probation)
            .build()
    }

    fn commit(store: &MemoryStore, s: &str, a: &AuthId) {
        store.commit(&key(s), a).into_inner().unwrap();
    }

    fn lookup(store: &MemoryStore, k: &BindingKey) -> Option<AuthId> {
        store.lookup(k).into_inner().unwrap()
    }

    fn bound(store: &MemoryStore, s: &str) -> Option<AuthId> {
        lookup(store, &key(s))
    }

    fn clear(store: &MemoryStore, s: &str, a: &AuthId) -> bool {
        store.clear_if(&key(s), a).into_inner().unwrap()
    }

    fn age(store: &MemoryStore, k: &BindingKey) -> Duration {
        store.get(k).and_then(|b| b.age).expect("bound")
    }

    /// `(protected, probation)` after moka's pending work.
    fn segments(store: &MemoryStore) -> (u64, u64) {
        store.run_pending_tasks();
        (store.protected_count(), store.probation_count())
    }

    fn hinted(store: &MemoryStore, s: &str) -> Option<(AuthId, CommitHint)> {
        store
            .lookup_hinted(&key(s), CrateOnly::TOKEN)
            .into_plain_ready()
    }

    fn commit_hinted(store: &MemoryStore, s: &str, a: &AuthId, hint: CommitHint) {
        store
            .commit_hinted(&key(s), a, hint, CrateOnly::TOKEN)
            .into_inner()
            .unwrap();
    }

    impl<F> HintedLookup<F>
    where
        F: std::future::Future<Output = Result<Option<AuthId>, StoreError>> + Unpin,
    {
        fn into_plain_ready(mut self) -> Option<(AuthId, CommitHint)> {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match std::pin::Pin::new(&mut self).poll(&mut cx) {
                std::task::Poll::Ready(r) => r.unwrap(),
                std::task::Poll::Pending => panic!("MemoryStore answers at once"),
            }
        }
    }

    #[test]
    fn hinted_commit_of_a_young_proven_binding_on_its_account_writes_nothing() {
        let store = store(Duration::from_secs(3600));
        let a = AuthId::from("a");
        commit(&store, "s", &a);
        commit(&store, "s", &a);
        let (found, hint) = hinted(&store, "s").unwrap();
        assert_eq!(found, a);
        assert!(store.inner.hint_says_skip(hint, &a));
        assert!(!store.inner.hint_says_skip(hint, &AuthId::from("b")));
        assert!(!store.inner.hint_says_skip(CommitHint::NONE, &a));
        commit_hinted(&store, "s", &a, hint);
        assert_eq!(bound(&store, "s"), Some(a));
    }

    #[test]
    fn a_probation_hint_never_skips_its_commit_is_the_promotion() {
        let store = store(Duration::from_secs(3600));
        let a = AuthId::from("a");
        commit(&store, "s", &a);
        let (_, hint) = hinted(&store, "s").unwrap();
        assert!(!store.inner.hint_says_skip(hint, &a));
        commit_hinted(&store, "s", &a, hint);
        assert_eq!(segments(&store), (1, 0), "promoted");
    }

    #[test]
    fn a_clear_between_lookup_and_hinted_commit_leads_to_a_real_write() {
        let store = store(Duration::from_secs(3600));
        let a = AuthId::from("a");
        commit(&store, "s", &a);
        commit(&store, "s", &a);
        let (_, hint) = hinted(&store, "s").unwrap();
        // Another request's failure clears the binding while this one streams.
        assert!(clear(&store, "s", &a));
        assert!(!store.inner.hint_says_skip(hint, &a), "stale hint");
        commit_hinted(&store, "s", &a, hint);
        assert_eq!(
            bound(&store, "s"),
            Some(a.clone()),
            "the success wrote again"
        );
        assert_eq!(segments(&store), (0, 1), "a first success again");
    }

    #[test]
    fn any_write_or_eviction_of_the_key_makes_its_hint_stale() {
        let a = AuthId::from("a");
        // Another account committed meanwhile: the hinted commit moves it back.
        let store = store(Duration::from_secs(3600));
        commit(&store, "s", &a);
        commit(&store, "s", &a);
        let (_, hint) = hinted(&store, "s").unwrap();
        commit(&store, "s", &AuthId::from("b"));
        commit_hinted(&store, "s", &a, hint);
        assert_eq!(bound(&store, "s"), Some(a.clone()));
        // Removed meanwhile.
        let (_, hint) = hinted(&store, "s").unwrap();
        store.remove(&key("s"));
        commit_hinted(&store, "s", &a, hint);
        assert_eq!(bound(&store, "s"), Some(a.clone()));
        // Evicted from protected meanwhile (full, least recently used).
        let store = small(30, 10);
        for i in 0..20 {
            commit(&store, &format!("p-{i}"), &a);
            commit(&store, &format!("p-{i}"), &a);
        }
        let (_, hint) = hinted(&store, "p-0").unwrap();
        store.run_pending_tasks();
        for i in 1..20 {
            assert!(bound(&store, &format!("p-{i}")).is_some());
        }
        store.run_pending_tasks();
        commit(&store, "late", &a);
        commit(&store, "late", &a);
        store.run_pending_tasks();
        assert_eq!(bound(&store, "p-0"), None, "evicted");
        commit_hinted(&store, "p-0", &a, hint);
        assert_eq!(bound(&store, "p-0"), Some(a), "written again");
    }

    #[test]
    fn a_hinted_commit_renews_once_the_binding_is_older_than_ttl_over_16() {
        let store = store(Duration::from_millis(1600));
        let (k, a) = (key("s"), AuthId::from("a"));
        commit(&store, "s", &a);
        commit(&store, "s", &a);
        let (_, hint) = hinted(&store, "s").unwrap();
        // The response comes after ttl/16 (100 ms): the commit renews.
        sleep(Duration::from_millis(300));
        commit_hinted(&store, "s", &a, hint);
        assert!(age(&store, &k) < Duration::from_millis(300), "renewed");
    }

    #[test]
    fn a_hint_from_another_store_is_stale() {
        let (one, two) = (
            store(Duration::from_secs(3600)),
            store(Duration::from_secs(3600)),
        );
        let a = AuthId::from("a");
        for st in [&one, &two] {
            commit(st, "s", &a);
            commit(st, "s", &a);
        }
        let (_, hint) = hinted(&one, "s").unwrap();
        assert!(!two.inner.hint_says_skip(hint, &a));
    }

    #[test]
    fn a_clear_on_another_thread_between_lookup_and_hinted_commit_is_never_undone() {
        // Lookup, then a clear that finishes, then the hinted commit: the binding must be
        // there at the end of every round, from whichever thread's point of view.
        use std::sync::Barrier;
        let store = store(Duration::from_secs(3600));
        let a = AuthId::from("a");
        let barrier = Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                for round in 0..2_000 {
                    let k = format!("race-{}", round % 7);
                    barrier.wait(); // lookups done
                    clear(&store, &k, &a);
                    barrier.wait(); // clear done
                }
            });
            for round in 0..2_000 {
                let k = format!("race-{}", round % 7);
                commit(&store, &k, &a);
                commit(&store, &k, &a);
                let (_, hint) = hinted(&store, &k).unwrap();
                barrier.wait();
                barrier.wait();
                commit_hinted(&store, &k, &a, hint);
                assert_eq!(bound(&store, &k), Some(a.clone()), "round {round}");
            }
        });
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any sequence of lookups, commits (plain, or with the key's last hint, stale or
        /// not), clears and removals leaves a store with hints bound exactly like one
        /// without.
        #[test]
        fn hinted_commits_bind_exactly_like_plain_ones(
            ops in proptest::collection::vec((0u8..5, 0usize..3, 0usize..2), 1..80)
        ) {
            let (with, without) = (small(8, 4), small(8, 4));
            let accounts = [AuthId::from("a"), AuthId::from("b")];
            // A hint is only ever used with the key it was looked up with (a stale one
            // included).
            let mut hints = [CommitHint::NONE; 3];
            for (op, k, acct) in ops {
                let (s, a) = (format!("k{k}"), &accounts[acct]);
                match op {
                    0 => {
                        let got = hinted(&with, &s);
                        let plain = bound(&without, &s);
                        proptest::prop_assert_eq!(got.as_ref().map(|g| &g.0), plain.as_ref());
                        hints[k] = got.map_or(CommitHint::NONE, |g| g.1);
                    }
                    1 => {
                        commit_hinted(&with, &s, a, hints[k]);
                        commit(&without, &s, a);
                    }
                    2 => {
                        proptest::prop_assert_eq!(clear(&with, &s, a), clear(&without, &s, a));
                    }
                    3 => {
                        proptest::prop_assert_eq!(with.remove(&key(&s)), without.remove(&key(&s)));
                    }
                    _ => {
                        commit(&with, &s, a);
                        commit(&without, &s, a);
                    }
                }
                for k in 0..3 {
                    let s = format!("k{k}");
                    proptest::prop_assert_eq!(bound(&with, &s), bound(&without, &s), "{}", s);
                }
                proptest::prop_assert_eq!(segments(&with), segments(&without));
            }
        }
    }

    #[test]
    fn first_success_binds_in_probation_and_the_second_promotes() {
        let store = store(Duration::from_secs(3600));
        let a = AuthId::from("a");
        commit(&store, "s", &a);
        assert_eq!(segments(&store), (0, 1));
        assert_eq!(bound(&store, "s"), Some(a.clone()));
        commit(&store, "s", &a);
        assert_eq!(segments(&store), (1, 0));
        assert_eq!(bound(&store, "s"), Some(a.clone()));
        // Further commits (renewals, another account) keep it proven.
        commit(&store, "s", &AuthId::from("b"));
        assert_eq!(segments(&store), (1, 0));
        assert_eq!(bound(&store, "s"), Some(AuthId::from("b")));
    }

    #[test]
    fn a_second_success_on_another_account_is_a_first_success_again() {
        let store = store(Duration::from_secs(3600));
        commit(&store, "s", &AuthId::from("a"));
        commit(&store, "s", &AuthId::from("b"));
        assert_eq!(segments(&store), (0, 1));
        assert_eq!(bound(&store, "s"), Some(AuthId::from("b")));
        commit(&store, "s", &AuthId::from("b"));
        assert_eq!(segments(&store), (1, 0));
    }

    #[test]
    fn one_off_ids_never_evict_proven_bindings() {
        let store = small(200, 20);
        let a = AuthId::from("a");
        for i in 0..150 {
            commit(&store, &format!("proven-{i}"), &a);
            commit(&store, &format!("proven-{i}"), &a);
        }
        for i in 0..20_000 {
            commit(&store, &format!("one-off-{i}"), &a);
        }
        let (protected, probation) = segments(&store);
        assert_eq!(protected, 150);
        assert!(probation <= 20, "{probation}");
        for i in 0..150 {
            assert_eq!(
                bound(&store, &format!("proven-{i}")),
                Some(a.clone()),
                "{i}"
            );
        }
    }

    #[test]
    fn a_new_binding_survives_fewer_than_probation_other_new_bindings() {
        let store = small(1_000, 100);
        let a = AuthId::from("a");
        commit(&store, "new", &a);
        for i in 0..90 {
            commit(&store, &format!("one-off-{i}"), &a);
        }
        store.run_pending_tasks();
        assert_eq!(
            bound(&store, "new"),
            Some(a.clone()),
            "found within the window"
        );
        // A lookup hit moves it to the front again; then 100+ others push it out.
        for i in 90..300 {
            commit(&store, &format!("one-off-{i}"), &a);
        }
        store.run_pending_tasks();
        assert_eq!(bound(&store, "new"), None, "evicted after the window");
        assert!(store.entry_count() <= 100);
    }

    #[test]
    fn a_full_protected_segment_drops_its_least_recently_used_binding() {
        let store = small(30, 10);
        let a = AuthId::from("a");
        for i in 0..20 {
            commit(&store, &format!("p-{i}"), &a);
            commit(&store, &format!("p-{i}"), &a);
        }
        store.run_pending_tasks();
        // Touch all but p-0, then promote one more.
        for i in 1..20 {
            assert!(bound(&store, &format!("p-{i}")).is_some());
        }
        store.run_pending_tasks();
        commit(&store, "late", &a);
        commit(&store, "late", &a);
        assert_eq!(segments(&store), (20, 0));
        assert_eq!(bound(&store, "p-0"), None, "least recently used");
        assert_eq!(bound(&store, "late"), Some(a.clone()));
        for i in 1..20 {
            assert_eq!(bound(&store, &format!("p-{i}")), Some(a.clone()), "{i}");
        }
    }

    #[test]
    fn entries_never_exceed_max_bindings() {
        let store = small(50, 10);
        let a = AuthId::from("a");
        for i in 0..2_000 {
            commit(&store, &format!("s-{i}"), &a);
            if i % 3 == 0 {
                commit(&store, &format!("s-{i}"), &a);
            }
            if i % 100 == 0 {
                store.run_pending_tasks();
                assert!(store.entry_count() <= 50);
            }
        }
        let (protected, probation) = segments(&store);
        assert!(
            protected <= 40 && probation <= 10,
            "{protected} {probation}"
        );
    }

    #[test]
    fn clear_if_is_compare_and_delete_in_either_segment() {
        let store = store(Duration::from_secs(3600));
        let (a, b) = (AuthId::from("a"), AuthId::from("b"));
        commit(&store, "young", &a);
        commit(&store, "proven", &a);
        commit(&store, "proven", &a);
        assert_eq!(segments(&store), (1, 1));
        assert!(!clear(&store, "young", &b));
        assert!(!clear(&store, "proven", &b));
        assert_eq!(bound(&store, "young"), Some(a.clone()));
        assert_eq!(bound(&store, "proven"), Some(a.clone()));
        assert!(clear(&store, "young", &a));
        assert!(clear(&store, "proven", &a));
        assert_eq!(bound(&store, "young"), None);
        assert_eq!(bound(&store, "proven"), None);
        assert_eq!(segments(&store), (0, 0));
        assert!(!clear(&store, "proven", &a));
    }

    #[test]
    fn remove_and_remove_account_reach_both_segments() {
        let store = store(Duration::from_secs(3600));
        let (a, b) = (AuthId::from("a"), AuthId::from("b"));
        for s in ["p1", "p2", "pb"] {
            let acct = if s == "pb" { &b } else { &a };
            commit(&store, s, acct);
            commit(&store, s, acct);
        }
        commit(&store, "y1", &a);
        commit(&store, "yb", &b);
        assert_eq!(store.remove(&key("p1")), Some(a.clone()));
        assert_eq!(store.remove(&key("p1")), None);
        store.run_pending_tasks();
        assert_eq!(store.remove_account(&AuthId::from(String::from("a"))), 2);
        assert_eq!(bound(&store, "p2"), None);
        assert_eq!(bound(&store, "y1"), None);
        assert_eq!(bound(&store, "pb"), Some(b.clone()));
        assert_eq!(bound(&store, "yb"), Some(b));
    }

    #[test]
    fn fresh_auth_allocations_share_one_interned_account() {
        let store = store(Duration::from_secs(3600));
        for i in 0..100 {
            commit(
                &store,
                &format!("s-{i}"),
                &AuthId::from(format!("acct-{}", i % 3)),
            );
        }
        assert_eq!(store.inner.accounts.len(), 3);
        assert_eq!(bound(&store, "s-4").unwrap().as_str(), "acct-1");
    }

    #[test]
    fn promote_after_holds_a_second_success_in_probation_until_the_first_is_old_enough() {
        let store = MemoryStore::builder()
            .max_bindings(1_000)
            .promote_after(Duration::from_millis(200))
            .build();
        let a = AuthId::from("a");
        commit(&store, "s", &a);
        let first = age(&store, &key("s"));
        commit(&store, "s", &a);
        commit(&store, "s", &a);
        assert_eq!(segments(&store), (0, 1), "too young: stays in probation");
        assert!(
            age(&store, &key("s")) >= first,
            "left as it is, not renewed"
        );
        assert_eq!(bound(&store, "s"), Some(a.clone()));
        // Another account is a first success again, with a new clock.
        commit(&store, "s", &AuthId::from("b"));
        sleep(Duration::from_millis(250));
        commit(&store, "s", &a);
        assert_eq!(
            segments(&store),
            (0, 1),
            "b's binding replaced, not promoted"
        );
        sleep(Duration::from_millis(250));
        commit(&store, "s", &a);
        assert_eq!(segments(&store), (1, 0), "old enough: promoted");
        assert_eq!(bound(&store, "s"), Some(a));
    }

    #[test]
    fn promote_after_caps_promotions_by_a_flood_of_ids_used_twice() {
        let store = MemoryStore::builder()
            .max_bindings(1_000)
            .probation_bindings(100)
            .promote_after(Duration::from_secs(60))
            .build();
        let a = AuthId::from("a");
        for i in 0..5_000 {
            let id = format!("attacker-{i}");
            commit(&store, &id, &a);
            commit(&store, &id, &a);
        }
        let (protected, probation) = segments(&store);
        assert_eq!(protected, 0, "no attacker id promoted");
        assert!(probation <= 100);
    }

    #[test]
    fn a_session_pushed_out_of_probation_is_proven_by_its_next_success() {
        // Probation 1 024 (one shard), protected the rest.
        let store = small(10_000, 1_024);
        let (a, b) = (AuthId::from("a"), AuthId::from("b"));
        commit(&store, "returning", &a);
        // The 1 025th first success pushes it out; 29 more push out others. (Its entry in
        // the table of pushed-out keys is lost only if four of those land in its bucket of
        // 512: about one run in ten million.)
        for i in 0..1_054 {
            commit(&store, &format!("one-off-{i}"), &a);
        }
        assert_eq!(
            bound(&store, "returning"),
            None,
            "pushed out by newer first successes"
        );
        // Its next success, on whichever account served it: proven, not a new probation
        // binding that the next 1 024 first successes would push out again.
        commit(&store, "returning", &b);
        assert_eq!(segments(&store), (1, 1_024));
        for i in 1_054..5_000 {
            commit(&store, &format!("one-off-{i}"), &a);
        }
        assert_eq!(bound(&store, "returning"), Some(b));
        // The one-off ids never came back: none of them was promoted.
        assert_eq!(segments(&store), (1, 1_024));
    }

    #[test]
    fn a_pushed_out_first_success_promotes_only_within_ttl_and_after_promote_after() {
        let a = AuthId::from("a");
        let push_out = |store: &MemoryStore| {
            for i in 0..1_100 {
                commit(store, &format!("one-off-{i}"), &a);
            }
        };
        let capped = MemoryStore::builder()
            .max_bindings(10_000)
            .probation_bindings(1_024)
            .promote_after(Duration::from_secs(60))
            .build();
        commit(&capped, "s", &a);
        push_out(&capped);
        commit(&capped, "s", &a);
        assert_eq!(
            segments(&capped).0,
            0,
            "first success too young for promote_after"
        );

        let short = MemoryStore::builder()
            .max_bindings(10_000)
            .probation_bindings(1_024)
            .ttl(Duration::from_millis(200))
            .build();
        commit(&short, "s", &a);
        push_out(&short);
        sleep(Duration::from_millis(250));
        commit(&short, "s", &a);
        assert_eq!(segments(&short).0, 0, "first success expired: starts over");
    }

    /// `promote_after(age)` bounds promotions to `probation / age` per second: an id must
    /// stay in probation for `age`. Remembering pushed-out keys must not widen that: only
    /// keys already `age` old when pushed out are remembered.
    #[test]
    fn remembered_keys_do_not_let_more_ids_through_promote_after() {
        let store = MemoryStore::builder()
            .max_bindings(100_000)
            .probation_bindings(1_024)
            .promote_after(Duration::from_millis(300))
            .build();
        let a = AuthId::from("a");
        for i in 0..3_072 {
            commit(&store, &format!("attacker-{i}"), &a);
        }
        sleep(Duration::from_millis(350));
        for i in 0..3_072 {
            commit(&store, &format!("attacker-{i}"), &a);
        }
        let (protected, _) = segments(&store);
        assert!(
            protected <= 1_024,
            "{protected} promoted: more than probation / age allows"
        );
    }

    #[test]
    fn with_no_room_for_protected_bindings_stay_in_probation() {
        let store = small(10, 10);
        let a = AuthId::from("a");
        commit(&store, "s", &a);
        commit(&store, "s", &a);
        assert_eq!(segments(&store), (0, 1));
        assert_eq!(bound(&store, "s"), Some(a));
    }

    #[test]
    fn a_store_of_100_bindings_promotes_at_the_second_success() {
        let store = MemoryStore::builder().max_bindings(100).build();
        let a = AuthId::from("a");
        commit(&store, "s", &a);
        commit(&store, "s", &a);
        assert_eq!(segments(&store), (1, 0));
    }

    #[test]
    fn a_cycle_of_a_tenth_of_the_default_capacity_keeps_every_first_account() {
        // Issue 20: 10 000 sessions used in turn, each bound on its first success, must
        // all find that account at their second request (no shard overflows).
        let store = MemoryStore::new();
        let accounts = [AuthId::from("a"), AuthId::from("b"), AuthId::from("c")];
        let ids: Vec<String> = (0..10_000).map(|i| format!("cycle-{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(bound(&store, id), None);
            commit(&store, id, &accounts[i % 3]);
        }
        for round in 0..2 {
            for (i, id) in ids.iter().enumerate() {
                let found = bound(&store, id);
                assert_eq!(
                    found.as_ref(),
                    Some(&accounts[i % 3]),
                    "{id} in round {round}"
                );
                commit(&store, id, &accounts[i % 3]);
            }
        }
        assert_eq!(segments(&store), (10_000, 0));
    }

    #[test]
    fn a_binding_being_promoted_is_never_missed_by_a_concurrent_lookup() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        const KEYS: usize = 5_000;
        let store = small(100_000, 10_000);
        let a = AuthId::from("a");
        let keys: Vec<String> = (0..KEYS).map(|i| format!("promote-{i}")).collect();
        // `published` = how many keys have had their first commit; the writer promotes
        // each right after publishing it while the readers look it up.
        let (published, done) = (AtomicUsize::new(0), AtomicBool::new(false));
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let mut checks = 0u64;
                    while !done.load(Ordering::Acquire) {
                        let n = published.load(Ordering::Acquire);
                        if n > 0 {
                            let k = &keys[n - 1];
                            assert_eq!(bound(&store, k), Some(a.clone()), "{k} missed");
                            checks += 1;
                        }
                    }
                    assert!(checks > 0);
                });
            }
            for (i, k) in keys.iter().enumerate() {
                commit(&store, k, &a);
                published.store(i + 1, Ordering::Release);
                commit(&store, k, &a);
            }
            done.store(true, Ordering::Release);
        });
        assert_eq!(segments(&store), (KEYS as u64, 0));
    }

    /// Whether `k` is in both segments, read under its shard lock (every write of `k`
    /// holds it, so what this sees is the state between two complete operations).
    fn in_both_segments(store: &MemoryStore, s: &str) -> bool {
        let k = store.digest(&key(s));
        let shard = store.inner.probation.lock(k);
        shard.peek(k).is_some() && store.inner.protected.contains_key(&k)
    }

    #[test]
    fn hammered_keys_are_never_in_both_segments_and_late_clears_never_remove_newer_bindings() {
        use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
        const KEYS: usize = 6;
        const ROUNDS: u32 = 300;
        // Keys 0..KEYS are committed by their owner (one account per round, once or twice:
        // a first success or a promotion) while other threads clear them with accounts of
        // earlier rounds, which must never remove the owner's newer binding. Keys
        // KEYS..2·KEYS are committed, cleared and removed by everyone at random: only the
        // segment invariant is checked there. A probation of 64 keeps every key in one
        // shard, so all the threads contend on one lock.
        let store = small(1_000, 64);
        let names: Vec<String> = (0..2 * KEYS).map(|i| format!("hammer-{i}")).collect();
        let account = |k: usize, round: u32| AuthId::from(format!("k{k}-r{round}"));
        let rounds: Vec<AtomicU32> = (0..KEYS).map(|_| AtomicU32::new(0)).collect();
        // Owners that have finished (or failed: the count is kept by a drop guard, so a
        // failing owner ends the test instead of leaving the clearers running).
        let owners_done = AtomicUsize::new(0);
        struct Finished<'a>(&'a AtomicUsize);
        impl Drop for Finished<'_> {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::AcqRel);
            }
        }
        std::thread::scope(|s| {
            // Owners: keys 0, 2, 4 and 1, 3, 5.
            for owner in 0..2 {
                let (store, names, rounds, owners_done) = (&store, &names, &rounds, &owners_done);
                s.spawn(move || {
                    let _finished = Finished(owners_done);
                    for round in 1..=ROUNDS {
                        for k in (owner..KEYS).step_by(2) {
                            let a = account(k, round);
                            rounds[k].store(round, Ordering::Release);
                            commit(store, &names[k], &a);
                            if round % 2 == 0 {
                                commit(store, &names[k], &a);
                            }
                            for _ in 0..3 {
                                assert_eq!(bound(store, &names[k]), Some(a.clone()), "{k} {round}");
                                assert!(!in_both_segments(store, &names[k]), "{k} {round}");
                            }
                        }
                    }
                });
            }
            // Clearers with old accounts, and random writers of the shared keys.
            for t in 0..2u64 {
                let (store, names, rounds, owners_done) = (&store, &names, &rounds, &owners_done);
                s.spawn(move || {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                    let mut next = move |n: usize| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x % n as u64) as usize
                    };
                    while owners_done.load(Ordering::Acquire) < 2 {
                        let k = next(KEYS);
                        let round = rounds[k].load(Ordering::Acquire);
                        if round > 1 {
                            let old = round - 1 - next(round.min(4) as usize - 1) as u32;
                            clear(store, &names[k], &account(k, old));
                        }
                        let shared = KEYS + next(KEYS);
                        let a = account(shared, next(2) as u32);
                        match next(4) {
                            0 | 1 => commit(store, &names[shared], &a),
                            2 => drop(clear(store, &names[shared], &a)),
                            _ => drop(store.remove(&key(&names[shared]))),
                        }
                        assert!(!in_both_segments(store, &names[shared]), "{shared}");
                    }
                });
            }
        });
        for (k, name) in names.iter().enumerate() {
            assert!(!in_both_segments(&store, name), "{k}");
            if k < KEYS {
                assert_eq!(bound(&store, name), Some(account(k, ROUNDS)), "{k}");
            }
        }
        let (protected, probation) = segments(&store);
        let bound_keys = names.iter().filter(|n| bound(&store, n).is_some()).count();
        assert_eq!((protected + probation) as usize, bound_keys);
    }

    #[test]
    fn a_late_clear_of_the_old_account_never_removes_the_new_binding_in_either_segment() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let store = store(Duration::from_secs(3600));
        let (old, new) = (AuthId::from("old"), AuthId::from("new"));
        for round in 0..200 {
            let k = format!("race-{round}");
            commit(&store, &k, &old);
            if round % 2 == 0 {
                commit(&store, &k, &old); // proven: the new commit lands in protected
            }
            let committed = AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| {
                    for _ in 0..50 {
                        clear(&store, &k, &old);
                    }
                });
                s.spawn(|| {
                    for _ in 0..50 {
                        if committed.load(Ordering::Acquire) {
                            assert_eq!(bound(&store, &k), Some(new.clone()), "{k}");
                        }
                    }
                });
                // Commit `new` twice (a probation binding is promoted on the way).
                commit(&store, &k, &new);
                committed.store(true, Ordering::Release);
                commit(&store, &k, &new);
            });
            assert_eq!(bound(&store, &k), Some(new.clone()), "{k}");
        }
    }

    #[test]
    fn same_account_commit_of_a_young_binding_is_not_rewritten() {
        let store = store(Duration::from_secs(3600));
        let (k, a) = (key("s"), AuthId::from("a"));
        commit(&store, "s", &a);
        commit(&store, "s", &a);
        sleep(Duration::from_millis(20));
        commit(&store, "s", &a);
        // Still the promoting write: renewing waits until the binding is ttl/16 old.
        assert!(age(&store, &k) >= Duration::from_millis(20));
        assert_eq!(lookup(&store, &k), Some(a));
    }

    #[test]
    fn same_account_commit_renews_once_the_binding_is_older_than_ttl_over_16() {
        // Renewal after 100 ms.
        let store = store(Duration::from_millis(1600));
        let (k, a) = (key("s"), AuthId::from("a"));
        commit(&store, "s", &a);
        commit(&store, "s", &a);
        sleep(Duration::from_millis(300));
        commit(&store, "s", &a);
        assert!(age(&store, &k) < Duration::from_millis(300), "renewed");
    }

    #[test]
    fn commit_to_another_account_always_writes() {
        let store = store(Duration::from_secs(3600));
        let k = key("s");
        commit(&store, "s", &AuthId::from("a"));
        commit(&store, "s", &AuthId::from("a"));
        commit(&store, "s", &AuthId::from("b"));
        assert_eq!(lookup(&store, &k), Some(AuthId::from("b")));
    }

    #[test]
    fn expired_binding_reads_as_absent_and_is_not_reported_cleared() {
        for proven in [false, true] {
            let store = store(Duration::from_millis(100));
            let (k, a) = (key("s"), AuthId::from("a"));
            commit(&store, "s", &a);
            if proven {
                commit(&store, "s", &a);
            }
            assert_eq!(lookup(&store, &k), Some(a.clone()));
            sleep(Duration::from_millis(150));
            assert_eq!(lookup(&store, &k), None);
            assert!(store.get(&k).is_none());
            assert!(!clear(&store, "s", &a));
            assert_eq!(store.remove(&k), None);
        }
    }

    #[test]
    fn expired_binding_read_meanwhile_still_reads_as_absent() {
        // Reads keep moka's idle timer from firing; the write time still decides.
        let store = store(Duration::from_millis(200));
        let (k, a) = (key("s"), AuthId::from("a"));
        commit(&store, "s", &a);
        commit(&store, "s", &a);
        for _ in 0..6 {
            sleep(Duration::from_millis(50));
            let _ = lookup(&store, &k);
        }
        assert_eq!(lookup(&store, &k), None);
        // A commit after expiry writes a fresh binding, in probation.
        commit(&store, "s", &a);
        assert_eq!(lookup(&store, &k), Some(a));
        assert_eq!(segments(&store), (0, 1));
    }
}
