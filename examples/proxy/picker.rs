//! The account picker: which accounts a request tries, in which order.
//!
//! - A pin ([`PinnedAuth`]) to a configured account comes first, unless that account is
//!   cooling down ([`Cooldowns`]) or, with `--max-load-factor F`, is overloaded: its
//!   in-flight requests exceed `F ×` the mean over the available accounts `+ 1`. Then the
//!   least-loaded available account comes first and the session moves there.
//! - A hard pin (response-id affinity) is the only candidate, whatever its state.
//! - Otherwise strict round-robin over the accounts in configuration order (one shared
//!   counter, advanced only by requests that did not go to their pin).
//! - Retries go to accounts not yet tried: the available ones in round-robin order, then
//!   (only if nothing else is left) those cooling down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tower_sticky_session::AuthId;

use super::Upstream;
use super::cooldown::{CoolReason, Cooldowns};
use super::ws::WsStats;

/// How a [`Picker`] chose a request's first account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pick {
    /// The request's pin named this configured account.
    Pinned,
    /// A hard pin (a learned response id): no other account may serve it.
    HardPinned,
    /// The pin named an account that is not configured; round-robin was used.
    StalePin,
    /// The pinned account is cooling down; round-robin was used.
    PinCooling,
    /// The pinned account was overloaded; the least-loaded account was used.
    PinOverloaded,
    /// No pin; round-robin.
    RoundRobin,
}

impl Pick {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Pick::Pinned => "pinned",
            Pick::HardPinned => "hard-pinned",
            Pick::StalePin => "stale-pin",
            Pick::PinCooling => "pin-cooling",
            Pick::PinOverloaded => "pin-overloaded",
            Pick::RoundRobin => "round-robin",
        }
    }

    /// What chose the account of attempt `attempt` (0 for the first) for the log: how the
    /// first account was picked, or `failover` for any later one (a retried request's
    /// final account is never the pin, whatever the plan said).
    pub(crate) fn label(self, attempt: usize) -> &'static str {
        if attempt == 0 {
            self.as_str()
        } else {
            "failover"
        }
    }
}

/// A plan's accounts: up to four inline, so that a plan costs no allocation with the
/// usual handful of accounts (`--attempts` bounds it, 3 by default).
pub(crate) type Order = smallvec::SmallVec<[usize; 4]>;

/// The accounts a request tries, in order (indices into [`Picker::upstreams`]).
pub(crate) struct Plan {
    pub(crate) order: Order,
    pub(crate) how: Pick,
}

/// Chooses accounts; counts in-flight requests per account; holds the cooldowns.
pub(crate) struct Picker {
    upstreams: Box<[Upstream]>,
    next: AtomicUsize,
    in_flight: Box<[AtomicUsize]>,
    pub(crate) cooldowns: Cooldowns,
    max_load_factor: Option<f64>,
    retries: AtomicU64,
    /// The WebSocket relay's counters.
    pub(crate) ws: WsStats,
}

impl Picker {
    /// A picker over `upstreams` (non-empty), in this order.
    pub(crate) fn new(upstreams: Vec<Upstream>, max_load_factor: Option<f64>) -> Self {
        assert!(!upstreams.is_empty(), "at least one upstream is required");
        let n = upstreams.len();
        Self {
            upstreams: upstreams.into(),
            next: AtomicUsize::new(0),
            in_flight: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            cooldowns: Cooldowns::new(n),
            max_load_factor,
            retries: AtomicU64::new(0),
            ws: WsStats::default(),
        }
    }

    pub(crate) fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    fn index_of(&self, auth: &AuthId) -> Option<usize> {
        self.upstreams.iter().position(|u| u.name() == auth)
    }

    /// Requests in flight on account `i` (response head or body still open).
    pub(crate) fn in_flight(&self, i: usize) -> usize {
        self.in_flight[i].load(Ordering::Relaxed)
    }

    /// Counts a request on account `i` until the guard is dropped.
    pub(crate) fn start(self: &Arc<Self>, i: usize) -> InFlight {
        self.in_flight[i].fetch_add(1, Ordering::Relaxed);
        InFlight {
            picker: self.clone(),
            i,
            conn: None,
        }
    }

    /// Counts a failed attempt that is retried on another account.
    pub(crate) fn count_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Failed attempts retried on another account so far.
    pub(crate) fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Account `i` cools down for `d`, because of `why`.
    pub(crate) fn cool(&self, i: usize, d: Duration, why: CoolReason) {
        self.cooldowns.cool(i, d, why);
    }

    /// Whether account `i`'s load is over `--max-load-factor` × the mean over the
    /// available accounts, + 1.
    fn overloaded(&self, i: usize) -> bool {
        let Some(f) = self.max_load_factor else {
            return false;
        };
        let (mut sum, mut n) = (0usize, 0usize);
        for j in 0..self.upstreams.len() {
            if !self.cooldowns.is_cooling(j) {
                sum += self.in_flight(j);
                n += 1;
            }
        }
        if n == 0 {
            return false;
        }
        let mean = sum as f64 / n as f64;
        self.in_flight(i) as f64 > f * mean + 1.0
    }

