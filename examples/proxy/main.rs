//! A sticky-session reverse proxy in front of several accounts of one API.
//!
//! Demo (three in-process accounts that stream server-sent events, proxy on
//! 127.0.0.1:8080; it prints curl commands to try):
//!
//! ```text
//! cargo run --example proxy
//! ```
//!
//! In front of real upstreams, one `--upstream NAME=URL` per account, each account's key
//! read from an environment variable:
//!
//! ```text
//! export OPENAI_KEY_1=sk-... OPENAI_KEY_2=sk-... PROXY_TOKEN=$(openssl rand -hex 16)
//! RUST_LOG=info cargo run --example proxy -- \
//!     --listen 127.0.0.1:8080 \
//!     --upstream acct-1=https://api.openai.com --upstream-key acct-1=OPENAI_KEY_1 \
//!     --upstream acct-2=https://api.openai.com --upstream-key acct-2=OPENAI_KEY_2 \
//!     --client-token PROXY_TOKEN
//! ```
//!
//! - `--config FILE`: every setting below from a TOML file (accounts with their key
//!   variables as `[[account]] name, url, key_env`, client tokens as `[[client_token]]
//!   tenant, env`, every other flag under its own name with `_` for `-`; see
//!   `config.rs`). A flag on the command line wins; a list flag replaces the file's list
//!   (`--upstream-key` sets one account's key over the file's). An unknown key, a bad
//!   value or a secret where a variable's name belongs: exit 2 with `FILE:LINE:COLUMN`,
//!   the value never shown.
//! - Routing: a request whose session header (the first of `--session-header` present;
//!   default: the headers known clients send, `KNOWN_CLIENT_HEADERS`) names a bound session goes to the bound account, unless that
//!   account is cooling down or (with `--max-load-factor F`) overloaded; any other request
//!   goes round-robin (command-line order, one counter). Without a session header, a
//!   session field of a JSON body (`prompt_cache_key`, `metadata.user_id`, …; off with
//!   `--no-body-session`) is used; a `previous_response_id` the proxy saw being created
//!   pins hard to its account (never failed over). `--fingerprint`: a JSON body with
//!   none of these is sticky by a hash of its conversation's opening (identical openings
//!   of one tenant share an account). `x-served-by: NAME` names the account that served.
//! - Failover (`--attempts N`, default 3): a 429/5xx, an unreachable account, no response
//!   head or first data chunk within `--upstream-timeout`, or a body that ends before its
//!   first chunk: the request is tried on an account not yet tried, as long as no byte of
//!   the response reached the client. Bodies up to `--max-body-buffer` are replayed; a
//!   larger one gets one attempt. An account that answered 429 is skipped for its
//!   `retry-after` (default `--cooldown`, 10 s); an unreachable one likewise.
//! - Broken streams (`--max-broken-streams N`, default 3; 0: off): an account whose
//!   streams break after their first byte N times in a row (the body fails or falls
//!   silent past `--idle-timeout`) loses those N sessions' bindings (compare-and-delete)
//!   and cools down for `--cooldown`; a stream that ends cleanly resets the count, and a
//!   stream the proxy ends itself (client gone, client not reading, drain) does not
//!   count. One such break alone keeps the binding.
//! - A session is bound once the account's response is a success and its body delivered a
//!   first chunk; a failure of the account unbinds it (compare-and-delete).
//! - Keys: `--upstream-key NAME=ENV_VAR` (missing or empty variable: exit 2), sent as
//!   `authorization: Bearer KEY` or `--key-header HEADER`; the client's `authorization` and
//!   `x-api-key` are not forwarded to an account with a key. Keys and URL credentials
//!   never appear in logs, metrics, admin answers, errors or response headers.
//! - Clients: `--client-token ENV_VAR` requires the token as `authorization: Bearer
//!   TOKEN`, `x-api-key: TOKEN`, `x-goog-api-key: TOKEN` or `?key=TOKEN` (else 401,
//!   nothing forwarded); whichever carried it is removed before forwarding. Two of one
//!   credential (two `authorization` headers, two `key` parameters, …): 400. Tenants:
//!   `--client-token TENANT=ENV_VAR` (repeatable; plain `ENV_VAR` is the tenant
//!   `default`; several tokens per tenant allowed) or `--client-tokens-file FILE` (lines
//!   `TENANT=ENV_VAR`); with two tenants or more every binding and learned response id is
//!   the tenant's own (scope `TENANT` or `TENANT/SCOPE-HEADER-VALUE`). A malformed request
//!   body gets 400 and no binding is touched.
//! - Never forwarded (refused before the token check): `CONNECT` and `TRACE` (405),
//!   `OPTIONS *` (400), a path with a `.` or `..` segment, also percent-encoded (400:
//!   refused, not normalised, so a path never climbs out of an account's URL prefix).
//! - Timeouts: `--upstream-timeout` (60 s), `--idle-timeout` (300 s, silence inside a
//!   response body, and inside a client's request body: then 400; also a client that
//!   does not read its response that long: the upstream request is cancelled and the
//!   connection closed), `--header-timeout` (30 s, any connection without a complete
//!   request head, whatever its protocol; on HTTP/1 keep-alive also the next head after
//!   an exchange), `--conn-idle-timeout` (60 s, a connection with
//!   no open request or stream: closed, GOAWAY for HTTP/2), `--body-timeout` (60 s for a
//!   whole request body: then 408 and the connection is closed).
//! - Limits: `--max-connections` (10 000, lowered at start-up to what the descriptor
//!   limit fits: the soft RLIMIT_NOFILE is raised to the hard one, 2 descriptors per
//!   connection are counted), `--max-streams` (100 per HTTP/2 connection),
//!   `--workers` (threads serving connections, one per CPU: see below),
//!   `--max-buffered-total` (256 MiB of request bodies buffered, all requests together:
//!   a body beyond it streams through with one attempt; must be at least
//!   `--max-body-buffer`), HTTP/2 keep-alive pings, 64 KiB write buffers per connection.
//!   Running out of descriptors or memory on the way to an account is the proxy's own
//!   failure: 503 with `retry-after: 1`, no account cooled down or unbound.
//! - WebSockets (`GET` with `Upgrade: websocket`, e.g. Codex's Responses WebSocket): sticky
//!   and failed over before the `101` like any request, then relayed message by message
//!   (`--ws-idle-timeout`, 300 s; `--ws-max-message`, 16 MiB); an account's 429/5xx event
//!   or overload close inside the socket unbinds the session; `response.created` ids are
//!   learned (see `ws.rs`). Each socket counts against `--max-connections` while open.
//! - `--scope-header NAME` keeps separate bindings per value of that header (e.g. a model).
//! - `--redis URL` (or `--redis-env ENV_VAR`, the URL read from that variable, out of
//!   `ps`) keeps the bindings in Redis, shared by every replica that names the same
//!   server (e.g. `redis://127.0.0.1:6379`; a Cluster as `redis+cluster://h1:p1,h2:p2`, a
//!   primary behind Sentinel as `redis+sentinel://s1:p1,s2:p2/master-name`). Redis down or slow: requests are served
//!   without stickiness, never failed; sharing resumes when it is back. `--max-sessions`
//!   applies to the in-memory store only (Redis bounds memory with its own `maxmemory`).
//! - `--admin ADDR` serves metrics and binding control on a second listener (see
//!   `admin.rs`): `GET /metrics`, `GET|DELETE /bindings?session=S[&scope=X]`,
//!   `GET /bindings/count`, `DELETE /accounts/NAME/bindings`, `POST /reload`, and a live status page
//!   `GET /` (accounts' state, in-flight requests, hit ratio, failovers, WebSockets;
//!   its data as `GET /status.json`, see `status.rs`); `--admin-token ENV_VAR`
//!   protects it and is required on a non-loopback address. It has the same header and
//!   idle timeouts as the main listener and at most 64 connections of its own.
//! - Reload (`reload.rs`): SIGHUP or the admin's `POST /reload` re-reads the `--config`
//!   file, the command line over it and the variables they name, and serves the result
//!   from the next request on; running requests and streams finish on the configuration
//!   they began with. Accounts, keys, client tokens, headers, failover and request
//!   timeouts change; a removed account's bindings are dropped; addresses, the admin
//!   token, the store and connection limits need a restart. A bad file changes nothing
//!   and says why (log, and the admin's 400).
//! - Every duration flag takes at most 999999999 s, `--max-sessions` and
//!   `--max-connections` at most 10^9, `--max-body-buffer` at most 1 GiB: a larger value
//!   is a command-line error (exit 2), never a panic later.
//! - Workers: `--workers N` threads (default: one per CPU, or `TOKIO_WORKER_THREADS`)
//!   accept from the one listening socket, each on its own single-threaded event loop
//!   with its own upstream connection pool: a connection and everything its requests do
//!   stay on one thread, as in HAProxy or NGINX (see `serve.rs`; the admin listener,
//!   reloads and signals run apart from them).
//! - Ctrl-C or SIGTERM: stop accepting, close idle connections at once (HTTP/2: GOAWAY),
//!   let open requests finish (up to `--grace`, 30 s; a
//!   second Ctrl-C exits at once). Exit code 0 after a clean drain, 3 when streams had to
//!   be cut, 2 for a bad command line or configuration. Logs: `RUST_LOG` (default `info`).

