//! Reload without a restart: on SIGHUP, or an admin `POST /reload` (same admin token
//! rule), the proxy re-reads its configuration — the `--config` file, the command line
//! over it as at start-up, and every key and token variable it names — and builds a new
//! proxy beside the running one.
//!
//! - The served service reads the running proxy once per request (an [`ArcSwap`] load):
//!   a request, its response stream and its WebSocket finish on the configuration they
//!   started with; the next request gets the new one. Nothing is drained or restarted;
//!   the listeners, their connections and the binding store stay.
//! - What changes: accounts added, removed or re-keyed (a key variable named anew),
//!   client tokens and tenants, session and scope headers, failover, timeouts inside a
//!   request, body limits. A kept account keeps its cooldown.
//! - Bindings to a removed account are dropped (the walk of the admin's `DELETE
//!   /accounts/NAME/bindings`). A request that began before the reload may still bind a
//!   session to it afterwards: that pin names no configured account, so the next request
//!   of the session goes round-robin and rebinds.
//! - Kept until a restart (logged): the listen and admin addresses, the admin token, the
//!   store (`ttl`, `max_sessions`, `redis*`), the connection limits and timeouts
//!   (`header_timeout`, `conn_idle_timeout`, `max_connections`, `max_streams`,
//!   `workers`) and
//!   `grace`.
//! - A file or variable that does not make a valid configuration leaves the running one
//!   untouched: the reason is logged (`error` level) and is the admin's answer (400).
//! - The sticky layer's and the proxy's counters belong to one configuration: after a
//!   reload `/metrics` and the status page count from zero (Prometheus' `rate()` reads
//!   that as a counter reset).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use clap::ArgMatches;
use http::Request;
use hyper::body::Incoming;
use tower::{Service, ServiceExt, util::Oneshot};
use tower_sticky_session::AuthId;
use tower_sticky_session::store::InspectStore;

use crate::admin::{self, ProxyMetrics};
use crate::app::{self, App, ProxyService, Upstream};
use crate::{Cli, config};

/// Where a reload reads its configuration: the command line as given (before the file),
/// and the demo's accounts when the proxy runs them.
pub(crate) struct Source {
    /// The command line without the file's values.
    pub(crate) base: Cli,
    pub(crate) matches: ArgMatches,
    /// The demo accounts, used when the configuration names none.
    pub(crate) demo: Option<Vec<Upstream>>,
    /// The command line with the file's values, as the running proxy was built from.
    pub(crate) applied: Cli,
}

/// A proxy built from one configuration.
pub(crate) struct Running<St: InspectStore> {
    pub(crate) app: App<St>,
    /// 0 as started, +1 per reload.
    generation: u64,
    loaded_at: SystemTime,
}

/// The running proxy and how to replace it.
pub(crate) struct Reloader<St: InspectStore> {
    source: Source,
    store: St,
    current: Arc<ArcSwap<Running<St>>>,
    /// What the running proxy was built from.
    applied: std::sync::Mutex<Cli>,
    /// One reload at a time.
    one: tokio::sync::Mutex<()>,
}

impl<St: InspectStore + Clone> Reloader<St> {
    pub(crate) fn new(source: Source, store: St, app: App<St>) -> Arc<Self> {
        let applied = std::sync::Mutex::new(source.applied.clone());
        Arc::new(Self {
            source,
            store,
            current: Arc::new(ArcSwap::from_pointee(Running {
                app,
                generation: 0,
                loaded_at: SystemTime::now(),
            })),
            applied,
            one: tokio::sync::Mutex::new(()),
        })
    }

    /// The running proxy.
    pub(crate) fn current(&self) -> Arc<Running<St>> {
        self.current.load_full()
    }

    /// The service to serve: each request goes to the proxy running when it arrived.
    pub(crate) fn service(&self) -> Swapped<St> {
        Swapped(self.current.clone())
    }

    /// The running proxy's counters, for the admin listener.
    pub(crate) fn live(&self) -> admin::Live {
        let current = self.current.clone();
        Arc::new(move || {
            let running = current.load();
            let app = &running.app;
            (
                app.stats.clone(),
                ProxyMetrics {
                    picker: Some(app.picker.clone()),
                    body: app.body_stats.clone(),
                    budget: Some(app.budget.clone()),
                    broken: Some(app.broken.clone()),
                    loaded: Some((running.generation, running.loaded_at)),
                },
            )
        })
    }

    /// `POST /reload` for the admin listener.
    pub(crate) fn hook(self: &Arc<Self>) -> admin::ReloadHook {
        let this = self.clone();
        Arc::new(move || {
            let this = this.clone();
            Box::pin(async move { this.reload("admin POST /reload").await })
        })
    }

    /// Re-reads the configuration and, if it is valid, serves it from the next request
    /// on. `Ok`: what changed; `Err`: why nothing did. Both are logged.
    pub(crate) async fn reload(&self, why: &str) -> Result<String, String> {
        let _one = self.one.lock().await;
        let result = self.try_reload().await;
        match &result {
            Ok(summary) => tracing::info!(trigger = why, "configuration reloaded: {summary}"),
            Err(e) => tracing::error!(
                trigger = why,
                "reload refused, the running configuration is kept: {e}"
            ),
        }
        result
    }

