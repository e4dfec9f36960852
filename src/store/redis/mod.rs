//! A binding store shared by several proxy replicas, in Redis (or Valkey).
//!
//! See [`RedisStore`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::redis::{Cmd, RedisError};
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;

use super::{BindingStore, DEFAULT_TTL, StoreError, StoreErrorKind};
use crate::types::{AuthId, BindingKey};

mod breaker;
mod conn;
mod near;

use self::breaker::{Guard, SlotMap, Slots, key_slot};
use self::conn::{Conn, Limits, Spec, Target};
use self::near::Near;

/// Default key prefix of a [`RedisStore`]. Keys are `{prefix}v1:{32 hex digits}`.
pub const DEFAULT_REDIS_PREFIX: &str = "tss:";
/// Default time limit of each Redis call made for a request: 50 ms.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// Default time limit of a connection attempt and of a breaker probe: 1 second.
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time limit of each Redis round trip made by an operator function
/// ([`RedisStore::get`], [`RedisStore::remove`], [`RedisStore::remove_account`]): 2 seconds.
pub const DEFAULT_REDIS_ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Default number of consecutive failed Redis calls that opens the circuit breaker.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
/// Default time the open breaker skips Redis before it probes it again: 1 second.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// Default minimum interval between two fault warnings in the log: 10 seconds.
pub const DEFAULT_FAULT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How often a Cluster-mode store turns tracking on again on every node.
const CLUSTER_TRACKING_REFRESH: Duration = Duration::from_secs(5);
/// How often a Cluster-mode store re-reads the slot map when nothing fails (a
/// resharding the cluster client follows silently); failures re-read it at once.
const SLOT_MAP_REFRESH_MS: u64 = 10_000;
/// Minimum interval between two slot-map reads started by failures.
const SLOT_MAP_MIN_INTERVAL_MS: u64 = 100;

/// Version of the key layout, part of every key: a change of hashing or encoding gets a
/// new version, so replicas of two versions never misread each other's bindings.
const KEY_VERSION: &str = "v1:";
/// Bytes of the SHA-256 digest kept in a key (128 bits, as hex: 32 characters).
const DIGEST_BYTES: usize = 16;

/// Compare-and-delete, atomic inside Redis: `DEL` only if the key still holds `ARGV[1]`.
///
/// Sent with `EVAL` rather than `EVALSHA`: the script is under 100 bytes, a clear happens
/// only after a failure, and `EVAL` is one round trip even right after a Redis restart has
/// emptied the script cache (where `EVALSHA` costs a `NOSCRIPT` reply and a second trip
/// inside the same 50 ms budget). Redis caches the compiled script either way.
const CLEAR_IF_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// Renewal that Redis allows when full (`PEXPIRE` is not refused under `noeviction`,
/// `SET` is): extends the key's TTL to `ARGV[2]` ms only if it holds `ARGV[1]`.
const RENEW_IF_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

/// Commit with a deferred same-account renewal: `SET key ARGV[1] PX ARGV[2]` unless the
/// key already holds `ARGV[1]` with more than `ARGV[3]` ms left.
const SET_UNLESS_FRESH_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('PTTL', KEYS[1]) > tonumber(ARGV[3]) then return 0 end redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1";

