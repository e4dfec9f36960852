//! `SessionFromBodyLayer`: through tower directly (`layer`) and in a real hyper stack over
//! TCP (`tcp`).
//!
//! `tracing.rs` captures the layer's debug events and runs in a binary of its own (see
//! `Cargo.toml`).

#[path = "../support/mod.rs"]
mod support;

mod layer;
mod tcp;
