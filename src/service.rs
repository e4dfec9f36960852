//! [`StickySession`]: the request side.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::classify::{ClassifyResponse, StatusClassifier};
use crate::extract::Found;
use crate::future::{ResponseFuture, Tracking};
use crate::layer::{Shared, StickySessionLayer};
use crate::stats::Counters;
use crate::store::{BindingStore, MokaStore};
use crate::types::{BindingKey, PinnedAuth};

/// Sticky session middleware; made by [`StickySessionLayer`].
///
/// On each request it reads and validates the session id, inserts [`SessionId`] and
/// [`BindingKey`] into the request extensions and, unless the request already carries a
/// [`PinnedAuth`], the bound account as `PinnedAuth`. Its response body commits or clears
/// the binding as the [crate docs](crate) describe.
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
        Counters::inc(&counters.requests);
        let (mut parts, body) = req.into_parts();

        let session = match shared.source.extract(&parts, shared.max_len) {
            Found::Valid(id) => id,
            Found::None => {
                Counters::inc(&counters.no_session);
                let req = Request::from_parts(parts, body);
                return ResponseFuture::untracked(self.inner.call(req));
            }
            Found::Invalid {
                reason,
                header,
                prefix,
            } => {
                counters.invalid(reason);
                let header = header.as_ref().map_or("(session function)", |h| h.as_str());
                tracing::debug!(
                    header,
                    reason = reason.as_str(),
                    value_prefix = %prefix,
                    "sticky session: invalid session id; request is not sticky"
                );
                if shared.strict {
                    Counters::inc(&counters.rejected);
                    return ResponseFuture::rejected(reject(header, reason, shared.max_len));
                }
                let req = Request::from_parts(parts, body);
                return ResponseFuture::untracked(self.inner.call(req));
            }
        };

        let scope = shared.scope.as_ref().and_then(|f| f(&parts));
        let key = BindingKey::new(scope, session.clone());
        parts.extensions.insert(session);
        parts.extensions.insert(key.clone());

        if let Some(PinnedAuth(explicit)) = parts.extensions.get::<PinnedAuth>() {
            Counters::inc(&counters.explicit_pins);
            let tracking = Tracking::new(self.shared.clone(), key, Some(explicit.clone()));
            let req = Request::from_parts(parts, body);
            return ResponseFuture::tracked(self.inner.call(req), tracking);
        }

        Counters::inc(&counters.lookups);
        let mut lookup = shared.core.store.lookup(&key);
        // In-memory stores answer at once: poll once without a real waker and, when the
        // answer is there, call the inner service now (no clone of it is needed).
        let mut noop = Context::from_waker(Waker::noop());
        match Pin::new(&mut lookup).poll(&mut noop) {
            Poll::Ready(result) => {
                let pinned =
                    crate::future::apply_lookup(&shared.core, &key, result, &mut parts.extensions);
                let tracking = Tracking::new(self.shared.clone(), key, pinned);
                let req = Request::from_parts(parts, body);
                ResponseFuture::tracked(self.inner.call(req), tracking)
            }
            Poll::Pending => {
                // A networked store: the inner service is called once the lookup is done.
                // Take the service that was polled ready and leave a clone in its place
                // (see tower's "Be careful when cloning inner services").
                let clone = self.inner.clone();
                let svc = std::mem::replace(&mut self.inner, clone);
                let tracking = Tracking::new(self.shared.clone(), key, None);
                ResponseFuture::lookup(lookup, svc, Request::from_parts(parts, body), tracking)
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
