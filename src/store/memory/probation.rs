//! The probation segment: a bounded, sharded LRU of bindings with one success.
//!
//! Probation is a churn buffer: the one-off ids of a flood land here and evict each other,
//! and a new session's binding waits here for its second success. It needs a bound, LRU
//! order and the binding's own write time (expiry stays lazy, decided by the caller); it
//! needs none of moka's per-entry machinery (a key `Arc`, entry info, access-order deque
//! node, write log: ≈ 300 bytes and a 2.5–3 µs insert per binding). Here a binding costs a
//! 24-byte slab node and one or two 4-byte index entries (the index is at most 3/4
//! full): ≈ 33–43 bytes measured (see `BENCHMARKS.md`), and an insert is a probe of the
//! index and a few slot writes under a mutex.
//!
//! # Layout
//!
//! `shards` (a power of two) independent LRUs, each a [`Mutex`] around a [`Shard`]: an
//! index from key digest to slot (open addressing over `u32` slot numbers, see
//! [`Index`]), and a slab (`Vec`) of nodes `{ key, value, prev, next }` linked into a
//! list, most recently used first, with removed slots on a free list. A key's shard is
//! picked by bits 32.. of its digest (the digests are keyed SipHash output, so every
//! shard gets an even share; the index uses the low bits, which the shard choice leaves
//! alone). Each shard holds at most its share of the capacity (the shares add up to
//! exactly the capacity), so the total is bounded.
//!
//! Why not a `HashMap<u64, u32>` for the index: it costs 16 bytes and a control byte per
//! bucket, and under LRU churn (a removal and an insert per new binding, forever) its
//! tombstones make it double to keep at most half of its buckets in use: 77 bytes per
//! binding measured after a flood of one-off ids, against 42 with this index, which
//! removes by shifting entries back and never rehashes once the shard is full.
//!
//! A lookup moves the binding to the front of its shard; an insert of a new key into a
//! full shard reuses the slot of the shard's least recently used binding (its tail), and
//! so does an insert that finds the tail expired even if the shard is not full. A live
//! tail pushed out is remembered (key and binding, in a table of buckets of four) so the
//! store can still promote its session at its next success ([`Shard::take_ghost`]).
//!
//! The number of shards grows with the core count (4 per core, at most 64) but keeps each
//! shard at least [`MIN_SHARD`] bindings: each shard is an exact LRU of its own keys, so
//! "the last `probation` new bindings are kept" holds per shard, for `probation / shards`
//! of them; with at least 1 024 per shard the store-wide window stays within a few
//! percent of `probation` (a key's shard receives a binomial share of the others).
//!
//! [`MemoryStore`](super::MemoryStore) holds a key's shard lock for every write of that key,
//! in either segment: the lock is the per-key serialization of the whole store (rule 4,
//! *one lock per key*, in the parent module's docs). The guard is public to the parent
//! module for that reason.

use std::sync::{Mutex, MutexGuard, PoisonError};

use super::Binding;

/// No node (end of a list).
const NIL: u32 = u32::MAX;
/// Fewest bindings per shard, so that each shard's LRU window stays close to its share.
const MIN_SHARD: u64 = 1024;
/// Shards per available core…
const SHARDS_PER_CORE: usize = 4;
/// …and at most this many.
const MAX_SHARDS: usize = 64;
/// Most remembered pushed-out keys per shard (16 MiB).
const MAX_GHOSTS: usize = 1 << 20;
/// Entries per bucket of remembered pushed-out keys (64 bytes).
const GHOST_WAYS: usize = 4;
/// Most nodes in one shard: slot indexes are `u32`, with `NIL` reserved.
const MAX_SHARD_LEN: u64 = (u32::MAX - 1) as u64;

/// The number of shards for a probation of `capacity` bindings on `cores` cores.
fn shard_count(capacity: u64, cores: usize) -> usize {
    let wanted = cores
        .max(1)
        .saturating_mul(SHARDS_PER_CORE)
        .next_power_of_two()
        .min(MAX_SHARDS);
    // The largest power of two that keeps every shard at least MIN_SHARD.
    let fits = capacity / MIN_SHARD;
    let by_size = if fits == 0 {
        1
    } else {
        1usize << (63 - fits.leading_zeros()).min(usize::BITS - 2)
    };
    wanted.min(by_size)
}