/// The binding store for several proxy replicas: bindings live in Redis (or Valkey), so
/// a session keeps its account whichever replica the load balancer sends it to.
///
/// # What is stored
///
/// One string key per binding: `{prefix}v1:{hex}`, where `hex` is the first 128 bits of
/// the SHA-256 digest of the [`BindingKey`]'s unambiguous [encoding](BindingKey::encode)
/// (scope and session id). The value is the [`AuthId`]'s name; the key expires after the
/// store's TTL (`SET key auth PX ttl`, renewed by commits). No raw session id or scope
/// ever reaches Redis, and every replica computes the same key for the same session.
///
/// - **commit**: `SET key auth PX ttl`; with a [near cache](#near-cache) that Redis
///   invalidates, a script that skips a same-account renewal while the binding has more
///   than 15/16 of its TTL left (see "Near cache" below).
/// - **clear_if**: a Lua script that deletes the key only if it still holds the failed
///   account, atomically inside Redis, so a late failure on one replica never removes a
///   binding another replica has just committed.
///
/// # Failing open
///
/// Stickiness is an optimisation; Redis must never fail or stall a request:
///
/// - Every call made for a request runs under a short time limit
///   ([`timeout`](RedisStoreBuilder::timeout), default 50 ms). A timeout or a connection
///   error is a [`StoreError`]: the layer serves the request without stickiness.
/// - The connection never waits on a reconnect back-off: the client makes a single
///   connection attempt per reconnect, and a refused connection fails at once.
/// - An error *reply* (`OOM` from a full Redis under `noeviction`, `READONLY` from a
///   replica, `NOPERM`, a script error) fails that one operation only: Redis is up and
///   answering, so it is counted under its own reason
///   ([`server_errors`](RedisStoreStats::server_errors),
///   [`oom_errors`](RedisStoreStats::oom_errors),
///   [`readonly_errors`](RedisStoreStats::readonly_errors)) and never trips the breaker;
///   lookups, and so existing bindings, keep working.
/// - After [`breaker_threshold`](RedisStoreBuilder::breaker_threshold) consecutive
///   connection failures or timeouts (default 5) a circuit breaker opens: requests skip Redis entirely (an
///   immediate [`StoreErrorKind::Unavailable`], no network). Every
///   [`breaker_cooldown`](RedisStoreBuilder::breaker_cooldown) (default 1 s) a background
///   task probes Redis with `PING`; when it answers the breaker closes and sharing
///   resumes. No request ever waits for a probe. A failed probe also replaces the
///   connection, so a refused handshake (a rotated password, `LOADING` after a restart)
///   or a half-open TCP connection cannot keep the store away from a Redis that is back.
/// - [`build`](RedisStoreBuilder::build) succeeds while Redis is down: the connection is
///   made in the background.
/// - The operator functions ([`get`](RedisStore::get), [`remove`](RedisStore::remove),
///   [`remove_account`](RedisStore::remove_account), and so
///   [`InspectStore`](crate::store::InspectStore)) honour the breaker too: while it is
///   open they fail at once with a [`RedisBreakerOpen`] source (an admin endpoint can
///   answer 503 with it) instead of making a connection attempt each.
/// - Faults are counted ([`RedisStore::stats`]) and logged at `warn` at most once per
///   [`fault_log_interval`](RedisStoreBuilder::fault_log_interval) (default 10 s) per
///   breaker (in a Cluster: per primary) with the number of faults since the last
///   warning; breaker transitions are logged once each. Logs name Redis by `host:port`
///   only, never by its URL (it may hold a password).
/// - redis-rs's Cluster client also logs, through the `log` crate (target `redis`),
///   a warning or two of its own for each attempt on a dead node (`Failed to connect
///   to node`, `beginning slot refresh`) and its own reconnect attempts; the breakers
///   keep those to a burst before they open and one or two a second after
///   (RELIABILITY.md has the count). A proxy that wants only the store's rate-limited
///   lines filters them out, e.g. `redis=off` in an `EnvFilter`.
///
/// # Capacity
///
/// Redis, not this store, bounds the memory: each binding is one key (roughly 100 bytes
/// with Redis's per-key overhead) living for the TTL, so a flood of one-off session ids
/// becomes a flood of keys. Give
/// the Redis that holds bindings a `maxmemory` and an evicting policy — `volatile-lfu`
/// (every binding has an expiry; LFU keeps the sessions in use over one-off ids, much as
/// the in-memory store's probation segment does) or `allkeys-lfu` on a Redis of its own. Under the default
/// `noeviction`, a full Redis refuses writes with an `OOM` reply. Then requests are
/// still served, existing bindings are still read and honoured, and a commit that
/// renews a binding to the same account extends its TTL with `PEXPIRE` (which a full
/// Redis allows; counted in [`oom_renewals`](RedisStoreStats::oom_renewals)); only new
/// sessions and moves to another account do not bind (counted in
/// [`oom_errors`](RedisStoreStats::oom_errors)). The breaker stays closed: a full Redis
/// is a working Redis.
///
/// # Redis Cluster
///
/// [`cluster_builder`](RedisStore::cluster_builder) (or a `redis+cluster://h1:p1,h2:p2`
/// URL) speaks to a Redis or Valkey Cluster through redis-rs's cluster client: it learns
/// the slot map from the seed nodes and follows `MOVED` after a failover or a
/// resharding. Every operation touches exactly one key (the compare-and-delete script
/// too), so bindings spread over all primaries and nothing needs a hash tag.
/// Timeouts and failing open work as on one node.
///
/// **A breaker per primary.** The store keeps its own copy of the slot map
/// (`CLUSTER SLOTS`, read once connected, again when a call meets `MOVED`, `ASK`,
/// `CLUSTERDOWN` or `TRYAGAIN`, when a primary's breaker opens and at each of its probes,
/// and otherwise every 10 s) and gives each primary, by address, a breaker of its own:
/// a key's hash slot (CRC16 of the key, as Redis computes it) names the primary, and
/// only that primary's failures count toward its breaker. So while one primary is down
/// or failing over, requests for its slots are skipped (served unsticky) and sessions
/// whose keys live on the other primaries keep their bindings. An open primary's
/// breaker is probed every cooldown by a `PING` on a connection of its own (not through
/// the cluster client, which would log a warning per attempt), after a fresh read of
/// the slot map: when a replica has taken the primary's slots over, the map names the
/// new primary (with a closed breaker) and the old one's breaker is dropped. Until the
/// slot map is known (a cluster unreachable at start-up) one breaker guards the whole
/// store, as on one node, and its probe `PING`s any node.
///
/// Whether the other primaries keep serving while one primary's slots have no owner
/// is the cluster's choice: under the default `cluster-require-full-coverage yes`,
/// every node answers `CLUSTERDOWN` from the moment the primary is marked failed until
/// a replica takes over (about a second), and then every session is served unsticky
/// for that time. For bindings, set `cluster-require-full-coverage no` (or at least
/// `cluster-allow-reads-when-down yes`, which keeps lookups answering).
/// [`remove_account`](RedisStore::remove_account) walks every primary.
///
/// # Redis Sentinel
///
/// [`sentinel_builder`](RedisStore::sentinel_builder) (or a `redis+sentinel://` URL)
/// asks the sentinels for the primary's address on first use, and again as soon as the
/// connection to it fails or it answers `READONLY`, `LOADING` or `MASTERDOWN` — which
/// is what a failover looks like from a client: Sentinel cuts the old primary's clients
/// and turns it into a replica. Until the new primary is found, requests are served
/// without stickiness as in any outage (timeouts, breaker). Because a forced failover
/// leaves the old primary accepting writes until Sentinel reconfigures it (up to 10 s),
/// the store also asks Sentinel once a second which node is the primary (one query to
/// a sentinel and redis-rs's `ROLE` check on the primary, on a short-lived connection)
/// and reconnects when the answer changes. Bindings written after the
/// failover are shared again as soon as the replicas reach the new primary
/// (RELIABILITY.md has the measured time); bindings the old primary had not replicated
/// yet are lost, which costs those sessions one unsticky request.
///
/// # Near cache
///
/// [`near_cache`](RedisStoreBuilder::near_cache) puts a small in-process
/// [`MemoryStore`](crate::store::MemoryStore) in front of Redis: a lookup it answers costs no
/// round trip. Entries are filled from Redis lookups only and never renewed locally.
///
/// **Invalidation by Redis** (on by default, in every mode; Redis ≥ 6 or Valkey): the
/// connection speaks RESP3, and the first lookup on each connection turns on
/// server-assisted client-side caching (`CLIENT TRACKING ON NOLOOP`, in the same round
/// trip as its `GET`). Redis then remembers which bindings this replica read and pushes
/// an invalidation when another replica commits or clears one of them (or it expires or
/// is evicted); the entry is dropped as the message arrives, so the next lookup reads
/// the new account from Redis — milliseconds after the other replica's write, not a TTL
/// later (measured in RELIABILITY.md). Because every write to a tracked key
/// invalidates it everywhere, a commit of the account a binding already holds is then
/// deferred while the binding has more than 15/16 of its TTL left (one script, one round
/// trip), so sessions in steady use do not churn every replica's near cache.
///
/// When the channel is down (connection lost, Redis restarting) or Redis refuses
/// `CLIENT TRACKING`, entries live for the near cache's TTL, as without invalidation, and
/// tracking resumes with the first lookup on the next connection. So keep the TTL one you
/// would accept as the worst case (seconds). With
/// [`near_cache_invalidation(false)`](RedisStoreBuilder::near_cache_invalidation) the
/// TTL is the only bound. [`RedisStoreStats::near_tracking`] says which applies now.
///
/// In a Cluster each node tracks the keys read from it and pushes its own
/// invalidations. Tracking is turned on on every node (one round trip routed to all
/// nodes) on the first lookup and again every 5 s, because the cluster client opens
/// connections to new nodes (after a failover or a resharding) on its own; keys read
/// from such a node in between are bounded by the TTL.
///
/// Locally, a commit that changes a session's account drops the local entry; a clear
/// runs in Redis first, then in the local tier, and stops in-flight lookups from
/// re-filling it with the old account (a generation check, re-checked after the fill).
///
/// # Runtime
///
/// The store needs a Tokio runtime: build it inside one, and poll its futures inside one
/// (the layer's futures are, in a hyper or axum server).
///
/// Cloning is cheap; clones share the connection, the breaker and the counters.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_sticky_session::StickySessionLayer;
/// use tower_sticky_session::store::RedisStore;
///
/// # async fn run() -> Result<(), tower_sticky_session::store::StoreError> {
/// let store = RedisStore::builder("redis://127.0.0.1:6379/0")
///     .prefix("my-proxy:")
///     .timeout(Duration::from_millis(30))
///     .ttl(Duration::from_secs(1800))
///     .near_cache(Duration::from_secs(2), 10_000)
///     .build()?; // fails only on an invalid URL; Redis may be down
/// let layer = StickySessionLayer::with_store(store.clone());
/// // Later, e.g. from a metrics endpoint:
/// let faults = store.stats();
/// println!("redis timeouts: {}, breaker open: {}", faults.timeouts, faults.breaker_open);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Replaced by a fresh one after each failed probe: see [`Inner::fresh_connection`].
    /// Held only to clone it (never across an `.await`).
    conn: RwLock<Conn>,
    target: Target,
    runtime: Handle,
    /// `{prefix}v1:`.
    key_prefix: Box<str>,
    ttl_ms: u64,
    timeout: Duration,
    probe_timeout: Duration,
    admin_timeout: Duration,
    /// The breaker of the whole store: one node, Sentinel; in a Cluster, until the slot
    /// map is known (and for a slot it does not cover).
    whole: Arc<Guard>,
    /// A Cluster's slot map, with a breaker per primary.
    slots: Option<Slots>,
    faults: Faults,
    near: Option<Arc<Near>>,
    /// `host:port/db` (or a socket path): how logs name Redis. Never the URL.
    addr: Box<str>,
    epoch: Instant,
}

/// Builds a [`RedisStore`]; made by [`RedisStore::builder`].
#[must_use]
#[derive(Clone)]
pub struct RedisStoreBuilder {
    spec: Spec,
    prefix: String,
    ttl: Duration,
    timeout: Duration,
    connect_timeout: Duration,
    admin_timeout: Duration,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    log_interval: Duration,
    near: Option<(Duration, u64)>,
    near_invalidation: bool,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: not shown.
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("admin_timeout", &self.admin_timeout)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("fault_log_interval", &self.log_interval)
            .field("near_cache", &self.near)
            .field("near_cache_invalidation", &self.near_invalidation)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// The key prefix (default `"tss:"`). Replicas that share bindings must use the same
    /// prefix (and the same Redis database); different prefixes keep several proxies
    /// apart in one Redis.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a binding lives after its last commit (default 1 hour). Stored with each
    /// key (`PX`), so the replica that commits last decides.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Time limit of each Redis call made for a request (default 50 ms). A request waits
    /// at most this long for its lookup, and a response at most this long for its commit
    /// or clear, before it goes on without stickiness.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Time limit of one connection attempt, and of the background `PING` that checks
    /// whether Redis is back while the breaker is open (default 1 s). No request waits
    /// for either.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time limit of each Redis round trip made by the operator functions
    /// ([`RedisStore::get`], [`RedisStore::remove`], [`RedisStore::remove_account`]);
    /// default 2 s.
    pub fn admin_timeout(mut self, timeout: Duration) -> Self {
        self.admin_timeout = timeout;
        self
    }

