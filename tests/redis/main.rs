//! The Redis store against real `redis-server`s on free loopback ports (with the `redis`
//! feature): a single server, error replies, the near cache, Cluster and Sentinel.
//!
//! Three Redis tests run in binaries of their own because they capture or stall the
//! process's tracing output (`outage_log.rs`, `cluster_failover.rs`, `breaker_race.rs`;
//! see `Cargo.toml`).
#![cfg(feature = "redis")]

#[path = "../support/mod.rs"]
mod support;

mod cluster;
mod near_cache;
mod sentinel;
mod server_errors;
mod store;
