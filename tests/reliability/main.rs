//! The reliability suite: a property test against a model of the behaviour table in the
//! crate docs, invariants under concurrency, floods of session ids, and injected failures
//! end to end.
//!
//! `hostile_input.rs` belongs here too but runs in a binary of its own (it installs a
//! global tracing subscriber; see `Cargo.toml`).

#[path = "../support/mod.rs"]
mod support;

mod concurrency;
mod failure_injection;
mod flood;
mod model;