mod admin;
mod app;
mod config;
mod demo;
mod reload;

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser};
use http::HeaderName;
use tokio::net::TcpListener;
use tower_sticky_session::store::InspectStore;
use tower_sticky_session::store::MemoryStore;
#[cfg(feature = "redis")]
use tower_sticky_session::store::RedisStore;
use tracing_subscriber::EnvFilter;

use crate::app::auth::{ClientToken, Tenant};
use crate::app::keys::{self, KeySpec, Secret};
use crate::app::{Drained, ProxyConfig, ServeConfig, Upstream};

/// Names of the demo accounts.
const DEMO_ACCOUNTS: [&str; 3] = ["account-a", "account-b", "account-c"];

/// Exit code for a bad command line or configuration (as clap's own errors).
const EXIT_USAGE: u8 = 2;

/// Exit code when open streams had to be cut at the end of the grace period.
const EXIT_CUT: u8 = 3;

/// The longest duration any flag takes, in seconds (about 31 years): far below what
/// `Instant` arithmetic, moka (1000 years) or Redis (`PX` in i64 milliseconds) overflow
/// at, so that no value that parses can panic later.
const MAX_SECS: u64 = 999_999_999;

/// The largest count (`--max-sessions`, `--max-connections`).
const MAX_COUNT: u64 = 1_000_000_000;

/// The most `--workers`: a thread each.
const MAX_WORKERS: u64 = 1024;

/// `--workers` when not given: `TOKIO_WORKER_THREADS` if it is a number in range, else
/// the CPUs this process may use.
fn default_workers() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| (1..=MAX_WORKERS).contains(n))
        .map_or_else(
            || std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            |n| n as usize,
        )
}

/// The largest `--max-body-buffer`: 1 GiB, already more than one request should hold.
const MAX_BODY_BUFFER: usize = 1 << 30;

