//! The example proxy as a black box: its binary (built with `cargo build --example
//! proxy`), run with the command-line contract of its docs, against scripted upstream
//! accounts on loopback. Exit codes, keys, client and admin tokens, and that no secret
//! reaches its output, even with `RUST_LOG=trace`.

use crate::support::{proxy_bin, upstream};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Output, Stdio};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::process::{Child, Command};

use proxy_bin::wait_listening;
use upstream::{Account, Mode, within};

const KEY_A: &str = "sk-alpha-7f3a9c0e1b2d";
const KEY_B: &str = "sk-bravo-4e8d2a6c9f10";
const CLIENT_TOKEN: &str = "ct-charlie-5b1e7d3f";
const ADMIN_TOKEN: &str = "at-delta-9c2f6a8e";
const SECRETS: [&str; 4] = [KEY_A, KEY_B, CLIENT_TOKEN, ADMIN_TOKEN];

/// The proxy binary, built once per test run.
fn proxy_bin() -> &'static PathBuf {
    proxy_bin::proxy_binary()
}

fn proxy(args: &[&str]) -> Command {
    let mut cmd = Command::new(proxy_bin());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn run(cmd: &mut Command) -> Output {
    within("the proxy exits", cmd.output()).await.unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn terminate(child: &Child) {
    let pid = child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test]
async fn missing_or_empty_key_variable_exits_2_naming_the_variable() {
    let out = run(proxy(&[
        "--upstream",
        "a=http://127.0.0.1:9",
        "--upstream-key",
        "a=TSS_TEST_KEY_UNSET",
    ])
    .env_remove("TSS_TEST_KEY_UNSET"))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("TSS_TEST_KEY_UNSET"), "{}", text(&out));

    let out = run(proxy(&[
        "--upstream",
        "a=http://127.0.0.1:9",
        "--upstream-key",
        "a=TSS_TEST_KEY_EMPTY",
    ])
    .env("TSS_TEST_KEY_EMPTY", ""))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("TSS_TEST_KEY_EMPTY"), "{}", text(&out));

    // A value unusable in a header: named, never printed.
    let out = run(proxy(&[
        "--upstream",
        "a=http://127.0.0.1:9",
        "--upstream-key",
        "a=TSS_TEST_KEY_BAD",
    ])
    .env("TSS_TEST_KEY_BAD", format!("{KEY_A}\n")))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("TSS_TEST_KEY_BAD"));
    assert!(!text(&out).contains(KEY_A), "{}", text(&out));

    // A missing client token likewise.
    let out = run(proxy(&[
        "--upstream",
        "a=http://127.0.0.1:9",
        "--client-token",
        "TSS_TEST_TOKEN_UNSET",
    ])
    .env_remove("TSS_TEST_TOKEN_UNSET"))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("TSS_TEST_TOKEN_UNSET"));
}

#[tokio::test]
async fn command_line_errors_never_echo_url_credentials_or_queries() {
    for args in [
        &["--upstream", "a=ftp://user:hunter2@host/?key=sk-q9z"][..],
        &["--upstream", "a=http://us@er:hunter2@host/v1"],
        &["--upstream", "a=https://host/v1?key=sk-q9z"],
        &["--upstreamz=a=http://user:hunter2@host?key=sk-q9z"],
        &[
            "--upstream",
            "a=http://127.0.0.1:9",
            "bogus://user:hunter2@h?key=sk-q9z",
        ],
    ] {
        let out = run(&mut proxy(args)).await;
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(
            !t.contains("hunter2") && !t.contains("sk-q9z"),
            "{args:?}: {t}"
        );
    }
    // A pasted key instead of a variable name is not echoed either.
    let out = run(&mut proxy(&["--upstream-key", &format!("a={KEY_A}")])).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(!text(&out).contains(KEY_A), "{}", text(&out));
}