/// The probation segment: `shards.len()` LRUs, `shards.len()` a power of two.
pub(super) struct Probation {
    shards: Box<[Mutex<Shard>]>,
}

impl Probation {
    /// A probation segment of at most `capacity` bindings, sharded for this machine.
    pub(super) fn new(capacity: u64) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_shards(capacity, shard_count(capacity, cores))
    }

    /// A probation segment of at most `capacity` bindings in `shards` (a power of two)
    /// shards; the first `capacity % shards` get one binding more than the others (rule 7,
    /// *bounded*: the shares add up to `capacity`). A
    /// share beyond [`MAX_SHARD_LEN`] (only for capacities in the billions) is cut to it:
    /// the total stays a bound, just a smaller one.
    fn with_shards(capacity: u64, shards: usize) -> Self {
        debug_assert!(shards.is_power_of_two());
        let n = shards as u64;
        let shards = (0..n)
            .map(|i| (capacity / n + u64::from(i < capacity % n)).min(MAX_SHARD_LEN) as u32)
            .map(|cap| Mutex::new(Shard::new(cap)))
            .collect();
        Self { shards }
    }

    /// The lock of `k`'s shard. Held by the store for every write of `k`, in either
    /// segment (rule 4, *one lock per key*). A poisoned lock is taken over: no shard operation calls out of this module
    /// once it has started changing links (`insert` asks `live` first), and the store
    /// calls moka only between shard operations, so a panic never leaves a shard
    /// half-linked.
    #[inline]
    pub(super) fn lock(&self, k: u64) -> MutexGuard<'_, Shard> {
        let i = ((k >> 32) as usize) & (self.shards.len() - 1);
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The binding of `k`, live or not, moved to the front of its shard.
    #[inline]
    pub(super) fn get(&self, k: u64) -> Option<Binding> {
        self.lock(k).get(k)
    }

    /// The number of bindings held (exact: shards count as they go).
    pub(super) fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| u64::from(s.lock().unwrap_or_else(PoisonError::into_inner).len))
            .sum()
    }

    /// The bound on [`len`](Self::len).
    #[cfg(test)]
    fn capacity(&self) -> u64 {
        self.shard_lens().iter().map(|&(_, c)| u64::from(c)).sum()
    }

    /// The keys of the bindings that satisfy `pick`, one shard at a time (each shard's
    /// lock is held only while its own keys are collected, never while the caller acts on
    /// them).
    pub(super) fn keys_where(&self, mut pick: impl FnMut(Binding) -> bool) -> Vec<u64> {
        let mut keys = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            keys.extend(shard.iter().filter(|&(_, b)| pick(b)).map(|(k, _)| k));
        }
        keys
    }

    #[cfg(test)]
    fn shard_lens(&self) -> Vec<(u32, u32)> {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                (s.len, s.cap)
            })
            .collect()
    }
}

/// One slab slot: a binding and its neighbours in the shard's LRU list (or, on the free
/// list, the next free slot in `next`). 24 bytes.
#[derive(Clone, Copy)]
struct Node {
    key: u64,
    value: Binding,
    /// Toward the most recently used end.
    prev: u32,
    /// Toward the least recently used end.
    next: u32,
}

/// One shard: an exact LRU of at most `cap` bindings.
pub(super) struct Shard {
    /// The keys this shard last pushed out to make room, with the binding each had: a key
    /// found here at its next success is a session that came back, not a one-off id.
    /// Buckets of [`GHOST_WAYS`] entries (one cache line), picked by bits 12.. of the
    /// digest; a bucket keeps its newest entries (key 0 is empty). Allocated when the shard
    /// first makes room (it is full then): twice `cap` entries (32 bytes per binding the
    /// shard holds), at most [`MAX_GHOSTS`], 16 bytes each. A key pushed out `k` evictions ago is
    /// still here unless its bucket took four newer ones since: 98 % of them for `k = cap
    /// / 2`, 86 % for `k = cap`.
    ghosts: Box<[[(u64, Binding); GHOST_WAYS]]>,
    index: Index,
    nodes: Vec<Node>,
    /// Most recently used.
    head: u32,
    /// Least recently used: the next to make room.
    tail: u32,
    /// First free slot; the free list runs through `next`.
    free: u32,
    len: u32,
    cap: u32,
}

impl Shard {
    fn new(cap: u32) -> Self {
        Self {
            ghosts: Box::default(),
            index: Index::default(),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
            free: NIL,
            len: 0,
            cap,
        }
    }