/// Sticky-session reverse proxy: requests of one session stay on one upstream account.
///
/// Without --upstream it starts three demo accounts in-process and prints how to try it.
#[derive(Parser, Debug, Clone)]
#[command(name = "proxy", version)]
struct Cli {
    /// Read settings from this TOML file (see examples/proxy/config.rs): accounts with
    /// their key variables, client tokens, headers, timeouts, limits, store. A flag given
    /// on the command line wins over the file.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,

    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", value_parser = parse_addr)]
    listen: SocketAddr,

    /// An upstream account, NAME=URL (http:// or https://, optional path prefix).
    /// Repeatable; round-robin follows this order. Given: no demo accounts.
    #[arg(long = "upstream", value_name = "NAME=URL", value_parser = Quiet { flag: "--upstream <NAME=URL>", parse: parse_upstream })]
    upstreams: Vec<Upstream>,

    /// The key of account NAME is read from environment variable ENV_VAR at start-up and
    /// sent as `authorization: Bearer KEY` (or in --key-header). Repeatable.
    #[arg(long = "upstream-key", value_name = "NAME=ENV_VAR", value_parser = Quiet { flag: "--upstream-key <NAME=ENV_VAR>", parse: keys::parse_key_spec })]
    upstream_keys: Vec<KeySpec>,

    /// Send account keys as `HEADER: KEY` (e.g. x-api-key) instead of
    /// `authorization: Bearer KEY`.
    #[arg(long = "key-header", value_name = "HEADER", value_parser = parse_header_name)]
    key_header: Option<HeaderName>,

    /// Every proxied request must carry a client token (`authorization: Bearer TOKEN`,
    /// `x-api-key`, `x-goog-api-key` or `?key=TOKEN`), TOKEN read from environment
    /// variable ENV_VAR; else 401. Repeatable: `TENANT=ENV_VAR` names the token's tenant
    /// (plain `ENV_VAR`: tenant "default"); with two tenants or more, each tenant's
    /// bindings are its own.
    #[arg(long = "client-token", value_name = "[TENANT=]ENV_VAR", value_parser = Quiet { flag: "--client-token <[TENANT=]ENV_VAR>", parse: parse_token_spec })]
    client_tokens: Vec<TokenSpec>,

    /// Client tokens from a file: one `TENANT=ENV_VAR` per line (blank lines and lines
    /// starting with # ignored), as --client-token; the tokens themselves stay in the
    /// environment.
    #[arg(long = "client-tokens-file", value_name = "FILE")]
    client_tokens_file: Option<std::path::PathBuf>,

    /// The admin listener requires this token (environment variable), as --client-token.
    /// Required when --admin is not a loopback address.
    #[arg(long = "admin-token", value_name = "ENV_VAR", value_parser = Quiet { flag: "--admin-token <ENV_VAR>", parse: parse_env_var })]
    admin_token: Option<String>,

    /// Header carrying the session id. Repeatable, in priority order. Default: the
    /// headers known clients send (tower_sticky_session::KNOWN_CLIENT_HEADERS:
    /// sticky-session-id, x-claude-code-session-id, session-id, session_id,
    /// x-session-affinity, x-session-id, x-opencode-session, x-kilo-session,
    /// x-litellm-session-id, thread-id, conversation_id).
    #[arg(long = "session-header", value_name = "NAME", value_parser = parse_header_name)]
    session_headers: Vec<HeaderName>,

    /// Scope bindings by this header's value (e.g. a model or provider header).
    #[arg(long = "scope-header", value_name = "NAME", value_parser = parse_header_name)]
    scope_header: Option<HeaderName>,

    /// Seconds a binding lives after its last successful response.
    #[arg(long, value_name = "SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    ttl: u64,

    /// Most bindings kept at once.
    #[arg(long = "max-sessions", value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=MAX_COUNT))]
    max_sessions: u64,

    /// Accounts tried per request (at most the number of accounts): a request is retried
    /// on another account while no response byte has reached the client. A hard pin (a
    /// learned response id) and a body over --max-body-buffer get one attempt.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    attempts: u64,

    /// Seconds an account that answered 429 without retry-after, or could not be
    /// reached, is skipped.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    cooldown: Duration,

    /// An account that breaks this many streams in a row after their first byte (its
    /// body fails, or falls silent past --idle-timeout) loses those sessions' bindings
    /// and cools down for --cooldown; a stream that ends cleanly resets the count. A
    /// client that goes away or stops reading does not count. 0: off.
    #[arg(long = "max-broken-streams", value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=app::broken::MAX_BROKEN_STREAMS as u64))]
    max_broken_streams: u64,

    /// Seconds to wait for an upstream's response head, then again for its first data
    /// chunk (then the attempt fails; 504 when it was the last).
    #[arg(long = "upstream-timeout", value_name = "SECS", default_value = "60", value_parser = parse_positive_secs)]
    upstream_timeout: Duration,

    /// Longest silence, in seconds, inside a response body (then the client's stream
    /// ends with an error) or inside a client's request body (then 400).
    #[arg(long = "idle-timeout", value_name = "SECS", default_value = "300", value_parser = parse_positive_secs)]
    idle_timeout: Duration,

    /// Seconds a connection has to send a complete request head (any protocol); on an
    /// HTTP/1 keep-alive connection, also its next head after an exchange.
    #[arg(long = "header-timeout", value_name = "SECS", default_value = "30", value_parser = parse_positive_secs)]
    header_timeout: Duration,

    /// Seconds a connection may stay with no request or stream open (HTTP/1 keep-alive,
    /// HTTP/2 answering pings): then it is closed (HTTP/2: GOAWAY).
    #[arg(long = "conn-idle-timeout", value_name = "SECS", default_value = "60", value_parser = parse_positive_secs)]
    conn_idle_timeout: Duration,