    /// Consecutive failed calls that open the circuit breaker (default 5; at least 1).
    pub fn breaker_threshold(mut self, failures: u32) -> Self {
        self.breaker_threshold = failures.max(1);
        self
    }

    /// How long the open breaker skips Redis before the next background probe
    /// (default 1 s).
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }

    /// Minimum interval between two fault warnings in the log (default 10 s). Faults in
    /// between are logged at `debug` and counted in the next warning.
    pub fn fault_log_interval(mut self, interval: Duration) -> Self {
        self.log_interval = interval;
        self
    }

    /// Puts an in-process cache of at most `max_bindings` entries in front of Redis;
    /// each entry is kept `ttl` after it was read from Redis (a second or a few). See
    /// "Near cache" on [`RedisStore`].
    pub fn near_cache(mut self, ttl: Duration, max_bindings: u64) -> Self {
        self.near = Some((ttl, max_bindings));
        self
    }

    /// Whether Redis itself tells the near cache when a binding it holds changes
    /// (RESP3 `CLIENT TRACKING`; default on, in every mode; Redis ≥ 6 or Valkey). Off,
    /// entries live for the near cache's TTL. See "Near cache" on [`RedisStore`].
    pub fn near_cache_invalidation(mut self, on: bool) -> Self {
        self.near_invalidation = on;
        self
    }

    /// Builds the store.
    ///
    /// Does not connect: the connection is made in the background, so this succeeds
    /// while Redis is down (requests are then served without stickiness until it
    /// answers).
    ///
    /// # Errors
    ///
    /// If the URL is invalid (the error does not repeat the URL), or if it is called
    /// outside a Tokio runtime.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        let runtime = Handle::try_current().map_err(|_| {
            config_error("RedisStore::build must be called inside a Tokio runtime".into())
        })?;
        let tracking = self.near_invalidation.then(|| {
            // A Cluster client opens connections to new nodes on its own (a failover, a
            // resharding) without telling us: tracking is turned on again on every node
            // every few seconds. One node, Sentinel: only after a reconnect.
            if self.spec.is_cluster() {
                Some(CLUSTER_TRACKING_REFRESH)
            } else {
                None
            }
        });
        let near = self
            .near
            .map(|(ttl, max)| Arc::new(Near::new(ttl, max, tracking)));
        let push = near
            .as_ref()
            .filter(|n| n.tracking.is_some())
            .map(|n| near::push_handler(Arc::downgrade(n)));
        let (target, addr) = self
            .spec
            .target(
                Limits {
                    connect: self.connect_timeout,
                    response: self.admin_timeout.max(self.connect_timeout),
                },
                push,
                {
                    let near = near.as_ref().map(Arc::downgrade);
                    Arc::new(move || {
                        if let Some(near) = near.as_ref().and_then(std::sync::Weak::upgrade) {
                            near.connection_replaced();
                        }
                    })
                },
            )
            .map_err(config_error)?;
        let addr = addr.into_boxed_str();
        let cluster = target.is_cluster();
        let conn = {
            let _guard = runtime.enter();
            target
                .connect_lazy()
                .map_err(|e| config_error(format!("invalid Redis client settings: {e}")))?
        };
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let inner = Arc::new(Inner {
            conn: RwLock::new(conn),
            runtime,
            key_prefix: format!("{}{KEY_VERSION}", self.prefix).into_boxed_str(),
            ttl_ms,
            timeout: self.timeout,
            probe_timeout: self.connect_timeout,
            admin_timeout: self.admin_timeout,
            whole: Arc::new(Guard::new(
                addr.clone(),
                None,
                self.breaker_threshold,
                duration_ms(self.breaker_cooldown),
            )),
            slots: cluster.then(Slots::default),
            target,
            faults: Faults {
                interval_ms: duration_ms(self.log_interval),
                ..Faults::default()
            },
            near,
            addr,
            epoch: Instant::now(),
        });
        // Connect now, in the background, so the first request finds a ready connection.
        // If Redis does not answer, open the breaker: requests skip it from the start and
        // the probe picks it up when it comes.
        let warm = inner.clone();
        inner.runtime.spawn(async move {
            match warm.ping(warm.probe_timeout).await {
                Ok(()) => {
                    tracing::debug!(redis = %warm.addr, "sticky session store: connected to Redis");
                    warm.refresh_slots().await;
                }
                Err(e) => {
                    warm.open_breaker(&warm.whole.clone());
                    tracing::warn!(
                        redis = %warm.addr,
                        error = %e,
                        "sticky session store: Redis unreachable at start-up; serving without stickiness until it answers"
                    );
                }
            }
        });
        Ok(RedisStore { inner })
    }
}

fn config_error(msg: String) -> StoreError {
    StoreError::new(StoreErrorKind::Other, Some(msg.into()))
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A binding as Redis holds it, for an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisBinding {
    /// The account the session is bound to.
    pub auth: AuthId,
    /// Time left before the binding expires, unless a commit renews it. `None` if the
    /// key has no expiry (only if something other than this crate wrote it).
    pub expires_in: Option<Duration>,
}

/// Counters of a [`RedisStore`]'s faults; see [`RedisStore::stats`].
///
/// The layer's own [`Stats`](crate::Stats) count every store error it sees
/// (`store_errors`); these say what the errors were.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStoreStats {
    /// Redis calls made (requests' lookups, commits and clears, probes, operator calls).
    pub calls: u64,
    /// Calls that hit their time limit.
    pub timeouts: u64,
    /// Calls that failed for want of a usable connection: refused, dropped, a handshake
    /// Redis refused, a node still loading its data. With [`timeouts`](Self::timeouts)
    /// these are what the circuit breaker counts. (Error replies are
    /// [`server_errors`](Self::server_errors), not counted here.)
    pub errors: u64,
    /// Calls Redis answered with an error reply: the connection works, that operation
    /// alone failed. Never counted toward the breaker. Includes
    /// [`oom_errors`](Self::oom_errors) and [`readonly_errors`](Self::readonly_errors);
    /// the rest are other replies (`NOPERM`, a script error, …).
    pub server_errors: u64,
    /// Writes refused with `OOM`: Redis is full under `maxmemory-policy noeviction`. New
    /// sessions do not bind; existing bindings are still read (and renewed, see
    /// [`oom_renewals`](Self::oom_renewals)).
    pub oom_errors: u64,
    /// Writes refused with `READONLY`: the store speaks to a replica (a stale address
    /// after a failover, or a misconfiguration). Lookups still work.
    pub readonly_errors: u64,
    /// Commits refused with `OOM` that renewed the existing binding instead (same
    /// account: its TTL was extended with `PEXPIRE`, which Redis allows when full).
    pub oom_renewals: u64,
    /// Operations that skipped Redis because the breaker was open.
    pub breaker_skips: u64,
    /// Times the breaker opened.
    pub breaker_opens: u64,
    /// Whether the breaker is open now (in a Cluster: the store's, or that of at least
    /// one primary).
    pub breaker_open: bool,
    /// In a Cluster: how many primaries' breakers are open now (their slots are skipped;
    /// the other primaries' are served). 0 for one node and Sentinel.
    pub breaker_open_nodes: u64,
    /// Lookups answered by the near cache without a round trip.
    pub near_hits: u64,
    /// Near-cache entries dropped because Redis said their binding changed
    /// (`CLIENT TRACKING` invalidations).
    pub near_invalidations: u64,
    /// Whether Redis is telling the near cache about changes now (tracking on for the
    /// current connection). `false` without a near cache, with invalidation turned off,
    /// or while the channel is down: entries then live for the near cache's TTL.
    pub near_tracking: bool,
}

