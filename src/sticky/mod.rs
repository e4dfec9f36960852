//! The sticky session middleware: [`StickySessionLayer`], the [`StickySession`] service,
//! its [`ResponseFuture`] and its [`ResponseBody`].
//!
//! Read in the order a request travels; each file uses only the ones listed after it:
//!
//! - `layer.rs`: the configuration (builder methods) and the [`Layer`](tower_layer::Layer)
//!   impl; the configuration itself is [`Shared`](crate::core::Shared), in `core.rs`,
//!   because every service, future, body and learner reads it.
//! - `service.rs`: the request side — the session id and its source, the scope, the
//!   store lookup (answered at once by an in-memory store) and the one call of the
//!   inner service.
//! - `future.rs`: the response head — a networked store's pending lookup, then the
//!   inner service's answer, which commits, clears, or hands the decision to the body.
//! - `body.rs`: the first data frame — commit before it is handed on, clear when the body
//!   ends or fails before it.
//! - `request.rs`: what the request side hands the response side (`RequestCtx`), and
//!   what a store lookup's answer does to the request (the service applies an answer
//!   its store gave at once, the response future one that was pending).
//! - `decide.rs`: the decision table the future and the body follow, as one pure
//!   function.
//!
//! Below them, `crate::core` holds the store, the counters and the store operations
//! in flight. The behaviour is the table in the [crate docs](crate).

mod body;
mod decide;
mod future;
mod layer;
mod request;
mod service;

pub use self::body::ResponseBody;
pub use self::future::ResponseFuture;
pub use self::layer::StickySessionLayer;
pub use self::service::StickySession;