    /// Seconds a whole request body may take to arrive, from its head; then 408 and the
    /// connection is closed.
    #[arg(long = "body-timeout", value_name = "SECS", default_value = "60", value_parser = parse_positive_secs)]
    body_timeout: Duration,

    /// Most client connections open at once (lowered to what the descriptor limit fits);
    /// also the listen backlog (within net.core.somaxconn).
    #[arg(long = "max-connections", value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=MAX_COUNT))]
    max_connections: u64,

    /// Most concurrent streams per HTTP/2 client connection.
    #[arg(long = "max-streams", value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    max_streams: u32,

    /// Threads that accept and serve client connections, each with its own event loop
    /// and upstream connection pool [default: TOKIO_WORKER_THREADS if set, else the
    /// number of CPUs available].
    #[arg(long = "workers", value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_WORKERS))]
    workers: Option<u64>,

    /// A pin is not honoured when its account has more than F × the mean in-flight
    /// requests of the available accounts (+1); off unless given. A hard pin (a learned
    /// response id) is always honoured.
    #[arg(long = "max-load-factor", value_name = "F", value_parser = parse_factor)]
    max_load_factor: Option<f64>,

    /// Request bodies up to this many bytes are buffered: read for session fields and
    /// kept for replay on another account; a larger one streams through, gets one
    /// attempt and is sticky only by header.
    #[arg(
        long = "max-body-buffer",
        value_name = "BYTES",
        default_value = "16777216",
        value_parser = parse_body_buffer
    )]
    max_body_buffer: usize,

    /// Seconds a WebSocket may go without a message either way before the proxy closes
    /// it (close code 1001 to both sides).
    #[arg(long = "ws-idle-timeout", value_name = "SECS", default_value = "300", value_parser = parse_positive_secs)]
    ws_idle_timeout: Duration,

    /// Largest WebSocket message (and frame) relayed, in bytes; a larger one closes the
    /// socket (1009 to the side that sent it).
    #[arg(long = "ws-max-message", value_name = "BYTES", default_value_t = 16_777_216, value_parser = clap::value_parser!(u64).range(1..=1 << 32))]
    ws_max_message: u64,
    /// Request body bytes buffered at once, all requests together; a body that does not
    /// fit streams through unbuffered, as one over --max-body-buffer. At least
    /// --max-body-buffer.
    #[arg(
        long = "max-buffered-total",
        value_name = "BYTES",
        default_value_t = 268_435_456
    )]
    max_buffered_total: usize,

    /// Never read request bodies for session ids (JSON fields such as prompt_cache_key,
    /// metadata.user_id); sessions then come from headers only.
    #[arg(long = "no-body-session")]
    no_body_session: bool,

    /// A JSON body with no other session signal (no session header, body field or
    /// learned response id) is sticky by a keyed hash of its conversation's opening (system
    /// prompt and first user message). Identical openings share an account: within one
    /// tenant only (see --client-token TENANT=ENV_VAR). Not with --no-body-session.
    #[arg(long = "fingerprint")]
    fingerprint: bool,

    /// Seconds open requests may take to finish after Ctrl-C/SIGTERM before they are cut
    /// (exit code 3).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    grace: Duration,

    /// Keep bindings in Redis (shared by several proxy replicas): redis://HOST:PORT[/DB],
    /// redis+cluster://H1:P1,H2:P2 for a Cluster, or
    /// redis+sentinel://S1:P1,S2:P2/MASTER[/DB] for a primary behind Sentinel.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,

    /// As --redis, the URL read from environment variable ENV_VAR at start-up: a
    /// password in it stays out of the process list (`ps`) and shell history.
    #[arg(long = "redis-env", value_name = "ENV_VAR", conflicts_with = "redis", value_parser = Quiet { flag: "--redis-env <ENV_VAR>", parse: parse_env_var })]
    redis_env: Option<String>,

    /// With --redis: keep up to N bindings read from Redis in a local near cache that
    /// Redis itself invalidates when another replica changes them (RESP3 client-side
    /// caching); 0 (the default) for none. Lookups it answers cost no round trip
    /// (`sticky_session_redis_near_hits` in /metrics).
    #[arg(long = "redis-near-cache", value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=MAX_COUNT))]
    redis_near_cache: u64,

    /// With --redis-near-cache: seconds a near-cache entry lives at most, should an
    /// invalidation be lost (e.g. across a reconnect).
    #[arg(long = "redis-near-ttl", value_name = "SECS", default_value = "60", value_parser = parse_positive_secs)]
    redis_near_ttl: Duration,

    /// Serve metrics and binding control on this address (off the proxied path space):
    /// GET /metrics, GET|DELETE /bindings?session=S[&scope=X], GET /bindings/count,
    /// DELETE /accounts/NAME/bindings, POST /reload (as SIGHUP), and a status page at
    /// GET / (its data: GET /status.json). Off unless given; a non-loopback address
    /// requires --admin-token.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    admin: Option<SocketAddr>,
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

fn parse_upstream(s: &str) -> Result<Upstream, String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| "expected NAME=URL, e.g. acct-1=https://api.example.com".to_owned())?;
    Upstream::new(name, url)
}

/// A value parser whose errors never quote the rejected value: clap's own errors do, and
/// a value of `--upstream` may hold a password or a key in its query, a value of
/// `--upstream-key` or `--client-token` may be a pasted key instead of a variable name.
/// The error names the flag; `parse`'s message says what is wrong without the secret.
#[derive(Clone)]
struct Quiet<T> {
    flag: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for Quiet<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let fail = |msg: String| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value for '{}': {msg}\n", self.flag),
            )
            .format(&mut cmd.clone())
        };
        let s = value
            .to_str()
            .ok_or_else(|| fail("not valid UTF-8".to_owned()))?;
        (self.parse)(s).map_err(fail)
    }
}