impl RedisStore {
    /// A builder for a store on the Redis at `url`, e.g. `redis://127.0.0.1:6379/0`,
    /// `redis://:password@host:6379/0` or `redis+unix:///run/redis.sock`. Valkey
    /// works the same. TLS (`rediss://`) is not compiled in: such a URL fails
    /// [`build`](RedisStoreBuilder::build).
    ///
    /// A Redis Cluster is named by some of its nodes, comma-separated, after the scheme
    /// `redis+cluster://`: `redis+cluster://10.0.0.1:6379,10.0.0.2:6379` (credentials, if
    /// any, once: `redis+cluster://:password@host1:6379,host2:6379`); or use
    /// [`cluster_builder`](Self::cluster_builder). See "Redis Cluster" on [`RedisStore`].
    ///
    /// A primary behind Redis Sentinel: `redis+sentinel://s1:26379,s2:26379/master-name`
    /// (the primary's password and database, if any:
    /// `redis+sentinel://:password@s1:26379/master-name/0`); or use
    /// [`sentinel_builder`](Self::sentinel_builder).
    pub fn builder(url: &str) -> RedisStoreBuilder {
        Self::builder_for(Spec::Url(url.to_owned()))
    }

    /// A builder for a store on a Redis Cluster, given the URLs of some of its nodes (the
    /// client learns the others from them), e.g. `["redis://10.0.0.1:6379",
    /// "redis://10.0.0.2:6379"]`.
    ///
    /// ```no_run
    /// use tower_sticky_session::store::RedisStore;
    ///
    /// # async fn run() -> Result<(), tower_sticky_session::store::StoreError> {
    /// let store = RedisStore::cluster_builder(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
    ///     .build()?; // the cluster may be unreachable: requests are then served unsticky
    /// // The same, as one URL (e.g. from a command-line flag):
    /// let same = RedisStore::builder("redis+cluster://10.0.0.1:6379,10.0.0.2:6379").build()?;
    /// # let _ = (store, same);
    /// # Ok(())
    /// # }
    /// ```
    pub fn cluster_builder<I, S>(nodes: I) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder_for(Spec::Cluster(nodes.into_iter().map(Into::into).collect()))
    }

    /// A builder for a store on the primary that Redis Sentinel names `master`, given
    /// the URLs of one or more sentinels (e.g. `["redis://10.0.0.1:26379",
    /// "redis://10.0.0.2:26379"]`). The primary is looked up on first use and again
    /// whenever its connection fails or it answers `READONLY` (a failover demoted it),
    /// `LOADING` or `MASTERDOWN`; the store also asks Sentinel once a second which node
    /// is the primary.
    /// For the primary's password or database use the URL form,
    /// `redis+sentinel://:password@s1:26379,s2:26379/master/db`, with
    /// [`builder`](Self::builder). See "Redis Sentinel" on [`RedisStore`].
    ///
    /// ```no_run
    /// use tower_sticky_session::store::RedisStore;
    ///
    /// # async fn run() -> Result<(), tower_sticky_session::store::StoreError> {
    /// let store = RedisStore::sentinel_builder(
    ///     ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"],
    ///     "mymaster",
    /// )
    /// .build()?;
    /// // With the primary's password and database 0, as one URL:
    /// let same = RedisStore::builder(
    ///     "redis+sentinel://:secret@10.0.0.1:26379,10.0.0.2:26379/mymaster/0",
    /// )
    /// .build()?;
    /// # let _ = (store, same);
    /// # Ok(())
    /// # }
    /// ```
    pub fn sentinel_builder<I, S>(sentinels: I, master: &str) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder_for(Spec::Sentinel {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            master: master.to_owned(),
            node: "redis://localhost/0".to_owned(),
        })
    }

    fn builder_for(spec: Spec) -> RedisStoreBuilder {
        RedisStoreBuilder {
            spec,
            prefix: DEFAULT_REDIS_PREFIX.to_owned(),
            ttl: DEFAULT_TTL,
            timeout: DEFAULT_REDIS_TIMEOUT,
            connect_timeout: DEFAULT_REDIS_CONNECT_TIMEOUT,
            admin_timeout: DEFAULT_REDIS_ADMIN_TIMEOUT,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            log_interval: DEFAULT_FAULT_LOG_INTERVAL,
            near: None,
            near_invalidation: true,
        }
    }

    /// The Redis key of `key`'s binding: `{prefix}v1:` and 32 hex digits of the SHA-256
    /// digest of [`BindingKey::encode`]. The same on every replica with the same prefix.
    pub fn redis_key(&self, key: &BindingKey) -> String {
        self.inner.redis_key(key)
    }

    /// The fault counters.
    pub fn stats(&self) -> RedisStoreStats {
        let f = &self.inner.faults;
        let open_nodes = self.inner.slots.as_ref().map_or(0, |s| {
            s.current()
                .nodes
                .iter()
                .filter(|g| g.breaker.is_open())
                .count() as u64
        });
        RedisStoreStats {
            calls: f.calls.load(Relaxed),
            timeouts: f.timeouts.load(Relaxed),
            errors: f.errors.load(Relaxed),
            server_errors: f.refusals.load(Relaxed),
            oom_errors: f.oom.load(Relaxed),
            readonly_errors: f.readonly.load(Relaxed),
            oom_renewals: f.oom_renewals.load(Relaxed),
            breaker_skips: f.breaker_skips.load(Relaxed),
            breaker_opens: f.breaker_opens.load(Relaxed),
            breaker_open: self.inner.whole.breaker.is_open() || open_nodes > 0,
            breaker_open_nodes: open_nodes,
            near_hits: f.near_hits.load(Relaxed),
            near_invalidations: self.inner.near.as_ref().map_or(0, |n| n.invalidations()),
            near_tracking: self.inner.near.as_ref().is_some_and(|n| n.tracking_on()),
        }
    }

    /// The live binding of `key` in Redis, with the time it has left. Bypasses the near
    /// cache; each round trip is limited by
    /// [`admin_timeout`](RedisStoreBuilder::admin_timeout).
    ///
    /// Honours the circuit breaker, as the operator functions [`remove`](Self::remove)
    /// and [`remove_account`](Self::remove_account) do: while it is open (for the
    /// key's primary, in a Cluster) the call fails at once with
    /// [`StoreErrorKind::Unavailable`] and a [`RedisBreakerOpen`] source, without a
    /// connection attempt. Their connection failures and timeouts count toward it.
    pub async fn get(&self, key: &BindingKey) -> Result<Option<RedisBinding>, StoreError> {
        let inner = &self.inner;
        let k = inner.redis_key(key);
        let guard = inner.guard(&k);
        inner.admit(&guard)?;
        let mut pipe = ::redis::pipe();
        // Not `MULTI`: one key, one node, in a Cluster too.
        pipe.cmd("GET").arg(&k).cmd("PTTL").arg(&k);
        let mut conn = inner.conn();
        let (auth, pttl): (Option<String>, i64) = inner
            .request_within(&guard, inner.admin_timeout, pipe.query_async(&mut conn))
            .await?;
        Ok(auth.map(|auth| RedisBinding {
            auth: AuthId::from(auth),
            expires_in: u64::try_from(pttl).ok().map(Duration::from_millis),
        }))
    }

    /// Removes the binding of `key`, whatever it points at (`GETDEL`, Redis ≥ 6.2 or
    /// Valkey), and its near-cache entry. Returns the account it pointed at. Honours the
    /// breaker as [`get`](Self::get) does.
    pub async fn remove(&self, key: &BindingKey) -> Result<Option<AuthId>, StoreError> {
        let inner = &self.inner;
        let k = inner.redis_key(key);
        let guard = inner.guard(&k);
        inner.admit(&guard)?;
        let mut cmd = Cmd::new();
        cmd.arg("GETDEL").arg(&k);
        let mut conn = inner.conn();
        inner.bump_near();
        let result: Option<String> = inner
            .request_within(&guard, inner.admin_timeout, cmd.query_async(&mut conn))
            .await?;
        if let Some(near) = &inner.near {
            near.cache.remove(key);
            near.bump();
        }
        Ok(result.map(AuthId::from))
    }

    /// Removes every binding under this store's prefix that points at `auth` (e.g. a
    /// revoked account), each by the atomic compare-and-delete, so a binding
    /// re-committed meanwhile to another account stays. Returns how many were removed.
    ///
    /// Walks the keys with `SCAN` (never `KEYS`), in batches, without blocking Redis;
    /// each round trip is limited by [`admin_timeout`](RedisStoreBuilder::admin_timeout).
    /// Honours the breaker as [`get`](Self::get) does: it fails at once if the store's
    /// breaker, or in a Cluster any primary's, is open (a partial walk would leave
    /// bindings of the account behind). Also drops this replica's near-cache entries of `auth` (other replicas' near
    /// caches are told by Redis when their invalidation is on, and otherwise expire on
    /// their own TTL).
    pub async fn remove_account(&self, auth: &AuthId) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let pattern = format!("{}*", glob_escape(&inner.key_prefix));
        let mut conn = inner.conn();
        let mut removed = 0usize;
        inner.admit(&inner.whole)?;
        if let Some(slots) = &inner.slots {
            for g in &slots.current().nodes {
                inner.admit(g)?;
            }
        }
        inner.bump_near();
        // One node: one walk. A Cluster: one walk per primary (`SCAN` sees one node's
        // keys), and each key's compare-and-delete goes to the key's own node.
        let nodes = inner
            .request_within(&inner.whole, inner.admin_timeout, conn.primaries())
            .await?
            .map_or_else(|| vec![None], |p| p.into_iter().map(Some).collect());
        for node in &nodes {
            let guard = inner.node_guard(node.as_ref());
            let mut cursor: u64 = 0;
            loop {
                let mut scan = Cmd::new();
                scan.arg("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000);
                let reply = inner
                    .request_within(
                        &guard,
                        inner.admin_timeout,
                        conn.on_node(node.as_ref(), scan),
                    )
                    .await?;
                let (next, keys): (u64, Vec<String>) = ::redis::from_redis_value(reply)
                    .map_err(|e| StoreError::new(StoreErrorKind::Other, Some(Box::new(e))))?;
                if inner.target.is_cluster() {
                    for k in &keys {
                        let mut cmd = Cmd::new();
                        cmd.arg("EVAL")
                            .arg(CLEAR_IF_SCRIPT)
                            .arg(1)
                            .arg(k)
                            .arg(auth.as_str());
                        let n: i64 = inner
                            .request_within(
                                &inner.guard(k),
                                inner.admin_timeout,
                                cmd.query_async(&mut conn),
                            )
                            .await?;
                        removed += usize::from(n > 0);
                    }
                } else if !keys.is_empty() {
                    let mut pipe = ::redis::pipe();
                    for k in &keys {
                        pipe.cmd("EVAL")
                            .arg(CLEAR_IF_SCRIPT)
                            .arg(1)
                            .arg(k)
                            .arg(auth.as_str());
                    }
                    let results: Vec<i64> = inner
                        .request_within(&guard, inner.admin_timeout, pipe.query_async(&mut conn))
                        .await?;
                    removed += results.iter().filter(|&&n| n > 0).count();
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        if let Some(near) = &inner.near {
            near.cache.remove_account(auth);
            near.bump();
        }
        Ok(removed)
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("redis", &self.inner.addr)
            .field("key_prefix", &self.inner.key_prefix)
            .field("timeout", &self.inner.timeout)
            .field("near_cache", &self.inner.near.is_some())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl BindingStore for RedisStore {
    type LookupFuture = RedisStoreFuture<Option<AuthId>>;
    type CommitFuture = RedisStoreFuture<()>;
    type ClearFuture = RedisStoreFuture<bool>;

    fn lookup(&self, key: &BindingKey) -> Self::LookupFuture {
        let inner = &self.inner;
        let mut generation = 0;
        if let Some(near) = &inner.near {
            if let Some(hit) = near.cache.get(key) {
                inc(&inner.faults.near_hits);
                return RedisStoreFuture::ready(Ok(Some(hit.auth)));
            }
            generation = near.generation();
        }
        let redis_key = inner.redis_key(key);
        let guard = inner.guard(&redis_key);
        if let Err(e) = inner.admit(&guard) {
            return RedisStoreFuture::ready(Err(e));
        }
        let near_key = inner.near.as_ref().map(|_| key.clone());
        let track = inner.near.as_ref().is_some_and(|n| n.needs_tracking());
        let inner = inner.clone();
        RedisStoreFuture::pending(async move {
            let mut conn = inner.conn();
            let found: Option<String> = if track {
                inner.get_tracked(&guard, &mut conn, &redis_key).await?
            } else {
                let mut cmd = Cmd::new();
                cmd.arg("GET").arg(&redis_key);
                inner.request(&guard, cmd.query_async(&mut conn)).await?
            };
            let auth = found.map(AuthId::from);
            if let (Some(near), Some(key), Some(auth)) = (&inner.near, near_key, &auth) {
                // Fill the local tier unless a clear or an invalidation ran meanwhile
                // (the reply might be older than it).
                near.fill(&key, &redis_key, auth, generation);
            }
            Ok(auth)
        })
    }

    fn commit(&self, key: &BindingKey, auth: &AuthId) -> Self::CommitFuture {
        let inner = &self.inner;
        if let Some(near) = &inner.near {
            // The local tier is a read cache: never renewed here (so it cannot drift from
            // Redis for longer than its TTL), but never left contradicting this commit.
            if let Some(local) = near.cache.get(key)
                && local.auth != *auth
            {
                near.clear(key, &local.auth);
            }
        }
        let redis_key = inner.redis_key(key);
        let guard = inner.guard(&redis_key);
        if let Err(e) = inner.admit(&guard) {
            return RedisStoreFuture::ready(Err(e));
        }
        let mut cmd = Cmd::new();
        if inner.near.as_ref().is_some_and(|n| n.tracking.is_some()) {
            // With invalidation on, a write that changes nothing is not free: every other
            // replica that holds the binding would drop it. A same-account renewal is
            // deferred while the binding has more than 15/16 of its TTL left (as
            // `MemoryStore` does; `BindingStore::commit` allows it).
            cmd.arg("EVAL")
                .arg(SET_UNLESS_FRESH_SCRIPT)
                .arg(1)
                .arg(&redis_key)
                .arg(auth.as_str())
                .arg(inner.ttl_ms)
                .arg(inner.ttl_ms - inner.ttl_ms / 16);
        } else {
            cmd.arg("SET")
                .arg(&redis_key)
                .arg(auth.as_str())
                .arg("PX")
                .arg(inner.ttl_ms);
        }
        let auth = auth.clone();
        let inner = inner.clone();
        RedisStoreFuture::pending(async move {
            let started = Instant::now();
            let mut conn = inner.conn();
            let result = inner
                .request(&guard, cmd.query_async::<::redis::Value>(&mut conn))
                .await
                .map(drop);
            match result {
                Err(e) if Refusal::of(&e) == Some(Refusal::Oom) => {
                    // Full under `noeviction`: `SET` is refused, `PEXPIRE` is not. A
                    // binding that already holds this account is renewed, so sessions in
                    // use keep their account past the TTL while Redis stays full.
                    let left = inner.timeout.saturating_sub(started.elapsed());
                    let mut renew = Cmd::new();
                    renew
                        .arg("EVAL")
                        .arg(RENEW_IF_SCRIPT)
                        .arg(1)
                        .arg(&redis_key)
                        .arg(auth.as_str())
                        .arg(inner.ttl_ms);
                    match inner
                        .request_within(&guard, left, renew.query_async::<i64>(&mut conn))
                        .await
                    {
                        Ok(1) => {
                            inc(&inner.faults.oom_renewals);
                            Ok(())
                        }
                        _ => Err(e),
                    }
                }
                other => other,
            }
        })
    }

    fn clear_if(&self, key: &BindingKey, expected: &AuthId) -> Self::ClearFuture {
        let inner = &self.inner;
        inner.bump_near();
        let near_key = inner.near.as_ref().map(|_| (key.clone(), expected.clone()));
        let redis_key = inner.redis_key(key);
        let guard = inner.guard(&redis_key);
        let admitted = inner.admit(&guard);
        let mut cmd = Cmd::new();
        cmd.arg("EVAL")
            .arg(CLEAR_IF_SCRIPT)
            .arg(1)
            .arg(redis_key)
            .arg(expected.as_str());
        if let Err(e) = admitted {
            // Redis is skipped: the local tier must still forget the failed account.
            if let Some((key, expected)) = near_key {
                inner.clear_near(&key, &expected);
            }
            return RedisStoreFuture::ready(Err(e));
        }
        let inner = inner.clone();
        RedisStoreFuture::pending(async move {
            let mut conn = inner.conn();
            // Redis first, then the local tier: a lookup in between still finds the old
            // account locally (as before the failure), never re-reads it from Redis.
            let result = inner
                .request(&guard, cmd.query_async::<i64>(&mut conn))
                .await
                .map(|n| n > 0);
            if let Some((key, expected)) = near_key {
                inner.clear_near(&key, &expected);
            }
            result
        })
    }
}

impl Inner {
    /// `GET` in one round trip with `CLIENT TRACKING ON NOLOOP`, on a connection that
    /// does not track yet (see "Near cache" on [`RedisStore`]).
    async fn get_tracked(
        self: &Arc<Self>,
        guard: &Arc<Guard>,
        conn: &mut Conn,
        redis_key: &str,
    ) -> Result<Option<String>, StoreError> {
        let Some(near) = &self.near else {
            return Ok(None);
        };
        if self.target.is_cluster() {
            // Routed to every node: a separate round trip, once per refresh interval.
            // Not counted toward a breaker: it goes to every node, the key to one.
            match self.call(self.timeout, conn.enable_tracking()).await {
                Ok(()) => near.tracking_enabled(),
                Err(e) => {
                    tracing::debug!(redis = %self.addr, error = %e, "sticky session store: cannot turn on CLIENT TRACKING on every node");
                }
            }
            let mut cmd = Cmd::new();
            cmd.arg("GET").arg(redis_key);
            return self.request(guard, cmd.query_async(conn)).await;
        }
        let mut pipe = ::redis::pipe();
        pipe.cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("NOLOOP")
            .ignore()
            .cmd("GET")
            .arg(redis_key);
        match self
            .request(guard, pipe.query_async::<(Option<String>,)>(conn))
            .await
        {
            Ok((found,)) => {
                near.tracking_enabled();
                Ok(found)
            }
            Err(e) => {
                let refused = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<RedisError>())
                    .and_then(|r| r.clone().into_server_errors())
                    .is_some_and(|errs| errs.iter().any(|(i, _)| *i == 0));
                if refused {
                    near.tracking_refused();
                    tracing::warn!(
                        redis = %self.addr,
                        error = %e,
                        "sticky session store: Redis refused CLIENT TRACKING; the near cache relies on its TTL"
                    );
                }
                Err(e)
            }
        }
    }

    fn redis_key(&self, key: &BindingKey) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(key.encode());
        let mut out = String::with_capacity(self.key_prefix.len() + 2 * DIGEST_BYTES);
        out.push_str(&self.key_prefix);
        for b in &digest[..DIGEST_BYTES] {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        out
    }

    fn now_ms(&self) -> u64 {
        duration_ms(self.epoch.elapsed())
    }

    fn bump_near(&self) {
        if let Some(near) = &self.near {
            near.bump();
        }
    }

    fn clear_near(&self, key: &BindingKey, expected: &AuthId) {
        if let Some(near) = &self.near {
            near.clear(key, expected);
        }
    }

    fn conn(&self) -> Conn {
        self.conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the connection manager with a new, lazy one. The client reconnects on
    /// its own only after an I/O error: a connection whose handshake Redis refused
    /// (`WRONGPASS`, `LOADING`…) would stay failed forever, and a half-open TCP
    /// connection (peer gone without a reset) would time out forever. Done after each
    /// failed probe, while the breaker keeps requests away, so it never races them.
    fn fresh_connection(&self) {
        let _guard = self.runtime.enter();
        match self.target.connect_lazy() {
            Ok(conn) => {
                *self.conn.write().unwrap_or_else(PoisonError::into_inner) = conn;
                if let Some(near) = &self.near {
                    near.connection_replaced();
                }
            }
            Err(e) => {
                tracing::debug!(redis = %self.addr, error = %e, "sticky session store: cannot renew the Redis connection")
            }
        }
    }

    /// The breaker that guards `redis_key`: its primary's in a Cluster (once the slot
    /// map is known), else the store's.
    fn guard(self: &Arc<Self>, redis_key: &str) -> Arc<Guard> {
        let Some(slots) = &self.slots else {
            return self.whole.clone();
        };
        let last = slots.refreshed_at.load(Relaxed);
        if last == 0 || self.now_ms().saturating_sub(last - 1) >= SLOT_MAP_REFRESH_MS {
            self.spawn_refresh_slots();
        }
        slots
            .current()
            .guard(key_slot(redis_key.as_bytes()))
            .cloned()
            .unwrap_or_else(|| self.whole.clone())
    }

    /// The breaker of the Cluster primary at `node`; the store's for one node.
    fn node_guard(&self, node: Option<&(String, u16)>) -> Arc<Guard> {
        let (Some(slots), Some(node)) = (&self.slots, node) else {
            return self.whole.clone();
        };
        slots
            .current()
            .nodes
            .iter()
            .find(|g| g.node.as_ref() == Some(node))
            .cloned()
            .unwrap_or_else(|| self.whole.clone())
    }

    /// Whether a call may go to Redis now: not while `guard`'s breaker is open.
    fn admit(&self, guard: &Guard) -> Result<(), StoreError> {
        let until = guard.breaker.open_until.load(Relaxed);
        if until == 0 {
            return Ok(());
        }
        inc(&self.faults.breaker_skips);
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            Some(Box::new(RedisBreakerOpen {
                redis: guard.addr.to_string(),
                next_probe_in: Duration::from_millis(until.saturating_sub(self.now_ms())),
            })),
        ))
    }

    /// Opens `guard`'s breaker (if it is not open) and starts the background task that
    /// probes what it guards every cooldown until it answers, then closes the breaker.
    /// Returns whether this call opened it.
    fn open_breaker(self: &Arc<Self>, guard: &Arc<Guard>) -> bool {
        let breaker = &guard.breaker;
        // SeqCst here and in the prober: opening (`open_until`, then `probing`) and the
        // prober's exit (`probing`, then `open_until`) must not miss each other, or the
        // breaker could stay open with no prober left to close it.
        let opened = breaker
            .open_until
            .compare_exchange(0, breaker.reopen_at(self.now_ms()), SeqCst, SeqCst)
            .is_ok();
        if opened {
            inc(&self.faults.breaker_opens);
        }
        if breaker
            .probing
            .compare_exchange(false, true, SeqCst, SeqCst)
            .is_ok()
        {
            // Weak: a store dropped while Redis is down does not live on in its prober.
            let weak = Arc::downgrade(self);
            let guard = guard.clone();
            let cooldown = Duration::from_millis(breaker.cooldown_ms);
            self.runtime.spawn(async move {
                let breaker = &guard.breaker;
                loop {
                    tokio::time::sleep(cooldown).await;
                    let Some(this) = weak.upgrade() else { return };
                    if this.probe(&guard).await {
                        breaker.probing.store(false, SeqCst);
                        // Requests may have reopened the breaker after the probe closed
                        // it, while `probing` was still set (so they started no prober):
                        // keep probing then, unless another prober has taken over.
                        if breaker.open_until.load(SeqCst) == 0
                            || breaker
                                .probing
                                .compare_exchange(false, true, SeqCst, SeqCst)
                                .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
        opened
    }

    /// One probe of what `guard` guards; closes its breaker if it answers. Returns
    /// whether it did.
    ///
    /// The store's breaker: `PING` on the store's connection (any node of a Cluster).
    /// A Cluster primary's: the slot map is read again first — if the primary no longer
    /// serves any slot (a replica took over after a failover), its breaker is closed and
    /// dropped, as the map now sends its keys to another node — then the primary is
    /// `PING`ed on a connection of its own.
    async fn probe(self: &Arc<Self>, guard: &Arc<Guard>) -> bool {
        let result = match &guard.node {
            None => self.ping(self.probe_timeout).await,
            Some((host, port)) => {
                self.refresh_slots().await;
                if let Some(slots) = &self.slots
                    && !slots.current().holds(guard)
                {
                    guard.breaker.failures.store(0, Relaxed);
                    guard.breaker.open_until.store(0, SeqCst);
                    tracing::info!(
                        redis = %guard.addr,
                        "sticky session store: Redis Cluster node no longer serves any slot; its breaker is dropped"
                    );
                    return true;
                }
                self.call(self.probe_timeout, self.target.ping_node(host, *port))
                    .await
            }
        };
        match result {
            Ok(()) => {
                guard.breaker.failures.store(0, Relaxed);
                guard.breaker.open_until.store(0, SeqCst);
                tracing::info!(redis = %guard.addr, "sticky session store: Redis answers again; circuit breaker closed");
                if guard.node.is_none() {
                    self.refresh_slots().await;
                }
                true
            }
            Err(e) => {
                guard.breaker.trip(self.now_ms());
                guard.log.log(
                    &guard.addr,
                    self.faults.interval_ms,
                    "probe",
                    &e,
                    self.now_ms(),
                );
                // The store's breaker, or every primary's: renew the connection (see
                // `fresh_connection`). One primary down: the cluster client repairs its
                // connection to it on its own.
                let all_down = guard.node.is_none()
                    || self
                        .slots
                        .as_ref()
                        .is_some_and(|s| s.current().nodes.iter().all(|g| g.breaker.is_open()));
                if all_down {
                    self.fresh_connection();
                }
                false
            }
        }
    }

    /// Starts [`refresh_slots`](Self::refresh_slots) in the background, unless one ran
    /// less than [`SLOT_MAP_MIN_INTERVAL_MS`] ago.
    fn spawn_refresh_slots(self: &Arc<Self>) {
        let Some(slots) = &self.slots else { return };
        let last = slots.refreshed_at.load(Relaxed);
        if last != 0 && self.now_ms().saturating_sub(last - 1) < SLOT_MAP_MIN_INTERVAL_MS {
            return;
        }
        let this = self.clone();
        self.runtime
            .spawn(async move { this.refresh_slots().await });
    }

    /// Reads a Cluster's slot map (`CLUSTER SLOTS`, asked of a primary whose breaker is
    /// closed, else of any node) into the store's copy. Breakers of primaries the map
    /// still names are kept; a new primary gets a closed one. One read at a time; a
    /// failed read keeps the previous map. Not counted in the stats.
    async fn refresh_slots(self: &Arc<Self>) {
        let Some(slots) = &self.slots else { return };
        if slots.refreshing.swap(true, SeqCst) {
            return;
        }
        slots.refreshed_at.store(self.now_ms() + 1, Relaxed);
        let current = slots.current();
        let ask = current
            .nodes
            .iter()
            .find(|g| !g.breaker.is_open())
            .and_then(|g| g.node.clone());
        let mut conn = self.conn();
        let read = tokio::time::timeout(self.probe_timeout, conn.slot_ranges(ask.as_ref())).await;
        match read {
            Ok(Ok(ranges)) if !ranges.is_empty() => {
                let map = SlotMap::rebuild(ranges, &current, |host, port| {
                    Guard::new(
                        format!("{host}:{port}").into_boxed_str(),
                        Some((host.to_owned(), port)),
                        self.whole.breaker.threshold,
                        self.whole.breaker.cooldown_ms,
                    )
                });
                if !map.same_primaries(&current) {
                    let primaries: Vec<&str> = map.nodes.iter().map(|g| &*g.addr).collect();
                    tracing::debug!(redis = %self.addr, ?primaries, "sticky session store: Redis Cluster slot map read");
                }
                slots.replace(map);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(redis = %self.addr, error = %e, "sticky session store: cannot read the Redis Cluster slot map");
            }
            Err(_) => {
                tracing::debug!(redis = %self.addr, "sticky session store: reading the Redis Cluster slot map timed out");
            }
        }
        slots.refreshing.store(false, SeqCst);
    }

    /// `PING`, tried twice within `limit`: a first attempt on a dropped connection fails
    /// at once and starts a reconnect, which the second attempt waits for.
    async fn ping(&self, limit: Duration) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let attempt = async move {
            match conn.ping().await {
                Ok(()) => Ok(()),
                Err(e) if e.is_io_error() || e.is_connection_dropped() => conn.ping().await,
                Err(e) => Err(e),
            }
        };
        self.call(limit, attempt).await
    }

    /// A call made for a request, guarded by `guard`: limited by `timeout`; a timeout or
    /// a connection failure counts toward `guard`'s breaker, an error reply does not
    /// (and, like a success, resets its count of consecutive failures).
    async fn request<T>(
        self: &Arc<Self>,
        guard: &Arc<Guard>,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        self.request_within(guard, self.timeout, fut).await
    }

    /// [`request`](Self::request) with its own time limit.
    async fn request_within<T>(
        self: &Arc<Self>,
        guard: &Arc<Guard>,
        limit: Duration,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        let result = self.call(limit, fut).await;
        let breaker = &guard.breaker;
        match &result {
            // An error reply proves the connection works, as a success does.
            Ok(_) => breaker.failures.store(0, Relaxed),
            Err(e) if e.kind() == StoreErrorKind::Other => {
                breaker.failures.store(0, Relaxed);
                guard.log.log(
                    &guard.addr,
                    self.faults.interval_ms,
                    "request",
                    e,
                    self.now_ms(),
                );
            }
            Err(e) => {
                let now = self.now_ms();
                // A redirect the cluster client could not follow, or a cluster that says
                // it is down: the slot map is changing.
                if self.slots.is_some()
                    && redis_code(e)
                        .is_some_and(|c| matches!(c, "MOVED" | "ASK" | "CLUSTERDOWN" | "TRYAGAIN"))
                {
                    self.spawn_refresh_slots();
                }
                if breaker.fail() && self.open_breaker(guard) {
                    tracing::warn!(
                        redis = %guard.addr,
                        error = %e,
                        failures = breaker.threshold,
                        cooldown_ms = breaker.cooldown_ms,
                        "sticky session store: circuit breaker open; skipping Redis until it answers again"
                    );
                    if guard.node.is_some() {
                        // The primary's slots may be moving to a replica.
                        self.spawn_refresh_slots();
                    }
                } else {
                    guard
                        .log
                        .log(&guard.addr, self.faults.interval_ms, "request", e, now);
                }
            }
        }
        result
    }

    /// Any call: limited by `limit`, counted.
    async fn call<T>(
        &self,
        limit: Duration,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        inc(&self.faults.calls);
        let result = match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => StoreError::new(classify(&e), Some(Box::new(e))),
            Err(elapsed) => StoreError::new(StoreErrorKind::Timeout, Some(Box::new(elapsed))),
        };
        self.faults.record(&result);
        Err(result)
    }
}

/// The Redis error code (`MOVED`, `OOM`, …) behind a store error, if any.
fn redis_code(e: &StoreError) -> Option<&str> {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<RedisError>())
        .and_then(RedisError::code)
}

/// Why a [`RedisStore`] call failed at once: the circuit breaker that guards it is open.
///
/// The source of the [`StoreError`] (of kind [`StoreErrorKind::Unavailable`]) that
/// every operation returns while the breaker is open, requests' and operators' alike;
/// reach it with `std::error::Error::source` and `downcast_ref`, e.g. to answer an admin
/// request with `503` and the breaker's state. Names Redis by `host:port` only.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisBreakerOpen {
    /// What the open breaker guards: the store's Redis (`host:port/db`, the cluster's
    /// seed nodes, or the Sentinel master), or one Cluster primary (`host:port`).
    pub redis: String,
    /// Time until the breaker's next background probe (it closes when that answers).
    pub next_probe_in: Duration,
}

impl fmt::Display for RedisBreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Redis skipped: circuit breaker open for {} (next probe in {} ms)",
            self.redis,
            self.next_probe_in.as_millis()
        )
    }
}

