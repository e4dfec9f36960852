//! A small direct-mapped table of proven bindings that were just read from protected,
//! so a session in steady use is found without a moka read.
//!
//! A moka `get` is the largest single cost of a hit in the store (≈ 780 instructions:
//! an epoch pin, a walk of the concurrent hash table, a read-log entry for the LRU, a
//! clock read) and, on a server with many sessions, several cache misses along moka's
//! pointers. A slot here is 32 bytes on one cache line, read with five atomic loads.
//!
//! # Why a slot is never stale in a way that matters
//!
//! A slot holds `(key digest, binding, stripe generation, when filled)`, written only by a
//! lookup that found the binding in protected, with the generation of the key's stripe
//! read *before* that moka read. Every write, clear, removal or eviction of a key bumps
//! its stripe's generation after it takes effect (the same counters the [`CommitHint`]
//! relies on), so:
//!
//! - a lookup that starts after such an operation finished reads a newer generation than
//!   the slot's and goes to moka;
//! - a lookup that overlaps it may return the binding as it was before: the lookup is
//!   then ordered before that operation, which is what a moka read racing it would give.
//!
//! A slot is read and written under a sequence number (odd while a writer fills it;
//! fillers take the slot with a compare-and-swap and skip it when busy), so a reader
//! never takes a digest from one fill and a binding from another.
//!
//! # LRU order and moka's time-to-idle
//!
//! A binding served from here is not read in moka, so moka's LRU order (which protected
//! binding to evict when a promotion needs room) and its idle timer do not see it. So a
//! slot serves only while both of these hold, then the next lookup reads moka again (and
//! fills the slot anew):
//!
//! - fewer than `window` protected evictions happened since it was filled (a sixteenth of
//!   protected's capacity): under promotion pressure a session in use is read in moka at
//!   least once per `capacity / 16` evictions, so its LRU position lags by at most that;
//!   with no pressure, LRU order does not matter;
//! - it was filled less than `max_age` ago (the store's renewal period, `ttl / 16`): moka's
//!   idle timer is `ttl`, so it never expires a binding in use.
//!
//! [`CommitHint`]: crate::store::CommitHint

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::sync::{AtomicU32, AtomicU64, fence};

/// Bits of a slot's `filled` word that hold the protected-eviction count at fill time;
/// the rest (40 bits) hold the fill time in milliseconds.
const EVICTION_BITS: u32 = 24;
const EVICTION_MASK: u64 = (1 << EVICTION_BITS) - 1;

/// The most slots a table has (4 MiB), and the fewest a non-empty one has (rule 7,
/// *bounded*). The model check uses tables of two slots.
const MAX_SLOTS: usize = 1 << 17;
#[cfg(not(sticky_loom))]
const MIN_SLOTS: usize = 64;
#[cfg(sticky_loom)]
const MIN_SLOTS: usize = 2;

#[derive(Default)]
struct Slot {
    /// Even when the slot is stable; odd while a filler writes it.
    seq: AtomicU32,
    /// The key's stripe generation, read before the binding was read from protected.
    generation: AtomicU32,
    digest: AtomicU64,
    binding: AtomicU64,
    /// Fill time in ms (high 40 bits) and protected evictions at fill (low 24 bits).
    filled: AtomicU64,
}

pub(super) struct Hot {
    slots: Box<[Slot]>,
    /// `64 - log2(slots)`: a slot is indexed by the digest's high bits (stripes use the
    /// low ones, so keys of one stripe spread over the table).
    shift: u32,
    /// Evictions from protected so far (low 24 bits compared, wrapping), counted by
    /// protected's eviction listener.
    evictions: Arc<AtomicU64>,
    window: u64,
    max_age_ms: u64,
}

impl Hot {
    /// A table for a protected segment of `protected` bindings: one slot per four of
    /// them, a power of two between 64 and 131 072 (rule 7, *bounded*); none when
    /// protected has no room. (One per eight left 10 000 sessions in turn colliding in
    /// 46 % of their slots with the default capacity; one per four, 26 %.)
    pub(super) fn new(protected: u64, max_age_ms: u64) -> Self {
        let n = if protected == 0 {
            0
        } else {
            let per = usize::try_from(protected / 4).unwrap_or(MAX_SLOTS);
            per.clamp(MIN_SLOTS, MAX_SLOTS)
                .next_power_of_two()
                .min(MAX_SLOTS)
        };
        Self {
            slots: (0..n).map(|_| Slot::default()).collect(),
            shift: if n == 0 { 0 } else { 64 - n.trailing_zeros() },
            evictions: Arc::default(),
            window: (protected / 16).clamp(1, EVICTION_MASK / 2),
            max_age_ms,
        }
    }

