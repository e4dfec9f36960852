//! The near cache: a small in-process tier in front of Redis, told by Redis itself when
//! a binding it holds changes (server-assisted client-side caching, RESP3
//! `CLIENT TRACKING`).
//!
//! How it works: the store's connection speaks RESP3 and, before its first lookup on
//! each (new) connection, sends `CLIENT TRACKING ON NOLOOP` in the same pipeline as the
//! `GET`. From then on Redis remembers which binding keys this connection read and sends
//! an `invalidate` push message when another client changes one of them (a commit, a
//! clear, an expiry, an eviction). The push arrives on the connection's reader task and
//! drops the local entry at once. `NOLOOP`: this store's own writes do not come back to
//! it (it updates its own tier itself).
//!
//! When the channel is down (the connection dropped, Redis restarted, tracking refused)
//! entries are not flushed: they expire on the near cache's TTL, as without tracking,
//! and tracking is re-enabled by the first lookup on the next connection.
//!
//! In a Cluster the `CLIENT TRACKING` command is routed to every node in its own round
//! trip, and repeated every few seconds (the cluster client connects to new nodes on its
//! own).
//!
//! Why not redis-rs's own client-side cache (its `cache-aio` feature): it is documented as
//! experimental; it caches the replies of read commands by key and command, and learns
//! of changes only from invalidations, while this tier must change with the store's own
//! writes at once (a commit fills it, a clear empties it, `NOLOOP` keeps those from
//! coming back) and must refuse a reply that raced a clear (the generation above); and its
//! staleness when the invalidation channel is down must have a bound the user sets (the
//! near TTL). The tier is a bounded in-memory store of this crate, sized by the user.

use std::convert::Infallible;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use ::redis::{PushInfo, PushKind, Value};

use crate::store::{BindingStore, MemoryStore};
use crate::types::{AuthId, BindingKey};

pub(super) struct Near {
    pub(super) cache: MemoryStore,
    /// Bumped by every clear, invalidation and commit that changes the local entry: a
    /// lookup whose Redis reply arrives after a bump does not fill the local tier.
    generation: AtomicU64,
    /// Server-assisted invalidation; `None` when turned off.
    pub(super) tracking: Option<Tracking>,
}

pub(super) struct Tracking {
    /// Redis key → binding key of the entries in the local tier (invalidations name
    /// Redis keys, which are digests).
    index: moka::sync::Cache<Box<str>, BindingKey>,
    /// Tracking is on for the current connection.
    on: AtomicBool,
    /// Turn tracking on again this often (a Cluster); `None`: only after a reconnect.
    refresh: Option<Duration>,
    epoch: Instant,
    /// Milliseconds after `epoch` when tracking was last turned on.
    enabled_at_ms: AtomicU64,
    /// Redis refused `CLIENT TRACKING` (too old, or the command is disabled): TTL only.
    refused: AtomicBool,
    pub(super) invalidations: AtomicU64,
    pub(super) channel_drops: AtomicU64,
}

impl Near {
    /// `tracking`: `None` off; `Some(refresh)` on, and turned on again every `refresh`
    /// if given.
    pub(super) fn new(
        ttl: Duration,
        max_bindings: u64,
        tracking: Option<Option<Duration>>,
    ) -> Self {
        Self {
            cache: MemoryStore::builder()
                .ttl(ttl)
                .max_bindings(max_bindings)
                .build(),
            generation: AtomicU64::new(0),
            tracking: tracking.map(|refresh| Tracking {
                index: moka::sync::Cache::builder()
                    .max_capacity(max_bindings)
                    .time_to_live(ttl)
                    .build(),
                on: AtomicBool::new(false),
                refresh,
                epoch: Instant::now(),
                enabled_at_ms: AtomicU64::new(0),
                refused: AtomicBool::new(false),
                invalidations: AtomicU64::new(0),
                channel_drops: AtomicU64::new(0),
            }),
        }
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(SeqCst)
    }

    pub(super) fn bump(&self) {
        self.generation.fetch_add(1, SeqCst);
    }