/// `--client-token [TENANT=]ENV_VAR`: whose token, and the variable that holds it.
#[derive(Clone, Debug)]
struct TokenSpec {
    tenant: String,
    var: String,
}

/// Parses `TENANT=ENV_VAR` or `ENV_VAR` (tenant "default"). Never echoes the value: it
/// may be a pasted token.
fn parse_token_spec(s: &str) -> Result<TokenSpec, String> {
    let (tenant, var) = s.split_once('=').unwrap_or((Tenant::DEFAULT, s));
    Tenant::new(tenant).map_err(|_| {
        "TENANT must be 1 to 64 letters, digits, '-', '_' or '.' (TENANT=ENV_VAR)".to_owned()
    })?;
    Ok(TokenSpec {
        tenant: tenant.to_owned(),
        var: parse_env_var(var)?,
    })
}

/// The `TENANT=ENV_VAR` lines of a `--client-tokens-file`. Errors name the line, never
/// its content.
fn read_tokens_file(path: &std::path::Path) -> Result<Vec<TokenSpec>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut specs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.contains('=') {
            return Err(format!(
                "{} line {}: expected TENANT=ENV_VAR",
                path.display(),
                n + 1
            ));
        }
        specs.push(
            parse_token_spec(line)
                .map_err(|msg| format!("{} line {}: {msg}", path.display(), n + 1))?,
        );
    }
    Ok(specs)
}

fn parse_header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.as_bytes()).map_err(|_| format!("{s:?} is not a valid header name"))
}

/// An environment variable's name. Anything else (a pasted token?) is not echoed.
fn parse_env_var(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(s.to_owned())
    } else {
        Err("expected the name of an environment variable (letters, digits, _), not a token".into())
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v = s
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))?;
    if v > MAX_SECS as f64 {
        return Err(format!("{s} seconds is too long (at most {MAX_SECS})"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_body_buffer(s: &str) -> Result<usize, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    usize::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_BODY_BUFFER)
        .ok_or_else(|| format!("{s} bytes is too large (at most {MAX_BODY_BUFFER})"))
}

fn parse_positive_secs(s: &str) -> Result<Duration, String> {
    let d = parse_secs(s)?;
    if d.is_zero() {
        Err("must be more than 0".into())
    } else {
        Ok(d)
    }
}

fn parse_factor(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or_else(|| format!("{s:?} is not a positive number"))
}

/// Parses the command line; on an error prints clap's message with every URL in it
/// redacted (clap quotes unknown or rejected arguments verbatim) and exits.
/// With `--config FILE`, the file's settings fill in what the command line left out
/// (exit 2 on a bad file, see `config.rs`).
fn parse_cli() -> Result<(Cli, reload::Source), ExitCode> {
    let (mut cli, matches) = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)))
        .map_err(|e| {
            let text = keys::redact_text(&e.render().to_string());
            if e.use_stderr() {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
            ExitCode::from(e.exit_code().clamp(0, 255) as u8)
        })?;
    let base = cli.clone();
    if let Some(path) = cli.config.clone() {
        config::load(&path)
            .and_then(|file| file.apply(&mut cli, &matches))
            .map_err(|msg| usage(format!("--config {msg}")))?;
    }
    let source = reload::Source {
        base,
        matches,
        demo: None,
        applied: cli.clone(),
    };
    Ok((cli, source))
}

/// A configuration error: printed, exit code 2.
fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(EXIT_USAGE)
}

/// The secret held by the variable `flag` names, or the exit code.
fn secret(flag: &str, var: &str) -> Result<Secret, ExitCode> {
    keys::read_secret(var).map_err(|msg| usage(format!("{flag} {var}: {msg}")))
}

/// The secrets the command line names, read from the environment: each account key as
/// the header it travels in, and the client tokens. Errors name the flag and variable,
/// never a value. Read at start-up and again on every reload (`reload.rs`).
struct Secrets {
    account_keys: Vec<(KeySpec, (HeaderName, http::HeaderValue))>,
    client_tokens: Vec<ClientToken>,
}

fn read_secrets(cli: &Cli) -> Result<Secrets, String> {
    let secret = |flag: &str, var: &str| {
        keys::read_secret(var).map_err(|msg| format!("{flag} {var}: {msg}"))
    };
    let mut account_keys = Vec::with_capacity(cli.upstream_keys.len());
    for spec in &cli.upstream_keys {
        let key = secret("--upstream-key", &spec.var)?;
        let header = keys::key_header(cli.key_header.as_ref(), &key)
            .map_err(|msg| format!("--upstream-key {}={}: {msg}", spec.account, spec.var))?;
        account_keys.push((spec.clone(), header));
    }
    let mut token_specs = cli.client_tokens.clone();
    if let Some(path) = &cli.client_tokens_file {
        token_specs
            .extend(read_tokens_file(path).map_err(|msg| format!("--client-tokens-file: {msg}"))?);
    }
    let mut client_tokens = Vec::with_capacity(token_specs.len());
    for spec in &token_specs {
        let token = secret("--client-token", &spec.var)?;
        let tenant = Tenant::new(&spec.tenant).expect("checked by parse_token_spec");
        client_tokens.push(ClientToken { tenant, token });
    }
    Ok(Secrets {
        account_keys,
        client_tokens,
    })
}

