//! The example proxy as a black box: its binary (built with `cargo build --example
//! proxy`), run with the command-line contract of its docs, against scripted upstream
//! accounts on loopback. Exit codes, keys, client and admin tokens, and that no secret
//! reaches its output, even with `RUST_LOG=trace`.

#[path = "support/proxy_bin.rs"]
mod bin;
#[path = "support/proxy_upstream.rs"]
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::process::{Child, Command};

use bin::{feature_args, scrub_cargo_env};
use upstream::{Account, Mode, within};

const KEY_A: &str = "sk-alpha-7f3a9c0e1b2d";
const KEY_B: &str = "sk-bravo-4e8d2a6c9f10";
const CLIENT_TOKEN: &str = "ct-charlie-5b1e7d3f";
const ADMIN_TOKEN: &str = "at-delta-9c2f6a8e";
const SECRETS: [&str; 4] = [KEY_A, KEY_B, CLIENT_TOKEN, ADMIN_TOKEN];

/// The proxy binary, built once per test run.
fn proxy_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        scrub_cargo_env(&mut cmd);
        let out = cmd
            .args(["build", "--example", "proxy", "--message-format=json"])
            .args(feature_args())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(out.status.success(), "cargo build --example proxy failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                v["reason"] == "compiler-artifact"
                    && v["target"]["name"] == "proxy"
                    && v["target"]["kind"][0] == "example"
            })
            .and_then(|v| v["executable"].as_str().map(PathBuf::from))
            .expect("the proxy example's executable")
    })
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

async fn wait_listening(addr: SocketAddr) {
    within("the proxy listens", async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
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
    let mut child = proxy(&args)
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
    terminate(&child);
    let status = within("exit", child.wait()).await.unwrap();
    let mut out = Vec::new();
    let mut err = Vec::new();
    use tokio::io::AsyncReadExt;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut err)
        .await
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    assert_eq!(status.code(), Some(0), "{log}");
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
