//! Upgraded connections (WebSocket and other `Upgrade`s): the binding after the account
//! accepted the upgrade, and the [`Binding`] handle the inner service keeps for the
//! connection's lifetime.
//!
//! A request that asks for an upgrade (an HTTP/1.1 `Upgrade` header, or an HTTP/2
//! `CONNECT`, RFC 8441's extended CONNECT) and has a session (or learns response ids)
//! gets a [`Binding`] in its request extensions. When the response is
//! `101 Switching Protocols` (or a 2xx to a `CONNECT`) carrying [`ServedBy`], the layer
//! commits the binding to that account at once — the account accepted the session — and
//! the handle from then on acts on that account's binding: the upgraded connection has
//! no response body for the layer to watch, so the inner service reports what happens
//! inside it.

use std::fmt;
use std::sync::{Arc, OnceLock};

use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode, Version};

use crate::core::Core;
use crate::extract::{DEFAULT_MAX_SESSION_ID_LEN, SessionId};
use crate::stats::{ClearReason, Counters};
use crate::store::{BindingStore, BoxStoreFuture, StoreError};
use crate::types::{AuthId, BindingKey, Scope, ServedBy};

/// Request extension: a handle on the session's binding for an upgraded connection.
///
/// The layer inserts it into a request that asks for an upgrade (an HTTP/1.1 `Upgrade`
/// header such as a WebSocket handshake, or an HTTP/2 `CONNECT`) when the request has a
/// session id, or when [response-id learning](crate::StickySessionLayer::learn_response_ids)
/// is on. Take it (it is cheap to clone) into whatever serves the upgraded connection.
///
/// When the inner service's response accepts the upgrade — `101 Switching Protocols`, or
/// a 2xx to a `CONNECT` — and carries [`ServedBy`], the layer commits the binding to that
/// account at once, before the response is handed on, and this handle then acts on that
/// account's binding:
///
/// - [`renew`](Self::renew): commits the binding again (a store with a sliding TTL renews
///   it). Call it while the connection lives and works, e.g. after each completed turn,
///   so that a long conversation over one socket does not outlive its binding.
/// - [`clear`](Self::clear): compare-and-delete against the account — the account
///   failed inside the connection (an `error` event with 429/5xx, an overload close
///   code), so the session's next connection or request may move.
/// - [`learn_response_id`](Self::learn_response_id): the account created this response
///   id on the connection (a `response.created` event); a later request that continues
///   it with `previous_response_id` is hard-pinned to the account.
///
/// Before the layer has seen the accepting response, or when it carried no `ServedBy`,
/// the handle has no account and every operation does nothing and answers `Ok(false)`:
/// a handle can only ever act for the account that accepted the upgrade. Each operation
/// is counted in [`Stats`](crate::Stats) like the layer's own (`commits`, `cleared` and
/// `clear_attempts` under [`ClearReason::Upgraded`], `response_ids_learned`); a store
/// failure is counted and returned.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Empty;
/// use bytes::Bytes;
/// use tower::{Layer, Service, ServiceExt};
/// use tower_sticky_session::{AuthId, Binding, BindingKey, store::BindingStore, ServedBy, SessionId, StickySessionLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = StickySessionLayer::new();
/// let store = layer.store().clone();
/// let mut svc = layer.layer(tower::service_fn(|req: Request<()>| async move {
///     let binding = req.extensions().get::<Binding>().cloned().expect("an upgrade request");
///     // ... accept the upgrade with an account, spawn the connection's relay with
///     // `binding`; inside it call binding.renew(), binding.clear(), ...
///     # let _ = binding;
///     let mut res = Response::new(Empty::<Bytes>::new());
///     *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
///     res.extensions_mut().insert(ServedBy(AuthId::from("account-a")));
///     Ok::<_, Infallible>(res)
/// }));
/// let req = Request::builder()
///     .header("sticky-session-id", "conv-1")
///     .header("connection", "upgrade")
///     .header("upgrade", "websocket")
///     .body(())
///     .unwrap();
/// let res = svc.ready().await.unwrap().call(req).await.unwrap();
/// assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
/// // Committed at once: the account accepted the session.
/// let key = BindingKey::new(None, SessionId::new("conv-1").unwrap());
/// assert_eq!(store.lookup(&key).await.unwrap().unwrap().as_str(), "account-a");
/// # }
/// ```
#[derive(Clone)]
pub struct Binding(Arc<dyn Handle>);

