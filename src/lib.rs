//! Sticky session routing for multi-account API proxies, as a [tower] middleware.
//!
//! An API gateway that holds several upstream *accounts* for one provider and spreads
//! requests over them breaks whatever the provider keeps per account — prompt caches,
//! conversation state, `previous_response_id` chains. [`StickySessionLayer`] keeps every
//! request of one client session on the account that last served it well, and lets the
//! session move the moment that account fails.
//!
//! # How it fits
//!
//! ```text
//! client ──▶ [ StickySessionLayer ] ──▶ inner service (your account picker / forwarder)
//!               │  request:  SessionId, BindingKey, PinnedAuth   (request extensions)
//!               │  response: ServedBy                              (response extension, set by inner)
//!               └─ ResponseBody<B> wraps the body: commits or clears the binding
//! ```
//!
//! 1. The layer reads the session id (an ordered list of header names or your function
//!    over the request parts, a JSON body field, a learned response id: see
//!    [where the session comes from](#where-the-session-comes-from)), validates it and
//!    inserts [`SessionId`], [`SessionSource`] and [`BindingKey`] into the request
//!    extensions.
//! 2. Unless the request already carries an explicit [`PinnedAuth`], it looks the
//!    `(scope, session)` binding up in the store and, on a hit, inserts `PinnedAuth`. A
//!    request that continues a learned response id is pinned instead to the account that
//!    created it, with [`HardPin`] next to `PinnedAuth`.
//! 3. Your inner service uses the pinned account if it can serve the request (otherwise it
//!    picks normally — a stale pin must never fail a request; a [`HardPin`] is the
//!    exception: that request is served by the pinned account or not at all) and reports
//!    the account that served as the response extension [`ServedBy`].
//! 4. The layer commits or clears the binding from what the response does:
//!
//! | what happens | binding for (scope, session) |
//! |---|---|
//! | response classified as failure (default: 429 and 5xx) | compare-and-delete: removed only if it still points at the failed account (`ServedBy`, else the pinned one; with [`blame_unserved_failures(false)`](StickySessionLayer::blame_unserved_failures), only `ServedBy`: a failure nobody served is the gateway's own) |
//! | inner service returns `Err` | compare-and-delete of the pinned account (nothing with `blame_unserved_failures(false)`) |
//! | success, body yields its first non-empty data frame | committed to `ServedBy` (renewing its TTL) *before* the frame is handed on |
//! | success, body ends without a data frame | compare-and-delete, nothing committed |
//! | success, body errors before the first data frame | compare-and-delete, nothing committed |
//! | body errors after the first data frame | binding kept |
//! | body dropped before the first data frame (client left) | nothing |
//! | success known to carry no body: the request was `HEAD`, the status is 204 or 304, `Content-Length: 0`, or the body's `is_end_stream()` — whatever the body type, and even if the server never polls the body | committed at once, before the response is handed on |
//! | other responses (e.g. 400, 404) | nothing: an existing binding is kept, none is created |
//! | `101 Switching Protocols` (a WebSocket or other upgrade the account accepted; for an HTTP/2 `CONNECT`, a 2xx) with `ServedBy` | committed at once, whatever the classifier says; afterwards the inner service acts on the binding through the request's [`Binding`] handle: renew it while the connection lives, compare-and-delete when the account fails inside it, learn response ids seen on it |
//!
//! Trailers and empty data frames never count as the first chunk. Clears triggered by the
//! response head finish before the response is handed on, so a client that retries
//! after a 429 is not pinned to the failed account again.
//!
//! A commit or clear, once decided, takes effect even if the [`ResponseFuture`] or
//! [`ResponseBody`] that decided it is dropped before the store finished it (a client
//! gone, an outer timeout): the unfinished operation is handed to the tokio runtime the
//! drop runs on, which completes it. Outside a tokio runtime it is dropped and counted as
//! a store error. The rule, and what it asks of a custom store, is on [`BindingStore`](crate::store::BindingStore).
//!
//! **Upgrades.** A request that asks for an upgrade (an HTTP/1.1 `Upgrade` header, such
//! as a WebSocket handshake, or an HTTP/2 `CONNECT`) and has a session id, or is seen
//! with response-id learning on, carries a [`Binding`] in its request extensions. An
//! upgraded connection has no response body for the layer to watch, so the account's
//! acceptance commits the binding at once and the inner service, which relays the
//! connection, reports what happens inside it through the handle. HTTP/2 extended CONNECT
//! (RFC 8441, WebSockets over HTTP/2) answers 200 rather than 101: the layer treats a 2xx
//! to a `CONNECT` as the accepted upgrade. The request side is unchanged: an upgrade
//! request is pinned like any other.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_sticky_session::{AuthId, PinnedAuth, ServedBy, StickySessionLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // The account picker: honours the pin, reports who served.
//! let picker = tower::service_fn(|req: Request<()>| async move {
//!     let account = match req.extensions().get::<PinnedAuth>() {
//!         Some(PinnedAuth(pinned)) => pinned.clone(), // a real picker checks it can serve
//!         None => AuthId::from("account-b"),          // round-robin, least loaded, ...
//!     };
//!     let mut res = Response::new(Full::new(Bytes::from("data: hello\n\n")));
//!     res.extensions_mut().insert(ServedBy(account));
//!     Ok::<_, Infallible>(res)
//! });
//!
//! let layer = StickySessionLayer::new();
//! let store = layer.store().clone();
//! let mut svc = ServiceBuilder::new().layer(layer).service(picker);
//!
//! let req = || Request::builder().header("sticky-session-id", "conv-1").body(()).unwrap();
//! let res = svc.ready().await.unwrap().call(req()).await.unwrap();
//! // Reading the first chunk commits the binding.
//! let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap();
//! assert_eq!(body.to_bytes(), "data: hello\n\n");
//!
//! // The next request of the session is pinned to account-b.
//! let res = svc.ready().await.unwrap().call(req()).await.unwrap();
//! assert_eq!(res.extensions().get::<ServedBy>().unwrap().0.as_str(), "account-b");
//! # let _ = store;
//! # }
//! ```
//!
//! # Session ids
//!
//! A session id is 1 to 256 bytes (see [`StickySessionLayer::max_session_id_len`]) of
//! visible ASCII, `0x21..=0x7E`. Anything else — empty, too long, spaces, tabs, control
//! characters, DEL, bytes ≥ 0x80, or the header repeated with *different* values (identical
//! repeats count as one) — is not a session: the request is served without stickiness, a
//! `debug` event records the reason and an escaped 8-byte prefix of the value, and
//! [`StatsSnapshot::invalid`] counts it. With
//! [`reject_invalid(true)`](StickySessionLayer::reject_invalid) such requests get
//! `400 Bad Request` with a plain-text reason instead. A request without any session
//! header is never rejected.
//!
//! The default header is [`sticky-session-id`](DEFAULT_SESSION_HEADER), not the generic
//! `x-session-id`, which other software uses for other things. Accept aliases explicitly
//! with [`StickySessionLayer::headers`]: the first header *present with a valid value* wins,
//! in the order given. Logs never hold a whole session id: a valid one appears as
//! [`SessionId::redacted`] (a 4-byte prefix and the length), an invalid value as an
//! escaped prefix of at most 8 bytes.
//!
//! # Where the session comes from
//!
//! First valid source wins; every source gets the same validation:
//!
//! 1. **A learned response id** (opt-in, [`StickySessionLayer::learn_response_ids`]): a
//!    request whose body's `previous_response_id` names a response this layer saw
//!    account A create is pinned to A with [`PinnedAuth`] *and* [`HardPin`] (only A can
//!    resolve the chain), ahead of every other source. Answers compressed with gzip,
//!    deflate, br or zstd are learned from with the `learn-compressed` feature (a
//!    bounded prefix of a copy is decoded); a `"store": false` request's is not.
//! 2. **Headers**, in the configured order ([`StickySessionLayer::headers`];
//!    [`StickySessionLayer::known_client_headers`] for the headers real clients send,
//!    [`KNOWN_CLIENT_HEADERS`]), or the [session function](StickySessionLayer::session_fn).
//! 3. **A JSON body field**, read by [`SessionFromBodyLayer`](crate::body_session::SessionFromBodyLayer) in front of this layer,
//!    which puts what it found into the [`BodySignals`](crate::body_session::BodySignals) request extension.
//! 4. **The conversation fingerprint**, when `SessionFromBodyLayer` computes one.
//!
//! An invalid header value falls through to the next source, like an invalid alias. The
//! layer inserts [`SessionSource`] next to [`SessionId`] (`Header(name)`,
//! `BodyField(field)`, `Fingerprint`, `Function`, or `ResponseId` for a hard-pinned
//! request without a session of its own), records it as the span's `source` field and
//! counts it in [`StatsSnapshot::sessions_by_source`].
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_sticky_session::{body_session::SessionFromBodyLayer, StickySessionLayer};
//!
//! # let picker = tower::service_fn(|_: http::Request<tower_sticky_session::body_session::BufferedBody<http_body_util::Full<bytes::Bytes>>>| async {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
//! # });
//! let svc = ServiceBuilder::new()
//!     .layer(SessionFromBodyLayer::new())            // body fields, previous_response_id
//!     .layer(
//!         StickySessionLayer::new()
//!             .known_client_headers()                // Claude Code, Codex, OpenCode, ...
//!             .learn_response_ids(true),             // resp_… → the account that made it
//!     )
//!     .service(picker);
//! # let _ = svc;
//! ```
//!
//! # Scopes
//!
//! Bindings are keyed by `(scope, session)`. The scope is a function of the request parts
//! ([`StickySessionLayer::scope_fn`]): provider, model family, tenant — anything that
//! decides which accounts *can* serve a request. Without a scope, a session that talks to
//! two providers would pin requests for one provider to the other's account.
//!
//! # Store, capacity and expiry
//!
//! The default store, [`MemoryStore`](crate::store::MemoryStore), holds at most 100 000 bindings (configurable) for
//! one hour (configurable) after the last successful response; there is no sweeper
//! thread and no global lock. To keep the hit path a read, a commit that finds a proven
//! binding already on the same account rewrites it only once it is older than a
//! sixteenth of the TTL, so a binding expires between 15/16 of the TTL and the TTL after
//! the session's last success; after a hit's lookup, that commit usually needs no store
//! access at all (the layer hands the store what its lookup saw). Keys are a keyed 64-bit
//! hash of `(scope, session)`: a binding costs the same whatever the session id's length,
//! and session ids are not kept in memory (the collision odds and their benign effect are
//! on [`MemoryStore`](crate::store::MemoryStore)).
//!
//! A binding proven by a second success is never evicted by session ids that are used
//! once, however many: [`MemoryStore`](crate::store::MemoryStore) keeps bindings with one success in a small probation
//! segment (an eighth of the store by default), where one-off ids compete only among
//! themselves, and moves a binding to the protected segment at its second success on the
//! same account. A new session binds at its first success and is found at its second
//! request if that comes before `probation` other new bindings have been made (under a
//! flood of `r` one-off ids per second: within `probation / r` seconds; 12.5 s at 1 000
//! ids/s with the defaults). `RELIABILITY.md`, "Floods", has the figures, including what a
//! flood of ids each used twice does.
//!
//! Stores are pluggable ([`BindingStore`](crate::store::BindingStore)). A store's operations return futures named by
//! associated types: the in-memory store answers with `std::future::Ready` (no allocation,
//! resolved in the same poll), and the layer calls the inner service directly when the
//! lookup is already resolved; a networked store's lookup is awaited inside
//! [`ResponseFuture`] before the inner service is called. Store failures are never the
//! client's problem: a failed lookup is a miss, a failed commit or clear is logged (at
//! most one `warn` a second) and counted in [`StatsSnapshot::store_errors`].
//!
//! # Layer ordering
//!
//! Put [`StickySessionLayer`] *inside* (closer to the account picker than) the tower-http
//! layers that change or end bodies:
//!
//! ```
//! use std::time::Duration;
//! use http::StatusCode;
//! use tower::ServiceBuilder;
//! use tower_http::{compression::CompressionLayer, timeout::TimeoutLayer, trace::TraceLayer};
//! use tower_sticky_session::StickySessionLayer;
//!
//! # let picker = tower::service_fn(|_: http::Request<()>| async {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
//! # });
//! let svc = ServiceBuilder::new()              // runs top to bottom on the request
//!     .layer(TraceLayer::new_for_http())       // sees everything, including our 400s
//!     .layer(TimeoutLayer::with_status_code(StatusCode::GATEWAY_TIMEOUT, Duration::from_secs(60)))
//!     .layer(CompressionLayer::new())          // compresses what the sticky body passes on
//!     .layer(StickySessionLayer::new())        // sees the upstream's own frames and status
//!     .service(picker);
//! # let _ = svc;
//! ```
//!
//! - **Trace** outside: its span covers the whole request, and our `debug`/`trace` events
//!   land inside it.
//! - **Timeout** outside: a request that times out drops our future or body — "dropped
//!   before the first data frame" — which leaves the binding alone, as it should (the
//!   account did not fail; the client's patience ran out). A commit or clear already
//!   decided when the timeout fires still completes (see above). If you want a timeout to count
//!   as the account's failure, put the timeout *inside* the sticky layer so the inner
//!   service returns an error or a 5xx to it.
//! - **Compression** outside: the sticky body then judges the upstream's real frames, and
//!   the commit happens before the first compressed byte can leave.
//!   tower-http's `TimeoutLayer` builds its 408/504 response with `Default::default()`,
//!   so it needs a response body type with `Default` (`Full`, axum's `Body`).
//!   [`ResponseBody`] is `Default` when its inner body is; hyper's `Incoming` (a
//!   forwarding proxy's body) and `StreamBody` are not. There, use
//!   `tower::timeout::TimeoutLayer` (an error, turned into a response by axum's
//!   `HandleErrorLayer` or your own `map_result`), or map the body to
//!   `axum::body::Body` first.
//! - **[`SessionFromBodyLayer`](crate::body_session::SessionFromBodyLayer)** (session ids from JSON bodies) goes *outside* the
//!   sticky layer, directly in front of it, and *inside* authentication and request-body
//!   limits: it buffers up to its limit, and an unauthenticated client should not be able
//!   to make it do so.
//! - With `axum::Router::layer`, layers run bottom to top: call `.layer(StickySessionLayer)`
//!   *before* (below) the tower-http layers, or pass one `ServiceBuilder` as above.
//!
//! # Where things live
//!
//! Each public item has one path. The crate root holds the sticky layer
//! ([`StickySessionLayer`], its service, future and body) and the vocabulary it shares
//! with the inner service and the stores ([`SessionId`], [`AuthId`], [`PinnedAuth`],
//! [`ServedBy`], [`BindingKey`], [`Stats`]…). The stores and their trait live in
//! [`store`] (`store::MemoryStore`, `store::RedisStore`, `store::BindingStore`); the
//! body reader in [`body_session`]; the account context for gateways that pick
//! accounts deeper in their stack in [`context`]. Counters of `#[non_exhaustive]`
//! enums are read per variant or listed by the snapshot (e.g.
//! [`StatsSnapshot::clear_attempts_by_reason`]), never as fixed-size arrays, so a new
//! variant is not a breaking change.
//!
//! # Tower behaviour
//!
//! `poll_ready` is delegated; the error type is the inner service's; no future or body is
//! boxed. [`ResponseBody`] forwards `size_hint` and `is_end_stream` exactly, so
//! `Content-Length` responses stay `Content-Length`.
//!
//! - **`S: Clone`.** With a store whose lookup does not resolve at once (a networked
//!   store), the service that was polled ready moves into the response future and a
//!   clone takes its place (tower's "be careful when cloning inner services"), so the
//!   inner service must be `Clone`. With [`MemoryStore`](crate::store::MemoryStore) the clone is never made, but the
//!   bound stays: it is chosen per store *type*, and expressing "only for stores that can
//!   be pending" would need every [`BindingStore`](crate::store::BindingStore) to declare it. For a boxed service use
//!   `tower::util::BoxCloneService` (or `BoxCloneSyncService`) instead of `BoxService`; a
//!   service that cannot be cloned at all can be wrapped in `tower::buffer::Buffer` (see
//!   [`StickySession`]).
//! - **Reserved capacity.** With a networked store, the ready service moved into a
//!   [`ResponseFuture`] keeps whatever its `poll_ready` reserved (a `Buffer` slot, a
//!   `ConcurrencyLimit` permit) until the lookup is done and the request is passed on,
//!   or until the future is dropped. A future created but not polled holds that capacity
//!   all along: poll or drop response futures promptly, as with any tower service.
//! - **Bodies.** [`ResponseBody`] is a body for any inner body whose data type is
//!   `'static`. Strict-mode rejections carry their message when that data type is
//!   [`bytes::Bytes`] (hyper, axum and http-body-util bodies); with another data type
//!   the `400` has an empty body.
//!
//! [tower]: https://docs.rs/tower

#![doc(html_root_url = "https://docs.rs/tower-sticky-session/0.1.0")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body_session;
mod classify;
pub mod context;
mod core;
mod extract;
mod learn;
mod stats;
mod sticky;
pub mod store;
mod types;
mod upgrade;

pub use crate::classify::{ClassifyResponse, ResponseClass, StatusClassifier};
pub use crate::extract::KNOWN_CLIENT_HEADERS;
pub use crate::extract::{
    DEFAULT_MAX_SESSION_ID_LEN, DEFAULT_SESSION_HEADER, InvalidSessionId, Redacted, SessionId,
};
pub use crate::stats::{ClearReason, DECISION_HEADER, Decision, Stats, StatsSnapshot};
pub use crate::sticky::{ResponseBody, ResponseFuture, StickySession, StickySessionLayer};
pub use crate::types::{
    AuthId, BindingKey, HardPin, PinnedAuth, Scope, ServedBy, SessionSource, SessionSourceKind,
};
pub use crate::upgrade::Binding;

/// Compiles the README's examples.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
