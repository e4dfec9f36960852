//! [`StickySession`]: the request side.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use http::{Extensions, Request, Response};
use http_body::Body;
use tower_service::Service;
use tracing::field::Empty;

use super::body::ResponseBody;
use super::future::ResponseFuture;
use super::request::{RequestCtx, Tracking, apply_lookup, apply_response_id};
use crate::SessionId;
use crate::body_session::BodySignals;
use crate::classify::{ClassifyResponse, StatusClassifier};
use crate::core::{RecordEnabled, Shared};
use crate::extract::{EscapedPrefix, Found};
use crate::learn::LearnCtx;
use crate::stats::{Counters, Decision};
use crate::store::{BindingStore, CrateOnly, MemoryStore};
use crate::types::{BindingKey, PinnedAuth, SessionSource};
use crate::upgrade::{Slot, wants_upgrade};
use http::request::Parts;

/// Sticky session middleware; made by [`StickySessionLayer`](crate::StickySessionLayer).
///
/// On each request it reads and validates the session id, inserts [`SessionId`] and
/// [`BindingKey`] into the request extensions and, unless the request already carries a
/// [`PinnedAuth`], the bound account as `PinnedAuth`. Its response body commits or clears
/// the binding as the [crate docs](crate) describe.
///
/// # The inner service must be `Clone`
///
/// With a store whose lookup can be pending (a networked store), the service polled
/// ready moves into the [`ResponseFuture`] and is called once the lookup is done; a clone
/// takes its place. The bound holds for every store, [`MemoryStore`](crate::store::MemoryStore) included (whose lookup
/// is never pending, so nothing is ever cloned): a bound cannot depend on what a store
/// does at run time. A boxed service: use `tower::util::BoxCloneService` rather than
/// `BoxService`. A service that cannot be cloned: give it a cloneable handle with
/// `tower::buffer::Buffer` (which runs it on a task of its own):
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{buffer::Buffer, util::BoxService, Layer, Service, ServiceExt};
/// use tower_sticky_session::StickySessionLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let picker: BoxService<Request<()>, Response<Full<Bytes>>, Infallible> =
///     BoxService::new(tower::service_fn(|_req: Request<()>| async {
///         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hi"))))
///     }));
/// let mut svc = StickySessionLayer::new().layer(Buffer::new(picker, 64));
/// let res = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
/// assert_eq!(res.status(), 200);
/// # }
/// ```
///
/// [`SessionId`]: crate::SessionId
pub struct StickySession<S, St = MemoryStore, C = StatusClassifier> {
    inner: S,
    shared: Arc<Shared<St, C>>,
}

