//! The example proxy as a black box: its binary (built once per run by
//! `support::proxy_bin`) started with the command-line contract of its docs, against
//! scripted upstream accounts on loopback: exit codes and secrets (`cli`), `--config`
//! files (`config`), reloads (`reload`), the status page (`status`), and two replicas
//! sharing a real Redis (`redis_replicas`, with the `redis` feature).
//!
//! The load run (`load.rs`, ignored by default) is a binary of its own, `proxy_load`
//! (see `Cargo.toml`).

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod config;
#[cfg(feature = "redis")]
mod redis_replicas;
mod reload;
mod status;
