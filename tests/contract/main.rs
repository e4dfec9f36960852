//! What the public types promise their users: bounds on bodies and stores, the
//! known-empty row of the behaviour table in the crate docs, the whole table through
//! every transport (`matrix`), the counters' consistency, and decided store operations
//! that outlive a dropped response.

#[path = "../support/mod.rs"]
mod support;

mod bounds;
mod known_empty;
mod matrix;
mod stats;
mod store_ops;
