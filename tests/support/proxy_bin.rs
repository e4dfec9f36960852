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
    args
}
