//! The reusable part of the example proxy: no command line, no demo. `app.rs` is the
//! wiring; each concern has its own module beside it.
//!
//! ```text
//! client ─▶ ClientAuth ─▶ StickySessionLayer ─▶ Failover ─▶ account 1..n (pooled connections)
//!           (auth.rs)                            (failover.rs: picker.rs, cooldown.rs,
//!                                                 timeouts.rs, pool.rs; keys from keys.rs)
//! ```
//!
//! - [`hygiene`]: requests never forwarded (CONNECT, TRACE, `OPTIONS *`, dot-segments),
//!   refused first.
//! - [`auth`]: `--client-token` (401 before anything else runs), one token per tenant;
//!   sets the request's [`auth::Tenant`], which scopes its bindings.
//! - The sticky layer reads the session, looks up its binding (`PinnedAuth`) and judges
//!   the response it gets back: it sits *outside* failover and timeouts, so it sees the
//!   account that finally served (`ServedBy`) and every failure as that account's.
//! - [`failover`]: tries accounts (pin first unless cooling down or overloaded, then
//!   accounts not yet tried), each attempt under `--upstream-timeout` until its first data
//!   chunk; retries only while no response byte reached the client.
//! - [`picker`]: order of accounts, in-flight counts, `--max-load-factor`;
//!   [`cooldown`]: 429/unreachable accounts are skipped for a while;
//!   [`broken`]: an account that breaks `--max-broken-streams` streams in a row after
//!   their first byte loses those sessions and cools down.
//! - [`pool`]: each worker's idle HTTP/1.1 connections to the `http://` accounts, one
//!   list per account; `https://` accounts and WebSocket upgrades use hyper-util's client.
//! - [`timeouts`]: the first-chunk peek, the client's body under `--idle-timeout` and
//!   `--body-timeout`.
//! - [`budget`]: `--max-buffered-total`, one budget for buffered request bodies.
//! - [`resources`]: descriptors, and local resource errors that are nobody's account's.
//! - [`keys`]: account keys from the environment, URL redaction.
//! - [`logfmt`]: the log line format, the default one written for less.
//! - [`serve`]: the hardened HTTP/1 + HTTP/2 accept loop.
//! - [`ws`]: WebSocket upgrades, failed over before the `101`, relayed after it.

#[path = "auth.rs"]
pub(crate) mod auth;
#[path = "broken.rs"]
pub(crate) mod broken;
#[path = "budget.rs"]
pub(crate) mod budget;
#[path = "cooldown.rs"]
pub(crate) mod cooldown;
#[path = "failover.rs"]
pub(crate) mod failover;
#[path = "gathered.rs"]
pub(crate) mod gathered;
#[path = "handoff.rs"]
pub(crate) mod handoff;
#[path = "hygiene.rs"]
pub(crate) mod hygiene;
#[path = "keys.rs"]
pub(crate) mod keys;
#[path = "logfmt.rs"]
pub(crate) mod logfmt;
#[path = "picker.rs"]
pub(crate) mod picker;
#[path = "pool.rs"]
pub(crate) mod pool;
#[path = "resources.rs"]
pub(crate) mod resources;
#[path = "serve.rs"]
pub(crate) mod serve;
#[path = "timeouts.rs"]
pub(crate) mod timeouts;
#[path = "ws.rs"]
pub(crate) mod ws;

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use tower::Layer;
use tower::util::Either;
use tower_sticky_session::body_session::{
    BodySessionStats, BufferedBody, SessionFromBody, SessionFromBodyLayer,
};
use tower_sticky_session::{
    AuthId, SessionId, Stats, StickySession, StickySessionLayer, store::BindingStore,
};

pub(crate) use self::budget::BufferBudget;
pub(crate) use self::failover::FailoverConfig;
pub(crate) use self::keys::redact_url;
pub(crate) use self::serve::{Drained, ServeConfig, serve};

use self::auth::{ClientAuth, ClientToken, Tenant};
use self::broken::BrokenStreams;
use self::budget::{Budgeted, ReadUnlessRefused};
use self::failover::Failover;
use self::picker::Picker;
use self::resources::ProxyClassifier;
use self::timeouts::{ClientBody, ClientBodyTimeout};

/// The response header that names the account that served a request.
pub(crate) const X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

type BoxError = Box<dyn StdError + Send + Sync>;

/// One upstream account: a name (what bindings and `x-served-by` refer to) and a base URL.
#[derive(Clone)]
pub(crate) struct Upstream {
    name: AuthId,
    header: HeaderValue,
    scheme: Scheme,
    authority: http::uri::Authority,
    /// `Host` for a request to the account: the authority without a default port, as
    /// hyper-util's client writes it.
    host: HeaderValue,
    /// Where to connect: the scheme and authority, with the path `/`.
    origin: Uri,
    /// The base URL's path without its trailing `/` ("" for the root).
    prefix: String,
    /// The header carrying the account's key (value marked sensitive), if it has one.
    key: Option<(HeaderName, HeaderValue)>,
}