    /// The binding of `k`, live or not, moved to the front.
    #[inline]
    pub(super) fn get(&mut self, k: u64) -> Option<Binding> {
        let i = self.index.get(k, &self.nodes)?;
        self.touch(i);
        Some(self.nodes[i as usize].value)
    }

    /// The binding of `k`, live or not, left where it is in the LRU order.
    #[inline]
    pub(super) fn peek(&self, k: u64) -> Option<Binding> {
        let i = self.index.get(k, &self.nodes)?;
        Some(self.nodes[i as usize].value)
    }

    /// Sets `k`'s binding to `value` and moves it to the front. A new key takes a free
    /// slot; if the shard is full, or its least recently used binding is no longer `live`,
    /// that binding makes room. A shard of capacity 0 keeps nothing. A live binding pushed
    /// out is remembered ([`take_ghost`](Self::take_ghost)).
    #[cfg(test)]
    pub(super) fn insert(&mut self, k: u64, value: Binding, live: impl Fn(Binding) -> bool) {
        self.insert_remembering(k, value, live, |_| true);
    }

    /// [`insert`](Self::insert), remembering a live binding it pushes out only if
    /// `remember` says so (the store: only once it is old enough for `promote_after`, so
    /// that a remembered key, like one still held, has spent that long in probation).
    pub(super) fn insert_remembering(
        &mut self,
        k: u64,
        value: Binding,
        live: impl Fn(Binding) -> bool,
        remember: impl Fn(Binding) -> bool,
    ) {
        if let Some(i) = self.index.get(k, &self.nodes) {
            self.nodes[i as usize].value = value;
            self.touch(i);
            return;
        }
        if self.cap == 0 {
            return;
        }
        let node = Node {
            key: k,
            value,
            prev: NIL,
            next: NIL,
        };
        let tail_live = self.tail != NIL && live(self.nodes[self.tail as usize].value);
        let i = if self.len == self.cap || (self.tail != NIL && !tail_live) {
            // Evict the tail and reuse its slot.
            let t = self.tail;
            if tail_live && remember(self.nodes[t as usize].value) {
                // Pushed out alive: remembered, so its next success still proves it.
                let gone = self.nodes[t as usize];
                if self.ghosts.is_empty() {
                    let buckets = (2 * self.cap as usize).div_ceil(GHOST_WAYS);
                    let empty = [(0, Binding(0)); GHOST_WAYS];
                    self.ghosts =
                        vec![empty; buckets.clamp(1, MAX_GHOSTS / GHOST_WAYS)].into_boxed_slice();
                }
                let g = self.ghost_bucket(gone.key);
                let bucket = &mut self.ghosts[g];
                bucket.copy_within(..GHOST_WAYS - 1, 1);
                bucket[0] = (gone.key, gone.value);
            }
            self.unlink(t);
            self.index.remove(self.nodes[t as usize].key, &self.nodes);
            self.len -= 1;
            self.nodes[t as usize] = node;
            t
        } else if self.free != NIL {
            let f = self.free;
            self.free = self.nodes[f as usize].next;
            self.nodes[f as usize] = node;
            f
        } else {
            // Grow by doubling, never past the shard's capacity.
            if self.nodes.len() == self.nodes.capacity() {
                let room = self.cap as usize - self.nodes.len();
                self.nodes.reserve_exact(self.nodes.len().max(8).min(room));
            }
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        };
        self.push_front(i);
        self.index.insert(k, i, &self.nodes);
        self.len += 1;
    }

    /// The binding `k` had when it was pushed out of this shard to make room, if that was
    /// recent enough to be remembered (the last `cap` or so such keys, fewer where two
    /// share a slot); forgets it. A session whose second success comes after its first
    /// one's binding was pushed out can then be proven all the same.
    #[inline]
    pub(super) fn take_ghost(&mut self, k: u64) -> Option<Binding> {
        if self.ghosts.is_empty() || k == 0 {
            return None;
        }
        let g = self.ghost_bucket(k);
        let bucket = &mut self.ghosts[g];
        let i = bucket.iter().position(|&(key, _)| key == k)?;
        let first = bucket[i].1;
        // Forget it, keeping the others' order (newest first).
        bucket.copy_within(i + 1.., i);
        bucket[GHOST_WAYS - 1] = (0, Binding(0));
        Some(first)
    }