impl<S, St, C> StickySession<S, St, C> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<St, C>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, St, C> Clone for StickySession<S, St, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: std::fmt::Debug, St, C> std::fmt::Debug for StickySession<S, St, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StickySession")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB, St, C> Service<Request<ReqB>> for StickySession<S, St, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: Body,
    St: BindingStore,
    C: ClassifyResponse,
{
    type Response = Response<ResponseBody<ResB, St>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB, St, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let shared = &*self.shared;
        let counters = shared.core.counters();
        let report = shared.report_decision;
        // One span per request; `session` is redacted, `decision`/`outcome` filled in as
        // they are known. A disabled span costs a level check.
        let span = tracing::debug_span!(
            "sticky_session",
            session = Empty,
            source = Empty,
            decision = Empty,
            hard_pin = Empty,
            auth = Empty,
            outcome = Empty,
        );
        let (mut parts, body) = req.into_parts();
        let is_head = parts.method == http::Method::HEAD;

        // Sources, first valid one wins: (a learned previous_response_id, below), the
        // headers or the session function, the body's session field, its fingerprint.
        let (found, mut source) = shared.source.extract_sourced(&parts, shared.max_len);
        let signals = parts.extensions.get::<BodySignals>();
        let response_id = match signals {
            Some(s) if shared.learn => s.previous_response_id.clone(),
            _ => None,
        };
        let found = match found {
            Found::Valid(id) => Found::Valid(id),
            other => match signals.and_then(body_session) {
                Some((id, from)) => {
                    source = Some(from);
                    Found::Valid(id)
                }
                None => other,
            },
        };
        // The scope, computed once, when something needs it: the session's key, or
        // learning (which keys both a looked-up and a learned response id by it).
        let scope = if shared.learn || matches!(found, Found::Valid(_)) {
            shared.scope.as_ref().and_then(|f| f(&parts))
        } else {
            None
        };
        let mut learn = shared.learn.then(|| {
            Box::new(LearnCtx {
                shared: self.shared.clone(),
                scope: scope.clone(),
                upgrade: None,
                not_stored: signals.is_some_and(|s| s.store == Some(false)),
            })
        });
        let upgrade = wants_upgrade(&parts);
        // An explicit pin wins over learned response ids, as over the store.
        let response_id = response_id
            .filter(|_| parts.extensions.get::<PinnedAuth>().is_none())
            .map(|id| BindingKey::response_id(scope.clone(), id));

        let (session, source) = match (found, source) {
            (Found::Valid(id), Some(source)) => (id, source),
            (found, _) => {
                let decision = match found {
                    Found::Invalid {
                        reason,
                        header,
                        value,
                    } => {
                        counters.invalid(reason);
                        let header = header.as_ref().map_or("(session function)", |h| h.as_str());
                        tracing::debug!(
                            parent: &span,
                            header,
                            reason = reason.as_str(),
                            value_prefix = %EscapedPrefix(value.as_bytes()),
                            "sticky session: invalid session id; request is not sticky"
                        );
                        if shared.strict {
                            span.rec("decision", Decision::Invalid.as_str());
                            Counters::inc(&counters.rejected);
                            let msg = reject(header, reason, shared.max_len);
                            return ResponseFuture::rejected(msg, span, report);
                        }
                        Decision::Invalid
                    }
                    _ => {
                        Counters::inc(&counters.no_session);
                        Decision::NoSession
                    }
                };
                span.rec("decision", decision.as_str());
                if let (true, Some(l)) = (upgrade, learn.as_mut()) {
                    // Without a session, an upgraded connection can still learn ids.
                    let slot = Slot::new(shared.core.clone(), None, Some(l.scope.clone()), &parts);
                    parts.extensions.insert(slot.handle());
                    l.upgrade = Some(slot);
                }
                let ctx = RequestCtx {
                    tracking: None,
                    learn,
                    span,
                    decision,
                    report,
                };
                // No session of its own; a learned previous_response_id still pins it.
                return match response_id {
                    Some(key) => self.lookup_response_id(key, parts, body, ctx),
                    None => self.call_inner(parts, body, ctx),
                };
            }
        };
        span.rec("session", tracing::field::display(session.redacted()));
        span.rec("source", tracing::field::display(&source));
        counters.source(source.kind());

        let key = BindingKey::new(scope, session.clone());
        if parts.extensions.is_empty() {
            let mut ours = presized_extensions();
            ours.insert(session);
            ours.insert(source);
            ours.insert(key.clone());
            parts.extensions = ours;
        } else {
            // The map is there already (an outer layer's values, or hyper's): room for
            // ours is its business; a copy into a new map would cost more.
            parts.extensions.insert(session);
            parts.extensions.insert(source);
            parts.extensions.insert(key.clone());
        }
        let slot = upgrade.then(|| {
            let learn_scope = learn.as_ref().map(|l| l.scope.clone());
            let slot = Slot::new(shared.core.clone(), Some(key.clone()), learn_scope, &parts);
            parts.extensions.insert(slot.handle());
            slot
        });

        if let Some(PinnedAuth(explicit)) = parts.extensions.get::<PinnedAuth>() {
            Counters::inc(&counters.explicit_pins);
            span.rec("decision", Decision::Pinned.as_str());
            span.rec("auth", tracing::field::display(explicit));
            let pinned = Some(explicit.clone());
            let mut tracking = Tracking::new(self.shared.clone(), key, pinned, is_head);
            tracking.upgrade = slot;
            let ctx = RequestCtx {
                tracking: Some(tracking),
                learn,
                span,
                decision: Decision::Pinned,
                report,
            };
            return self.call_inner(parts, body, ctx);
        }

        let mut tracking = Tracking::new(self.shared.clone(), key, None, is_head);
        tracking.upgrade = slot;
        let ctx = RequestCtx {
            tracking: Some(tracking),
            learn,
            span,
            decision: Decision::Miss,
            report,
        };
        match response_id {
            Some(rkey) => self.lookup_response_id(rkey, parts, body, ctx),
            None => self.lookup_session(parts, body, ctx),
        }
    }
}

impl<S: Clone, St: BindingStore, C: ClassifyResponse> StickySession<S, St, C> {
    /// Calls the inner service with the request as it stands.
    fn call_inner<ReqB, ResB>(
        &mut self,
        parts: Parts,
        body: ReqB,
        ctx: RequestCtx<St, C>,
    ) -> ResponseFuture<S, ReqB, St, C>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>>,
        ResB: Body,
    {
        let fut = self.inner.call(Request::from_parts(parts, body));
        ResponseFuture::inner(fut, ctx)
    }

