//! Response-id affinity (`learn_response_ids(true)`): learning through tower and hyper
//! (`learn`), and learned ids shared by replicas over a real Redis (`redis_store`, with
//! the `redis` feature).

#[path = "../support/mod.rs"]
mod support;

mod learn;
#[cfg(feature = "redis")]
mod redis_store;
