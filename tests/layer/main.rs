//! The sticky layer through tower, hyper and axum: the behaviour table in the crate docs
//! row by row, where a session comes from, the decision header, `AccountContextLayer`,
//! upgraded connections, and the layer in real stacks and in a third-party gateway.
//!
//! Two tests of this area capture the layer's tracing output and run in binaries of their
//! own (`observability.rs`, `sources_span.rs`; see `Cargo.toml`).

#[path = "../support/mod.rs"]
mod support;

mod behaviour;
mod context;
mod decision_header;
mod drop_in;
mod sources;
mod upgrade;
mod whole_stack;
