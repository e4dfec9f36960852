//! The example proxy's service in-process (`examples/proxy/app.rs`, served by `harness`)
//! over real sockets, against scripted upstream accounts on loopback: the binding table
//! end to end, failover, real clients' request shapes, authentication, limits and
//! hardening, WebSockets, and the admin listener.

#[path = "../support/mod.rs"]
mod support;

#[path = "../../examples/proxy/admin.rs"]
mod admin;
#[allow(dead_code, unused_imports)]
#[path = "../../examples/proxy/app.rs"]
mod app;
mod harness;

mod admin_listener;
mod auth;
mod clients;
mod e2e;
mod failover;
mod hardening;
mod limits;
mod log_format;
mod pool;
mod websocket;
mod workers;