/// The proxy's configuration from the command line (and file), over `upstreams` (the
/// command line's, or the demo's), with the keys and tokens of `secrets`. Built at
/// start-up and again on every reload.
fn proxy_config(
    cli: &Cli,
    mut upstreams: Vec<Upstream>,
    secrets: Secrets,
) -> Result<ProxyConfig, String> {
    let Secrets {
        account_keys,
        client_tokens,
    } = secrets;
    for (spec, header) in account_keys {
        match upstreams
            .iter_mut()
            .find(|u| u.name().as_str() == spec.account)
        {
            Some(up) => *up = up.clone().with_key(header),
            None => {
                return Err(format!(
                    "--upstream-key {}={}: no account named {:?} (--upstream NAME=URL)",
                    spec.account, spec.var, spec.account
                ));
            }
        }
    }
    let attempts = usize::try_from(cli.attempts)
        .unwrap_or(usize::MAX)
        .min(upstreams.len());
    let mut proxy = ProxyConfig::new(upstreams);
    if !cli.session_headers.is_empty() {
        proxy.session_headers = cli.session_headers.clone();
    }
    proxy.scope_header = cli.scope_header.clone();
    proxy.client_tokens = client_tokens;
    proxy.max_load_factor = cli.max_load_factor;
    proxy.body_session = !cli.no_body_session;
    proxy.fingerprint = cli.fingerprint;
    proxy.failover.attempts = attempts;
    proxy.failover.cooldown = cli.cooldown;
    proxy.failover.max_broken_streams =
        usize::try_from(cli.max_broken_streams).expect("at most MAX_BROKEN_STREAMS");
    proxy.failover.upstream_timeout = cli.upstream_timeout;
    proxy.failover.idle_timeout = cli.idle_timeout;
    proxy.failover.max_body_buffer = cli.max_body_buffer;
    proxy.failover.workers = cli.workers.map_or_else(default_workers, |n| n as usize);
    proxy.failover.ws.idle_timeout = cli.ws_idle_timeout;
    proxy.failover.ws.max_message = usize::try_from(cli.ws_max_message).unwrap_or(usize::MAX);
    proxy.max_buffered_total = cli.max_buffered_total;
    proxy.body_timeout = cli.body_timeout;
    if cli.max_body_buffer > cli.max_buffered_total {
        return Err(format!(
            "--max-body-buffer {} is larger than --max-buffered-total {}",
            cli.max_body_buffer, cli.max_buffered_total
        ));
    }
    Ok(proxy)
}

/// What `run` needs besides the store.
struct Settings {
    /// Where SIGHUP and `POST /reload` read the configuration again.
    reload: Option<reload::Source>,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    admin_token: Option<Secret>,
    proxy: ProxyConfig,
    serve: ServeConfig,
    /// Whether the accounts are the demo's.
    demo: bool,
}

/// The client listener on `addr`, with a backlog for a burst of `max_connections` new
/// connections (at most 65 535; the kernel caps it at `net.core.somaxconn`, 4 096 by
/// default). Tokio's `TcpListener::bind` asks for 1 024: a burst of a few thousand
/// connections (clients reconnecting after a restart, or an attack) then overflowed
/// the accept queue and the kernel fell back to SYN cookies, which drop the
/// connections' TCP options (window scaling among them). HAProxy sizes its backlog by
/// its `maxconn` in the same way. Otherwise as `bind`: `SO_REUSEADDR` on Unix.
fn listen(addr: std::net::SocketAddr, max_connections: usize) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(u32::try_from(max_connections.clamp(1024, 65_535)).unwrap_or(65_535))
}

fn main() -> ExitCode {
    let (cli, reload_source) = match parse_cli() {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    // Logs go to stderr; stdout has only the banner. Lines are written by a thread of
    // their own, batched into few writes: a request never waits for stderr. Should
    // stderr fall behind by LOG_LINES_QUEUED lines, new lines are dropped (and counted
    // at exit) rather than block the proxy.
    let (writer, log_guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_LINES_QUEUED)
        .lossy(true)
        .thread_name("proxy-log")
        .finish(BatchedStderr(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        )));
    let dropped = writer.error_counter();
    // Colour only on a terminal: logs redirected to a file or a pipe stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !ansi {
        // The access line's own path to the same writer (see app::logfmt::direct).
        app::logfmt::install_direct(writer.clone());
    }
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(ansi)
        .event_format(app::logfmt::LineFormat::new(ansi))
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let code = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(proxy_main(cli, reload_source)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    };
    // Flushes what is queued.
    drop(log_guard);
    let lost = dropped.dropped_lines();
    if lost > 0 {
        eprintln!("warning: {lost} log line(s) dropped: stderr did not keep up");
    }
    code
}

/// Log lines queued for stderr at most (about 10 MiB of access lines).
const LOG_LINES_QUEUED: usize = 64 * 1024;

/// How long the log thread pauses after each batch it wrote (see [`BatchedStderr`]).
const LOG_BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(10);

/// stderr as the log thread writes it: buffered, and after each batch that went out the
/// thread pauses [`LOG_BATCH_WINDOW`], so that the lines logged meanwhile go out
/// together in the next batch's one write. Without the pause, under load the thread
/// found its queue empty after a line or two, wrote them, and spun (`sched_yield`)
/// waiting for the next: a `write` and a `sched_yield` every other request.
///
/// Ten milliseconds rather than one: much of a `write`'s cost does not depend on its
/// length, and the log thread (stderr to a file) spent 0.72 µs per proxied request with
/// a 1 ms pause against 0.30 µs with 10 ms (about a fortieth of the proxy's CPU per
/// request). At 40 000 requests per second a batch is about 400 lines (60 KiB, the
/// buffer's size). A line reaches stderr at most about 10 ms later, and the proxy's exit
/// waits as long for the last batch; the queue's bound (in lines) is unchanged.
struct BatchedStderr(std::io::BufWriter<std::io::Stderr>);