    #[inline]
    fn slot(&self, digest: u64) -> Option<&Slot> {
        if self.slots.is_empty() {
            return None;
        }
        Some(&self.slots[(digest >> self.shift) as usize])
    }

    /// The binding of `digest` if its slot holds it, filled with `generation` (the key's
    /// stripe generation now: rule 3, *generation before read*), recently enough in time
    /// and in protected evictions (rule 6, *renewal window*). Read under the slot's
    /// sequence number (rule 1, *slot seqlock*).
    #[inline]
    pub(super) fn get(&self, digest: u64, generation: u32, now_ms: u64) -> Option<u64> {
        let s = self.slot(digest)?;
        let seq = s.seq.load(Ordering::Acquire);
        if seq & 1 == 1 {
            return None;
        }
        let d = s.digest.load(Ordering::Relaxed);
        let binding = s.binding.load(Ordering::Relaxed);
        let g = s.generation.load(Ordering::Relaxed);
        let filled = s.filled.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if s.seq.load(Ordering::Relaxed) != seq || d != digest || g != generation {
            return None;
        }
        if now_ms.saturating_sub(filled >> EVICTION_BITS) >= self.max_age_ms {
            return None;
        }
        let since = self.evictions.load(Ordering::Relaxed).wrapping_sub(filled) & EVICTION_MASK;
        (since < self.window).then_some(binding)
    }