impl std::error::Error for RedisBreakerOpen {}

/// What a Redis error says about the connection.
///
/// - [`StoreErrorKind::Timeout`]: the client's own I/O timeout.
/// - [`StoreErrorKind::Unavailable`]: no usable connection — refused, dropped, a broken
///   reply stream, a handshake Redis refused (wrong password), a node that cannot serve
///   anything yet (`LOADING`, `MASTERDOWN`, `CLUSTERDOWN`, `TRYAGAIN`), or a Cluster
///   redirect (`MOVED`, `ASK`) the cluster client could not follow. These count toward
///   the circuit breaker.
/// - [`StoreErrorKind::Other`]: Redis answered this one command with an error (`OOM`
///   under `noeviction`, `READONLY` from a replica, `NOPERM`, a script error, `WRONGTYPE`…).
///   The connection works and the next command may well succeed: the error fails that
///   operation only and never counts toward the breaker.
fn classify(e: &RedisError) -> StoreErrorKind {
    use ::redis::{ErrorKind, ServerErrorKind};
    if e.is_timeout() {
        return StoreErrorKind::Timeout;
    }
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::TryAgain
            // The cluster client follows redirects itself; one that reaches us is a
            // redirect it could not complete (the node it points at is down).
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask,
        ) => StoreErrorKind::Unavailable,
        ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::UnexpectedReturnType => {
            StoreErrorKind::Other
        }
        _ => StoreErrorKind::Unavailable,
    }
}

