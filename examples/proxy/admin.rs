//! The admin listener (`--admin ADDR`): metrics and control of bindings, off the proxied
//! path space.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /metrics` | the layer's counters and the binding count, OpenMetrics/Prometheus text |
//! | `GET /bindings?session=S[&scope=X]` | `{"auth": .., "age_ms": .., "expires_in_ms": ..}`, 404 if unbound |
//! | `DELETE /bindings?session=S[&scope=X]` | removes that binding: `{"removed": "acct" or null}` |
//! | `DELETE /accounts/{name}/bindings` | removes every binding to the account: `{"removed": n}` |
//! | `GET /bindings/count` | `{"count": n}` (`null` where the store cannot count cheaply) |
//! | `GET /` | the live status page, HTML (see `status.rs`) |
//! | `GET /status.json` | what the status page shows, as JSON: accounts, bindings, hit ratio, … |
//! | `POST /reload` | re-reads the configuration as SIGHUP does (`reload.rs`): `{"reloaded": ..}`, or 400 `{"error": ..}` and the running configuration kept |
//!
//! The scope is the value the proxy reads from `--scope-header`; leave it out when the
//! proxy runs without one. Session ids in queries are URL-encoded by the client.
//!
//! With `--admin-token ENV_VAR` every request must carry `authorization: Bearer TOKEN` or
//! `x-api-key: TOKEN` (compared in constant time), else 401. The proxy refuses to start
//! an admin listener on a non-loopback address without a token.
//!
//! The listener is served like the main one (`app::serve`): `--header-timeout`,
//! `--conn-idle-timeout`, and at most 64 connections of its own ([`serve_config`]).
//!
//! `DELETE /accounts/{name}/bindings` walks every binding: it runs on the blocking pool,
//! not on a runtime worker, so proxied requests are not stalled while it runs.

#[path = "status.rs"]
mod status;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use tower_sticky_session::body_session::{BodySessionStats, BodySessionStatsSnapshot};
use tower_sticky_session::store::InspectStore;

use crate::app::BufferBudget;
use crate::app::auth;
use crate::app::broken::BrokenStreams;
use crate::app::keys::Secret;
use crate::app::picker::Picker;
use tower_sticky_session::{AuthId, BindingKey, Scope, SessionId, Stats, StatsSnapshot};

struct Admin<St> {
    store: St,
    live: Live,
    reload: Option<ReloadHook>,
}

impl<St: Clone> Clone for Admin<St> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            live: self.live.clone(),
            reload: self.reload.clone(),
        }
    }
}

/// The counters of the running configuration, read at each request: a reload
/// (`reload.rs`) builds a new proxy with counters of its own.
pub(crate) type Live = Arc<dyn Fn() -> (Stats, ProxyMetrics) + Send + Sync>;

/// `POST /reload`: re-reads the configuration; `Ok(summary)` or `Err(why)` (the running
/// configuration then stays as it was).
pub(crate) type ReloadHook = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>>
        + Send
        + Sync,
>;

/// The proxy's own state exported next to the layer's counters: per account in-flight
/// requests and cooldown, retries, streams broken after their first byte, the buffer
/// budget (bytes in use, bodies refused), and where sessions were found in bodies.
#[derive(Clone, Default)]
pub(crate) struct ProxyMetrics {
    /// The account picker.
    pub(crate) picker: Option<Arc<Picker>>,
    /// The JSON-body session reader's counters, when it runs.
    pub(crate) body: Option<BodySessionStats>,
    /// `--max-buffered-total`: bytes reserved, bodies refused buffering.
    pub(crate) budget: Option<BufferBudget>,
    /// `--max-broken-streams`: streams each account broke after their first byte.
    pub(crate) broken: Option<Arc<BrokenStreams>>,
    /// The running configuration's generation (0 at start-up, +1 per reload) and when it
    /// was loaded: every other counter counts from then.
    pub(crate) loaded: Option<(u64, std::time::SystemTime)>,
}

/// 401 unless the request presents `token` (see the module docs).
async fn require_token(
    State(token): State<Arc<Secret>>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    if auth::authorized(req.headers(), &token) {
        next.run(req).await
    } else {
        let (parts, body) = auth::unauthorized().into_parts();
        Response::from_parts(parts, axum::body::Body::new(body))
    }
}

