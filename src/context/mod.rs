//! The request's pin and the account that served it, from anywhere inside the call.
//!
//! Gateways often pick the account deep inside a handler (a router inside the handler,
//! an upstream call several functions down, a handler with many early returns). Threading
//! [`PinnedAuth`] in and [`ServedBy`] out by hand through every path is where drop-in
//! integrations spend their lines. [`AccountContextLayer`], placed *inside*
//! [`StickySessionLayer`](crate::StickySessionLayer) (between it and your handlers), makes
//! both one line each:
//!
//! - [`current_pin`] returns the request's pin (and [`is_hard_pin`] whether it is a hard
//!   one), from any code that runs while the inner service's future is polled;
//! - [`report_served`] records the account that served; a response that carries no
//!   [`ServedBy`] of its own gets `ServedBy` of the reported account, so the sticky layer
//!   commits or clears as usual. A `ServedBy` the handler set itself wins.
//!
//! Both use a tokio task-local set while the inner future is polled, so they work in
//! the handler's own task — including through `async fn`s, `.await`s and upstream calls
//! made there (reqwest, hyper) — but not in a task the handler spawns. For that, take
//! the request's [`AccountSlot`] (a request extension, cheap to clone) into the task and
//! call [`AccountSlot::report`] there. Outside such a call, [`current_pin`] is `None` and
//! [`report_served`] returns `false`.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_sticky_session::context::{self, AccountContextLayer};
//! use tower_sticky_session::{AuthId, ServedBy, StickySessionLayer};
//!
//! // Deep inside the gateway: the deployment router, called by the handler.
//! fn route(deployments: &[&str]) -> AuthId {
//!     match context::current_pin() {
//!         Some(pin) if deployments.contains(&pin.as_str()) => pin,
//!         _ => AuthId::from(deployments[0]),
//!     }
//! }
//!
//! async fn handler(_req: Request<()>) -> Result<Response<Full<Bytes>>, Infallible> {
//!     let account = route(&["deploy-a", "deploy-b"]);
//!     // ... call the upstream with `account` ...
//!     context::report_served(account); // one line, wherever the call succeeded
//!     Ok(Response::new(Full::new(Bytes::from("data: hi\n\n"))))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut svc = ServiceBuilder::new()
//!     .layer(StickySessionLayer::new())
//!     .layer(AccountContextLayer::new())
//!     .service_fn(handler);
//! let req = Request::builder().header("sticky-session-id", "s1").body(()).unwrap();
//! let res = svc.ready().await.unwrap().call(req).await.unwrap();
//! assert_eq!(res.extensions().get::<ServedBy>().unwrap().0.as_str(), "deploy-a");
//! # }
//! ```
//!
//! [`PinnedAuth`]: crate::PinnedAuth
//! [`ServedBy`]: crate::ServedBy

mod future;
mod layer;
mod service;
mod slot;

pub use self::future::ResponseFuture;
pub use self::layer::AccountContextLayer;
pub use self::service::AccountContext;
pub use self::slot::{AccountSlot, current_pin, is_hard_pin, report_served};
