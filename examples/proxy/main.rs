//! A sticky-session reverse proxy in front of several accounts of one API.
//!
//! Demo (three in-process accounts that stream server-sent events, proxy on
//! 127.0.0.1:8080; it prints curl commands to try):
//!
//! ```text
//! cargo run --example proxy
//! ```
//!
//! In front of real upstreams, one `--upstream NAME=URL` per account:
//!
//! ```text
//! RUST_LOG=info cargo run --example proxy -- \
//!     --listen 127.0.0.1:8080 \
//!     --upstream acct-1=https://api.example.com \
//!     --upstream acct-2=http://10.0.0.7:9000/v1 \
//!     --session-header x-session-id --session-header sticky-session-id \
//!     --scope-header x-model --ttl 3600 --max-sessions 100000
//! ```
//!
//! - A request whose session header (the first of `--session-header` present, default
//!   `x-session-id`) names a bound session goes to the bound account; any other request
//!   goes to the next account in round-robin order (command-line order, one counter).
//!   One attempt per request: the response header `x-served-by: NAME` says which account
//!   served it.
//! - A session is bound once the account's response is a success (not 429/5xx) and its
//!   body delivered a first chunk; a 429/5xx, an empty body, a failure before the first
//!   chunk, or an unreachable account (answered 502) unbinds it.
//! - `--scope-header NAME` keeps separate bindings per value of that header (e.g. a model).
//! - `--redis URL` keeps the bindings in Redis, shared by every replica that names the same
//!   server (e.g. `redis://127.0.0.1:6379`). Redis down or slow: requests are served
//!   without stickiness, never failed; sharing resumes when it is back. `--max-sessions`
//!   applies to the in-memory store only (Redis bounds memory with its own `maxmemory`).
//! - `--admin ADDR` serves metrics and binding control on a second listener (see
//!   `admin.rs`): `GET /metrics`, `GET|DELETE /bindings?session=S[&scope=X]`,
//!   `GET /bindings/count`, `DELETE /accounts/NAME/bindings`.
//! - Ctrl-C or SIGTERM: stop accepting, let open requests finish (up to 30 s; a second
//!   Ctrl-C exits at once). Logs: `RUST_LOG` (default `info`).

mod admin;
mod app;
mod demo;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use http::HeaderName;
use tokio::net::TcpListener;
use tower_sticky_session::MokaStore;
use tower_sticky_session::store::InspectStore;
#[cfg(feature = "redis")]
use tower_sticky_session::store::RedisStore;
use tracing_subscriber::EnvFilter;

use crate::app::{ProxyConfig, Upstream};

/// How long open requests may take to finish after Ctrl-C/SIGTERM.
const GRACE: Duration = Duration::from_secs(30);

/// Names of the demo accounts.
const DEMO_ACCOUNTS: [&str; 3] = ["account-a", "account-b", "account-c"];

/// Sticky-session reverse proxy: requests of one session stay on one upstream account.
///
/// Without --upstream it starts three demo accounts in-process and prints how to try it.
#[derive(Parser, Debug)]
#[command(name = "proxy", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", value_parser = parse_addr)]
    listen: SocketAddr,

    /// An upstream account, NAME=URL (http:// or https://, optional path prefix).
    /// Repeatable; round-robin follows this order. Given: no demo accounts.
    #[arg(long = "upstream", value_name = "NAME=URL", value_parser = parse_upstream)]
    upstreams: Vec<Upstream>,

    /// Header carrying the session id. Repeatable, in priority order.
    #[arg(
        long = "session-header",
        value_name = "NAME",
        default_value = "x-session-id",
        value_parser = parse_header_name
    )]
    session_headers: Vec<HeaderName>,

    /// Scope bindings by this header's value (e.g. a model or provider header).
    #[arg(long = "scope-header", value_name = "NAME", value_parser = parse_header_name)]
    scope_header: Option<HeaderName>,

    /// Seconds a binding lives after its last successful response.
    #[arg(long, value_name = "SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    ttl: u64,

    /// Most bindings kept at once.
    #[arg(long = "max-sessions", value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_sessions: u64,

    /// Keep bindings in Redis (shared by several proxy replicas).
    #[arg(long, value_name = "URL")]
    redis: Option<String>,

    /// Serve metrics and binding control on this address (off the proxied path space):
    /// GET /metrics, GET|DELETE /bindings?session=S[&scope=X], GET /bindings/count,
    /// DELETE /accounts/NAME/bindings. Off unless given; keep it on a private address.
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

fn parse_header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.as_bytes()).map_err(|_| format!("{s:?} is not a valid header name"))
}

/// What `run` needs besides the store.
struct Settings {
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    proxy: ProxyConfig,
    /// Whether the accounts are the demo's.
    demo: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr; stdout has only the banner.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs redirected to a file or a pipe stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    #[cfg(not(feature = "redis"))]
    if cli.redis.is_some() {
        eprintln!("error: --redis: redis store not available in this build");
        return ExitCode::from(2);
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
        cli.upstreams
    };
    let settings = Settings {
        listen: cli.listen,
        admin: cli.admin,
        proxy: ProxyConfig {
            upstreams,
            session_headers: cli.session_headers,
            scope_header: cli.scope_header,
        },
        demo,
    };
    let ttl = Duration::from_secs(cli.ttl);

    #[cfg(feature = "redis")]
    if let Some(url) = cli.redis {
        // Fails only on an invalid URL (the error does not repeat it); Redis may be down:
        // the proxy then serves without stickiness until it is back.
        let store = match RedisStore::builder(&url).ttl(ttl).build() {
            Ok(store) => store,
            Err(e) => {
                eprintln!("error: --redis: {e}");
                return ExitCode::from(2);
            }
        };
        return run(settings, store, &format!("redis, ttl {} s", cli.ttl)).await;
    }
    let store = MokaStore::builder()
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
    settings: Settings,
    store: St,
    store_name: &str,
) -> ExitCode {
    let admin_store = store.clone();
    let app = match app::build(&settings.proxy, store) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(settings.listen).await {
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
                let router = admin::router(admin_store, app.stats.clone());
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(l, router).await {
                        tracing::error!(error = %e, "admin listener failed");
                    }
                });
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
            "Admin: http://{a}/metrics  http://{a}/bindings?session=ID  (see examples/proxy/admin.rs)"
        );
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async {
        let _ = stop_rx.await;
    };
    let server = tokio::spawn(app::serve(listener, app.service, stop, GRACE));
    let mut server = std::pin::pin!(server);
    tokio::select! {
        _ = &mut server => return ExitCode::FAILURE,
        () = signal() => {}
    }
    tracing::info!("shutdown signal received (Ctrl-C again to exit at once)");
    let _ = stop_tx.send(());
    tokio::select! {
        _ = &mut server => {}
        () = signal() => tracing::warn!("second signal: exiting without waiting"),
    }
    tracing::info!(stats = ?app.stats.snapshot(), "sticky session counters at exit");
    ExitCode::SUCCESS
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