impl Upstream {
    /// An account `name` served at `url` (`http://` or `https://`, optionally with a path
    /// prefix that is put in front of every proxied path).
    pub(crate) fn new(name: &str, url: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("the account name is empty".into());
        }
        let header = HeaderValue::from_str(name)
            .ok()
            .filter(|_| name.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| format!("account name {name:?} must be visible ASCII without spaces"))?;
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid URL {:?}: {e}", redact_url(url)))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => {
                return Err(format!(
                    "URL {:?} must start with http:// or https://",
                    redact_url(url)
                ));
            }
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("URL {:?} has no host", redact_url(url)))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "URL {:?}: credentials in the URL are not supported",
                redact_url(url)
            ));
        }
        if uri.query().is_some() {
            return Err(format!(
                "URL {:?}: a query string is not supported in an upstream URL",
                redact_url(url)
            ));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let default_port = if scheme == Scheme::HTTP { 80 } else { 443 };
        // As hyper-util's client: the port only when it parses and is not the default.
        let host = match authority.port_u16() {
            Some(p) if p != default_port => authority.as_str(),
            _ => authority.host(),
        };
        let host = HeaderValue::from_str(host)
            .map_err(|_| format!("URL {:?}: the host is not a header value", redact_url(url)))?;
        let origin = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("invalid URL {:?}: {e}", redact_url(url)))?;
        Ok(Self {
            name: AuthId::from(name),
            header,
            scheme,
            authority,
            host,
            origin,
            prefix,
            key: None,
        })
    }

    /// The account sends `key` (e.g. `authorization: Bearer …`) with every request, in
    /// place of the client's `authorization` and `x-api-key`.
    pub(crate) fn with_key(mut self, key: (HeaderName, HeaderValue)) -> Self {
        self.key = Some(key);
        self
    }

    /// Puts the account's own key, if it has one, in place of every credential header
    /// the client sent (`authorization`, `x-api-key`, `x-goog-api-key`).
    pub(crate) fn apply_key(&self, headers: &mut HeaderMap) {
        if let Some((name, value)) = &self.key {
            headers.remove(header::AUTHORIZATION);
            headers.remove(auth::X_API_KEY);
            headers.remove(auth::X_GOOG_API_KEY);
            headers.insert(name.clone(), value.clone());
        }
    }

    /// The account's name as a header value (`x-served-by`).
    pub(crate) fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// The account's name.
    pub(crate) fn name(&self) -> &AuthId {
        &self.name
    }

    /// Whether the account is a plain `http://` one (served by [`pool`]'s connections).
    pub(crate) fn is_plain_http(&self) -> bool {
        self.scheme == Scheme::HTTP
    }

    /// `Host` for a request to the account.
    pub(crate) fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Where to connect to reach the account (scheme and authority; path `/`).
    pub(crate) fn origin(&self) -> &Uri {
        &self.origin
    }

    /// The target of a request for `original` on a connection of the account's own:
    /// origin-form (`/path?query`, behind the URL's path prefix).
    pub(crate) fn origin_target(&self, original: &Uri) -> Result<Uri, http::Error> {
        Ok(if self.prefix.is_empty() {
            // The client's own path and query, shared, not copied: parsed and checked
            // once already, when the request was.
            Uri::from(
                original
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            )
        } else {
            let pq = original.path_and_query().map_or("/", PathAndQuery::as_str);
            Uri::from(PathAndQuery::try_from(format!("{}{pq}", self.prefix))?)
        })
    }

    /// The URL a request for `path_and_query` goes to.
    pub(crate) fn target(&self, original: &Uri) -> Result<Uri, http::Error> {
        let pq = original.path_and_query().map_or("/", PathAndQuery::as_str);
        let pq = if self.prefix.is_empty() {
            PathAndQuery::try_from(pq)?
        } else {
            PathAndQuery::try_from(format!("{}{pq}", self.prefix))?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.key.is_some() { ", key ***" } else { "" };
        write!(f, "Upstream({}={self}{key})", self.name)
    }
}

