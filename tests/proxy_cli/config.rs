//! The example proxy's `--config FILE` as a black box: its binary started from a TOML
//! file alone, a flag winning over the file, and a bad file refused at start (exit 2)
//! naming the line, never printing a secret written where a name belongs.

use crate::support::{proxy_bin, upstream};

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::process::{Child, Command};

use proxy_bin::{free_addr, wait_listening};
use upstream::{Account, Mode, within};

const KEY_A: &str = "sk-alpha-7f3a9c0e1b2d";
const KEY_B: &str = "sk-bravo-4e8d2a6c9f10";
const CLIENT_TOKEN: &str = "ct-charlie-5b1e7d3f";

fn proxy(args: &[&str]) -> Command {
    let mut cmd = Command::new(proxy_bin::proxy_binary());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env("TSS_CFG_KEY_A", KEY_A)
        .env("TSS_CFG_KEY_B", KEY_B)
        .env("TSS_CFG_TOKEN", CLIENT_TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A file holding a test's configuration, in a directory of its own that is removed
/// when the test ends.
struct ConfigFile(PathBuf);

impl std::ops::Deref for ConfigFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A file `name` holding `body` in a fresh directory of the test's own.
fn write_config(name: &str, body: &str) -> ConfigFile {
    let dir = std::env::temp_dir().join(format!("tss-config-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, body).unwrap();
    ConfigFile(path)
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs the proxy to its exit (a bad file must stop it at once).
async fn refused(path: &Path) -> (Option<i32>, String) {
    let out = within("the proxy exits", proxy(&["--config", arg(path)]).output())
        .await
        .unwrap();
    (out.status.code(), text(&out))
}

type TestClient = Client<HttpConnector, Full<Bytes>>;

async fn get(client: &TestClient, url: &str) -> (StatusCode, String, String) {
    let req = Request::get(url)
        .header("authorization", format!("Bearer {CLIENT_TOKEN}"))
        .body(Full::default())
        .unwrap();
    let res = within("answer", client.request(req)).await.unwrap();
    let served = res
        .headers()
        .get("x-served-by")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let status = res.status();
    let body = within("body", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, served, String::from_utf8_lossy(&body).into_owned())
}

async fn stop(mut child: Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

#[tokio::test]
async fn a_file_alone_starts_a_proxy_that_serves_with_the_files_keys_and_tokens() {
    let a = Account::start("a", Mode::Stream).await;
    let listen = free_addr();
    let path = write_config(
        "alone",
        &format!(
            r#"listen = "{listen}"
key_header = "x-api-key"
session_headers = ["x-conv"]
ttl = 600
cooldown = 2.5

[[account]]
name = "a"
url = "{}"
key_env = "TSS_CFG_KEY_A"

[[client_token]]
env = "TSS_CFG_TOKEN"
"#,
            a.url()
        ),
    );
    let child = proxy(&["--config", arg(&path)]).spawn().unwrap();
    wait_listening(listen).await;
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{listen}/v1/chat");
    let (status, served, body) = get(&client, &url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, "a");
    assert_eq!(body, "chunk-1\nchunk-2\nchunk-3\n");
    let seen = a.seen();
    assert_eq!(
        seen[0].headers["x-api-key"], KEY_A,
        "the file's key header and key"
    );
    assert!(!seen[0].headers.contains_key("authorization"));

    // The file's client token is required.
    let req = Request::get(&url).body(Full::default()).unwrap();
    let res = within("answer", client.request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    stop(child).await;
}

#[tokio::test]
async fn a_flag_given_on_the_command_line_wins_over_the_file() {
    let a = Account::start("a", Mode::Stream).await;
    let b = Account::start("b", Mode::Stream).await;
    let (file_listen, flag_listen) = (free_addr(), free_addr());
    let path = write_config(
        "override",
        &format!(
            r#"listen = "{file_listen}"

[[account]]
name = "a"
url = "{}"
key_env = "TSS_CFG_KEY_A"

[[client_token]]
env = "TSS_CFG_TOKEN"
"#,
            a.url()
        ),
    );
    let listen = flag_listen.to_string();
    let ub = format!("b={}", b.url());
    let child = proxy(&[
        "--config",
        arg(&path),
        "--listen",
        &listen,
        "--upstream",
        &ub,
        "--upstream-key",
        "b=TSS_CFG_KEY_B",
    ])
    .spawn()
    .unwrap();
    wait_listening(flag_listen).await;
    assert!(
        tokio::net::TcpStream::connect(file_listen).await.is_err(),
        "--listen replaced the file's listen"
    );
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    for _ in 0..2 {
        let (status, served, _) = get(&client, &format!("http://{flag_listen}/v1")).await;
        assert_eq!((status, served.as_str()), (StatusCode::OK, "b"));
    }
    assert_eq!(a.count(), 0, "--upstream replaced the file's accounts");
    assert_eq!(
        b.seen()[0].headers["authorization"],
        format!("Bearer {KEY_B}")
    );
    stop(child).await;
}

#[tokio::test]
async fn an_unknown_key_exits_2_naming_the_file_line_and_key() {
    let path = write_config(
        "unknown",
        "ttl = 60\n\n[[account]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\ncoldown = 5\n",
    );
    let (code, t) = refused(&path).await;
    assert_eq!(code, Some(2), "{t}");
    assert!(t.contains(&format!("{}:6:", path.display())), "{t}");
    assert!(t.contains("unknown field `coldown`"), "{t}");
}

#[tokio::test]
async fn a_bad_value_exits_2_naming_the_file_line_and_reason() {
    // Out of range for its flag.
    let path = write_config("range", "listen = \"127.0.0.1:0\"\nttl = 0\n");
    let (code, t) = refused(&path).await;
    assert_eq!(code, Some(2), "{t}");
    assert!(t.contains(&format!("{}:2:", path.display())), "{t}");
    assert!(t.contains("ttl") && t.contains("out of range"), "{t}");

    // The wrong type.
    let path = write_config("type", "# timeouts\n\nidle_timeout = \"soon\"\n");
    let (code, t) = refused(&path).await;
    assert_eq!(code, Some(2), "{t}");
    assert!(t.contains(&format!("{}:3:", path.display())), "{t}");
    assert!(t.contains("invalid type"), "{t}");

    // Not TOML at all.
    let path = write_config("syntax", "ttl = 60\nthis is not toml\n");
    let (code, t) = refused(&path).await;
    assert_eq!(code, Some(2), "{t}");
    assert!(t.contains(&format!("{}:2:", path.display())), "{t}");
}

#[tokio::test]
async fn a_secret_written_inline_is_refused_and_never_printed() {
    let secret = "sk-live-Zq81Xw93Lk27Pd44Rt";
    for (name, body, line) in [
        // A key where its variable's name belongs.
        (
            "key-env",
            format!(
                "[[account]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\nkey_env = \"{secret}\"\n"
            ),
            4,
        ),
        // A key under a key of its own.
        (
            "key",
            format!(
                "[[account]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\nkey = \"{secret}\"\n"
            ),
            4,
        ),
        // A client token where its variable's name belongs.
        (
            "token-env",
            format!("\n[[client_token]]\ntenant = \"t\"\nenv = \"{secret}\"\n"),
            4,
        ),
        // A token in a numeric field: the type error does not quote it.
        ("numeric", format!("ttl = \"{secret}\"\n"), 1),
        // A Redis URL with a password.
        (
            "redis",
            format!("redis = \"redis://user:{secret}@127.0.0.1:6379\"\n"),
            1,
        ),
    ] {
        let path = write_config(&format!("secret-{name}"), &body);
        let (code, t) = refused(&path).await;
        assert_eq!(code, Some(2), "{name}: {t}");
        assert!(!t.contains(secret), "{name}: the secret was printed: {t}");
        assert!(
            t.contains(&format!("{}:{line}:", path.display())),
            "{name}: {t}"
        );
    }
}
