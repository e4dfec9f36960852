//! Helpers shared by the integration tests. Every test binary — an area's `main.rs`, or
//! a test that needs a process of its own (see `Cargo.toml`) — pulls in this whole tree
//! with `#[path = "../support/mod.rs"] mod support;` and uses what it needs; helpers of
//! one area only live in that area's directory.
//!
//! - [`scripted`]: a scripted inner service whose reply travels with the request,
//!   channel-fed bodies, a hyper server and client (the layer's own tests).
//! - [`upstream`]: scripted upstream accounts on loopback (the gateway and proxy tests).
//! - [`proxy_bin`]: building and starting the example proxy's binary (the black-box tests).
//! - [`redis_server`], [`redis_cluster`], [`redis_sentinel`]: real Redis deployments on
//!   free loopback ports; [`redis_store_util`] and [`redis_load`]: keys, bounded polling
//!   and steady load on stores over them (with the `redis` feature).
#![allow(dead_code)]

pub(crate) mod proxy_bin;
pub(crate) mod redis_cluster;
#[cfg(feature = "redis")]
pub(crate) mod redis_load;
pub(crate) mod redis_sentinel;
pub(crate) mod redis_server;
#[cfg(feature = "redis")]
pub(crate) mod redis_store_util;
pub(crate) mod scripted;
pub(crate) mod upstream;