/// What [`build`] needs to know.
#[derive(Clone, Debug)]
pub(crate) struct ProxyConfig {
    /// The accounts, in round-robin order. Names must be unique.
    pub(crate) upstreams: Vec<Upstream>,
    /// Session id headers, in priority order (at least one).
    pub(crate) session_headers: Vec<HeaderName>,
    /// If set, bindings are scoped by this header's value (e.g. provider or model).
    pub(crate) scope_header: Option<HeaderName>,
    /// Every proxied request must present one of these tokens (`--client-token`); each
    /// belongs to a tenant. With two tenants or more, bindings are scoped per tenant.
    pub(crate) client_tokens: Vec<ClientToken>,
    /// Attempts, cooldown, timeouts, replay buffer.
    pub(crate) failover: FailoverConfig,
    /// `--max-load-factor`: pins to an account above F × the mean load (+1) move.
    pub(crate) max_load_factor: Option<f64>,
    /// Read session ids from JSON request bodies (off: `--no-body-session`).
    pub(crate) body_session: bool,
    /// `--fingerprint`: a JSON body with no other session signal is sticky by a hash of
    /// its conversation's opening, within the tenant's scope (needs `body_session`).
    pub(crate) fingerprint: bool,
    /// `--body-timeout`: the whole request body must arrive within this time of its head.
    pub(crate) body_timeout: Duration,
    /// `--max-buffered-total`: request body bytes buffered at once, all requests together.
    pub(crate) max_buffered_total: usize,
}

impl ProxyConfig {
    /// `upstreams` with the command line's defaults: the known clients' session headers
    /// ([`KNOWN_CLIENT_HEADERS`](tower_sticky_session::KNOWN_CLIENT_HEADERS)), no
    /// scope, no client token, 3 attempts, 10 s cooldown, 60 s upstream timeout, 300 s
    /// idle timeout, 60 s body timeout, 16 MiB replay buffer, 3 broken streams in a row
    /// unbind an account's sessions, 256 MiB for all buffered
    /// bodies, no load factor, session ids read from JSON bodies, no fingerprint.
    pub(crate) fn new(upstreams: Vec<Upstream>) -> Self {
        Self {
            upstreams,
            session_headers: tower_sticky_session::KNOWN_CLIENT_HEADERS.to_vec(),
            scope_header: None,
            client_tokens: Vec::new(),
            failover: FailoverConfig {
                attempts: 3,
                cooldown: Duration::from_secs(10),
                upstream_timeout: Duration::from_secs(60),
                idle_timeout: Duration::from_secs(300),
                max_body_buffer: 16 * 1024 * 1024,
                max_broken_streams: 3,
                ws: ws::WsConfig::default(),
                workers: 1,
            },
            max_load_factor: None,
            body_session: true,
            fingerprint: false,
            body_timeout: Duration::from_secs(60),
            max_buffered_total: 256 * 1024 * 1024,
        }
    }
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1, including those the `Connection`
/// header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most heads carry none of them, or only `transfer-encoding`: one pass over the names
    // present finds which, and only those are removed (each removal hashes its name).
    let mut present = [false; HOP_BY_HOP.len()];
    let mut any = false;
    for name in headers.keys() {
        if let Some(k) = hop_by_hop_index(name) {
            present[k] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    if present[0] {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

/// `name`'s place in [`HOP_BY_HOP`], if it is one of them: a match on the (lowercase)
/// name, which compiles to a switch on its length, instead of nine comparisons.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// The headers hop-by-hop by themselves (others are by being named in `Connection`, the
/// first). A `static`: a `const` array of header names is built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A request's session id for the log: redacted, or `-` without one.
#[derive(Clone, Copy)]
pub(crate) struct LogSession<'a>(Option<&'a SessionId>);

impl fmt::Display for LogSession<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => fmt::Display::fmt(&id.redacted(), f),
            None => f.write_str("-"),
        }
    }
}

/// An error and its sources, on one line.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// The sticky-session layer around failover, for request bodies of type `B`.
pub(crate) type Sticky<St, B> = StickySession<Failover<St, B>, St, ProxyClassifier>;

/// The JSON-body session reader in front of the sticky layer, skipped by a request whose
/// body the budget refused.
pub(crate) type Reader<St> = ReadUnlessRefused<
    SessionFromBody<Sticky<St, BufferedBody<ClientBody>>>,
    Sticky<St, BufferedBody<ClientBody>>,
>;

/// The whole proxy service: client authentication, the request body's `--idle-timeout`
/// and `--body-timeout`, its place in `--max-buffered-total`, then (unless
/// `--no-body-session`) the JSON-body session reader, then the sticky-session layer
/// around failover.
pub(crate) type ProxyService<St> =
    ClientAuth<ClientBodyTimeout<Budgeted<Either<Reader<St>, Sticky<St, ClientBody>>>>>;