/// Why Redis refused a command, for the counters: `OOM`, `READONLY`, or anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Oom,
    ReadOnly,
    Other,
}

impl Refusal {
    fn of(e: &StoreError) -> Option<Self> {
        if e.kind() != StoreErrorKind::Other {
            return None;
        }
        let code = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<RedisError>())
            .and_then(RedisError::code);
        Some(match code {
            Some("OOM") => Self::Oom,
            Some("READONLY") => Self::ReadOnly,
            _ => Self::Other,
        })
    }
}

/// Escapes glob metacharacters for `SCAN … MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[derive(Default)]
struct Faults {
    calls: AtomicU64,
    timeouts: AtomicU64,
    errors: AtomicU64,
    refusals: AtomicU64,
    oom: AtomicU64,
    readonly: AtomicU64,
    oom_renewals: AtomicU64,
    breaker_skips: AtomicU64,
    breaker_opens: AtomicU64,
    near_hits: AtomicU64,
    /// Minimum interval between two fault warnings of one breaker.
    interval_ms: u64,
}

#[inline]
fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

impl Faults {
    fn record(&self, e: &StoreError) {
        match Refusal::of(e) {
            None if e.kind() == StoreErrorKind::Timeout => inc(&self.timeouts),
            None => inc(&self.errors),
            Some(reason) => {
                inc(&self.refusals);
                match reason {
                    Refusal::Oom => inc(&self.oom),
                    Refusal::ReadOnly => inc(&self.readonly),
                    Refusal::Other => {}
                }
            }
        }
    }
}