/// Counters a store keeps about itself, exported next to the layer's.
pub(crate) trait StoreMetrics {
    /// `(name, help, value)` of each counter (`_total` is appended to the name).
    fn store_counters(&self) -> Vec<(&'static str, &'static str, u64)>;
}

impl StoreMetrics for tower_sticky_session::store::MemoryStore {
    fn store_counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        Vec::new()
    }
}

#[cfg(feature = "redis")]
impl StoreMetrics for tower_sticky_session::store::RedisStore {
    fn store_counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        let s = self.stats();
        vec![
            ("sticky_session_redis_calls", "Redis calls made.", s.calls),
            (
                "sticky_session_redis_timeouts",
                "Redis calls that hit their time limit.",
                s.timeouts,
            ),
            (
                "sticky_session_redis_errors",
                "Redis calls that failed for want of a connection (these count toward the breaker).",
                s.errors,
            ),
            (
                "sticky_session_redis_server_errors",
                "Redis calls answered with an error reply (OOM, READONLY, NOPERM, a script error); they fail that call only.",
                s.server_errors,
            ),
            (
                "sticky_session_redis_oom_errors",
                "Redis calls refused because Redis is full (maxmemory under noeviction).",
                s.oom_errors,
            ),
            (
                "sticky_session_redis_readonly_errors",
                "Redis writes refused by a read-only replica.",
                s.readonly_errors,
            ),
            (
                "sticky_session_redis_oom_renewals",
                "Same-account commits that renewed a binding's TTL while Redis was full.",
                s.oom_renewals,
            ),
            (
                "sticky_session_redis_near_invalidations",
                "Near-cache entries dropped on Redis's invalidation messages.",
                s.near_invalidations,
            ),
            (
                "sticky_session_redis_breaker_skips",
                "Operations that skipped Redis while the breaker was open.",
                s.breaker_skips,
            ),
            (
                "sticky_session_redis_breaker_opens",
                "Times the Redis circuit breaker opened.",
                s.breaker_opens,
            ),
            (
                "sticky_session_redis_near_hits",
                "Lookups answered by the near cache.",
                s.near_hits,
            ),
        ]
    }
}

/// How the admin listener is served: the main listener's header and idle timeouts (a
/// silent or idle connection to it is closed like one to the main port), and at most
/// [`ADMIN_MAX_CONNECTIONS`](crate::app::resources::ADMIN_MAX_CONNECTIONS) connections
/// of its own, so that nothing on it can take the proxied traffic's connections or
/// descriptors.
pub(crate) fn serve_config(main: &crate::app::ServeConfig) -> crate::app::ServeConfig {
    let mut cfg = main.clone();
    cfg.max_connections = crate::app::resources::ADMIN_MAX_CONNECTIONS;
    cfg
}

/// The admin routes over the proxy's store and counters (fixed: the tests' proxies do
/// not reload; the binary uses [`router_live`]).
/// `token`: required of every request (`--admin-token`).
#[allow(dead_code)]
pub(crate) fn router<St: InspectStore + StoreMetrics + Clone>(
    store: St,
    stats: Stats,
    token: Option<Secret>,
    proxy: ProxyMetrics,
) -> axum::Router {
    router_live(
        store,
        Arc::new(move || (stats.clone(), proxy.clone())),
        token,
        None,
    )
}

/// As [`router`], the counters read through `live` at each request, and with
/// `reload`, `POST /reload`.
pub(crate) fn router_live<St: InspectStore + StoreMetrics + Clone>(
    store: St,
    live: Live,
    token: Option<Secret>,
    reload: Option<ReloadHook>,
) -> axum::Router {
    let router = axum::Router::new()
        .route("/reload", axum::routing::post(reload_config::<St>))
        .route("/metrics", get(metrics::<St>))
        .route("/", get(status_page::<St>))
        .route("/status.json", get(status_json::<St>))
        .route("/bindings", get(inspect::<St>).delete(remove::<St>))
        .route("/bindings/count", get(count::<St>))
        .route("/accounts/{name}/bindings", delete(remove_account::<St>))
        .with_state(Admin {
            store,
            live,
            reload,
        });
    match token {
        Some(t) => router.layer(middleware::from_fn_with_state(Arc::new(t), require_token)),
        None => router,
    }
}