/// The built proxy: its service and the sticky layer's counters.
pub(crate) struct App<St: BindingStore> {
    /// Serve it with [`serve`] (it is `Clone`; each connection gets a clone).
    pub(crate) service: ProxyService<St>,
    /// The sticky layer's counters.
    pub(crate) stats: Stats,
    /// The account picker (in-flight counts, cooldowns).
    pub(crate) picker: Arc<Picker>,
    /// The JSON-body session reader's counters, when it runs.
    pub(crate) body_stats: Option<BodySessionStats>,
    /// `--max-buffered-total`'s counter.
    pub(crate) budget: BufferBudget,
    /// `--max-broken-streams`: streams each account broke after their first byte.
    pub(crate) broken: Arc<BrokenStreams>,
}

/// Builds the proxy for `cfg` with its bindings in `store`.
pub(crate) fn build<St: BindingStore + Clone>(
    cfg: &ProxyConfig,
    store: St,
) -> Result<App<St>, BoxError> {
    if cfg.upstreams.is_empty() {
        return Err("at least one upstream is required".into());
    }
    for (i, up) in cfg.upstreams.iter().enumerate() {
        if cfg.upstreams[..i].iter().any(|u| u.name == up.name) {
            return Err(format!("account name {:?} is used twice", up.name.as_str()).into());
        }
    }
    if cfg.session_headers.is_empty() {
        return Err("at least one session header is required".into());
    }
    if cfg.fingerprint && !cfg.body_session {
        return Err(
            "--fingerprint reads request bodies: it cannot go with --no-body-session".into(),
        );
    }
    auth::check_tokens(&cfg.client_tokens)?;
    if cfg.failover.max_body_buffer > cfg.max_buffered_total {
        return Err(format!(
            "--max-body-buffer ({}) is larger than --max-buffered-total ({}): no body could \
             ever be buffered whole",
            cfg.failover.max_body_buffer, cfg.max_buffered_total
        )
        .into());
    }
    let mut layer = StickySessionLayer::with_store(store.clone())
        .headers(cfg.session_headers.clone())
        .classifier(ProxyClassifier::default());
    // With two tenants or more, every scope starts with the request's tenant (set by
    // ClientAuth, which runs first); with one tenant or none, scopes are as they were.
    let per_tenant = auth::tenant_count(&cfg.client_tokens) > 1;
    let scope_header = cfg.scope_header.clone();
    if per_tenant || scope_header.is_some() {
        layer = layer.scope_fn(move |parts| {
            let tenant = per_tenant
                .then(|| parts.extensions.get::<Tenant>())
                .flatten();
            let value = scope_header.as_ref().and_then(|h| parts.headers.get(h));
            auth::tenant_scope(tenant, value)
        });
    }
    let picker = Arc::new(Picker::new(cfg.upstreams.clone(), cfg.max_load_factor));
    let broken = Arc::new(BrokenStreams::new(
        picker.clone(),
        store.clone(),
        cfg.failover.max_broken_streams,
        cfg.failover.cooldown,
    ));
    let stats = layer.stats();
    let mut body_stats = None;
    let stack = if cfg.body_session {
        // A learned `previous_response_id` pins (hard) to the account that created it:
        // the pin needs the body reader's signals, so learning goes with it.
        let layer = layer.learn_response_ids(true);
        // Bodies up to --max-body-buffer are read once, for session fields; failover
        // replays the same buffer (a body buffered whole is one `Bytes`, never copied).
        let body = SessionFromBodyLayer::new()
            .headers(cfg.session_headers.clone())
            .max_buffer(cfg.failover.max_body_buffer)
            // Scoped like every binding: per tenant when there are several.
            .fingerprint(cfg.fingerprint);
        body_stats = Some(body.stats().clone());
        let failover = Failover::new(picker.clone(), store, broken.clone(), cfg.failover.clone())?;
        let sticky = layer.layer(failover);
        Either::Left(ReadUnlessRefused::new(body.layer(sticky.clone()), sticky))
    } else {
        let failover = Failover::new(picker.clone(), store, broken.clone(), cfg.failover.clone())?;
        Either::Right(layer.layer(failover))
    };
    let budget = BufferBudget::new(cfg.max_buffered_total);
    let stack = Budgeted::new(stack, budget.clone(), cfg.failover.max_body_buffer);
    Ok(App {
        stats,
        service: ClientAuth::new(
            ClientBodyTimeout::new(stack, cfg.failover.idle_timeout, cfg.body_timeout),
            cfg.client_tokens.clone(),
        ),
        picker,
        body_stats,
        budget,
        broken,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hop_by_hop_match_and_table_agree() {
        for (k, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(k), "{name}");
        }
        for name in ["content-type", "session-id", "x-keep-alive", "tee"] {
            assert_eq!(hop_by_hop_index(&HeaderName::from_static(name)), None);
        }
    }
}