    async fn try_reload(&self) -> Result<String, String> {
        let mut cli = self.source.base.clone();
        if let Some(path) = &cli.config.clone() {
            config::load(path)
                .and_then(|file| file.apply(&mut cli, &self.source.matches))
                .map_err(|msg| format!("--config {msg}"))?;
        }
        let upstreams = match (&self.source.demo, cli.upstreams.is_empty()) {
            (_, false) => cli.upstreams.clone(),
            (Some(demo), true) => demo.clone(),
            (None, true) => return Err("the configuration names no account".into()),
        };
        let secrets = crate::read_secrets(&cli)?;
        let cfg = crate::proxy_config(&cli, upstreams, secrets)?;
        let app = app::build(&cfg, self.store.clone()).map_err(|e| e.to_string())?;

        // Kept accounts keep their cooldowns.
        let running = self.current.load_full();
        let old = &running.app;
        for (i, up) in old.picker.upstreams().iter().enumerate() {
            if let (Some(d), Some(why), Some(j)) = (
                old.picker.cooldowns.remaining(i),
                old.picker.cooldowns.reason(i),
                index_of(app.picker.upstreams(), up.name()),
            ) {
                app.picker.cool(j, d, why);
            }
        }
        let tokens = cfg.client_tokens.len();
        let generation = running.generation + 1;
        self.current.store(Arc::new(Running {
            app,
            generation,
            loaded_at: SystemTime::now(),
        }));

        let previous = std::mem::replace(
            &mut *self.applied.lock().unwrap_or_else(|e| e.into_inner()),
            cli.clone(),
        );
        let old_names: Vec<&AuthId> = old.picker.upstreams().iter().map(Upstream::name).collect();
        let new_names: Vec<&AuthId> = cfg.upstreams.iter().map(Upstream::name).collect();
        let added: Vec<&str> = new_names
            .iter()
            .filter(|n| !old_names.contains(n))
            .map(|n| n.as_str())
            .collect();
        let removed: Vec<&AuthId> = old_names
            .iter()
            .filter(|n| !new_names.contains(n))
            .copied()
            .collect();
        let key_var = |c: &Cli, name: &str| {
            c.upstream_keys
                .iter()
                .rev()
                .find(|k| k.account == name)
                .map(|k| k.var.clone())
        };
        let rekeyed: Vec<&str> = new_names
            .iter()
            .filter(|n| old_names.contains(n))
            .map(|n| n.as_str())
            .filter(|n| key_var(&previous, n) != key_var(&cli, n))
            .collect();

        let mut summary = format!(
            "generation {generation}: {} account(s), {tokens} client token(s)",
            new_names.len()
        );
        if !added.is_empty() {
            let _ = write!(summary, "; added: {}", added.join(", "));
        }
        if !rekeyed.is_empty() {
            let _ = write!(summary, "; key variable changed: {}", rekeyed.join(", "));
        }
        for name in removed {
            let dropped = match admin::remove_account_bindings(&self.store, name).await {
                Ok(Ok(n)) => format!("{n} binding(s) dropped"),
                Ok(Err(e)) => format!("its bindings could not be dropped: {e}"),
                Err(e) => format!("its bindings could not be dropped: {e}"),
            };
            let _ = write!(summary, "; removed: {name} ({dropped})");
        }
        let kept = restart_only(&previous, &cli);
        if !kept.is_empty() {
            tracing::warn!(
                settings = %kept.join(", "),
                "changed settings that take effect only after a restart; the running values are kept"
            );
            let _ = write!(summary, "; kept until a restart: {}", kept.join(", "));
        }
        Ok(summary)
    }
}

fn index_of(ups: &[Upstream], name: &AuthId) -> Option<usize> {
    ups.iter().position(|u| u.name() == name)
}

/// The settings a reload cannot change that differ between `old` and `new`.
fn restart_only(old: &Cli, new: &Cli) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("listen", old.listen != new.listen);
    check("admin", old.admin != new.admin);
    check("admin_token_env", old.admin_token != new.admin_token);
    check("ttl", old.ttl != new.ttl);
    check("max_sessions", old.max_sessions != new.max_sessions);
    check(
        "redis",
        old.redis != new.redis || old.redis_env != new.redis_env,
    );
    check(
        "redis_near_cache",
        old.redis_near_cache != new.redis_near_cache || old.redis_near_ttl != new.redis_near_ttl,
    );
    check("header_timeout", old.header_timeout != new.header_timeout);
    check(
        "conn_idle_timeout",
        old.conn_idle_timeout != new.conn_idle_timeout,
    );
    check(
        "max_connections",
        old.max_connections != new.max_connections,
    );
    check("max_streams", old.max_streams != new.max_streams);
    check("workers", old.workers != new.workers);
    check("grace", old.grace != new.grace);
    changed
}

/// Reloads on every SIGHUP until the process ends (Unix; elsewhere only `POST /reload`).
pub(crate) async fn on_sighup<St: InspectStore + Clone>(reloader: Arc<Reloader<St>>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reload only through the admin listener");
            return;
        };
        while hup.recv().await.is_some() {
            let _ = reloader.reload("SIGHUP").await;
        }
    }
    #[cfg(not(unix))]
    drop(reloader);
}

/// The served service: each request is handed to the proxy running when it arrived, and
/// stays with it to its end.
pub(crate) struct Swapped<St: InspectStore>(Arc<ArcSwap<Running<St>>>);

impl<St: InspectStore> Clone for Swapped<St> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<St> Service<Request<Incoming>> for Swapped<St>
where
    St: InspectStore + Clone,
    ProxyService<St>: Service<Request<Incoming>> + Clone,
{
    type Response = <ProxyService<St> as Service<Request<Incoming>>>::Response;
    type Error = <ProxyService<St> as Service<Request<Incoming>>>::Error;
    type Future = Oneshot<ProxyService<St>, Request<Incoming>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Readiness is the running proxy's, asked by `Oneshot` in the call.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        self.0.load().app.service.clone().oneshot(req)
    }
}