/// 503 for a store that failed; when Redis was skipped because its circuit breaker is
/// open (admin calls honour it), the body also says so:
/// `{"error": .., "breaker": {"open": true, "redis": "host:port", "next_probe_in_ms": n}}`.
fn store_error(e: tower_sticky_session::store::StoreError) -> Response {
    #[cfg(feature = "redis")]
    if let Some(open) = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<tower_sticky_session::store::RedisBreakerOpen>())
    {
        let body = Json(json!({
            "error": e.to_string(),
            "breaker": {
                "open": true,
                "redis": open.redis,
                "next_probe_in_ms": open.next_probe_in.as_millis() as u64,
            },
        }));
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    let body = Json(json!({ "error": e.to_string() }));
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

/// The binding key named by `?session=..&scope=..`, or why the query names none.
fn key_of(q: &HashMap<String, String>) -> Result<BindingKey, String> {
    let session = q
        .get("session")
        .ok_or_else(|| "missing query parameter: session".to_owned())?;
    let session = SessionId::new(session).map_err(|e| format!("invalid session: {e}"))?;
    let scope = q.get("scope").map(|s| Scope::from(s.clone()));
    Ok(BindingKey::new(scope, session))
}

fn bad_request(why: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": why }))).into_response()
}

async fn inspect<St: InspectStore>(
    State(admin): State<Admin<St>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let key = match key_of(&q) {
        Ok(k) => k,
        Err(why) => return bad_request(why),
    };
    match admin.store.inspect(&key).await {
        Ok(Some(b)) => Json(json!({
            "auth": b.auth.as_str(),
            "age_ms": b.age.map(|d| d.as_millis() as u64),
            "expires_in_ms": b.expires_in.map(|d| d.as_millis() as u64),
        }))
        .into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Json(json!({ "auth": null }))).into_response(),
        Err(e) => store_error(e),
    }
}

