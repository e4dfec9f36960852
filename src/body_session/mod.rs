//! Session ids from JSON request bodies: a middleware for in front of
//! [`StickySessionLayer`](crate::StickySessionLayer).
//!
//! Many clients never send a session header but put a session id in the JSON body:
//! Codex's and OpenAI SDK apps' `prompt_cache_key`, Claude Code's `metadata.user_id`,
//! Gemini CLI's `request.session_id`, LiteLLM's `litellm_session_id`, the Responses API's
//! `conversation` and `previous_response_id`. [`SessionFromBodyLayer`] reads them:
//!
//! - A request whose body cannot matter is passed on **unread**: no body, a
//!   `Content-Type` that is neither `application/json` nor `…+json` (an absent one is
//!   read), a `Content-Encoding`, a `Content-Length` above the limit (default 16 MiB),
//!   or — only with [`response_id_with_header(false)`](SessionFromBodyLayer::response_id_with_header)
//!   — a valid session id in one of the [configured headers](SessionFromBodyLayer::headers)
//!   (default: [`KNOWN_CLIENT_HEADERS`](crate::KNOWN_CLIENT_HEADERS)).
//! - Otherwise the body is buffered, up to the limit, and [scanned](BODY_FIELDS) without
//!   building a DOM, faster than parsing it into a `serde_json::Value` (the figures are
//!   in `BENCHMARKS.md`, section "Session ids from request bodies"). The scan runs in
//!   the request's task when the body's last byte arrives, so a large body's scan is CPU
//!   time spent there. What it finds goes into the
//!   [`BodySignals`] request extension: the session id and the field it came from, the
//!   `previous_response_id`, the top-level `store` flag, and (opt-in) a conversation
//!   fingerprint.
//! - The request is handed on with the **same bytes** and the same headers (so the same
//!   `Content-Length`), as a [`BufferedBody`]. A body that outgrows the limit while being
//!   read is handed on as its buffered prefix and then the rest of the stream; a body
//!   that fails is handed on as the bytes read and then the same error. Not JSON,
//!   invalid JSON, too large, failed: forwarded unchanged, no `BodySignals`, counted by
//!   reason in [`BodySessionStats`]. Nothing is ever rejected.
//!
//! A debug event names the field a session came from, with the id redacted to a short
//! prefix.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_sticky_session::body_session::{BodySignals, BufferedBody, SessionFromBodyLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let body_layer = SessionFromBodyLayer::new();
//! let stats = body_layer.stats().clone();
//! let svc = ServiceBuilder::new()
//!     .layer(body_layer)
//!     // .layer(StickySessionLayer::new()...) goes here: it reads `BodySignals`.
//!     .service_fn(|req: Request<BufferedBody<Full<Bytes>>>| async move {
//!         let signals = req.extensions().get::<BodySignals>().cloned().unwrap();
//!         let session = signals.session.unwrap();
//!         assert_eq!(session.field, "metadata.user_id");
//!         assert_eq!(session.id.as_str(), "3f2a0d7e-1b9c-4c1e-9a51-0f6a2b8c4d10");
//!         // A retrying proxy can resend the exact bytes without buffering them again.
//!         let replay = req.body().bytes().cloned().unwrap();
//!         let forwarded = req.into_body().collect().await.unwrap().to_bytes();
//!         assert_eq!(replay, forwarded);
//!         Ok::<_, Infallible>(Response::new(forwarded))
//!     });
//!
//! let body = r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}],
//!   "metadata":{"user_id":"user_4b1d_account_9e0c_session_3f2a0d7e-1b9c-4c1e-9a51-0f6a2b8c4d10"}}"#;
//! let req = Request::post("/v1/messages")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from(body)))
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.body(), body.as_bytes()); // same bytes
//! assert_eq!(stats.snapshot().found_in("metadata.user_id"), 1);
//! # }
//! ```
//!
//! # Layer ordering
//!
//! Put it *outside* (before, in `ServiceBuilder` order) the sticky layer, which reads
//! [`BodySignals`], and inside request-decompression if you have one (a compressed body
//! is not read). The sticky layer and the inner service see `Request<BufferedBody<B>>`.
//! Put client authentication and rate limiting *outside* it too: a request whose body is
//! read reaches the inner service only once its last byte has arrived, so a request that
//! is going to be refused should be refused before it is buffered. A timeout outside it
//! also bounds how long a slow client may take to send its body.
//!
//! # Which value wins
//!
//! Headers first, then body fields in the order of [`BODY_FIELDS`], then the
//! fingerprint; a learned `previous_response_id` (resolved by the sticky layer) beats
//! them all. Within the body, the first field of [`BODY_FIELDS`] with a *valid* value
//! wins (an invalid one falls through to the next, as with headers), and a repeated key's
//! last occurrence counts. Values are JSON-unescaped before validation; a string with an
//! invalid escape never counts.
//!
//! # Response ids
//!
//! [`find_response_id`] finds the `resp_…` id in the first bytes of a response (a JSON
//! body's `id`, or `response.id` of a first SSE event `response.created`), for the
//! layer that learns which account created which response.

mod body;
mod fingerprint;
mod future;
mod layer;
pub(crate) mod scan;
mod service;
mod signals;
mod stats;

pub use self::body::BufferedBody;
pub use self::future::ResponseFuture;
pub use self::layer::{DEFAULT_MAX_BUFFER, SessionFromBodyLayer};
pub use self::service::SessionFromBody;
pub use self::signals::{BodySession, BodySignals, InvalidJson};
pub use self::stats::{BodySessionStats, BodySessionStatsSnapshot};
// Defined beside the code that uses them (the client rules beside the header rules, the
// response-id search beside the learner), public here.
pub use crate::extract::BODY_FIELDS;
pub use crate::learn::{ResponseIdScan, find_response_id};
