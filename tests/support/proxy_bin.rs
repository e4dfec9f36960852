//! Building the proxy example from inside a test: a nested `cargo build --example proxy`
//! with the crate features this test was built with ([`feature_args`]) and cargo's
//! per-test environment removed ([`scrub_cargo_env`]), so that it reuses what `cargo test`
//! already built instead of rebuilding dependencies.

/// Removes what cargo set in this test's environment for the test itself (CARGO_PKG_NAME,
/// CARGO_MANIFEST_DIR, ...): build scripts (ring's) re-run when those change, so a
/// nested `cargo build` that inherited them would rebuild dependencies, and the next
/// ordinary build would rebuild them back.
pub(crate) fn scrub_cargo_env(cmd: &mut std::process::Command) {
    const KEEP: [&str; 8] = [
        "CARGO_HOME",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_",
        "CARGO_REGISTRIES_",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_TERM_",
        "CARGO_PROFILE_",
    ];
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if (k.starts_with("CARGO_") && !KEEP.iter().any(|p| k.starts_with(p))) || k == "OUT_DIR" {
            cmd.env_remove(k);
        }
    }
}

/// The crate's features as this test was built with them, for the nested `cargo build`:
/// it then reuses the library `cargo test` already built (`--all-features` or not).
pub(crate) fn feature_args() -> Vec<&'static str> {
    let mut args = vec!["--no-default-features"];
    if cfg!(feature = "redis") {
        args.extend(["--features", "redis"]);
    }
    if cfg!(feature = "learn-compressed") {
        args.extend(["--features", "learn-compressed"]);
    }
    args
}

/// The proxy example's binary (debug profile), built once per test binary (process) with
/// [`feature_args`]. (The load test builds its own, in the profile it runs in.)
pub(crate) fn proxy_binary() -> &'static std::path::PathBuf {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        scrub_cargo_env(&mut cmd);
        let out = cmd
            .args(["build", "--example", "proxy", "--message-format=json"])
            .args(feature_args())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(std::process::Stdio::inherit())
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
            .and_then(|v| v["executable"].as_str().map(std::path::PathBuf::from))
            .expect("the proxy example's executable")
    })
}

/// A free loopback address (bound, then released) for a proxy to listen on.
pub(crate) fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Waits (at most 20 s) until something accepts connections on `addr`.
pub(crate) async fn wait_listening(addr: std::net::SocketAddr) {
    let wait = async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), wait)
        .await
        .expect("timed out: the proxy listens");
}