impl std::io::Write for BatchedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let wrote = !self.0.buffer().is_empty();
        self.0.flush()?;
        if wrote {
            std::thread::sleep(LOG_BATCH_WINDOW);
        }
        Ok(())
    }
}

async fn proxy_main(cli: Cli, mut reload_source: reload::Source) -> ExitCode {
    let redis_url = match (&cli.redis, &cli.redis_env) {
        (Some(url), _) => Some(url.clone()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(url) if !url.is_empty() => Some(url),
            Ok(_) => {
                return usage(format!(
                    "--redis-env {var}: environment variable {var} is empty"
                ));
            }
            Err(std::env::VarError::NotPresent) => {
                return usage(format!(
                    "--redis-env {var}: environment variable {var} is not set"
                ));
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return usage(format!(
                    "--redis-env {var}: environment variable {var} is not valid UTF-8"
                ));
            }
        },
        (None, None) => None,
    };
    #[cfg(not(feature = "redis"))]
    if redis_url.is_some() {
        return usage("--redis: redis store not available in this build");
    }
    if cli.redis_near_cache > 0 && redis_url.is_none() {
        return usage("--redis-near-cache needs --redis or --redis-env");
    }

    // Secrets first: a missing one stops the proxy before anything starts.
    let secrets = match read_secrets(&cli) {
        Ok(s) => s,
        Err(msg) => return usage(msg),
    };
    let admin_token = match cli
        .admin_token
        .as_deref()
        .map(|v| secret("--admin-token", v))
    {
        Some(Err(code)) => return code,
        Some(Ok(t)) => Some(t),
        None => None,
    };
    if let Some(at) = cli.admin
        && !at.ip().is_loopback()
        && admin_token.is_none()
    {
        return usage(format!(
            "--admin {at} is not a loopback address: refusing to serve binding control \
             without --admin-token ENV_VAR"
        ));
    }

    let demo = cli.upstreams.is_empty();
    let upstreams = if demo {
        match demo::start(&DEMO_ACCOUNTS).await {
            Ok(accounts) => accounts
                .iter()
                .map(|a| Upstream::new(&a.name, &format!("http://{}", a.addr)))
                .collect::<Result<Vec<_>, _>>()
                .expect("demo account URLs are valid"),
            Err(e) => {
                eprintln!("error: cannot start the demo accounts: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        cli.upstreams.clone()
    };
    if demo {
        reload_source.demo = Some(upstreams.clone());
    }
    let proxy = match proxy_config(&cli, upstreams, secrets) {
        Ok(p) => p,
        Err(msg) => return usage(msg),
    };
    let mut serve = ServeConfig::new(cli.grace);
    serve.header_timeout = cli.header_timeout;
    serve.conn_idle_timeout = cli.conn_idle_timeout;
    serve.write_timeout = cli.idle_timeout;
    serve.max_streams = cli.max_streams;
    let requested = usize::try_from(cli.max_connections).unwrap_or(usize::MAX);
    serve.max_connections = match fit_descriptors(requested) {
        Ok(n) => n,
        Err(code) => return code,
    };
    let settings = Settings {
        reload: Some(reload_source),
        listen: cli.listen,
        admin: cli.admin,
        admin_token,
        proxy,
        serve,
        demo,
    };
    let ttl = Duration::from_secs(cli.ttl);

    #[cfg(feature = "redis")]
    if let Some(url) = redis_url {
        // Fails only on an invalid URL (the error does not repeat it); Redis may be down:
        // the proxy then serves without stickiness until it is back.
        let mut builder = RedisStore::builder(&url).ttl(ttl);
        let mut name = format!("redis, ttl {} s", cli.ttl);
        if cli.redis_near_cache > 0 {
            builder = builder.near_cache(cli.redis_near_ttl, cli.redis_near_cache);
            name.push_str(&format!(
                ", near cache of {} (at most {:?})",
                cli.redis_near_cache, cli.redis_near_ttl
            ));
        }
        let store = match builder.build() {
            Ok(store) => store,
            Err(e) => return usage(format!("--redis: {e}")),
        };
        return run(settings, store, &name).await;
    }
    let store = MemoryStore::builder()
        .max_bindings(cli.max_sessions)
        .ttl(ttl)
        .build();
    let store_name = format!(
        "in-memory (moka), ttl {} s, at most {}",
        cli.ttl, cli.max_sessions
    );
    run(settings, store, &store_name).await
}

/// Builds the proxy over `store`, prints the banner, serves until Ctrl-C/SIGTERM.
async fn run<St: InspectStore + admin::StoreMetrics + Clone>(
    mut settings: Settings,
    store: St,
    store_name: &str,
) -> ExitCode {
    let admin_store = store.clone();
    let app = match app::build(&settings.proxy, store.clone()) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let source = settings.reload.take().expect("set by main");
    let reloader = reload::Reloader::new(source, store, app);
    tokio::spawn(reload::on_sighup(reloader.clone()));
    let listener = match listen(settings.listen, settings.serve.max_connections) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", settings.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(settings.listen);
    let admin_addr = match settings.admin {
        None => None,
        Some(at) => match TcpListener::bind(at).await {
            Ok(l) => {
                let local = l.local_addr().unwrap_or(at);
                let router = admin::router_live(
                    admin_store,
                    reloader.live(),
                    settings.admin_token.clone(),
                    Some(reloader.hook()),
                );
                // Served until the process exits.
                tokio::spawn(app::serve(
                    l,
                    router,
                    std::future::pending::<()>(),
                    admin::serve_config(&settings.serve),
                ));
                Some(local)
            }
            Err(e) => {
                eprintln!("error: cannot listen on {at} (--admin): {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    print_banner(&settings, store_name, addr);
    if let Some(a) = admin_addr {
        println!(
            "Admin: http://{a}/ (status page)  http://{a}/metrics  http://{a}/bindings?session=ID  (see examples/proxy/admin.rs)"
        );
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = settings.proxy.failover.workers;
    let mut done = match app::serve::serve_workers(
        listener,
        workers,
        reloader.service(),
        stop_rx,
        settings.serve.clone(),
    ) {
        Ok(done) => done,
        Err(e) => {
            eprintln!("error: cannot start {workers} worker(s) on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = done.recv() => return ExitCode::FAILURE,
        () = signal() => {}
    }
    tracing::info!("shutdown signal received (Ctrl-C again to exit at once)");
    let _ = stop_tx.send(true);
    // Every worker waits for every connection (the permits are shared), so they end
    // together; the most connections any of them cut is the answer.
    let all_drained = async {
        let mut cut = 0;
        for _ in 0..workers {
            match done.recv().await {
                Some(Drained::Clean) => {}
                Some(Drained::Cut(n)) => cut = cut.max(n),
                None => return Err(()),
            }
        }
        Ok(cut)
    };
    let code = tokio::select! {
        drained = all_drained => match drained {
            Ok(0) => ExitCode::SUCCESS,
            Ok(n) => {
                eprintln!("error: {n} connection(s) cut at the end of the grace period");
                ExitCode::from(EXIT_CUT)
            }
            Err(()) => ExitCode::FAILURE,
        },
        () = signal() => {
            tracing::warn!("second signal: exiting without waiting");
            ExitCode::from(EXIT_CUT)
        }
    };
    let running = reloader.current();
    let app = &running.app;
    tracing::info!(stats = ?app.stats.snapshot(), "sticky session counters at exit");
    tracing::info!(
        refused = app.budget.refused(),
        "request bodies streamed unbuffered because --max-buffered-total was spent"
    );
    code
}

/// Raises the descriptor limit and fits `requested` client connections under it (see
/// `resources.rs`), logging the figures; exit code 2 when not one connection fits.
fn fit_descriptors(requested: usize) -> Result<usize, ExitCode> {
    let nofile = match app::resources::raise_nofile() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise RLIMIT_NOFILE; --max-connections as given");
            return Ok(requested);
        }
    };
    let fit = app::resources::fit_connections(nofile, requested).map_err(usage)?;
    if fit < requested {
        tracing::warn!(
            nofile,
            requested,
            max_connections = fit,
            "--max-connections lowered to fit the descriptor limit (2 per connection, plus the admin listener's and the process's own)"
        );
    } else {
        tracing::info!(nofile, max_connections = fit, "descriptor limit");
    }
    Ok(fit)
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn print_banner(s: &Settings, store: &str, addr: SocketAddr) {
    // Where a client on this machine reaches the proxy.
    let host = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    let url = format!("http://{host}");
    let session = s.proxy.session_headers[0].as_str();
    let headers: Vec<&str> = s
        .proxy
        .session_headers
        .iter()
        .map(HeaderName::as_str)
        .collect();
    println!("tower-sticky-session proxy listening on http://{addr}");
    println!(
        "  session header(s): {}   scope header: {}   bindings: {store}",
        headers.join(", "),
        s.proxy
            .scope_header
            .as_ref()
            .map_or("(none)", HeaderName::as_str),
    );
    if s.demo {
        println!("  accounts (demo, in-process, streaming server-sent events), round-robin order:");
    } else {
        println!("  accounts, round-robin order:");
    }
    for up in &s.proxy.upstreams {
        println!("    {:<12} {up}", up.name().as_str());
    }
    if s.demo {
        println!();
        println!("Try it from another terminal (x-served-by names the account that served):");
        println!("  # same {session}: every request lands on the same account");
        println!(
            "  for i in 1 2 3; do curl -s -o /dev/null -D - -H '{session}: demo-chat-1' {url}/v1/chat | grep -i x-served-by; done"
        );
        println!("  # no {session}: requests rotate across the accounts");
        println!(
            "  for i in 1 2 3; do curl -s -o /dev/null -D - {url}/v1/chat | grep -i x-served-by; done"
        );
        println!("  # watch one stream arrive event by event");
        println!("  curl -sN -H '{session}: demo-chat-1' {url}/v1/chat");
        println!();
    }
    println!("Ctrl-C to stop. Logs: RUST_LOG (e.g. RUST_LOG=debug).");
}

/// mimalloc: per-thread free lists suit a proxy that allocates and frees small buffers
/// on every request (see `BENCHMARKS.md`, the proxy against HAProxy and NGINX). On Unix
/// it is linked as the process's `malloc` (its `override` feature), which Rust's
/// `System` allocator calls: plain `malloc`/`free` for the usual alignments, where
/// `MiMalloc` takes mimalloc's aligned entry for every allocation, and its slow path
/// for every block over 1 KiB. (So a heap tool that interposes `malloc` sees
/// mimalloc's: valgrind's memcheck needs `--soname-synonyms=somalloc=NONE`.) Elsewhere
/// the override is not built, and `MiMalloc` is the allocator.
#[cfg(unix)]
#[global_allocator]
static GLOBAL: std::alloc::System = std::alloc::System;
#[cfg(not(unix))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// Linked for its `malloc`, which nothing names.
#[cfg(unix)]
extern crate mimalloc;
