//! [`ResponseFuture`]: the response side, up to the response head.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;
use tracing::Span;

use super::body::{ResponseBody, Watch};
use super::decide::{Action, Seen, decide};
use super::request::{RequestCtx, Tracking, apply_lookup, apply_response_id};
use crate::classify::{ClassifyResponse, ResponseClass, StatusClassifier};
use crate::core::{RecordEnabled, StoreOp};
use crate::learn::Learner;
use crate::stats::{DECISION_HEADER, Decision};
use crate::store::{BindingStore, CommitHint, MemoryStore};
use crate::types::{AuthId, BindingKey, ServedBy};

pin_project! {
    /// Response future of [`StickySession`](crate::StickySession).
    ///
    /// Resolves to the inner service's response (with its body wrapped in
    /// [`ResponseBody`]) or error. A failure response or an inner error clears the
    /// binding before the future resolves; a success known to carry no body (a response
    /// to `HEAD`, 204, 304, `Content-Length: 0`, or a body whose `is_end_stream()` is
    /// already true) commits before it resolves, whatever the body type: servers never
    /// poll such bodies. Dropping it while such a commit or clear is in flight does not
    /// cancel the operation (see
    /// [`BindingStore`](crate::store::BindingStore#operations-that-outlive-their-request)).
    pub struct ResponseFuture<S, ReqB, St = MemoryStore, C = StatusClassifier>
    where
        S: Service<Request<ReqB>>,
        St: BindingStore,
    {
        #[pin]
        state: State<S, ReqB, St>,
        ctx: RequestCtx<St, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB, St>
    where
        S: Service<Request<ReqB>>,
        St: BindingStore,
    {
        Lookup {
            lookup: St::LookupFuture,
            // The service and the request, boxed: only a networked store's lookup is
            // pending, next to a round trip, while every request's future carries and
            // moves this state's size (a `Request` alone is ≈ 220 bytes).
            call: Option<Box<(S, Request<ReqB>)>>,
            // `Some`: this is the lookup of the request's `previous_response_id` (its key);
            // on a miss the session's own lookup follows.
            response_id: Option<Box<BindingKey>>,
        },
        Inner {
            #[pin]
            fut: S::Future,
        },
        Finishing {
            op: StoreOp<St>,
            result: Option<Result<S::Response, S::Error>>,
            learner: Option<Box<Learner<St>>>,
        },
        Rejected {
            msg: Option<Bytes>,
        },
    }
}

impl<S, ReqB, St, C> ResponseFuture<S, ReqB, St, C>
where
    S: Service<Request<ReqB>>,
    St: BindingStore,
{
    /// The inner service was called in `call`.
    pub(crate) fn inner(fut: S::Future, ctx: RequestCtx<St, C>) -> Self {
        Self {
            state: State::Inner { fut },
            ctx,
        }
    }

    /// A lookup still pending in `call`; the inner service is called once it is done.
    /// `response_id`: the lookup is the request's `previous_response_id`'s (then
    /// `ctx.decision` is the one without a pin).
    pub(crate) fn lookup(
        lookup: St::LookupFuture,
        response_id: Option<Box<BindingKey>>,
        svc: S,
        req: Request<ReqB>,
        ctx: RequestCtx<St, C>,
    ) -> Self {
        Self {
            state: State::Lookup {
                lookup,
                call: Some(Box::new((svc, req))),
                response_id,
            },
            ctx,
        }
    }

    /// Strict mode's `400` for an invalid session id.
    pub(crate) fn rejected(msg: String, span: Span, report: bool) -> Self {
        Self {
            state: State::Rejected {
                msg: Some(Bytes::from(msg)),
            },
            ctx: RequestCtx {
                tracking: None,
                learn: None,
                span,
                decision: Decision::Invalid,
                report,
            },
        }
    }
}

/// Shows the state (`lookup`, `inner`, `finishing`, `rejected`), the layer's decision so
/// far and the session, redacted as in logs; not the inner future, the store or the
/// request.
impl<S, ReqB, St, C> std::fmt::Debug for ResponseFuture<S, ReqB, St, C>
where
    S: Service<Request<ReqB>>,
    St: BindingStore,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Lookup { .. } => "lookup",
            State::Inner { .. } => "inner",
            State::Finishing { .. } => "finishing",
            State::Rejected { .. } => "rejected",
        };
        let session = self
            .ctx
            .tracking
            .as_ref()
            .map(|t| t.key.session().redacted());
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("decision", &self.ctx.decision)
            .field("session", &session)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB, St, C> Future for ResponseFuture<S, ReqB, St, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body,
    St: BindingStore,
    C: ClassifyResponse,
{
    type Output = Result<Response<ResponseBody<ResB, St>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut out = ready!(poll_state(this.state, this.ctx, cx));
        if let (true, Ok(res)) = (this.ctx.report, &mut out) {
            res.headers_mut()
                .insert(DECISION_HEADER, this.ctx.decision.header_value());
        }
        Poll::Ready(out)
    }
}