impl Binding {
    /// The session whose binding this is; `None` for a request without a session id of
    /// its own (the handle can then only learn response ids).
    pub fn session(&self) -> Option<&SessionId> {
        self.0.session()
    }

    /// The account that accepted the upgrade, once the layer has seen its response.
    pub fn account(&self) -> Option<&AuthId> {
        self.0.account()
    }

    /// Commits the session's binding to the account again (renewing a sliding TTL).
    /// `Ok(true)` when it was committed; `Ok(false)` without a session or an account.
    pub fn renew(&self) -> BoxStoreFuture<bool> {
        self.0.renew()
    }

    /// Compare-and-delete: removes the session's binding if it still points at the
    /// account. `Ok(true)` when a binding was removed.
    pub fn clear(&self) -> BoxStoreFuture<bool> {
        self.0.clear()
    }

    /// Records that the account created response `id`: a later request whose
    /// `previous_response_id` is `id` (in the same scope) is hard-pinned to the account.
    /// `Ok(false)` when response-id learning is off, without an account, or when `id` is
    /// not a valid id (1 to 256 bytes of visible ASCII).
    pub fn learn_response_id(&self, id: &str) -> BoxStoreFuture<bool> {
        self.0.learn(id)
    }
}

impl fmt::Debug for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Binding")
            .field("session", &self.session().map(SessionId::redacted))
            .field("account", &self.account())
            .finish()
    }
}

/// Whether a request asks for an upgrade: an HTTP/1.x `Upgrade` header, or an HTTP/2
/// `CONNECT` (extended CONNECT carries its protocol in a pseudo-header the `http` types
/// leave to the server's extensions).
pub(crate) fn wants_upgrade(parts: &Parts) -> bool {
    match parts.version {
        Version::HTTP_2 | Version::HTTP_3 => parts.method == Method::CONNECT,
        _ => parts.headers.contains_key(http::header::UPGRADE),
    }
}

/// The type-erased operations behind a [`Binding`].
trait Handle: Send + Sync + 'static {
    fn session(&self) -> Option<&SessionId>;
    fn account(&self) -> Option<&AuthId>;
    fn renew(&self) -> BoxStoreFuture<bool>;
    fn clear(&self) -> BoxStoreFuture<bool>;
    fn learn(&self, id: &str) -> BoxStoreFuture<bool>;
}

/// The layer's side of a [`Binding`]: shared by the request's response future (which
/// sets the account when the upgrade is accepted) and the handle.
pub(crate) struct Slot<St> {
    core: Arc<Core<St>>,
    /// The session's key; `None` without a session of its own.
    key: Option<BindingKey>,
    /// The scope learned response ids are keyed by; `None` when learning is off.
    learn_scope: Option<Option<Scope>>,
    /// A `CONNECT` request: a 2xx accepts it (HTTP/2 extended CONNECT).
    connect: bool,
    account: OnceLock<AuthId>,
}

impl<St: BindingStore> Slot<St> {
    /// A slot for an upgrade request; `learn_scope` is `Some(scope)` when learning is on.
    pub(crate) fn new(
        core: Arc<Core<St>>,
        key: Option<BindingKey>,
        learn_scope: Option<Option<Scope>>,
        parts: &Parts,
    ) -> Arc<Self> {
        Arc::new(Self {
            core,
            key,
            learn_scope,
            connect: parts.method == Method::CONNECT,
            account: OnceLock::new(),
        })
    }

