//! Circuit breakers and where they apply: one for the whole store (one node, Sentinel),
//! or one per Cluster primary, found through the store's copy of the cluster's slot map.
//!
//! See "Failing open" and "Redis Cluster" on [`RedisStore`](super::RedisStore).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};

use crate::store::StoreError;

/// Number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

pub(super) struct Breaker {
    pub(super) threshold: u32,
    pub(super) cooldown_ms: u64,
    pub(super) failures: AtomicU32,
    /// Store-epoch millisecond until which Redis is skipped; 0: closed.
    pub(super) open_until: AtomicU64,
    /// A background probe is running.
    pub(super) probing: AtomicBool,
}

impl Breaker {
    pub(super) fn new(threshold: u32, cooldown_ms: u64) -> Self {
        Self {
            threshold,
            cooldown_ms,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// Counts a failure; returns whether the breaker should open.
    pub(super) fn fail(&self) -> bool {
        let n = self.failures.fetch_add(1, Relaxed).saturating_add(1);
        n >= self.threshold
    }

    /// Opens (or keeps open) the breaker for another cooldown.
    pub(super) fn trip(&self, now: u64) {
        self.open_until.store(self.reopen_at(now), Relaxed);
    }

    pub(super) fn reopen_at(&self, now: u64) -> u64 {
        now.saturating_add(self.cooldown_ms).max(1)
    }

    pub(super) fn is_open(&self) -> bool {
        self.open_until.load(Relaxed) != 0
    }
}

/// At most one fault warning per interval; the rest go to `debug` and are counted in the
/// next warning. One per breaker, so a Cluster logs each failing primary on its own.
#[derive(Default)]
pub(super) struct LogLimiter {
    /// Store-epoch millisecond of the last warning, plus one (0: never warned).
    last_warn: AtomicU64,
    /// Faults logged at debug since the last warning.
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub(super) fn log(
        &self,
        addr: &str,
        interval_ms: u64,
        op: &'static str,
        e: &StoreError,
        now: u64,
    ) {
        let last = self.last_warn.load(Relaxed);
        let due = last == 0 || now.saturating_sub(last - 1) >= interval_ms;
        if due
            && self
                .last_warn
                .compare_exchange(last, now + 1, Relaxed, Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Relaxed);
            tracing::warn!(
                redis = %addr,
                op,
                error = %e,
                suppressed,
                "sticky session store: Redis call failed; serving without stickiness"
            );
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            tracing::debug!(redis = %addr, op, error = %e, "sticky session store: Redis call failed");
        }
    }
}

/// A breaker and what it guards.
pub(super) struct Guard {
    /// How logs name what it guards: the store's Redis, or a primary's `host:port`.
    pub(super) addr: Box<str>,
    /// The Cluster primary it guards; `None`: the whole store.
    pub(super) node: Option<(String, u16)>,
    pub(super) breaker: Breaker,
    pub(super) log: LogLimiter,
}

impl Guard {
    pub(super) fn new(
        addr: Box<str>,
        node: Option<(String, u16)>,
        threshold: u32,
        cooldown_ms: u64,
    ) -> Self {
        Self {
            addr,
            node,
            breaker: Breaker::new(threshold, cooldown_ms),
            log: LogLimiter::default(),
        }
    }
}

/// One slot range of a [`SlotMap`]: `(first, last, index into nodes)`.
type Range = (u16, u16, usize);

/// The store's copy of a Cluster's slot map: which primary serves each hash slot, and
/// that primary's breaker.
#[derive(Default)]
pub(super) struct SlotMap {
    /// Sorted by first slot, not overlapping.
    ranges: Vec<Range>,
    pub(super) nodes: Vec<Arc<Guard>>,
}

impl SlotMap {
    /// The breaker of the primary serving `slot`; `None` if the map does not cover it
    /// (not learnt yet).
    pub(super) fn guard(&self, slot: u16) -> Option<&Arc<Guard>> {
        let i = self.ranges.partition_point(|&(first, _, _)| first <= slot);
        let &(_, last, node) = self.ranges.get(i.checked_sub(1)?)?;
        (slot <= last).then(|| &self.nodes[node])
    }