    /// Looks the session's binding up (`ctx.tracking` is the session's) and calls the
    /// inner service (at once when the store answers at once).
    ///
    /// Always inlined: on the hit path the request context then goes from `call` into
    /// the response future without a copy through this frame (`layer_hit` in
    /// `benches/hit_instructions.sh`; figures in `BENCHMARKS.md`, "The hit path: layer
    /// against naive store and raw moka read").
    #[inline(always)]
    fn lookup_session<ReqB, ResB>(
        &mut self,
        mut parts: Parts,
        body: ReqB,
        mut ctx: RequestCtx<St, C>,
    ) -> ResponseFuture<S, ReqB, St, C>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>>,
        ResB: Body,
    {
        let shared = &*self.shared;
        let Some(tracking) = ctx.tracking.as_mut() else {
            return self.call_inner(parts, body, ctx);
        };
        let mut lookup = shared
            .core
            .store
            .lookup_hinted(tracking.key(), CrateOnly::TOKEN);
        // In-memory stores answer at once: poll once without a real waker and, when the
        // answer is there, call the inner service now (no clone of it is needed).
        let mut noop = Context::from_waker(Waker::noop());
        match Pin::new(&mut lookup).poll(&mut noop) {
            Poll::Ready(result) => {
                let result = result.map(|found| {
                    found.map(|(auth, hint)| {
                        tracking.hint = hint;
                        auth
                    })
                });
                let ext = &mut parts.extensions;
                let (decision, pinned) = apply_lookup(&shared.core, &ctx.span, result, ext, false);
                tracking.pinned = pinned;
                ctx.decision = decision;
                self.call_inner(parts, body, ctx)
            }
            Poll::Pending => {
                // A networked store: the inner service is called once the lookup is done.
                // The request is counted now: its future may be dropped before then.
                // Only a plain lookup can be pending; the deferred path commits unhinted.
                let lookup = lookup
                    .into_plain()
                    .expect("an answered hinted lookup is never pending");
                Counters::inc(&shared.core.counters().deferred_lookups);
                let svc = self.take_ready();
                let req = Request::from_parts(parts, body);
                ctx.decision = Decision::Miss;
                ResponseFuture::lookup(lookup, None, svc, req, ctx)
            }
        }
    }

    /// Looks the request's `previous_response_id` up among learned response ids: a hit
    /// hard-pins the request; a miss goes on to the session's own lookup, if any.
    /// `ctx.decision`: the decision without a hard pin (for a request without a session).
    fn lookup_response_id<ReqB, ResB>(
        &mut self,
        key: BindingKey,
        mut parts: Parts,
        body: ReqB,
        mut ctx: RequestCtx<St, C>,
    ) -> ResponseFuture<S, ReqB, St, C>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>>,
        ResB: Body,
    {
        let shared = &*self.shared;
        let mut lookup = shared.core.store.lookup(&key);
        let mut noop = Context::from_waker(Waker::noop());
        let own = ctx.tracking.is_some();
        match Pin::new(&mut lookup).poll(&mut noop) {
            Poll::Ready(result) => {
                let ext = &mut parts.extensions;
                match apply_response_id(&shared.core, &ctx.span, result, ext, key, own, false) {
                    Some(auth) => {
                        if let Some(t) = ctx.tracking.as_mut() {
                            t.pinned = Some(auth);
                        }
                        ctx.decision = Decision::Hit;
                        self.call_inner(parts, body, ctx)
                    }
                    // Unknown: the session's own binding decides, if it has one.
                    None if own => self.lookup_session(parts, body, ctx),
                    None => self.call_inner(parts, body, ctx),
                }
            }
            Poll::Pending => {
                if own {
                    // Counted as the request's one lookup, whichever resolves it.
                    Counters::inc(&shared.core.counters().deferred_lookups);
                }
                let svc = self.take_ready();
                let req = Request::from_parts(parts, body);
                ResponseFuture::lookup(lookup, Some(Box::new(key)), svc, req, ctx)
            }
        }
    }

    /// Takes the service that was polled ready and leaves a clone in its place (see
    /// tower's "Be careful when cloning inner services").
    fn take_ready(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

/// An empty [`Extensions`] whose map already has room for seven values.
///
/// A hit inserts four (`SessionId`, `SessionSource`, `BindingKey`, `PinnedAuth`). Into
/// an empty `Extensions` the first insert allocates a map with room for three and the
/// fourth reallocates and rehashes it (what that costs a hit: `BENCHMARKS.md`, "The hit
/// path: layer against naive store and raw moka read"). A clone of a map that once held
/// four values keeps its eight slots (`HashMap::clone` copies the table as it is), so
/// cloning this prototype costs one allocation and no rehash. When the request already
/// has extensions (hyper with upgrades, axum's `MatchedPath`, an outer layer's), ours go
/// into its map, as plain inserts would.
fn presized_extensions() -> Extensions {
    static PROTO: OnceLock<Extensions> = OnceLock::new();
    PROTO
        .get_or_init(|| {
            let mut e = Extensions::new();
            e.insert(0u8);
            e.insert(0u16);
            e.insert(0u32);
            e.insert(0u64);
            e.remove::<u8>();
            e.remove::<u16>();
            e.remove::<u32>();
            e.remove::<u64>();
            e
        })
        .clone()
}

/// The session a body's signals carry: its session field, else its fingerprint.
fn body_session(signals: &BodySignals) -> Option<(SessionId, SessionSource)> {
    if let Some(s) = &signals.session {
        return Some((s.id.clone(), SessionSource::BodyField(s.field)));
    }
    let fp = signals.fingerprint.as_ref()?;
    Some((fp.clone(), SessionSource::Fingerprint))
}

fn reject(header: &str, reason: crate::InvalidSessionId, max_len: usize) -> String {
    let detail = match reason {
        crate::InvalidSessionId::TooLong => format!("{reason} (at most {max_len} bytes)"),
        _ => reason.to_string(),
    };
    format!("invalid session id in {header}: {detail}\n")
}