#[tokio::test]
async fn non_loopback_admin_without_a_token_refuses_to_start() {
    let out = run(&mut proxy(&[
        "--upstream",
        "a=http://127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "0.0.0.0:0",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--admin-token"), "{}", text(&out));
}

type TestClient = Client<HttpConnector, Full<Bytes>>;

async fn call(
    client: &TestClient,
    req: http::request::Builder,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let res = within("answer", client.request(req.body(Full::default()).unwrap()))
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    let body = within("body", body.collect()).await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// Keys reach their own account only; the client token is required and never forwarded;
/// the admin token guards the admin listener; nothing secret is printed even at trace
/// level; SIGTERM after the requests: exit 0.
async fn keys_tokens_and_logs(key_header: Option<&str>) {
    let a = Account::start("a", Mode::Stream).await;
    let b = Account::start("b", Mode::Stream).await;
    let port = free_port();
    let admin_port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let (ua, ub) = (format!("a={}", a.url()), format!("b={}", b.url()));
    let mut args = vec![
        "--listen",
        &*Box::leak(addr.to_string().into_boxed_str()),
        "--admin",
        &*Box::leak(admin.to_string().into_boxed_str()),
        "--upstream",
        &ua,
        "--upstream",
        &ub,
        "--upstream-key",
        "a=TSS_KEY_A",
        "--upstream-key",
        "b=TSS_KEY_B",
        "--client-token",
        "TSS_CLIENT_TOKEN",
        "--admin-token",
        "TSS_ADMIN_TOKEN",
    ];
    if let Some(h) = key_header {
        args.extend(["--key-header", h]);
    }
    let child = proxy(&args)
        .env("RUST_LOG", "trace")
        .env("TSS_KEY_A", KEY_A)
        .env("TSS_KEY_B", KEY_B)
        .env("TSS_CLIENT_TOKEN", CLIENT_TOKEN)
        .env("TSS_ADMIN_TOKEN", ADMIN_TOKEN)
        .spawn()
        .unwrap();
    wait_listening(addr).await;
    wait_listening(admin).await;
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{addr}/v1/chat");

    // No token, a wrong token: 401, nothing forwarded.
    let (status, _, _) = call(&client, Request::post(&url)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(
        &client,
        Request::post(&url).header("authorization", format!("Bearer {KEY_A}")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.count() + b.count(), 0);

    // With the token (either header): served, each account gets its own key only.
    for i in 0..4 {
        let req = Request::post(&url).header("x-session-id", format!("conv-{i}"));
        let req = if i % 2 == 0 {
            req.header("authorization", format!("Bearer {CLIENT_TOKEN}"))
        } else {
            req.header("x-api-key", CLIENT_TOKEN)
        };
        let (status, headers, body) = call(&client, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "chunk-1\nchunk-2\nchunk-3\n");
        for (name, v) in &headers {
            let v = String::from_utf8_lossy(v.as_bytes());
            for s in SECRETS {
                assert!(!v.contains(s), "response header {name}: {v}");
            }
        }
    }
    assert_eq!((a.count(), b.count()), (2, 2));
    for (account, own, other) in [(&a, KEY_A, KEY_B), (&b, KEY_B, KEY_A)] {
        for seen in account.seen() {
            let all: Vec<String> = seen
                .headers
                .iter()
                .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            let all = all.join("\n");
            match key_header {
                None => assert!(
                    all.contains(&format!("authorization: Bearer {own}")),
                    "{all}"
                ),
                Some(h) => {
                    assert!(all.contains(&format!("{h}: {own}")), "{all}");
                    assert!(!all.contains("authorization"), "{all}");
                }
            }
            assert!(!all.contains(other), "{all}");
            assert!(!all.contains(CLIENT_TOKEN), "{all}");
        }
    }

    // Admin: token required; its answers hold no secret.
    let metrics = format!("http://{admin}/metrics");
    let (status, _, _) = call(&client, Request::get(&metrics)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = call(
        &client,
        Request::get(&metrics).header("authorization", format!("Bearer {ADMIN_TOKEN}")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("sticky_session_requests_total 4"), "{body}");
    assert!(
        body.contains(r#"sticky_proxy_cooling{account="a"} 0"#),
        "{body}"
    );
    assert!(
        body.contains(r#"sticky_proxy_in_flight{account="b"} 0"#),
        "{body}"
    );
    assert!(body.contains("sticky_proxy_retries_total 0"), "{body}");
    assert!(
        body.contains(r#"sticky_session_sources_total{source="header"} 4"#),
        "{body}"
    );
    for s in SECRETS {
        assert!(!body.contains(s));
    }
    let (status, _, body) = call(
        &client,
        Request::delete(format!("http://{admin}/accounts/a/bindings"))
            .header("x-api-key", ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(body, r#"{"removed":2}"#);

    drop(client);
    let (status, log) = stop_and_read(child).await;
    assert_eq!(status, Some(0), "{log}");
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "not a trace log: {log}"
    );
    for s in SECRETS {
        assert!(!log.contains(s), "secret in the log:\n{log}");
    }
}

#[tokio::test]
async fn bearer_keys_reach_their_account_only_and_nothing_secret_is_logged_at_trace() {
    keys_tokens_and_logs(None).await;
}

#[tokio::test]
async fn key_header_keys_reach_their_account_only_and_nothing_secret_is_logged_at_trace() {
    keys_tokens_and_logs(Some("x-api-key")).await;
}

/// With several workers, a session's requests on different connections (so, in general,
/// different workers) all land on its account; sessions spread over the accounts; the
/// drain ends every worker (exit 0).
#[tokio::test]
async fn several_workers_share_one_set_of_bindings_and_drain_together() {
    let accounts = [
        Account::start("a", Mode::Stream).await,
        Account::start("b", Mode::Stream).await,
        Account::start("c", Mode::Stream).await,
    ];
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = addr.to_string();
    let ups: Vec<String> = accounts
        .iter()
        .zip(["a", "b", "c"])
        .map(|(acc, name)| format!("{name}={}", acc.url()))
        .collect();
    let mut args = vec!["--listen", &listen, "--workers", "3"];
    for u in &ups {
        args.extend(["--upstream", u.as_str()]);
    }
    let child = proxy(&args).spawn().unwrap();
    wait_listening(addr).await;
    let mut served = std::collections::BTreeMap::new();
    for round in 0..3 {
        for session in 0..9 {
            // A new client, so a new connection, for every request.
            let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
            let (status, headers, _) = call(
                &client,
                Request::get(format!("http://{addr}/v1/chat"))
                    .header("session-id", format!("workers-{session}")),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            let by = headers["x-served-by"].to_str().unwrap().to_owned();
            let first = served.entry(session).or_insert_with(|| by.clone());
            assert_eq!(*first, by, "session {session}, round {round}");
        }
    }
    let spread: std::collections::BTreeSet<_> = served.values().collect();
    assert_eq!(
        spread.len(),
        3,
        "nine new sessions go round-robin: {served:?}"
    );
    let (code, out) = stop_and_read(child).await;
    assert_eq!(code, Some(0), "{out}");
}

#[tokio::test]
async fn exit_code_is_non_zero_when_the_grace_period_cuts_a_stream() {
    let a = Account::start("a", Mode::FirstThenHang).await;
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ua = format!("a={}", a.url());
    let listen = addr.to_string();
    let mut child = proxy(&["--listen", &listen, "--upstream", &ua, "--grace", "0.3"])
        .spawn()
        .unwrap();
    wait_listening(addr).await;
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    let res = within(
        "head",
        client.request(
            Request::get(format!("http://{addr}/v1/chat"))
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    terminate(&child);
    let status = within("exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(3));
    drop(res);
}

#[tokio::test]
async fn tenants_from_flags_and_a_file_have_their_own_bindings_as_the_admin_listener_shows() {
    let a = Account::start("a", Mode::Stream).await;
    let b = Account::start("b", Mode::Stream).await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = std::env::temp_dir().join(format!("tss-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens");
    std::fs::write(&file, "# tenant=ENV_VAR\n\nbolt=TSS_BOLT_TOKEN\n").unwrap();
    let (ua, ub) = (format!("a={}", a.url()), format!("b={}", b.url()));
    let (listen, admin_at) = (addr.to_string(), admin.to_string());
    let mut child = proxy(&[
        "--listen",
        &listen,
        "--admin",
        &admin_at,
        "--upstream",
        &ua,
        "--upstream",
        &ub,
        "--client-token",
        "acme=TSS_ACME_TOKEN",
        "--client-tokens-file",
        file.to_str().unwrap(),
    ])
    .env("TSS_ACME_TOKEN", CLIENT_TOKEN)
    .env("TSS_BOLT_TOKEN", KEY_B)
    .spawn()
    .unwrap();
    wait_listening(addr).await;
    wait_listening(admin).await;
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{addr}/v1/chat");
    let served = |h: &http::HeaderMap| h["x-served-by"].to_str().unwrap().to_owned();
    // Round-robin: acme's conv-1 lands on a, bolt's (a session of its own) on b.
    for (header, token, account) in [
        ("x-api-key", CLIENT_TOKEN, "a"),
        ("x-goog-api-key", KEY_B, "b"),
    ]
    .into_iter()
    .cycle()
    .take(4)
    {
        let req = Request::post(&url)
            .header(header, token)
            .header("x-session-id", "conv-1");
        let (status, h, _) = call(&client, req).await;
        assert_eq!((status, served(&h).as_str()), (StatusCode::OK, account));
    }
    let bindings = |scope: &str| format!("http://{admin}/bindings?session=conv-1{scope}");
    let (status, _, body) = call(&client, Request::get(bindings("&scope=acme"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains(r#""auth":"a""#));
    let (status, _, body) = call(&client, Request::get(bindings("&scope=bolt"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains(r#""auth":"b""#));
    let (status, _, _) = call(&client, Request::get(bindings(""))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    drop(child.kill().await);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn one_token_for_two_tenants_or_a_bad_tenant_exits_2_without_echoing_the_token() {
    let out = run(proxy(&[
        "--upstream",
        "a=http://127.0.0.1:9",
        "--client-token",
        "acme=TSS_T1",
        "--client-token",
        "bolt=TSS_T2",
    ])
    .env("TSS_T1", CLIENT_TOKEN)
    .env("TSS_T2", CLIENT_TOKEN))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("same client token"), "{}", text(&out));
    assert!(!text(&out).contains(CLIENT_TOKEN), "{}", text(&out));

    for value in ["a/b=TSS_T1", &format!("acme={CLIENT_TOKEN}")] {
        let out = run(&mut proxy(&["--client-token", value])).await;
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(!text(&out).contains(CLIENT_TOKEN), "{}", text(&out));
    }
}

/// The proxy's allocator is mimalloc, linked as the process's `malloc`: asked to, it
/// says so as it starts. Fails when it is no longer linked (and the proxy falls back to
/// glibc's allocator without a word).
#[cfg(unix)]
#[tokio::test]
async fn the_proxy_allocates_with_mimalloc() {
    let out = run(proxy(&["--help"]).env("MIMALLOC_VERBOSE", "1")).await;
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mimalloc: process init"), "{err}");
}

/// The client listener's backlog follows `--max-connections` (within the kernel's
/// `somaxconn`), not Tokio's 1 024: a burst of new connections waits in the accept queue
/// instead of overflowing it into SYN cookies. Read from `ss` (iproute2), whose `Send-Q`
/// of a listening socket is its backlog; without `ss` or with `somaxconn` at 1 024 or
/// less there is nothing to tell apart, and the test says so and passes.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_listen_backlog_follows_max_connections() {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if somaxconn <= 1024 || std::process::Command::new("ss").arg("-V").output().is_err() {
        eprintln!("skipped: no `ss`, or net.core.somaxconn {somaxconn} <= 1024");
        return;
    }
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen = addr.to_string();
    let child = proxy(&["--listen", &listen, "--max-connections", "3000"])
        .spawn()
        .unwrap();
    wait_listening(addr).await;
    let out = std::process::Command::new("ss")
        .args(["-Hlnt", &format!("sport = :{}", addr.port())])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // `LISTEN 0 4096 127.0.0.1:PORT 0.0.0.0:*`: state, Recv-Q, Send-Q (the backlog), ...
    let backlog: u32 = text
        .split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("no listening socket in `ss` output: {text:?}"));
    assert_eq!(backlog, somaxconn.min(3000), "{text}");
    let (code, log) = stop_and_read(child).await;
    assert_eq!(code, Some(0), "{log}");
}

/// SIGTERM, then the proxy's exit code and everything it printed (stdout, then stderr).
async fn stop_and_read(mut child: Child) -> (Option<i32>, String) {
    use tokio::io::AsyncReadExt;
    terminate(&child);
    let status = within("exit", child.wait()).await.unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut stdout = child.stdout.take().unwrap();
    stdout.read_to_end(&mut out).await.unwrap();
    let mut stderr = child.stderr.take().unwrap();
    stderr.read_to_end(&mut err).await.unwrap();
    out.extend_from_slice(&err);
    (status.code(), String::from_utf8_lossy(&out).into_owned())
}

/// The fields of each `proxied` line the proxy logs under `rust_log` for three
/// requests (two of one session, one without), and its whole log.
async fn proxied_fields(rust_log: &str) -> (Vec<String>, String) {
    let a = Account::start("a", Mode::Stream).await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (ua, listen) = (format!("a={}", a.url()), addr.to_string());
    let child = proxy(&["--listen", &listen, "--upstream", &ua])
        .env("RUST_LOG", rust_log)
        .spawn()
        .unwrap();
    wait_listening(addr).await;
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{addr}/v1/chat?q=%22x%22");
    call(&client, Request::get(&url).header("x-session-id", "conv-1")).await;
    call(&client, Request::get(&url).header("x-session-id", "conv-1")).await;
    call(&client, Request::post(&url)).await;
    drop(client);
    let (_, log) = stop_and_read(child).await;
    let fields = log
        .lines()
        .filter_map(|l| l.split_once(" proxied ").map(|(_, f)| f.to_owned()))
        .collect();
    (fields, log)
}

/// The access line is written straight to the log writer, except inside a span (with
/// the sticky layer's `debug` span on), where it goes through `tracing`: both write the
/// same fields. Fails when the two field lists of the `proxied` line part.
#[tokio::test]
async fn the_proxied_line_has_the_same_fields_written_directly_or_through_tracing() {
    let (direct, log) = proxied_fields("info").await;
    assert_eq!(direct.len(), 3, "{log}");
    assert!(!log.contains("sticky_session{"), "{log}");
    assert!(direct[0].starts_with("method=GET path=\"/v1/chat\" session=conv…(6 bytes) source=header:x-session-id upstream=a pick="), "{log}");
    assert!(
        direct[2].starts_with("method=POST path=\"/v1/chat\" session=- source=- upstream=a"),
        "{log}"
    );
    let (traced, log) = proxied_fields("info,tower_sticky_session=debug").await;
    // Each line in the layer's span: written by `tracing`'s formatter.
    let in_span = log
        .lines()
        .filter(|l| l.contains(" proxied ") && l.contains("sticky_session{"))
        .count();
    assert_eq!(in_span, 3, "{log}");
    assert_eq!(direct, traced, "{log}");
}

/// A `RUST_LOG` directive on a field of the access line (here `pick`, at `warn`) turns
/// the line off as it does the event, although the line is written without `tracing`;
/// the other `info` lines stay.
#[tokio::test]
async fn a_rust_log_directive_on_the_access_lines_fields_applies_to_it() {
    let (lines, log) = proxied_fields("info,proxy::app::failover[{pick}]=warn").await;
    assert!(lines.is_empty(), "{log}");
    assert!(log.contains("listening on"), "{log}");
}

#[tokio::test]
async fn the_proxied_log_line_says_failover_when_a_retry_served_not_pinned() {
    let a = Account::start("a", Mode::Stream).await;
    let b = Account::start("b", Mode::Stream).await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (ua, ub, listen) = (
        format!("a={}", a.url()),
        format!("b={}", b.url()),
        addr.to_string(),
    );
    let child = proxy(&["--listen", &listen, "--upstream", &ua, "--upstream", &ub])
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    wait_listening(addr).await;
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    let chat = || Request::get(format!("http://{addr}/v1/chat")).header("x-session-id", "conv-1");
    let (_, h, _) = call(&client, chat()).await;
    assert_eq!(h["x-served-by"], "a");
    let (_, h, _) = call(&client, chat()).await;
    assert_eq!(h["x-served-by"], "a");
    // The pin fails; b serves the retry.
    a.set(Mode::Status(500, None));
    let (status, h, _) = call(&client, chat()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["x-served-by"], "b");
    drop(client);

    let (_, log) = stop_and_read(child).await;
    let proxied: Vec<&str> = log.lines().filter(|l| l.contains(" proxied ")).collect();
    assert_eq!(proxied.len(), 3, "{log}");
    assert!(proxied[0].contains(r#"pick="round-robin""#), "{log}");
    assert!(proxied[1].contains(r#"pick="pinned""#), "{log}");
    assert!(
        proxied[2].contains("upstream=b") && proxied[2].contains(r#"pick="failover""#),
        "{log}"
    );
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("attempt failed"))
        .collect();
    assert!(
        failed.len() == 1 && failed[0].contains(r#"pick="pinned""#),
        "{log}"
    );
}

#[tokio::test]
async fn out_of_range_durations_and_sizes_exit_2_naming_the_flag_never_panic() {
    for (flag, value) in [
        ("--ttl", "40000000000"),
        ("--ttl", "18446744073709551616"),
        ("--cooldown", "1e300"),
        ("--upstream-timeout", "40000000000"),
        ("--idle-timeout", "1e10"),
        ("--header-timeout", "40000000000"),
        ("--grace", "40000000000"),
        ("--max-body-buffer", "18446744073709551615"),
        ("--max-body-buffer", "99999999999999999999"),
        ("--max-sessions", "18446744073709551615"),
        ("--max-connections", "18446744073709551615"),
        ("--workers", "0"),
        ("--workers", "1025"),
    ] {
        let out = run(&mut proxy(&[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "a=http://127.0.0.1:9",
            flag,
            value,
        ]))
        .await;
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {t}");
        assert!(t.contains(flag), "{flag} {value}: {t}");
        assert!(!t.contains("panicked"), "{flag} {value}: {t}");
    }
    // --fingerprint reads bodies: not with --no-body-session.
    let out = run(&mut proxy(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "a=http://127.0.0.1:9",
        "--fingerprint",
        "--no-body-session",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--fingerprint"), "{}", text(&out));
}

#[tokio::test]
async fn redis_env_reads_the_url_from_the_environment_and_never_prints_it() {
    let out = run(proxy(&[
        "--upstream",
        "a=http://127.0.0.1:9",
        "--redis-env",
        "TSS_REDIS_UNSET",
    ])
    .env_remove("TSS_REDIS_UNSET"))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("TSS_REDIS_UNSET"), "{}", text(&out));
    // Not both.
    let out = run(&mut proxy(&[
        "--upstream",
        "a=http://127.0.0.1:9",
        "--redis",
        "redis://127.0.0.1:9",
        "--redis-env",
        "TSS_REDIS_URL",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    if !cfg!(feature = "redis") {
        return;
    }
    // An invalid URL: exit 2 without the URL.
    let out = run(proxy(&[
        "--upstream",
        "a=http://127.0.0.1:9",
        "--redis-env",
        "TSS_REDIS_URL",
    ])
    .env("TSS_REDIS_URL", "ftp://:hunter2@127.0.0.1:9"))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!text(&out).contains("hunter2"), "{}", text(&out));

    // Redis down (nothing listens): the proxy starts, serves unsticky, says "redis".
    let a = Account::start("a", Mode::Stream).await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (listen, ua) = (addr.to_string(), format!("a={}", a.url()));
    let redis = format!("redis://:hunter2@127.0.0.1:{}", free_port());
    let child = proxy(&[
        "--listen",
        &listen,
        "--upstream",
        &ua,
        "--redis-env",
        "TSS_REDIS_URL",
    ])
    .env("RUST_LOG", "debug")
    .env("TSS_REDIS_URL", &redis)
    .spawn()
    .unwrap();
    wait_listening(addr).await;
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("http://{addr}/v1/chat")).header("x-session-id", "conv-1");
    let (status, _, _) = call(&client, req).await;
    assert_eq!(status, StatusCode::OK);
    drop(client);
    let (_, log) = stop_and_read(child).await;
    assert!(log.contains("bindings: redis"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
}

#[tokio::test]
async fn a_max_body_buffer_above_the_buffer_budget_exits_2() {
    let out = run(&mut proxy(&[
        "--upstream",
        "a=http://127.0.0.1:9",
        "--max-body-buffer",
        "2000",
        "--max-buffered-total",
        "1000",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--max-buffered-total"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_descriptor_limit_with_no_room_for_a_connection_exits_2() {
    let script = format!(
        "ulimit -n 100 && exec '{}' --upstream a=http://127.0.0.1:9",
        proxy_bin().display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = run(&mut cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("RLIMIT_NOFILE"), "{}", text(&out));
}