/// The future of every [`RedisStore`] operation.
///
/// Resolved at once, without a network call or an allocation, when the near cache
/// answers a lookup or the breaker is open; otherwise one boxed future per Redis round
/// trip.
#[must_use = "futures do nothing unless polled"]
pub struct RedisStoreFuture<T> {
    state: FutureState<T>,
}

type BoxedCall<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

enum FutureState<T> {
    Ready(Option<Result<T, StoreError>>),
    Pending(BoxedCall<T>),
}

impl<T> RedisStoreFuture<T> {
    fn ready(result: Result<T, StoreError>) -> Self {
        Self {
            state: FutureState::Ready(Some(result)),
        }
    }

    fn pending(fut: impl Future<Output = Result<T, StoreError>> + Send + 'static) -> Self {
        Self {
            state: FutureState::Pending(Box::pin(fut)),
        }
    }
}

// Never pinned structurally: the ready value is moved out, the pending future is boxed.
impl<T> Unpin for RedisStoreFuture<T> {}

impl<T> Future for RedisStoreFuture<T> {
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            FutureState::Ready(result) => Poll::Ready(
                result
                    .take()
                    .expect("RedisStoreFuture polled after completion"),
            ),
            FutureState::Pending(fut) => fut.as_mut().poll(cx),
        }
    }
}