    /// Records `binding` of `digest`, just read from protected after reading
    /// `generation`. Skipped when another filler holds the slot (rule 1, *slot seqlock*:
    /// the sequence number is odd from the compare-and-swap to the last store).
    #[inline]
    pub(super) fn fill(&self, digest: u64, binding: u64, generation: u32, now_ms: u64) {
        let Some(s) = self.slot(digest) else {
            return;
        };
        let seq = s.seq.load(Ordering::Relaxed);
        if seq & 1 == 1
            || s.seq
                .compare_exchange(
                    seq,
                    seq.wrapping_add(1),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        fence(Ordering::Release);
        let evictions = self.evictions.load(Ordering::Relaxed) & EVICTION_MASK;
        s.digest.store(digest, Ordering::Relaxed);
        s.binding.store(binding, Ordering::Relaxed);
        s.generation.store(generation, Ordering::Relaxed);
        s.filled
            .store((now_ms << EVICTION_BITS) | evictions, Ordering::Relaxed);
        s.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The counter protected's eviction listener bumps on every eviction.
    pub(super) fn eviction_counter(&self) -> Arc<AtomicU64> {
        self.evictions.clone()
    }

    #[cfg(test)]
    fn evicted(&self) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    const AGE: u64 = 1_000;

    #[test]
    fn sized_from_protected_capacity() {
        assert_eq!(Hot::new(0, AGE).len(), 0);
        assert_eq!(Hot::new(10, AGE).len(), MIN_SLOTS);
        assert_eq!(Hot::new(90_000, AGE).len(), 32_768);
        assert_eq!(Hot::new(900_000, AGE).len(), MAX_SLOTS);
        assert_eq!(Hot::new(u64::MAX, AGE).len(), MAX_SLOTS);
        // An empty table finds nothing and fills nothing.
        let none = Hot::new(0, AGE);
        none.fill(1, 2, 3, 4);
        assert_eq!(none.get(1, 3, 4), None);
    }

    #[test]
    fn a_fill_is_found_only_with_its_generation_digest_age_and_eviction_window() {
        let hot = Hot::new(1_600, AGE); // window: 100 evictions
        let k = 0xdead_beef_0000_0001;
        assert_eq!(hot.get(k, 7, 10), None);
        hot.fill(k, 42, 7, 10);
        assert_eq!(hot.get(k, 7, 10), Some(42));
        assert_eq!(hot.get(k, 7, 10 + AGE - 1), Some(42));
        // A write or eviction of the key's stripe since the fill.
        assert_eq!(hot.get(k, 8, 10), None);
        // Another key in the same slot.
        assert_eq!(hot.get(k ^ 1, 7, 10), None);
        // Too old.
        assert_eq!(hot.get(k, 7, 10 + AGE), None);
        // Protected churned: the binding must be read in moka again (LRU order).
        for _ in 0..99 {
            hot.evicted();
        }
        assert_eq!(hot.get(k, 7, 10), Some(42));
        hot.evicted();
        assert_eq!(hot.get(k, 7, 10), None);
        // A new fill restarts the window.
        hot.fill(k, 43, 7, 10);
        assert_eq!(hot.get(k, 7, 10), Some(43));
    }

    #[test]
    fn the_eviction_window_survives_the_counter_wrapping() {
        let hot = Hot::new(1_600, AGE);
        hot.evictions.store(EVICTION_MASK - 5, Ordering::Relaxed);
        hot.fill(9, 1, 0, 0);
        for _ in 0..50 {
            hot.evicted();
        }
        assert_eq!(hot.get(9, 0, 0), Some(1));
        for _ in 0..50 {
            hot.evicted();
        }
        assert_eq!(hot.get(9, 0, 0), None);
    }

    #[test]
    fn a_busy_slot_is_neither_read_nor_filled() {
        let hot = Hot::new(1_600, AGE);
        hot.fill(5, 1, 0, 0);
        let s = hot.slot(5).unwrap();
        s.seq.fetch_add(1, Ordering::Relaxed); // a filler in the middle of writing
        assert_eq!(hot.get(5, 0, 0), None);
        hot.fill(5, 2, 0, 0);
        s.seq.fetch_add(1, Ordering::Relaxed);
        assert_eq!(hot.get(5, 0, 0), Some(1));
    }

    /// Fillers write pairs whose binding is derived from the digest; readers must never
    /// see a binding of one fill with the digest of another.
    #[test]
    fn readers_never_see_a_torn_slot() {
        let hot = Arc::new(Hot::new(MIN_SLOTS as u64 * 8, u64::MAX >> EVICTION_BITS));
        let stop = Arc::new(AtomicBool::new(false));
        // Small digests: their high bits are zero, so they all share slot 0.
        let key = |i: u64| i % 1024 + 1;
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (hot, stop) = (hot.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed) {
                        let d = key(i);
                        hot.fill(d, d.wrapping_mul(0x9E37_79B9_7F4A_7C15), 0, 0);
                        i += 2;
                    }
                })
            })
            .collect();
        // Until the readers have seen many fills (the writers may start late on a busy
        // machine), at least 500 000 reads, at most 20 s.
        let (mut found, mut reads) = (0u64, 0u64);
        let start = std::time::Instant::now();
        while (found < 500 || reads < 500_000) && start.elapsed().as_secs() < 20 {
            let d = key(reads);
            if let Some(b) = hot.get(d, 0, 0) {
                assert_eq!(b, d.wrapping_mul(0x9E37_79B9_7F4A_7C15), "torn slot");
                found += 1;
            }
            reads += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        assert!(found > 0, "the readers must have hit some fills");
    }

    /// Through the store: what a lookup serves from a slot follows every write of the key.
    mod through_the_store {
        use std::time::Duration;

        use crate::store::memory::{Inner, MemoryStore};
        use crate::types::{AuthId, BindingKey};
        use crate::{SessionId, store::BindingStore};

        fn key(s: &str) -> BindingKey {
            BindingKey::new(None, SessionId::new(s).unwrap())
        }

        fn hinted(store: &MemoryStore, k: &BindingKey) -> Option<AuthId> {
            store
                .inner
                .lookup_hinted_digest(store.digest(k))
                .map(|(a, _)| a)
        }

        fn commit(store: &MemoryStore, k: &BindingKey, a: &AuthId) {
            store.inner.commit_digest(store.digest(k), a).unwrap();
        }

        fn served_from_slot(inner: &Inner, k: u64) -> bool {
            inner
                .hot
                .get(k, inner.gens.read(k), inner.now_ms())
                .is_some()
        }

        #[test]
        fn a_proven_binding_is_served_from_its_slot_until_the_key_is_written() {
            let store = MemoryStore::builder()
                .ttl(Duration::from_secs(3600))
                .build();
            let (a, b) = (AuthId::from("a"), AuthId::from("b"));
            let k = key("hot-session");
            let d = store.digest(&k);
            commit(&store, &k, &a);
            // Probation bindings are not cached (their next commit is the promotion).
            assert_eq!(hinted(&store, &k), Some(a.clone()));
            assert!(!served_from_slot(&store.inner, d));
            commit(&store, &k, &a);
            assert_eq!(hinted(&store, &k), Some(a.clone()));
            assert!(served_from_slot(&store.inner, d), "filled by the moka read");
            assert_eq!(hinted(&store, &k), Some(a.clone()));
            // A move to another account: the slot is stale at once.
            commit(&store, &k, &b);
            assert!(!served_from_slot(&store.inner, d));
            assert_eq!(hinted(&store, &k), Some(b.clone()));
            assert_eq!(hinted(&store, &k), Some(b.clone()));
            // A compare-and-delete, and a removal.
            assert!(store.clear_if(&k, &b).into_inner().unwrap());
            assert_eq!(hinted(&store, &k), None);
            commit(&store, &k, &a);
            commit(&store, &k, &a);
            assert_eq!(hinted(&store, &k), Some(a.clone()));
            assert_eq!(store.remove(&k), Some(a.clone()));
            assert_eq!(hinted(&store, &k), None);
            // The admin walk.
            commit(&store, &k, &a);
            commit(&store, &k, &a);
            assert_eq!(hinted(&store, &k), Some(a.clone()));
            assert_eq!(store.remove_account(&a), 1);
            assert_eq!(hinted(&store, &k), None);
        }

        #[test]
        fn an_evicted_proven_binding_is_not_served_from_its_slot() {
            // Protected holds 1 600 (its slots go stale after 100 evictions): `first` is
            // evicted by the third of a few promotions, well inside that window, so only
            // the eviction's generation bump can make its slot stale.
            let store = MemoryStore::builder()
                .max_bindings(1_600 + 1_024)
                .probation_bindings(1_024)
                .build();
            let a = AuthId::from("a");
            let first = key("first");
            commit(&store, &first, &a);
            commit(&store, &first, &a);
            assert_eq!(hinted(&store, &first), Some(a.clone()), "fills its slot");
            let d = store.digest(&first);
            // Keys outside `first`'s stripe: their commits must not bump its generation
            // (the stripe is the digest's low 12 bits; digests are keyed per store).
            let stripe = |d: u64| d as usize & (crate::store::memory::STRIPES - 1);
            let mut others = (0..).map(|i| key(&format!("other-{i}")));
            let mut other = || {
                others
                    .find(|k| stripe(store.digest(k)) != stripe(d))
                    .unwrap()
            };
            for _ in 0..1_599 {
                let k = other();
                commit(&store, &k, &a);
                commit(&store, &k, &a);
            }
            store.run_pending_tasks();
            // (Not `store.get(&first)`: a moka read would make it the most recently used.)
            assert_eq!(store.protected_count(), 1_600, "full, nothing evicted yet");
            assert!(served_from_slot(&store.inner, d));
            for _ in 0..3 {
                let k = other();
                commit(&store, &k, &a);
                commit(&store, &k, &a);
                store.run_pending_tasks();
            }
            assert_eq!(store.get(&first), None, "evicted: the least recently used");
            assert!(!served_from_slot(&store.inner, d));
            assert_eq!(hinted(&store, &first), None);
        }

        /// A lookup that starts after a clear has returned never sees the cleared
        /// binding, from moka or from a slot.
        #[test]
        fn a_lookup_after_a_clear_never_returns_the_cleared_binding() {
            let store = MemoryStore::builder().build();
            let k = key("raced-session");
            let cleared = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(-1));
            let accounts: Vec<AuthId> = (0..2_000)
                .map(|i| AuthId::from(format!("acct-{i}")))
                .collect();
            // The reader counts its lookups; the writer waits (briefly) for two of them
            // while each binding is in place, so the reader runs against every binding
            // even on a busy machine.
            let lookups = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let reader = {
                let (store, k, cleared) = (store.clone(), k.clone(), cleared.clone());
                let lookups = lookups.clone();
                std::thread::spawn(move || {
                    let mut hits = 0u64;
                    loop {
                        lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let c = cleared.load(std::sync::atomic::Ordering::Acquire);
                        if let Some(a) = hinted(&store, &k) {
                            let i: i64 = a.as_str()[5..].parse().unwrap();
                            assert!(i > c, "account {i} returned after its clear ({c}) returned");
                            hits += 1;
                        }
                        if c == 1_999 {
                            return hits;
                        }
                    }
                })
            };
            for (i, a) in accounts.iter().enumerate() {
                commit(&store, &k, a);
                commit(&store, &k, a);
                for _ in 0..20 {
                    let _ = hinted(&store, &k);
                }
                let seen = lookups.load(std::sync::atomic::Ordering::Relaxed);
                let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
                while lookups.load(std::sync::atomic::Ordering::Relaxed) < seen + 2
                    && std::time::Instant::now() < until
                {
                    std::thread::yield_now();
                }
                assert!(store.clear_if(&k, a).into_inner().unwrap());
                cleared.store(i as i64, std::sync::atomic::Ordering::Release);
            }
            assert!(reader.join().unwrap() > 0, "the reader saw some bindings");
        }
    }
}
