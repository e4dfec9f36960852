//! The atomics of the hot table and of the stripe generations: `std`'s, or `loom`'s under
//! `--cfg sticky_loom`, where the model check of rules 1–3 (see the module docs) drives
//! them. (A cfg of the crate's own: under `--cfg loom`, which applies to every crate of
//! the build, tokio leaves out modules that the dev-dependencies need.)

#[cfg(sticky_loom)]
pub(super) use loom::sync::atomic::{AtomicU32, AtomicU64, fence};
#[cfg(not(sticky_loom))]
pub(super) use std::sync::atomic::{AtomicU32, AtomicU64, fence};