    /// Fills the local tier with a Redis answer read at `generation`, unless a clear or
    /// an invalidation came since. Checked again after the fill: an invalidation that
    /// lands in between removes the entry either itself (it finds it in the index) or
    /// here (it bumped the generation first).
    pub(super) fn fill(&self, key: &BindingKey, redis_key: &str, auth: &AuthId, generation: u64) {
        if self.generation() != generation {
            return;
        }
        if let Some(t) = &self.tracking {
            t.index.insert(redis_key.into(), key.clone());
        }
        // `MemoryStore` works synchronously and answers `Ready`.
        let _ = self.cache.commit(key, auth).into_inner();
        if self.generation() != generation {
            self.cache.remove(key);
        }
    }

    /// Drops the local entry of `key` if it holds `expected`.
    pub(super) fn clear(&self, key: &BindingKey, expected: &AuthId) {
        let _ = self.cache.clear_if(key, expected).into_inner();
        self.bump();
    }

    /// Whether the next lookup must (re-)enable tracking on the connection.
    pub(super) fn needs_tracking(&self) -> bool {
        self.tracking.as_ref().is_some_and(|t| {
            if t.refused.load(Relaxed) {
                return false;
            }
            if !t.on.load(Relaxed) {
                return true;
            }
            t.refresh.is_some_and(|every| {
                t.since_epoch_ms()
                    .saturating_sub(t.enabled_at_ms.load(Relaxed))
                    >= u64::try_from(every.as_millis()).unwrap_or(u64::MAX)
            })
        })
    }

    pub(super) fn invalidations(&self) -> u64 {
        self.tracking
            .as_ref()
            .map_or(0, |t| t.invalidations.load(Relaxed))
    }

    /// Whether tracking is on for the current connection.
    pub(super) fn tracking_on(&self) -> bool {
        self.tracking.as_ref().is_some_and(|t| t.on.load(Relaxed))
    }

    pub(super) fn tracking_enabled(&self) {
        if let Some(t) = &self.tracking {
            t.enabled_at_ms.store(t.since_epoch_ms(), Relaxed);
            t.on.store(true, Relaxed);
        }
    }

    pub(super) fn tracking_refused(&self) {
        if let Some(t) = &self.tracking {
            t.refused.store(true, Relaxed);
        }
    }

    /// The connection was replaced: tracking must be enabled again on the new one.
    pub(super) fn connection_replaced(&self) {
        if let Some(t) = &self.tracking {
            t.on.store(false, Relaxed);
        }
    }

    /// Handles a RESP3 push message from the store's connection.
    fn on_push(&self, info: PushInfo) {
        let Some(t) = &self.tracking else { return };
        match info.kind {
            PushKind::Invalidate => {
                self.bump();
                match info.data.first() {
                    Some(Value::Array(keys)) => {
                        for k in keys {
                            let k = match k {
                                Value::BulkString(b) => String::from_utf8_lossy(b),
                                Value::SimpleString(s) => s.as_str().into(),
                                _ => continue,
                            };
                            if let Some(key) = t.index.remove(k.as_ref()) {
                                self.cache.remove(&key);
                                t.invalidations.fetch_add(1, Relaxed);
                            }
                        }
                    }
                    // Nil: Redis flushed its tracking table (FLUSHALL, or the table
                    // was full): every entry may be stale.
                    _ => {
                        for (_, key) in t.index.iter() {
                            self.cache.remove(&key);
                            t.invalidations.fetch_add(1, Relaxed);
                        }
                        t.index.invalidate_all();
                    }
                }
            }
            PushKind::Disconnection => {
                t.on.store(false, Relaxed);
                t.channel_drops.fetch_add(1, Relaxed);
                tracing::debug!(
                    "sticky session store: Redis invalidation channel down; the near cache falls back to its TTL"
                );
            }
            _ => {}
        }
    }
}

impl Tracking {
    fn since_epoch_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The push sender handed to the connection: runs on its reader task, never blocks.
pub(super) fn push_handler(
    near: Weak<Near>,
) -> impl Fn(PushInfo) -> Result<(), Infallible> + Send + Sync + 'static {
    move |info| {
        if let Some(near) = near.upgrade() {
            near.on_push(info);
        }
        Ok(())
    }
}
