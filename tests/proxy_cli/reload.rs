//! The example proxy reloading its configuration without a restart (SIGHUP, admin
//! `POST /reload`), as a black box over real sockets: a stream open across a reload
//! completes, a removed account gets no new request and loses its bindings, a rotated
//! key or client token is used from the next request on, and a bad file leaves the
//! running configuration untouched and says why.

use crate::support::{proxy_bin, upstream};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::process::{Child, Command};

use proxy_bin::{free_addr, wait_listening};
use upstream::{Account, Mode, within};

const KEY_OLD: &str = "sk-old-1a2b3c4d5e";
const KEY_NEW: &str = "sk-new-6f7a8b9c0d";
const TOKEN_OLD: &str = "ct-old-0a9b8c7d";
const TOKEN_NEW: &str = "ct-new-1e2f3a4b";

type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A proxy started from a config file it re-reads on reload.
struct Proxy {
    child: Child,
    path: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    client: TestClient,
}

impl Proxy {
    /// A proxy started from a file with `accounts` (its `[[account]]` and
    /// `[[client_token]]` part), listening on both ports.
    async fn start(name: &str, accounts: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tss-reload-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (listen, admin) = (free_addr(), free_addr());
        let path = dir.join("proxy.toml");
        write_config(&path, listen, admin, accounts);
        let child = Command::new(proxy_bin::proxy_binary())
            .arg("--config")
            .arg(&path)
            .env("TSS_RELOAD_KEY_OLD", KEY_OLD)
            .env("TSS_RELOAD_KEY_NEW", KEY_NEW)
            .env("TSS_RELOAD_TOKEN_OLD", TOKEN_OLD)
            .env("TSS_RELOAD_TOKEN_NEW", TOKEN_NEW)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        wait_listening(listen).await;
        wait_listening(admin).await;
        Self {
            child,
            path,
            listen,
            admin,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Rewrites the file (same ports) with `accounts`.
    fn write(&self, accounts: &str) {
        write_config(&self.path, self.listen, self.admin, accounts);
    }

    async fn request(&self, session: Option<&str>, token: &str) -> (StatusCode, String, String) {
        let mut req = Request::post(format!("http://{}/v1/chat", self.listen))
            .header("authorization", format!("Bearer {token}"));
        if let Some(s) = session {
            req = req.header("x-conv", s);
        }
        let res = within(
            "answer",
            self.client.request(req.body(Full::default()).unwrap()),
        )
        .await
        .unwrap();
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

    async fn admin_reload(&self) -> (StatusCode, serde_json::Value) {
        let req = Request::post(format!("http://{}/reload", self.admin))
            .body(Full::default())
            .unwrap();
        let res = within("reload", self.client.request(req)).await.unwrap();
        let status = res.status();
        let body = within("body", res.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    fn sighup(&self) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Stops the proxy; its stderr.
    async fn stop(mut self) -> String {
        let _ = self.child.start_kill();
        let mut stderr = self.child.stderr.take().expect("piped");
        let mut log = Vec::new();
        within("the proxy's log", async {
            let _ = self.child.wait().await;
            tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut log).await
        })
        .await
        .unwrap();
        String::from_utf8_lossy(&log).into_owned()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn write_config(path: &std::path::Path, listen: SocketAddr, admin: SocketAddr, accounts: &str) {
    let text = format!(
        "listen = \"{listen}\"\nadmin = \"{admin}\"\nsession_headers = [\"x-conv\"]\n\n{accounts}"
    );
    std::fs::write(path, text).unwrap();
}

fn account(name: &str, url: &str, key_env: &str) -> String {
    format!("[[account]]\nname = \"{name}\"\nurl = \"{url}\"\nkey_env = \"{key_env}\"\n\n")
}

fn token(env: &str) -> String {
    format!("[[client_token]]\nenv = \"{env}\"\n\n")
}

#[tokio::test]
async fn a_stream_open_across_a_sighup_reload_completes_and_the_next_request_uses_the_new_accounts()
{
    let a = Account::start(
        "a",
        Mode::Sse {
            chunks: 8,
            gap: Duration::from_millis(150),
        },
    )
    .await;
    let b = Account::start("b", Mode::Stream).await;
    let first = account("a", &a.url(), "TSS_RELOAD_KEY_OLD") + &token("TSS_RELOAD_TOKEN_OLD");
    let proxy = Proxy::start("stream", &first).await;

    // A stream starts on a.
    let req = Request::post(format!("http://{}/v1/chat", proxy.listen))
        .header("authorization", format!("Bearer {TOKEN_OLD}"))
        .body(Full::default())
        .unwrap();
    let res = within("answer", proxy.client.request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let frame = within("first chunk", body.frame()).await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "data: 1\n\n");

    // The file now names b only; SIGHUP.
    proxy.write(&(account("b", &b.url(), "TSS_RELOAD_KEY_OLD") + &token("TSS_RELOAD_TOKEN_OLD")));
    proxy.sighup();
    within("the reload serves b", async {
        loop {
            let (status, served, _) = proxy.request(None, TOKEN_OLD).await;
            if status == StatusCode::OK && served == "b" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Requests sent before the reload took effect went to a; none after it.
    let a_at_reload = a.count();

    // The old stream still runs on a, to its end.
    let rest = within("the rest of the stream", body.collect())
        .await
        .unwrap()
        .to_bytes();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.ends_with("data: 8\n\ndata: [DONE]\n\n"), "{rest}");
    assert_eq!(a.count(), a_at_reload, "a got no request after the reload");
    let log = proxy.stop().await;
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(log.contains("removed: a"), "{log}");
}

#[tokio::test]
async fn a_removed_account_gets_no_new_request_and_its_bindings_are_dropped() {
    let a = Account::start("a", Mode::Stream).await;
    let b = Account::start("b", Mode::Stream).await;
    let both = account("a", &a.url(), "TSS_RELOAD_KEY_OLD")
        + &account("b", &b.url(), "TSS_RELOAD_KEY_OLD")
        + &token("TSS_RELOAD_TOKEN_OLD");
    let proxy = Proxy::start("removed", &both).await;

    // Two sessions, one bound to each account (round-robin).
    let (_, s1, _) = proxy.request(Some("s-1"), TOKEN_OLD).await;
    let (_, s2, _) = proxy.request(Some("s-2"), TOKEN_OLD).await;
    assert_eq!((s1.as_str(), s2.as_str()), ("a", "b"));

    proxy.write(&(account("b", &b.url(), "TSS_RELOAD_KEY_OLD") + &token("TSS_RELOAD_TOKEN_OLD")));
    let (status, answer) = proxy.admin_reload().await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let summary = answer["reloaded"].as_str().unwrap();
    assert!(
        summary.contains("removed: a (1 binding(s) dropped)"),
        "{summary}"
    );

    // The status page and /metrics name the new generation.
    let req = Request::get(format!("http://{}/status.json", proxy.admin))
        .body(Full::default())
        .unwrap();
    let res = within("status", proxy.client.request(req)).await.unwrap();
    let body = within("body", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["config"]["generation"], 1, "{status}");
    let names: Vec<&str> = status["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b"]);

    let before = a.count();
    for session in ["s-1", "s-2", "s-3"] {
        for _ in 0..2 {
            let (status, served, _) = proxy.request(Some(session), TOKEN_OLD).await;
            assert_eq!(
                (status, served.as_str()),
                (StatusCode::OK, "b"),
                "{session}"
            );
        }
    }
    assert_eq!(a.count(), before, "the removed account got no new request");
    proxy.stop().await;
}

#[tokio::test]
async fn a_rotated_key_and_client_token_are_used_from_the_next_request_on() {
    let a = Account::start("a", Mode::Stream).await;
    let proxy = Proxy::start(
        "rotate",
        &(account("a", &a.url(), "TSS_RELOAD_KEY_OLD") + &token("TSS_RELOAD_TOKEN_OLD")),
    )
    .await;
    let (status, _, _) = proxy.request(None, TOKEN_OLD).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        a.seen()[0].headers["authorization"],
        format!("Bearer {KEY_OLD}")
    );

    proxy.write(&(account("a", &a.url(), "TSS_RELOAD_KEY_NEW") + &token("TSS_RELOAD_TOKEN_NEW")));
    let (status, answer) = proxy.admin_reload().await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(
        answer["reloaded"]
            .as_str()
            .unwrap()
            .contains("key variable changed: a"),
        "{answer}"
    );

    let (status, _, _) = proxy.request(None, TOKEN_OLD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old token is refused");
    let (status, _, _) = proxy.request(None, TOKEN_NEW).await;
    assert_eq!(status, StatusCode::OK);
    let seen = a.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].headers["authorization"],
        format!("Bearer {KEY_NEW}")
    );
    let log = proxy.stop().await;
    for secret in [KEY_OLD, KEY_NEW, TOKEN_OLD, TOKEN_NEW] {
        assert!(!log.contains(secret), "{log}");
    }
}

#[tokio::test]
async fn a_bad_file_leaves_the_running_configuration_untouched_and_says_why() {
    let a = Account::start("a", Mode::Stream).await;
    let good = account("a", &a.url(), "TSS_RELOAD_KEY_OLD") + &token("TSS_RELOAD_TOKEN_OLD");
    let proxy = Proxy::start("bad", &good).await;

    // An unknown key: line 16 (4 lines of head, 5 of account a, 3 of the token, then
    // the new account's 4th line).
    proxy.write(
        &(good.clone() + "[[account]]\nname = \"c\"\nurl = \"http://127.0.0.1:9\"\ncooldwn = 1\n"),
    );
    let (status, answer) = proxy.admin_reload().await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let why = answer["error"].as_str().unwrap();
    assert!(
        why.contains(&format!("{}:16:", proxy.path.display())),
        "{why}"
    );
    assert!(why.contains("cooldwn"), "{why}");

    // A key variable that is not set.
    proxy.write(&(account("a", &a.url(), "TSS_RELOAD_KEY_UNSET") + &token("TSS_RELOAD_TOKEN_OLD")));
    let (status, answer) = proxy.admin_reload().await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("TSS_RELOAD_KEY_UNSET")
    );

    // Still served as before, with the old key.
    let (status, served, _) = proxy.request(None, TOKEN_OLD).await;
    assert_eq!((status, served.as_str()), (StatusCode::OK, "a"));
    assert_eq!(
        a.seen()[0].headers["authorization"],
        format!("Bearer {KEY_OLD}")
    );
    let log = proxy.stop().await;
    assert!(
        log.contains("reload refused, the running configuration is kept"),
        "{log}"
    );
}
