//! [`StickySession`]: the request side.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;
use tracing::field::Empty;

use crate::body::ResponseBody;
use crate::classify::{ClassifyResponse, StatusClassifier};
use crate::extract::{EscapedPrefix, Found};
use crate::future::{ResponseFuture, Tracking, apply_lookup};
use crate::layer::{Shared, StickySessionLayer};
use crate::stats::{Counters, Decision};
use crate::store::{BindingStore, MokaStore};
use crate::types::{BindingKey, PinnedAuth};

/// Sticky session middleware; made by [`StickySessionLayer`].
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
/// takes its place. The bound holds for every store, [`MokaStore`] included (whose lookup
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
pub struct StickySession<S, St = MokaStore, C = StatusClassifier> {
    inner: S,
    shared: Arc<Shared<St, C>>,
}

impl<S> StickySession<S> {
    /// The default layer, [`StickySessionLayer::new`].
    pub fn layer() -> StickySessionLayer {
        StickySessionLayer::new()
    }
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
            decision = Empty,
            auth = Empty,
            outcome = Empty,
        );
        let (mut parts, body) = req.into_parts();
        let is_head = parts.method == http::Method::HEAD;

        let session = match shared.source.extract(&parts, shared.max_len) {
            Found::Valid(id) => id,
            Found::None => {
                Counters::inc(&counters.no_session);
                span.record("decision", Decision::NoSession.as_str());
                let req = Request::from_parts(parts, body);
                let fut = self.inner.call(req);
                return ResponseFuture::untracked(fut, span, Decision::NoSession, report);
            }
            Found::Invalid {
                reason,
                header,
                value,
            } => {
                counters.invalid(reason);
                span.record("decision", Decision::Invalid.as_str());
                let header = header.as_ref().map_or("(session function)", |h| h.as_str());
                tracing::debug!(
                    parent: &span,
                    header,
                    reason = reason.as_str(),
                    value_prefix = %EscapedPrefix(value.as_bytes()),
                    "sticky session: invalid session id; request is not sticky"
                );
                if shared.strict {
                    Counters::inc(&counters.rejected);
                    let msg = reject(header, reason, shared.max_len);
                    return ResponseFuture::rejected(msg, span, report);
                }
                let req = Request::from_parts(parts, body);
                let fut = self.inner.call(req);
                return ResponseFuture::untracked(fut, span, Decision::Invalid, report);
            }
        };
        span.record("session", tracing::field::display(session.redacted()));

        let scope = shared.scope.as_ref().and_then(|f| f(&parts));
        let key = BindingKey::new(scope, session.clone());
        parts.extensions.insert(session);
        parts.extensions.insert(key.clone());

        if let Some(PinnedAuth(explicit)) = parts.extensions.get::<PinnedAuth>() {
            Counters::inc(&counters.explicit_pins);
            span.record("decision", Decision::Pinned.as_str());
            span.record("auth", tracing::field::display(explicit));
            let pinned = Some(explicit.clone());
            let tracking = Tracking::new(self.shared.clone(), key, pinned, is_head);
            let req = Request::from_parts(parts, body);
            let fut = self.inner.call(req);
            return ResponseFuture::tracked(fut, tracking, span, Decision::Pinned, report);
        }

        let mut lookup = shared.core.store.lookup(&key);
        // In-memory stores answer at once: poll once without a real waker and, when the
        // answer is there, call the inner service now (no clone of it is needed).
        let mut noop = Context::from_waker(Waker::noop());
        match Pin::new(&mut lookup).poll(&mut noop) {
            Poll::Ready(result) => {
                let (decision, pinned) =
                    apply_lookup(&shared.core, &span, result, &mut parts.extensions, false);
                let tracking = Tracking::new(self.shared.clone(), key, pinned, is_head);
                let req = Request::from_parts(parts, body);
                let fut = self.inner.call(req);
                ResponseFuture::tracked(fut, tracking, span, decision, report)
            }
            Poll::Pending => {
                // A networked store: the inner service is called once the lookup is done.
                // The request is counted now: its future may be dropped before then.
                Counters::inc(&counters.deferred_lookups);
                // Take the service that was polled ready and leave a clone in its place
                // (see tower's "Be careful when cloning inner services").
                let clone = self.inner.clone();
                let svc = std::mem::replace(&mut self.inner, clone);
                let tracking = Tracking::new(self.shared.clone(), key, None, is_head);
                let req = Request::from_parts(parts, body);
                ResponseFuture::lookup(lookup, svc, req, tracking, span, report)
            }
        }
    }
}

fn reject(header: &str, reason: crate::InvalidSessionId, max_len: usize) -> String {
    let detail = match reason {
        crate::InvalidSessionId::TooLong => format!("{reason} (at most {max_len} bytes)"),
        _ => reason.to_string(),
    };
    format!("invalid session id in {header}: {detail}\n")
}