#[allow(clippy::type_complexity)]
fn poll_state<S, ReqB, ResB, St, C>(
    mut state: Pin<&mut State<S, ReqB, St>>,
    ctx: &mut RequestCtx<St, C>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResponseBody<ResB, St>>, S::Error>>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body,
    St: BindingStore,
    C: ClassifyResponse,
{
    let RequestCtx {
        tracking,
        learn,
        span,
        decision,
        ..
    } = ctx;
    let span = &*span;
    let _entered = span.enter();
    loop {
        match state.as_mut().project() {
            StateProj::Lookup {
                lookup,
                call,
                response_id,
            } => {
                let result = ready!(Pin::new(&mut *lookup).poll(cx));
                let r = &mut call
                    .as_mut()
                    .expect("ResponseFuture polled after completion")
                    .1;
                if let Some(key) = response_id.take() {
                    let core = match (tracking.as_ref(), learn.as_ref()) {
                        (Some(t), _) => &t.shared.core,
                        (None, Some(l)) => &l.shared.core,
                        (None, None) => {
                            unreachable!("a response id is looked up only when learning")
                        }
                    };
                    let own = tracking.is_some();
                    let ext = r.extensions_mut();
                    match apply_response_id(core, span, result, ext, *key, own, true) {
                        Some(auth) => {
                            *decision = Decision::Hit;
                            if let Some(t) = tracking.as_mut() {
                                t.pinned = Some(auth);
                            }
                        }
                        None => {
                            if let Some(t) = tracking.as_ref() {
                                // Unknown: the session's own binding decides.
                                *lookup = t.shared.core.store.lookup(&t.key);
                                continue;
                            }
                        }
                    }
                } else if let Some(t) = tracking.as_mut() {
                    let (d, pinned) =
                        apply_lookup(&t.shared.core, span, result, r.extensions_mut(), true);
                    *decision = d;
                    t.pinned = pinned;
                }
                let (mut svc, req) = *call.take().expect("ResponseFuture polled after completion");
                let fut = svc.call(req);
                state.set(State::Inner { fut });
            }
            StateProj::Inner { fut } => {
                let result = ready!(fut.poll(cx));
                if let Ok(res) = &result {
                    // An accepted upgrade gives the request's `Binding` its account, before
                    // the response (and the connection) is handed on.
                    let slot = match (tracking.as_ref(), learn.as_ref()) {
                        (Some(t), _) => t.upgrade.as_ref(),
                        (None, Some(l)) => l.upgrade.as_ref(),
                        (None, None) => None,
                    };
                    if let Some(slot) = slot {
                        slot.accept(res);
                    }
                }
                let learner = match (learn.take(), &result) {
                    (Some(l), Ok(res)) => l.learner(res, span),
                    _ => None,
                };
                let Some(tracking) = tracking.take() else {
                    return Poll::Ready(
                        result
                            .map(|res| res.map(|b| ResponseBody::passthrough(b).learning(learner))),
                    );
                };
                match judge(tracking, span, result) {
                    Judged::Done(out) => {
                        return Poll::Ready(out.map(|res| res.map(|b| b.learning(learner))));
                    }
                    Judged::Store(op, result) => state.set(State::Finishing {
                        op,
                        result: Some(result),
                        learner,
                    }),
                }
            }
            StateProj::Finishing {
                op,
                result,
                learner,
            } => {
                ready!(op.poll(cx));
                let result = result
                    .take()
                    .expect("ResponseFuture polled after completion");
                let learner = learner.take();
                return Poll::Ready(
                    result.map(|res| res.map(|b| ResponseBody::passthrough(b).learning(learner))),
                );
            }
            StateProj::Rejected { msg } => {
                let msg = msg.take().expect("ResponseFuture polled after completion");
                let mut res = Response::new(ResponseBody::message(msg));
                *res.status_mut() = http::StatusCode::BAD_REQUEST;
                res.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                return Poll::Ready(Ok(res));
            }
        }
    }
}

enum Judged<St: BindingStore, ResB: Body, E> {
    Done(Result<Response<ResponseBody<ResB, St>>, E>),
    Store(StoreOp<St>, Result<Response<ResB>, E>),
}

/// The response head's part of the state machine: asks [`decide`] and carries it out.
fn judge<St, C, ResB, E>(
    t: Tracking<St, C>,
    span: &Span,
    result: Result<Response<ResB>, E>,
) -> Judged<St, ResB, E>
where
    St: BindingStore,
    C: ClassifyResponse,
    ResB: Body,
{
    let core = &t.shared.core;
    let blame_unserved = t.shared.blame_unserved;
    let res = match result {
        Ok(res) => res,
        Err(err) => {
            return match decide(Seen::InnerError, None, t.pinned.as_ref(), blame_unserved) {
                Action::Clear(account, reason) => {
                    let op = StoreOp::clear(core, &t.key, account, reason, span);
                    Judged::Store(op, Err(err))
                }
                _ => {
                    span.rec("outcome", "kept");
                    Judged::Done(Err(err))
                }
            };
        }
    };
    let served = res.extensions().get::<ServedBy>().map(|s| &s.0);
    let seen = match t.upgrade.as_ref().and_then(|s| s.accepted()) {
        Some(account) => Seen::Upgraded(account),
        None => {
            let class = t.shared.classifier.classify(res.status(), res.headers());
            // Only a success served by an account asks whether its body is empty.
            let known_empty = class == ResponseClass::Success
                && served.is_some()
                && (t.is_head || known_empty(&res));
            Seen::Head { class, known_empty }
        }
    };
    match decide(seen, served, t.pinned.as_ref(), blame_unserved) {
        Action::Commit(account) => {
            // No data frame will ever come (and a server may never poll this body), or
            // the account accepted an upgrade: the account has proved itself now.
            let op = StoreOp::commit(core, &t.key, account, hint_for(&t, account), span);
            Judged::Store(op, Ok(res))
        }
        Action::Clear(account, reason) => {
            let op = StoreOp::clear(core, &t.key, account, reason, span);
            Judged::Store(op, Ok(res))
        }
        Action::AwaitFirstChunk(served) => {
            span.rec("outcome", "awaiting_first_chunk");
            let hint = hint_for(&t, served);
            let watch = Watch {
                span: span.clone(),
                core: core.clone(),
                key: t.key,
                hint,
                // On a hit served by its pinned account (the common case) the
                // lookup's `AuthId` moves on: no refcount traffic on the account's
                // shared `Arc`.
                served: match t.pinned {
                    Some(pinned) if pinned.same(served) => pinned,
                    _ => served.clone(),
                },
            };
            Judged::Done(Ok(res.map(|body| ResponseBody::watching(body, watch))))
        }
        Action::Keep => {
            span.rec("outcome", "kept");
            Judged::Done(Ok(res.map(ResponseBody::passthrough)))
        }
    }
}

/// The lookup's hint, for a commit of `served`: only when the pinned account served (a
/// hint describes the binding the lookup found, on the pinned account).
fn hint_for<St, C>(t: &Tracking<St, C>, served: &AuthId) -> CommitHint {
    match &t.pinned {
        Some(pinned) if pinned.same(served) => t.hint,
        _ => CommitHint::NONE,
    }
}

/// Whether a success's body is known to carry no data, whatever its type says: a
/// response to `HEAD` is checked by the caller; here 101 (the connection is handed over),
/// 204, 304, `Content-Length: 0` and a body that reports its end already. Servers (hyper)
/// never poll such bodies.
fn known_empty<B: Body>(res: &Response<B>) -> bool {
    matches!(
        res.status(),
        http::StatusCode::SWITCHING_PROTOCOLS
            | http::StatusCode::NO_CONTENT
            | http::StatusCode::NOT_MODIFIED
    ) || res
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.to_str().is_ok_and(|v| v.trim().parse::<u64>() == Ok(0)))
        || res.body().is_end_stream()
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use tower::{Layer, Service};

    use crate::StickySessionLayer;

    #[test]
    fn response_future_debug_shows_state_and_redacted_session() {
        let mut svc = StickySessionLayer::new().layer(tower::service_fn(|_: Request<()>| {
            std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))))
        }));
        let session = "conversation-0123456789";
        let req = Request::builder()
            .header("sticky-session-id", session)
            .body(())
            .unwrap();
        let debug = format!("{:?}", svc.call(req));
        assert!(
            debug.starts_with("ResponseFuture { state: \"inner\", decision: Miss"),
            "{debug}"
        );
        assert!(!debug.contains(session), "a whole session id in {debug}");

        let debug = format!("{:?}", svc.call(Request::new(())));
        assert!(
            debug.contains("decision: NoSession, session: None"),
            "{debug}"
        );
    }
}