    #[inline]
    fn ghost_bucket(&self, k: u64) -> usize {
        ((k >> 12) % self.ghosts.len() as u64) as usize
    }

    /// Removes `k`'s binding; returns it, live or not.
    pub(super) fn remove(&mut self, k: u64) -> Option<Binding> {
        let i = self.index.remove(k, &self.nodes)?;
        self.unlink(i);
        let node = &mut self.nodes[i as usize];
        node.next = self.free;
        self.free = i;
        self.len -= 1;
        Some(node.value)
    }

    /// The bindings, most recently used first.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, Binding)> + '_ {
        let mut at = self.head;
        std::iter::from_fn(move || {
            let node = self.nodes.get(at as usize)?;
            at = node.next;
            Some((node.key, node.value))
        })
    }

    fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    fn unlink(&mut self, i: u32) {
        let Node { prev, next, .. } = self.nodes[i as usize];
        match prev {
            NIL => self.head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let head = self.head;
        let node = &mut self.nodes[i as usize];
        node.prev = NIL;
        node.next = head;
        match head {
            NIL => self.tail = i,
            h => self.nodes[h as usize].prev = i,
        }
        self.head = i;
    }
}

/// A shard's map from key digest to slot: open addressing with linear probing over slot
/// numbers (a probe compares the key stored in the slot's node), at most 3/4 full, grown
/// by doubling only while the shard fills (so at most `next_power_of_two(cap · 4/3)`
/// entries of 4 bytes: 5–11 bytes per binding). Removal shifts the entries that follow
/// back into the hole (Knuth's algorithm R), so there are no tombstones and a shard that
/// churns forever never rehashes or grows.
#[derive(Default)]
struct Index {
    /// Slot numbers, `NIL` where empty; the length is zero or a power of two.
    table: Vec<u32>,
    len: usize,
}