    /// A map of `ranges` (`first`, `last`, primary host, port: as `CLUSTER SLOTS` gives
    /// them) that keeps the breaker of every primary `old` already knew, and makes a new
    /// one (closed) with `make` for a primary it did not.
    pub(super) fn rebuild(
        ranges: Vec<(u16, u16, String, u16)>,
        old: &SlotMap,
        make: impl Fn(&str, u16) -> Guard,
    ) -> Self {
        let mut nodes: Vec<Arc<Guard>> = Vec::new();
        let mut out = Vec::with_capacity(ranges.len());
        for (first, last, host, port) in ranges {
            if first > last || last >= SLOTS {
                continue;
            }
            let same = |g: &&Arc<Guard>| {
                g.node
                    .as_ref()
                    .is_some_and(|(h, p)| *h == host && *p == port)
            };
            let i = match nodes.iter().position(|g| same(&g)) {
                Some(i) => i,
                None => {
                    let guard = old
                        .nodes
                        .iter()
                        .find(same)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(make(&host, port)));
                    nodes.push(guard);
                    nodes.len() - 1
                }
            };
            out.push((first, last, i));
        }
        out.sort_unstable_by_key(|&(first, _, _)| first);
        Self { ranges: out, nodes }
    }

    /// Whether `guard` is still a primary's breaker in this map.
    pub(super) fn holds(&self, guard: &Arc<Guard>) -> bool {
        self.nodes.iter().any(|g| Arc::ptr_eq(g, guard))
    }

    /// Whether both maps give every slot range to the same primary.
    pub(super) fn same_primaries(&self, other: &SlotMap) -> bool {
        self.ranges.len() == other.ranges.len()
            && self.ranges.iter().zip(&other.ranges).all(|(a, b)| {
                a.0 == b.0 && a.1 == b.1 && self.nodes[a.2].addr == other.nodes[b.2].addr
            })
    }
}

/// A Cluster store's slot map and when it was last refreshed.
#[derive(Default)]
pub(super) struct Slots {
    map: RwLock<Arc<SlotMap>>,
    /// A refresh is running.
    pub(super) refreshing: AtomicBool,
    /// Store-epoch millisecond of the last refresh attempt, plus one (0: never).
    pub(super) refreshed_at: AtomicU64,
}

impl Slots {
    pub(super) fn current(&self) -> Arc<SlotMap> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn replace(&self, map: SlotMap) {
        *self.map.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(map);
    }
}

/// The hash slot of a Redis key: CRC16 (XMODEM) of the key, or of its hash tag (the
/// part between the first `{` and the next `}`, if not empty), modulo 16384.
pub(super) fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slot_is_redis_cluster_hash_slot() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag hashes the whole key.
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
    }

    #[test]
    fn slot_map_finds_the_primary_and_keeps_breakers_across_a_rebuild() {
        let make =
            |h: &str, p: u16| Guard::new(format!("{h}:{p}").into(), Some((h.into(), p)), 5, 1000);
        let ranges = |third: u16| {
            vec![
                (10923, 16383, "h".to_owned(), third),
                (0, 5460, "h".to_owned(), 1),
                (5461, 10922, "h".to_owned(), 2),
            ]
        };
        let a = SlotMap::rebuild(ranges(3), &SlotMap::default(), make);
        assert_eq!(&*a.guard(0).unwrap().addr, "h:1");
        assert_eq!(&*a.guard(5461).unwrap().addr, "h:2");
        assert_eq!(&*a.guard(16383).unwrap().addr, "h:3");
        assert!(SlotMap::default().guard(7).is_none());
        a.guard(0).unwrap().breaker.trip(5);
        // Node 3 failed over to node 4: the others keep their breakers (and state).
        let b = SlotMap::rebuild(ranges(4), &a, make);
        assert!(b.guard(0).unwrap().breaker.is_open());
        assert!(Arc::ptr_eq(b.guard(100).unwrap(), a.guard(100).unwrap()));
        assert_eq!(&*b.guard(16383).unwrap().addr, "h:4");
        assert!(!b.holds(a.guard(16383).unwrap()));
        assert!(!a.same_primaries(&b));
        assert!(a.same_primaries(&SlotMap::rebuild(ranges(3), &a, make)));
    }
}