    /// The accounts to try for a request pinned to `pinned` (if any), at most `attempts`.
    pub(crate) fn plan(&self, pinned: Option<&AuthId>, hard: bool, attempts: usize) -> Plan {
        let n = self.upstreams.len();
        let attempts = attempts.clamp(1, n);
        let mut order = Order::new();
        let mut how = Pick::RoundRobin;
        if let Some(auth) = pinned {
            match self.index_of(auth) {
                Some(i) if hard => {
                    return Plan {
                        order: smallvec::smallvec![i],
                        how: Pick::HardPinned,
                    };
                }
                Some(i) if self.cooldowns.is_cooling(i) => how = Pick::PinCooling,
                Some(i) if self.overloaded(i) => {
                    how = Pick::PinOverloaded;
                    let least = (0..n)
                        .filter(|&j| j != i && !self.cooldowns.is_cooling(j))
                        .min_by_key(|&j| self.in_flight(j));
                    if let Some(j) = least {
                        order.push(j);
                    }
                }
                Some(i) => {
                    how = Pick::Pinned;
                    order.push(i);
                }
                None => how = Pick::StalePin,
            }
        }
        // Pinned requests that went to their pin leave the counter alone.
        let start = if how == Pick::Pinned {
            self.next.load(Ordering::Relaxed)
        } else {
            self.next.fetch_add(1, Ordering::Relaxed)
        };
        // The ring from `start`: the accounts not cooling down first, then the others
        // (two passes, nothing collected).
        for cooling in [false, true] {
            for k in 0..n {
                if order.len() == attempts {
                    break;
                }
                let i = (start + k) % n;
                if self.cooldowns.is_cooling(i) == cooling && !order.contains(&i) {
                    order.push(i);
                }
            }
        }
        Plan { order, how }
    }
}

/// One request in flight on an account; dropping it ends the count, and gives back the
/// upstream connection it holds, if any (see [`InFlight::holding`]).
pub(crate) struct InFlight {
    picker: Arc<Picker>,
    i: usize,
    conn: Option<Box<dyn Send + Sync>>,
}

impl InFlight {
    /// Holds `conn` (an upstream connection's lease) until the count ends.
    pub(crate) fn holding(mut self, conn: Option<impl Send + Sync + 'static>) -> Self {
        if let Some(conn) = conn {
            self.conn = Some(Box::new(conn));
        }
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.picker.in_flight[self.i].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn picker(n: usize) -> Picker {
        let upstreams = (0..n)
            .map(|k| Upstream::new(&format!("a{k}"), "http://127.0.0.1:9").unwrap())
            .collect();
        Picker::new(upstreams, None)
    }

    #[test]
    fn an_unpinned_plan_takes_the_ring_from_the_next_account_and_the_cooling_ones_last() {
        let p = picker(4);
        // Round-robin start moves by one per unpinned plan.
        assert_eq!(p.plan(None, false, 4).order[..], [0, 1, 2, 3]);
        assert_eq!(p.plan(None, false, 4).order[..], [1, 2, 3, 0]);
        p.cool(2, Duration::from_secs(60), CoolReason::RateLimited);
        assert_eq!(p.plan(None, false, 4).order[..], [3, 0, 1, 2]);
        assert_eq!(
            p.plan(None, false, 4).order[..],
            [3, 0, 1, 2],
            "from 3: 2 goes last"
        );
        assert_eq!(p.plan(None, false, 4).order[..], [0, 1, 3, 2]);
        // Fewer attempts than accounts: the first of that order.
        assert_eq!(p.plan(None, false, 2).order[..], [1, 3]);
        p.cool(0, Duration::from_secs(60), CoolReason::Unreachable);
        assert_eq!(p.plan(None, false, 4).order[..], [3, 1, 2, 0]);
    }

    #[test]
    fn a_pinned_plan_starts_at_its_pin_and_a_cooling_pin_goes_by_the_ring() {
        let p = picker(3);
        let a1 = p.upstreams()[1].name().clone();
        let plan = p.plan(Some(&a1), false, 3);
        assert_eq!(
            (plan.order.to_vec(), plan.how),
            (vec![1, 0, 2], Pick::Pinned)
        );
        let plan = p.plan(Some(&a1), true, 3);
        assert_eq!((plan.order.to_vec(), plan.how), (vec![1], Pick::HardPinned));
        p.cool(1, Duration::from_secs(60), CoolReason::RateLimited);
        let plan = p.plan(Some(&a1), false, 3);
        assert_eq!(plan.how, Pick::PinCooling);
        assert_eq!(*plan.order.last().unwrap(), 1, "the cooling pin last");
    }
}