impl Index {
    /// Where `k` sits in the table, if present.
    #[inline]
    fn find(&self, k: u64, nodes: &[Node]) -> Option<usize> {
        let mask = self.table.len().checked_sub(1)?;
        let mut i = (k as usize) & mask;
        loop {
            match self.table[i] {
                NIL => return None,
                s if nodes[s as usize].key == k => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// The slot of `k`, if present.
    #[inline]
    fn get(&self, k: u64, nodes: &[Node]) -> Option<u32> {
        self.find(k, nodes).map(|i| self.table[i])
    }

    /// Adds `k` (absent) at `slot`; `nodes` holds the key of every slot already in.
    fn insert(&mut self, k: u64, slot: u32, nodes: &[Node]) {
        if (self.len + 1) * 4 > self.table.len() * 3 {
            self.grow(nodes);
        }
        let mask = self.table.len() - 1;
        let mut i = (k as usize) & mask;
        while self.table[i] != NIL {
            i = (i + 1) & mask;
        }
        self.table[i] = slot;
        self.len += 1;
    }

    fn grow(&mut self, nodes: &[Node]) {
        let size = (self.table.len() * 2).max(16);
        let old = std::mem::replace(&mut self.table, vec![NIL; size]);
        let mask = size - 1;
        for slot in old.into_iter().filter(|&s| s != NIL) {
            let mut i = (nodes[slot as usize].key as usize) & mask;
            while self.table[i] != NIL {
                i = (i + 1) & mask;
            }
            self.table[i] = slot;
        }
    }

    /// Removes `k`; returns its slot. `nodes` must still hold `k` in that slot.
    fn remove(&mut self, k: u64, nodes: &[Node]) -> Option<u32> {
        let mut hole = self.find(k, nodes)?;
        let slot = self.table[hole];
        let mask = self.table.len() - 1;
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let s = self.table[j];
            if s == NIL {
                break;
            }
            // The entry at `j` may fill the hole unless its home lies cyclically in
            // (hole, j]: then a lookup would start past the hole and never reach it.
            let home = (nodes[s as usize].key as usize) & mask;
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.table[hole] = s;
                hole = j;
            }
        }
        self.table[hole] = NIL;
        self.len -= 1;
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    fn b(v: u64) -> Binding {
        Binding::new(0, v)
    }

    fn always(_: Binding) -> bool {
        true
    }

    /// Keys, most recently used first, checking the list both ways and the map.
    fn order(s: &Shard) -> Vec<u64> {
        let fwd: Vec<u64> = s.iter().map(|(k, _)| k).collect();
        let mut back = Vec::new();
        let mut at = s.tail;
        while at != NIL {
            back.push(s.nodes[at as usize].key);
            at = s.nodes[at as usize].prev;
        }
        back.reverse();
        assert_eq!(fwd, back, "prev and next links agree");
        assert_eq!(fwd.len(), s.len as usize);
        assert_eq!(s.index.len, s.len as usize);
        assert_eq!(
            s.index.table.iter().filter(|&&x| x != NIL).count(),
            s.len as usize
        );
        for (k, _) in s.iter() {
            let slot = s.index.get(k, &s.nodes).expect("indexed");
            assert_eq!(s.nodes[slot as usize].key, k);
        }
        fwd
    }

    /// Slots on the free list.
    fn free_slots(s: &Shard) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = s.free;
        while at != NIL {
            out.push(at);
            at = s.nodes[at as usize].next;
        }
        out
    }

    #[test]
    fn a_shard_keeps_the_most_recently_used_and_evicts_its_tail() {
        let mut s = Shard::new(3);
        for k in 1..=3 {
            s.insert(k, b(k), always);
        }
        assert_eq!(order(&s), [3, 2, 1]);
        // A lookup moves 1 to the front: 2 is now the tail and makes room for 4.
        assert_eq!(s.get(1), Some(b(1)));
        assert_eq!(order(&s), [1, 3, 2]);
        s.insert(4, b(4), always);
        assert_eq!(order(&s), [4, 1, 3]);
        assert_eq!(s.peek(2), None);
        // A peek does not reorder; an insert of a present key updates and moves it.
        assert_eq!(s.peek(3), Some(b(3)));
        assert_eq!(order(&s), [4, 1, 3]);
        s.insert(3, b(30), always);
        assert_eq!(order(&s), [3, 4, 1]);
        assert_eq!(s.peek(3), Some(b(30)));
        assert_eq!(s.nodes.len(), 3, "no slot beyond the capacity");
    }

    #[test]
    fn removed_slots_are_reused_before_the_slab_grows() {
        let mut s = Shard::new(4);
        for k in 1..=4 {
            s.insert(k, b(k), always);
        }
        assert_eq!(s.remove(2), Some(b(2)));
        assert_eq!(s.remove(2), None);
        assert_eq!(s.remove(4), Some(b(4)));
        assert_eq!(free_slots(&s), [3, 1]);
        assert_eq!(order(&s), [3, 1]);
        s.insert(5, b(5), always);
        s.insert(6, b(6), always);
        assert!(free_slots(&s).is_empty());
        assert_eq!(s.nodes.len(), 4);
        assert_eq!(order(&s), [6, 5, 3, 1]);
        // Full again: the next new key evicts the tail, not a free slot.
        s.insert(7, b(7), always);
        assert_eq!(order(&s), [7, 6, 5, 3]);
        // Removing the head and the tail keeps the links right.
        s.remove(7);
        s.remove(3);
        assert_eq!(order(&s), [6, 5]);
        s.remove(6);
        s.remove(5);
        assert_eq!(order(&s), Vec::<u64>::new());
        assert_eq!((s.head, s.tail), (NIL, NIL));
        s.insert(8, b(8), always);
        assert_eq!(order(&s), [8]);
    }

    #[test]
    fn an_expired_tail_makes_room_before_the_shard_is_full() {
        let mut s = Shard::new(10);
        s.insert(1, b(1), always);
        s.insert(2, b(100), always);
        // Bindings written before 50 are expired: the tail (1) goes, 2 stays.
        let live = |v: Binding| v.at_ms() >= 50;
        s.insert(3, b(100), live);
        assert_eq!(order(&s), [3, 2]);
        s.insert(4, b(100), live);
        assert_eq!(
            order(&s),
            [4, 3, 2],
            "a live tail stays while there is room"
        );
    }

    #[test]
    fn a_shard_of_capacity_zero_keeps_nothing() {
        let mut s = Shard::new(0);
        s.insert(1, b(1), always);
        assert_eq!(s.get(1), None);
        assert_eq!(order(&s), Vec::<u64>::new());
        assert_eq!(s.take_ghost(1), None);
    }

    #[test]
    fn keys_pushed_out_alive_are_remembered_once_and_the_newest_win_a_bucket() {
        let mut s = Shard::new(2);
        s.insert(1, b(10), always);
        s.insert(2, b(20), always);
        assert_eq!(
            s.take_ghost(1),
            None,
            "nothing pushed out yet, nothing allocated"
        );
        s.insert(3, b(30), always); // pushes out 1
        assert_eq!(s.take_ghost(2), None, "still held, not a ghost");
        assert_eq!(s.take_ghost(1), Some(b(10)));
        assert_eq!(s.take_ghost(1), None, "taken once");
        // An expired tail makes room without being remembered.
        s.insert(4, b(40), |v| v != b(20)); // 2 is expired: pushed out, not remembered
        assert_eq!(s.take_ghost(2), None);
        // Keys sharing a bucket (same bits 12..): the newest four are kept.
        let mut s = Shard::new(1);
        let same = |i: u64| i << 40 | 5; // bits 12..40 zero: all in bucket 0
        s.insert(same(0), b(0), always);
        for i in 1..=5 {
            s.insert(same(i), b(i), always); // pushes out same(i - 1)
        }
        assert_eq!(
            s.take_ghost(same(0)),
            None,
            "the oldest of five left the bucket"
        );
        for i in 1..=4 {
            assert_eq!(s.take_ghost(same(i)), Some(b(i)));
        }
    }

    #[test]
    fn the_slab_grows_by_doubling_up_to_the_capacity_exactly() {
        let mut s = Shard::new(100);
        for k in 0..100 {
            s.insert(k, b(k), always);
            assert!(s.nodes.capacity() <= 100);
        }
        assert_eq!(s.nodes.capacity(), 100);
        for k in 100..1000 {
            s.insert(k, b(k), always);
        }
        assert_eq!(s.nodes.capacity(), 100);
        assert_eq!(order(&s), (900..1000).rev().collect::<Vec<_>>());
    }

    #[test]
    fn shares_add_up_to_the_capacity_and_each_shard_stays_within_its_own() {
        for (capacity, shards) in [(10_000, 8), (1_001, 4), (3, 4), (0, 1), (100_000, 16)] {
            let p = Probation::with_shards(capacity, shards);
            let caps: Vec<u32> = p.shard_lens().iter().map(|&(_, c)| c).collect();
            assert_eq!(caps.iter().map(|&c| u64::from(c)).sum::<u64>(), capacity);
            assert!(caps.iter().max().unwrap() - caps.iter().min().unwrap() <= 1);
            // Far more keys than fit, spread by the digest bits the shards use.
            for i in 0..capacity * 5 + 50 {
                let k = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                p.lock(k).insert(k, b(i), always);
            }
            for (len, cap) in p.shard_lens() {
                assert!(len <= cap, "{len} > {cap}");
            }
            assert_eq!(p.len(), capacity, "every shard full");
            assert!(p.len() <= p.capacity());
        }
    }

    #[test]
    fn shard_count_follows_cores_within_the_minimum_share() {
        assert_eq!(shard_count(10_000, 2), 8);
        assert_eq!(shard_count(10_000, 16), 8, "at least 1 024 per shard");
        assert_eq!(shard_count(100_000, 16), 64);
        assert_eq!(shard_count(100_000, 1), 4);
        assert_eq!(shard_count(1_000, 8), 1);
        assert_eq!(shard_count(0, 8), 1);
        assert_eq!(shard_count(u64::MAX, 1), 4);
        for (cap, cores) in [(5_000u64, 3usize), (1 << 40, 64), (123_456, 7)] {
            assert!(shard_count(cap, cores).is_power_of_two());
        }
    }

    #[test]
    fn a_capacity_beyond_the_slot_indexes_is_cut_per_shard() {
        let p = Probation::with_shards(u64::MAX, 4);
        assert_eq!(p.capacity(), 4 * MAX_SHARD_LEN);
        assert!(
            p.shard_lens()
                .iter()
                .all(|&(_, c)| u64::from(c) == MAX_SHARD_LEN)
        );
    }

    #[test]
    fn a_poisoned_shard_is_taken_over_not_a_panic() {
        let p = Probation::with_shards(16, 1);
        p.lock(1).insert(1, b(1), always);
        let _ = std::thread::scope(|s| {
            s.spawn(|| {
                let _guard = p.lock(1);
                panic!("poison the shard");
            })
            .join()
        });
        assert_eq!(p.get(1), Some(b(1)));
        p.lock(2).insert(2, b(2), always);
        assert_eq!(p.len(), 2);
    }

    /// The reference: a list of `(key, value)`, most recently used first.
    #[derive(Default)]
    struct Model {
        list: VecDeque<(u64, u64)>,
        cap: usize,
    }

    impl Model {
        fn pos(&self, k: u64) -> Option<usize> {
            self.list.iter().position(|&(x, _)| x == k)
        }
        fn get(&mut self, k: u64) -> Option<u64> {
            let e = self.list.remove(self.pos(k)?)?;
            self.list.push_front(e);
            Some(e.1)
        }
        fn insert(&mut self, k: u64, v: u64, expired_before: u64) {
            if let Some(i) = self.pos(k) {
                self.list.remove(i);
            } else if self.cap == 0 {
                return;
            } else if self.list.len() == self.cap
                || self.list.back().is_some_and(|&(_, t)| t < expired_before)
            {
                self.list.pop_back();
            }
            self.list.push_front((k, v));
        }
        fn remove(&mut self, k: u64) -> Option<u64> {
            Some(self.list.remove(self.pos(k)?)?.1)
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Inserts and removals of keys in a few colliding clusters (homes wrapping
        /// around the table's end, at every table size) keep the index exactly the set
        /// of keys inserted and not removed, every one reachable.
        #[test]
        fn the_index_finds_exactly_the_keys_it_holds(
            ops in proptest::collection::vec((proptest::bool::ANY, 0usize..40), 1..400)
        ) {
            // Key `i`: low six bits in {13, 14, 15, 0, 1}, so homes collide whatever
            // the table size (16, 32, 64); its node is slot `i`.
            let key = |i: usize| (i / 5) as u64 * 64 + [13, 14, 15, 0, 1][i % 5];
            let nodes: Vec<Node> = (0..40)
                .map(|i| Node { key: key(i), value: b(0), prev: NIL, next: NIL })
                .collect();
            let mut index = Index::default();
            let mut model = std::collections::BTreeSet::new();
            for (add, i) in ops {
                if add {
                    if model.insert(i) {
                        index.insert(key(i), i as u32, &nodes);
                    }
                } else {
                    proptest::prop_assert_eq!(
                        index.remove(key(i), &nodes),
                        model.remove(&i).then_some(i as u32)
                    );
                }
                for j in 0..40 {
                    proptest::prop_assert_eq!(
                        index.get(key(j), &nodes),
                        model.contains(&j).then_some(j as u32)
                    );
                }
                proptest::prop_assert_eq!(index.len, model.len());
                proptest::prop_assert!(index.len * 4 <= index.table.len() * 3);
            }
        }

        /// Any sequence of lookups, peeks, inserts (with an expiry horizon) and removals
        /// leaves a shard holding exactly what a plain LRU list holds, in the same order.
        #[test]
        fn a_shard_behaves_like_a_plain_lru_list(
            cap in 0u32..6,
            ops in proptest::collection::vec((0u8..4, 0u64..10, 0u64..100, 0u64..30), 1..200)
        ) {
            let mut s = Shard::new(cap);
            let mut m = Model { cap: cap as usize, ..Model::default() };
            for (op, k, v, horizon) in ops {
                // Keys whose low bits collide near the end of the index table (homes 14,
                // 15 and, wrapped, 0 in a table of 16 or more): long probe runs.
                let k = (k / 3) * 1024 + 14 + k % 3;
                match op {
                    0 => proptest::prop_assert_eq!(s.get(k).map(Binding::at_ms), m.get(k)),
                    1 => proptest::prop_assert_eq!(
                        s.peek(k).map(Binding::at_ms),
                        m.pos(k).map(|i| m.list[i].1)
                    ),
                    2 => {
                        s.insert(k, b(v), |x| x.at_ms() >= horizon);
                        m.insert(k, v, horizon);
                    }
                    _ => proptest::prop_assert_eq!(s.remove(k).map(Binding::at_ms), m.remove(k)),
                }
                let want: Vec<u64> = m.list.iter().map(|&(k, _)| k).collect();
                proptest::prop_assert!(want.iter().all(|&k| s.peek(k).is_some()));
                proptest::prop_assert_eq!(order(&s), want);
                proptest::prop_assert!(s.len <= cap);
                proptest::prop_assert!(s.nodes.len() <= cap as usize);
            }
        }
    }
}