impl<T> fmt::Debug for RedisStoreFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            FutureState::Ready(Some(_)) => "ready",
            FutureState::Ready(None) => "done",
            FutureState::Pending(_) => "pending",
        };
        f.debug_struct("RedisStoreFuture")
            .field("state", &state)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::SessionId;
    use crate::types::Scope;

    fn key(scope: Option<&'static str>, session: &'static str) -> BindingKey {
        let id = SessionId::new(session).expect("valid session id");
        BindingKey::new(scope.map(Scope::from_static), id)
    }

    #[test]
    fn only_connection_failures_and_timeouts_are_unavailable() {
        use ::redis::{ErrorKind, ServerErrorKind, make_extension_error};
        let io = |k| RedisError::from(std::io::Error::from(k));
        assert_eq!(
            classify(&io(std::io::ErrorKind::TimedOut)),
            StoreErrorKind::Timeout
        );
        for k in [
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            assert_eq!(classify(&io(k)), StoreErrorKind::Unavailable, "{k:?}");
        }
        let general = |k| RedisError::from((k, "x"));
        assert_eq!(
            classify(&general(ErrorKind::AuthenticationFailed)),
            StoreErrorKind::Unavailable
        );
        for k in [
            ServerErrorKind::BusyLoading,
            ServerErrorKind::Moved,
            ServerErrorKind::ClusterDown,
        ] {
            assert_eq!(
                classify(&general(ErrorKind::Server(k))),
                StoreErrorKind::Unavailable,
                "{k:?}"
            );
        }
        // Error replies: the connection works.
        for k in [
            ServerErrorKind::ReadOnly,
            ServerErrorKind::NoPerm,
            ServerErrorKind::ResponseError,
        ] {
            assert_eq!(
                classify(&general(ErrorKind::Server(k))),
                StoreErrorKind::Other,
                "{k:?}"
            );
        }
        let oom = make_extension_error("OOM".into(), Some("command not allowed".into()));
        assert_eq!(classify(&oom), StoreErrorKind::Other);
        let e = StoreError::new(classify(&oom), Some(Box::new(oom)));
        assert_eq!(Refusal::of(&e), Some(Refusal::Oom));
        let timeout = StoreError::new(StoreErrorKind::Timeout, None);
        assert_eq!(Refusal::of(&timeout), None);
    }

    #[test]
    fn glob_escape_escapes_metacharacters() {
        assert_eq!(glob_escape("a*b?c[d]e\\f:"), "a\\*b\\?c\\[d\\]e\\\\f:");
    }

    #[tokio::test]
    async fn redis_key_is_prefixed_stable_and_scoped() {
        let store = RedisStore::builder("redis://127.0.0.1:1/")
            .prefix("p:")
            .build()
            .expect("build");
        let k = store.redis_key(&key(None, "session-1"));
        assert!(k.starts_with("p:v1:"), "{k}");
        assert_eq!(k.len(), "p:v1:".len() + 32);
        assert!(!k.contains("session-1"));
        // Stable: SHA-256 of the fixed encoding, not a per-process random hash.
        let again = RedisStore::builder("redis://127.0.0.1:1/")
            .prefix("p:")
            .build()
            .expect("build");
        assert_eq!(k, again.redis_key(&key(None, "session-1")));
        assert_ne!(k, store.redis_key(&key(Some("openai"), "session-1")));
        assert_ne!(k, store.redis_key(&key(None, "session-2")));
    }
}