async fn remove<St: InspectStore>(
    State(admin): State<Admin<St>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let key = match key_of(&q) {
        Ok(k) => k,
        Err(why) => return bad_request(why),
    };
    match admin.store.remove(&key).await {
        Ok(removed) => {
            tracing::info!(session = %key.session().redacted(), removed = ?removed, "admin: binding removed");
            Json(json!({ "removed": removed.as_ref().map(AuthId::as_str) })).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn remove_account<St: InspectStore + Clone>(
    State(admin): State<Admin<St>>,
    Path(name): Path<String>,
) -> Response {
    let auth = AuthId::from(name);
    let walked = match remove_account_bindings(&admin.store, &auth).await {
        Ok(r) => r,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    match walked {
        Ok(n) => {
            tracing::info!(account = %auth, removed = n, "admin: account's bindings removed");
            Json(json!({ "removed": n })).into_response()
        }
        Err(e) => store_error(e),
    }
}

/// Removes every binding to `auth` (the walk of `DELETE /accounts/NAME/bindings`, also
/// run by a reload for each removed account). The walk over every binding runs on the
/// blocking pool (an in-memory store walks synchronously); a store doing I/O still has
/// the runtime through the handle. `Err`: the walk's task panicked.
pub(crate) async fn remove_account_bindings<St: InspectStore + Clone>(
    store: &St,
    auth: &AuthId,
) -> Result<Result<usize, tower_sticky_session::store::StoreError>, tokio::task::JoinError> {
    let handle = tokio::runtime::Handle::current();
    let (store, who) = (store.clone(), auth.clone());
    tokio::task::spawn_blocking(move || handle.block_on(store.remove_account(&who))).await
}

/// `POST /reload`: 200 `{"reloaded": summary}`, 400 `{"error": why}` when the new
/// configuration was refused (the running one is kept), 404 when the proxy cannot
/// reload.
async fn reload_config<St>(State(admin): State<Admin<St>>) -> Response {
    let Some(reload) = &admin.reload else {
        let body = Json(json!({ "error": "reload is not available" }));
        return (StatusCode::NOT_FOUND, body).into_response();
    };
    match reload().await {
        Ok(summary) => Json(json!({ "reloaded": summary })).into_response(),
        Err(why) => (StatusCode::BAD_REQUEST, Json(json!({ "error": why }))).into_response(),
    }
}

async fn count<St: InspectStore>(State(admin): State<Admin<St>>) -> Response {
    match admin.store.count().await {
        Ok(n) => Json(json!({ "count": n })).into_response(),
        Err(e) => store_error(e),
    }
}

/// What the status page shows (`status.rs`), from the counters `/metrics` reads.
async fn status<St: InspectStore>(admin: &Admin<St>) -> serde_json::Value {
    let bindings = admin.store.count().await.ok().flatten();
    let (stats, proxy) = (admin.live)();
    status::snapshot(&stats.snapshot(), bindings, &proxy)
}

async fn status_json<St: InspectStore>(State(admin): State<Admin<St>>) -> Response {
    let no_store = [(header::CACHE_CONTROL, "no-store")];
    (no_store, Json(status(&admin).await)).into_response()
}

async fn status_page<St: InspectStore>(State(admin): State<Admin<St>>) -> Response {
    let no_store = [(header::CACHE_CONTROL, "no-store")];
    let page = status::page(&status(&admin).await);
    (no_store, axum::response::Html(page)).into_response()
}

async fn metrics<St: InspectStore + StoreMetrics>(State(admin): State<Admin<St>>) -> Response {
    // A store that cannot count (or fails to) just leaves the gauge out.
    let entries = admin.store.count().await.ok().flatten();
    let (stats, proxy) = (admin.live)();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StatsCollector {
        snap: stats.snapshot(),
        entries,
        store: admin.store.store_counters(),
    }));
    registry.register_collector(Box::new(ProxyCollector::from(&proxy)));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// Exports one [`StatsSnapshot`] as `sticky_session_*` metrics.
#[derive(Debug)]
struct StatsCollector {
    snap: StatsSnapshot,
    entries: Option<u64>,
    store: Vec<(&'static str, &'static str, u64)>,
}

impl StatsCollector {
    fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
        let c = ConstCounter::new(v);
        let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
        c.encode(m)
    }
}

impl Collector for StatsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.snap;
        let plain = [
            (
                "sticky_session_requests",
                "Requests seen by the sticky session layer.",
                s.requests,
            ),
            (
                "sticky_session_no_session",
                "Requests without a session id.",
                s.no_session,
            ),
            (
                "sticky_session_rejected",
                "Requests answered 400 for an invalid session id (strict mode).",
                s.rejected,
            ),
            (
                "sticky_session_explicit_pins",
                "Requests that arrived with an explicit pin.",
                s.explicit_pins,
            ),
            (
                "sticky_session_lookups",
                "Binding store lookups.",
                s.lookups,
            ),
            (
                "sticky_session_hits",
                "Lookups that found a binding.",
                s.hits,
            ),
            (
                "sticky_session_misses",
                "Lookups that found none (or failed).",
                s.misses,
            ),
            (
                "sticky_session_commits",
                "Bindings committed or renewed.",
                s.commits,
            ),
            (
                "sticky_session_cleared",
                "Compare-and-delete attempts that removed a binding.",
                s.cleared,
            ),
            (
                "sticky_session_store_errors",
                "Binding store operations that failed (served unsticky).",
                s.store_errors,
            ),
        ];
        for (name, help, v) in plain.into_iter().chain(self.store.iter().copied()) {
            Self::counter(&mut enc, name, help, v)?;
        }

        let m = enc.encode_descriptor(
            "sticky_session_invalid",
            "Requests with an invalid session id, by reason.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        );
        let mut m = m?;
        for (reason, v) in s.invalid_by_reason() {
            let labels = [("reason", reason.as_str())];
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }

        let mut m = enc.encode_descriptor(
            "sticky_session_clear_attempts",
            "Compare-and-delete attempts, by reason.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, v) in s.clear_attempts_by_reason() {
            let labels = [("reason", reason.as_str())];
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }

        let mut m = enc.encode_descriptor(
            "sticky_session_sources",
            "Requests with a session id, by where it came from.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (source, v) in s.sessions_by_source() {
            let labels = [("source", source.as_str())];
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
        for (name, help, v) in [
            (
                "sticky_session_hard_pins",
                "Requests pinned by a learned previous_response_id.",
                s.hard_pins,
            ),
            (
                "sticky_session_response_ids_learned",
                "Response ids learned from successes.",
                s.response_ids_learned,
            ),
            (
                "sticky_session_response_ids_unknown",
                "previous_response_id values that were not learned.",
                s.response_ids_unknown,
            ),
            (
                "sticky_session_response_ids_not_stored",
                "Successes not learned because their request said store: false.",
                s.response_ids_not_stored,
            ),
            (
                "sticky_session_response_ids_undecodable",
                "Successes not learned because their Content-Encoding could not be decoded.",
                s.response_ids_undecodable,
            ),
            (
                "sticky_session_upgrades",
                "Upgrades (WebSockets) accepted by an account; each committed its binding.",
                s.upgrades,
            ),
        ] {
            Self::counter(&mut enc, name, help, v)?;
        }

        if let Some(n) = self.entries {
            let g = ConstGauge::new(n as i64);
            let m = enc.encode_descriptor(
                "sticky_session_bindings",
                "Live bindings in the store.",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        Ok(())
    }
}

/// A copy of [`ProxyMetrics`] taken for one scrape.
#[derive(Debug)]
struct ProxyCollector {
    /// `(account, in flight, cooling)`.
    accounts: Vec<(String, u64, bool)>,
    retries: Option<u64>,
    body: Option<BodySessionStatsSnapshot>,
    /// The WebSocket relay: open sockets, then `(name, help, counter)`.
    ws: Option<(i64, Vec<NamedCounter>)>,
    /// `(bytes in use, limit, bodies refused)` of `--max-buffered-total`.
    budget: Option<(u64, u64, u64)>,
    /// `(account, broken streams, times tripped)` of `--max-broken-streams`.
    broken: Vec<(String, u64, u64)>,
    /// The configuration's generation and when it was loaded (Unix seconds).
    loaded: Option<(u64, f64)>,
}

/// A counter for one scrape: `(name, help, value)`.
type NamedCounter = (&'static str, &'static str, u64);

impl From<&ProxyMetrics> for ProxyCollector {
    fn from(m: &ProxyMetrics) -> Self {
        let accounts = m.picker.as_ref().map_or_else(Vec::new, |p| {
            (0..p.upstreams().len())
                .map(|i| {
                    (
                        p.upstreams()[i].name().as_str().to_owned(),
                        p.in_flight(i) as u64,
                        p.cooldowns.is_cooling(i),
                    )
                })
                .collect()
        });
        Self {
            accounts,
            loaded: m.loaded.map(|(generation, at)| {
                let secs = at
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                (generation, secs)
            }),
            budget: m
                .budget
                .as_ref()
                .map(|b| (b.in_use() as u64, b.limit() as u64, b.refused())),
            broken: m
                .broken
                .as_ref()
                .map_or_else(Vec::new, |b| b.snapshot()),
            retries: m.picker.as_ref().map(|p| p.retries()),
            body: m.body.as_ref().map(BodySessionStats::snapshot),
            ws: m.picker.as_ref().map(|p| {
                use std::sync::atomic::Ordering::Relaxed;
                let w = &p.ws;
                let counters = vec![
                    ("sticky_proxy_ws_upgrades", "WebSocket upgrades accepted by an account.", w.upgrades.load(Relaxed)),
                    ("sticky_proxy_ws_upgrades_failed_over", "WebSocket upgrade attempts that failed on one account and were tried on another.", w.failed_over.load(Relaxed)),
                    ("sticky_proxy_ws_messages_up", "WebSocket messages relayed from clients to accounts.", w.messages_up.load(Relaxed)),
                    ("sticky_proxy_ws_messages_down", "WebSocket messages relayed from accounts to clients.", w.messages_down.load(Relaxed)),
                    ("sticky_proxy_ws_bytes_up", "WebSocket payload bytes relayed from clients to accounts.", w.bytes_up.load(Relaxed)),
                    ("sticky_proxy_ws_bytes_down", "WebSocket payload bytes relayed from accounts to clients.", w.bytes_down.load(Relaxed)),
                    ("sticky_proxy_ws_account_failures", "Accounts that failed inside a WebSocket (429/5xx events, overload close codes).", w.account_failures.load(Relaxed)),
                    ("sticky_proxy_ws_idle_closed", "WebSockets closed by --ws-idle-timeout.", w.idle_closed.load(Relaxed)),
                ];
                (w.open.load(Relaxed), counters)
            }),
        }
    }
}

impl Collector for ProxyCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        use prometheus_client::metrics::MetricType;
        if !self.accounts.is_empty() {
            let mut m = enc.encode_descriptor(
                "sticky_proxy_in_flight",
                "Requests in flight per account.",
                None,
                MetricType::Gauge,
            )?;
            for (name, n, _) in &self.accounts {
                ConstGauge::new(*n as i64)
                    .encode(m.encode_family(&[("account", name.as_str())])?)?;
            }
            let mut m = enc.encode_descriptor(
                "sticky_proxy_cooling",
                "1 while the account is cooling down (after a 429 or while unreachable).",
                None,
                MetricType::Gauge,
            )?;
            for (name, _, cooling) in &self.accounts {
                ConstGauge::new(i64::from(*cooling))
                    .encode(m.encode_family(&[("account", name.as_str())])?)?;
            }
        }
        if !self.broken.is_empty() {
            let mut m = enc.encode_descriptor(
                "sticky_proxy_broken_streams",
                "Streams the account broke after their first byte (body error or --idle-timeout).",
                None,
                MetricType::Counter,
            )?;
            for (name, n, _) in &self.broken {
                ConstCounter::new(*n).encode(m.encode_family(&[("account", name.as_str())])?)?;
            }
            let mut m = enc.encode_descriptor(
                "sticky_proxy_broken_stream_cooldowns",
                "Times the account broke --max-broken-streams streams in a row: those sessions unbound, the account cooled down.",
                None,
                MetricType::Counter,
            )?;
            for (name, _, n) in &self.broken {
                ConstCounter::new(*n).encode(m.encode_family(&[("account", name.as_str())])?)?;
            }
        }
        if let Some((in_use, limit, refused)) = self.budget {
            for (name, help, v) in [
                (
                    "sticky_proxy_buffered_bytes",
                    "Request body bytes reserved in --max-buffered-total now.",
                    in_use,
                ),
                (
                    "sticky_proxy_buffered_bytes_limit",
                    "--max-buffered-total.",
                    limit,
                ),
            ] {
                let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
                let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
                g.encode(m)?;
            }
            StatsCollector::counter(
                &mut enc,
                "sticky_proxy_buffer_refused",
                "Request bodies streamed through unbuffered (one attempt, sticky by header only) because --max-buffered-total was spent.",
                refused,
            )?;
        }
        if let Some((generation, at)) = self.loaded {
            let g = ConstGauge::new(i64::try_from(generation).unwrap_or(i64::MAX));
            let m = enc.encode_descriptor(
                "sticky_proxy_config_generation",
                "The running configuration: 0 as started, +1 per reload (SIGHUP, POST /reload); the other counters count from its load.",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
            let g = ConstGauge::new(at);
            let m = enc.encode_descriptor(
                "sticky_proxy_config_loaded_timestamp_seconds",
                "When the running configuration was loaded, Unix time.",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        if let Some(n) = self.retries {
            StatsCollector::counter(
                &mut enc,
                "sticky_proxy_retries",
                "Attempts that failed and were retried on another account.",
                n,
            )?;
        }
        if let Some((open, counters)) = &self.ws {
            let g = ConstGauge::new(*open);
            let m = enc.encode_descriptor(
                "sticky_proxy_ws_open",
                "WebSockets relayed right now.",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
            for (name, help, v) in counters {
                StatsCollector::counter(&mut enc, name, help, *v)?;
            }
        }
        if let Some(b) = &self.body {
            let mut m = enc.encode_descriptor(
                "sticky_session_body_requests",
                "Requests seen by the JSON-body session reader, by outcome.",
                None,
                MetricType::Counter,
            )?;
            for (outcome, v) in [
                ("header_session", b.header_session),
                ("empty", b.empty),
                ("not_json", b.not_json),
                ("too_large", b.too_large),
                ("error", b.errors),
                ("invalid_json", b.invalid_json),
                ("scanned", b.scanned),
            ] {
                ConstCounter::new(v).encode(m.encode_family(&[("outcome", outcome)])?)?;
            }
            let mut m = enc.encode_descriptor(
                "sticky_session_body_sessions",
                "Scanned bodies by the field their session id came from (none: no session).",
                None,
                MetricType::Counter,
            )?;
            for (field, v) in b.found.iter().copied().chain([("none", b.no_session)]) {
                ConstCounter::new(v).encode(m.encode_family(&[("field", field)])?)?;
            }
        }
        Ok(())
    }
}
