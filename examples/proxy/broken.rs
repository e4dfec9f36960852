//! `--max-broken-streams N`: an account that breaks N streams in a row after their first
//! byte loses those sessions and cools down.
//!
//! The sticky layer keeps a binding when a stream fails after its first data chunk: the
//! account has proved itself, one failure is the stream's. An account that breaks
//! *every* stream that way would keep its sessions forever. So each account counts its
//! streams that broke after the first byte since the last one that ended cleanly, and
//! keeps the binding keys of those streams' sessions in a ring of at most N. At N, each
//! of those bindings is removed by compare-and-delete against the account (a session a
//! newer request already moved elsewhere keeps its new binding), the account cools down
//! for `--cooldown`, and the count starts again. A stream that ends cleanly resets the
//! count. 0 turns it off.
//!
//! Only the account's side counts: its body failing after the first chunk (a reset, a
//! truncated chunked body, a protocol error) or falling silent past `--idle-timeout`
//! ([`IdleTimeout`](super::timeouts::IdleTimeout)). A stream the proxy ends from its
//! own side — the client went away, the client stopped reading (the write timeout), the
//! drain cut it — drops the body unfinished: neither a break nor a clean end, the count
//! is left as it was.
//!
//! The clean-end path (every stream that completes) reads one atomic when the account
//! has no break on record; the lock is taken only to record a break or to reset a count
//! that is not 0, and never across an `.await`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower_sticky_session::{AuthId, BindingKey, store::BindingStore};

use super::cooldown::CoolReason;
use super::picker::Picker;

/// The largest `--max-broken-streams` (the ring holds that many keys per account).
pub(crate) const MAX_BROKEN_STREAMS: usize = 1000;

/// Removes `keys`' bindings if they still point at the account (runs the store's
/// compare-and-delete on a task of its own).
type Unbind = Box<dyn Fn(&AuthId, Vec<BindingKey>) + Send + Sync>;

/// Per-account counts of streams broken after their first byte (see the module docs).
pub(crate) struct BrokenStreams {
    /// N (0: off).
    max: usize,
    cooldown: Duration,
    picker: Arc<Picker>,
    accounts: Box<[Account]>,
    unbind: Unbind,
}

#[derive(Default)]
struct Account {
    /// Breaks since the last clean end (a copy of `streak.count`, read without the lock).
    count: AtomicUsize,
    streak: Mutex<Streak>,
    /// Streams broken by the account after their first byte, ever.
    broken: AtomicU64,
    /// Times the account reached N and cooled down.
    tripped: AtomicU64,
}

#[derive(Default)]
struct Streak {
    count: usize,
    /// The sessions of those streams (distinct keys, at most N).
    keys: VecDeque<BindingKey>,
}

impl BrokenStreams {
    /// Counts for `picker`'s accounts; at `max` breaks in a row (0: never) the sessions
    /// are unbound in `store` and the account cools down for `cooldown`.
    pub(crate) fn new<St: BindingStore + Clone>(
        picker: Arc<Picker>,
        store: St,
        max: usize,
        cooldown: Duration,
    ) -> Self {
        let unbind: Unbind = Box::new(move |auth, keys| {
            let (store, auth) = (store.clone(), auth.clone());
            tokio::spawn(async move {
                for key in keys {
                    if let Err(e) = store.clear_if(&key, &auth).await {
                        tracing::debug!(error = %e, "could not unbind a session of an account that breaks its streams");
                    }
                }
            });
        });
        Self {
            max: max.min(MAX_BROKEN_STREAMS),
            cooldown,
            accounts: (0..picker.upstreams().len())
                .map(|_| Account::default())
                .collect(),
            picker,
            unbind,
        }
    }

    /// Watches a stream of account `i` for session `key` (`None` when counting is off).
    pub(crate) fn watch(self: &Arc<Self>, i: usize, key: Option<BindingKey>) -> Option<Watch> {
        (self.max > 0).then(|| Watch {
            streams: self.clone(),
            account: i,
            key,
        })
    }

    /// Streams account `i` broke after their first byte, ever.
    pub(crate) fn broken(&self, i: usize) -> u64 {
        self.accounts[i].broken.load(Ordering::Relaxed)
    }

    /// Times account `i` reached the limit (its sessions unbound, cooled down).
    pub(crate) fn tripped(&self, i: usize) -> u64 {
        self.accounts[i].tripped.load(Ordering::Relaxed)
    }

    /// Account names with [`broken`](Self::broken) and [`tripped`](Self::tripped).
    pub(crate) fn snapshot(&self) -> Vec<(String, u64, u64)> {
        (0..self.accounts.len())
            .map(|i| {
                let name = self.picker.upstreams()[i].name().as_str().to_owned();
                (name, self.broken(i), self.tripped(i))
            })
            .collect()
    }

    fn clean(&self, i: usize) {
        let a = &self.accounts[i];
        if a.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut streak = a.streak.lock().unwrap_or_else(|p| p.into_inner());
        streak.count = 0;
        streak.keys.clear();
        a.count.store(0, Ordering::Relaxed);
    }

    fn broke(&self, i: usize, key: Option<BindingKey>, why: &'static str) {
        let a = &self.accounts[i];
        a.broken.fetch_add(1, Ordering::Relaxed);
        let keys = {
            let mut streak = a.streak.lock().unwrap_or_else(|p| p.into_inner());
            streak.count += 1;
            if let Some(key) = key
                && !streak.keys.contains(&key)
            {
                if streak.keys.len() == self.max {
                    streak.keys.pop_front();
                }
                streak.keys.push_back(key);
            }
            if streak.count < self.max {
                a.count.store(streak.count, Ordering::Relaxed);
                tracing::debug!(
                    upstream = %self.picker.upstreams()[i].name(), why,
                    in_a_row = streak.count, limit = self.max,
                    "an account broke a stream after its first byte"
                );
                return;
            }
            streak.count = 0;
            a.count.store(0, Ordering::Relaxed);
            std::mem::take(&mut streak.keys)
        };
        a.tripped.fetch_add(1, Ordering::Relaxed);
        let up = &self.picker.upstreams()[i];
        self.picker
            .cool(i, self.cooldown, CoolReason::BrokenStreams);
        tracing::info!(
            upstream = %up.name(), why, in_a_row = self.max, sessions = keys.len(),
            cooldown = ?self.cooldown,
            "account broke --max-broken-streams streams in a row after their first byte: \
             unbinding those sessions and cooling it down"
        );
        if !keys.is_empty() {
            (self.unbind)(up.name(), Vec::from(keys));
        }
    }
}

/// One stream's account and session, reported once: [`ended`](Self::ended) or
/// [`broke`](Self::broke); dropped unreported when the proxy ends the stream itself.
pub(crate) struct Watch {
    streams: Arc<BrokenStreams>,
    account: usize,
    key: Option<BindingKey>,
}

impl Watch {
    /// The stream ended cleanly: the account's count starts again.
    pub(crate) fn ended(self) {
        self.streams.clean(self.account);
    }

    /// The account broke the stream after its first byte (`why`: for the log).
    pub(crate) fn broke(self, why: &'static str) {
        self.streams.broke(self.account, self.key, why);
    }
}