    /// The request extension for this slot.
    pub(crate) fn handle(self: &Arc<Self>) -> Binding {
        Binding(self.clone())
    }

    /// Looks at the inner service's response: an accepted upgrade with `ServedBy` gives
    /// the slot its account (counted). Returns the account.
    pub(crate) fn accept<B>(&self, res: &Response<B>) -> Option<&AuthId> {
        let accepted = res.status() == StatusCode::SWITCHING_PROTOCOLS
            || (self.connect && res.status().is_success());
        if !accepted {
            return None;
        }
        let served = res.extensions().get::<ServedBy>()?;
        let mut first = false;
        let account = self.account.get_or_init(|| {
            first = true;
            served.0.clone()
        });
        if first {
            Counters::inc(&self.core.counters().upgrades);
        }
        Some(account)
    }

    /// The account, once accepted.
    pub(crate) fn accepted(&self) -> Option<&AuthId> {
        self.account.get()
    }
}

impl<St: BindingStore> Handle for Slot<St> {
    fn session(&self) -> Option<&SessionId> {
        self.key.as_ref().map(BindingKey::session)
    }

    fn account(&self) -> Option<&AuthId> {
        self.account.get()
    }

    fn renew(&self) -> BoxStoreFuture<bool> {
        let (Some(key), Some(auth)) = (&self.key, self.account.get()) else {
            return Box::pin(std::future::ready(Ok(false)));
        };
        tracing::debug!(session = %key.session().redacted(), auth = %auth, "sticky session: upgraded connection renews its binding");
        let fut = self.core.store.commit(key, auth);
        let core = self.core.clone();
        Box::pin(async move {
            match fut.await {
                Ok(()) => {
                    Counters::inc(&core.counters().commits);
                    Ok(true)
                }
                Err(e) => Err(failed(&core, "renew", e)),
            }
        })
    }

    fn clear(&self) -> BoxStoreFuture<bool> {
        let (Some(key), Some(auth)) = (&self.key, self.account.get()) else {
            return Box::pin(std::future::ready(Ok(false)));
        };
        let counters = self.core.counters();
        counters.clear_attempt(ClearReason::Upgraded);
        tracing::debug!(session = %key.session().redacted(), auth = %auth, "sticky session: account failed inside an upgraded connection; clear if still bound to it");
        let fut = self.core.store.clear_if(key, auth);
        let core = self.core.clone();
        Box::pin(async move {
            match fut.await {
                Ok(removed) => {
                    if removed {
                        Counters::inc(&core.counters().cleared);
                    }
                    Ok(removed)
                }
                Err(e) => Err(failed(&core, "clear", e)),
            }
        })
    }

    fn learn(&self, id: &str) -> BoxStoreFuture<bool> {
        let (Some(scope), Some(auth)) = (&self.learn_scope, self.account.get()) else {
            return Box::pin(std::future::ready(Ok(false)));
        };
        let Some(id) = HeaderValue::from_str(id)
            .ok()
            .and_then(|v| SessionId::from_header_value(v, DEFAULT_MAX_SESSION_ID_LEN).ok())
        else {
            return Box::pin(std::future::ready(Ok(false)));
        };
        tracing::debug!(response_id = %id.redacted(), auth = %auth, "sticky session: learned response id on an upgraded connection");
        let key = BindingKey::response_id(scope.clone(), id);
        let fut = self.core.store.commit(&key, auth);
        let core = self.core.clone();
        Box::pin(async move {
            match fut.await {
                Ok(()) => {
                    Counters::inc(&core.counters().response_ids_learned);
                    Ok(true)
                }
                Err(e) => Err(failed(&core, "learn_response_id", e)),
            }
        })
    }
}

/// Counts (and logs, rate-limited) a failed store operation of a handle.
fn failed<St>(core: &Core<St>, op: &'static str, e: StoreError) -> StoreError {
    core.store_error(op, &e);
    e
}
