//! The response body wrapper that commits or clears the binding.

use std::any::{Any, TypeId};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use sync_wrapper::SyncWrapper;

use super::decide::{Action, Polled, Seen, decide};
use crate::core::{Core, StoreOp};
use crate::learn::{Fed, Learner};
use crate::store::{BindingStore, MemoryStore};
use crate::types::{AuthId, BindingKey};

pin_project! {
    /// Response body of [`StickySession`](crate::StickySession).
    ///
    /// For a successful response with [`ServedBy`](crate::ServedBy) it watches the inner
    /// body's frames: the binding is committed before the first non-empty data frame is
    /// handed on; a body that ends or fails before such a frame clears the binding
    /// (compare-and-delete); after the first data frame it is a plain pass-through.
    /// Dropping it before the first data frame does nothing to the binding; dropping it
    /// while a decided commit or clear is in flight does not cancel that operation (it is
    /// handed to the tokio runtime: see
    /// [`BindingStore`](crate::store::BindingStore#operations-that-outlive-their-request)).
    ///
    /// [`Body::size_hint`] and [`Body::is_end_stream`] are forwarded exactly, so a
    /// `Content-Length` response stays one.
    ///
    /// It is a [`Body`] for any inner body whose data type is `'static` (true whenever the
    /// body type is). Strict mode's `400` carries its plain-text reason when the data type
    /// is `Bytes` (hyper, axum, http-body-util bodies); with any other data type the `400`
    /// has an empty body.
    pub struct ResponseBody<B, St = MemoryStore>
    where
        B: Body,
        St: BindingStore,
    {
        #[pin]
        kind: Kind<B>,
        state: State<B::Data, B::Error, St>,
        // Response-id learning (opt-in): fed the first data frames until it is done.
        learner: Option<SyncWrapper<Box<Learner<St>>>>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Message { msg: Option<Bytes> },
    }
}

// Store futures need only be `Send` (a networked client's futures rarely are `Sync`), and
// body errors are often `Send` but not `Sync` (`Box<dyn Error + Send>`). Both are only
// ever touched through `&mut`, so `SyncWrapper` keeps the body `Sync` whenever the inner
// body and its data type are.
enum State<D, E, St: BindingStore> {
    /// Nothing to do (no session, not a success, or past the first data frame).
    Passthrough,
    /// Success: commit to `served` on the first data frame, clear on a premature end.
    AwaitFirst(Watch<St>),
    /// Committing (the session's binding, a learned response id, or both); `frame` is
    /// handed on once both are done.
    Committing {
        op: Option<SyncWrapper<StoreOp<St>>>,
        learned: Option<SyncWrapper<StoreOp<St>>>,
        frame: Option<Frame<D>>,
    },
    /// The inner body ended (after a clear); it is not polled again.
    Ended,
    /// Clearing; then the end or the error is handed on.
    Clearing {
        op: SyncWrapper<StoreOp<St>>,
        then: SyncWrapper<Option<Result<Frame<D>, E>>>,
    },
}

pub(crate) struct Watch<St> {
    pub(crate) span: tracing::Span,
    pub(crate) core: Arc<Core<St>>,
    pub(crate) key: BindingKey,
    pub(crate) served: AuthId,
    /// The lookup's hint for the commit (`CommitHint::NONE` unless the pinned account
    /// served).
    pub(crate) hint: crate::store::CommitHint,
}

impl<B: Body, St: BindingStore> ResponseBody<B, St> {
    pub(crate) fn passthrough(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
            state: State::Passthrough,
            learner: None,
        }
    }

    pub(crate) fn watching(body: B, watch: Watch<St>) -> Self {
        Self {
            kind: Kind::Inner { body },
            state: State::AwaitFirst(watch),
            learner: None,
        }
    }

    /// Also learns the response id from the first data frames.
    pub(crate) fn learning(mut self, learner: Option<Box<Learner<St>>>) -> Self {
        self.learner = learner.map(SyncWrapper::new);
        self
    }

    pub(crate) fn message(msg: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Message {
                msg: Some(msg.into()),
            },
            state: State::Passthrough,
            learner: None,
        }
    }
}

// `B::Data: 'static` (true whenever `B: 'static`) is only there for strict mode's
// rejection message: see `message_data`.
impl<B, St> Body for ResponseBody<B, St>
where
    B: Body,
    B::Data: 'static,
    St: BindingStore,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut body = match this.kind.project() {
            KindProj::Inner { body } => body,
            KindProj::Message { msg } => {
                let data = msg.take().and_then(message_data::<B::Data>);
                return Poll::Ready(data.map(|d| Ok(Frame::data(d))));
            }
        };
        loop {
            match this.state {
                State::Passthrough if this.learner.is_none() => return body.poll_frame(cx),
                State::Passthrough => {
                    let out = ready!(body.as_mut().poll_frame(cx));
                    let learned = match &out {
                        Some(Ok(frame)) => match frame.data_ref() {
                            Some(d) if d.has_remaining() => feed(this.learner, d),
                            // Empty data frames carry nothing; trailers end the stream.
                            Some(_) => None,
                            None => {
                                *this.learner = None;
                                None
                            }
                        },
                        _ => {
                            *this.learner = None;
                            None
                        }
                    };
                    match (learned, out) {
                        (Some(op), Some(Ok(frame))) => {
                            *this.state = State::Committing {
                                op: None,
                                learned: Some(op),
                                frame: Some(frame),
                            };
                        }
                        (_, out) => return Poll::Ready(out),
                    }
                }
                State::Committing { op, learned, frame } => {
                    // Both in flight at once; each is ready at once once finished.
                    let a = op
                        .as_mut()
                        .map_or(Poll::Ready(()), |op| op.get_mut().poll(cx));
                    let b = learned
                        .as_mut()
                        .map_or(Poll::Ready(()), |op| op.get_mut().poll(cx));
                    ready!(a);
                    ready!(b);
                    let frame = frame.take();
                    *this.state = State::Passthrough;
                    return Poll::Ready(frame.map(Ok));
                }
                State::Clearing { op, then } => {
                    ready!(op.get_mut().poll(cx));
                    let then = then.get_mut().take();
                    *this.state = if then.is_some() {
                        State::Passthrough
                    } else {
                        State::Ended
                    };
                    return Poll::Ready(then);
                }
                State::Ended => return Poll::Ready(None),
                State::AwaitFirst(watch) => {
                    let out = ready!(body.as_mut().poll_frame(cx));
                    let polled = match &out {
                        Some(Ok(f)) if f.data_ref().is_some_and(|d| d.has_remaining()) => {
                            Polled::Data
                        }
                        // Trailers end the stream, and so does an empty frame after which
                        // the body reports its end: a server may never poll again after
                        // either.
                        Some(Ok(f)) if f.is_trailers() => Polled::Trailers,
                        Some(Ok(_)) => Polled::Empty {
                            end: body.is_end_stream(),
                        },
                        None => Polled::End,
                        Some(Err(_)) => Polled::Error,
                    };
                    match (
                        decide(Seen::Body(polled), Some(&watch.served), None, true),
                        out,
                    ) {
                        (Action::Commit(_), Some(Ok(frame))) => {
                            let op = StoreOp::commit_now(
                                &watch.core,
                                &watch.key,
                                &watch.served,
                                watch.hint,
                                &watch.span,
                                cx,
                            );
                            let learned = frame.data_ref().and_then(|d| feed(this.learner, d));
                            if op.is_none() && learned.is_none() {
                                // Committed already (an in-memory store): hand the frame on.
                                *this.state = State::Passthrough;
                                return Poll::Ready(Some(Ok(frame)));
                            }
                            *this.state = State::Committing {
                                op: op.map(SyncWrapper::new),
                                learned,
                                frame: Some(frame),
                            };
                        }
                        (Action::Clear(_, reason), then) => {
                            // Not a success after all: nothing to learn from it.
                            *this.learner = None;
                            let op = StoreOp::clear(
                                &watch.core,
                                &watch.key,
                                &watch.served,
                                reason,
                                &watch.span,
                            );
                            *this.state = State::Clearing {
                                op: SyncWrapper::new(op),
                                then: SyncWrapper::new(then),
                            };
                        }
                        // Not the first chunk yet (only a data frame commits).
                        (Action::AwaitFirstChunk(_) | Action::Keep | Action::Commit(_), out) => {
                            return Poll::Ready(out);
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match (&self.kind, &self.state) {
            (Kind::Message { msg }, _) => msg.is_none() || !carries_message::<B::Data>(),
            (_, State::Committing { .. } | State::Clearing { .. }) => false,
            (_, State::Ended) => true,
            (Kind::Inner { body }, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.kind, &self.state) {
            (Kind::Message { msg }, _) => SizeHint::with_exact(match msg {
                Some(m) if carries_message::<B::Data>() => m.len() as u64,
                _ => 0,
            }),
            (Kind::Inner { body }, State::Committing { frame: Some(f), .. }) => {
                // A frame taken from the inner body but not yet handed on still counts.
                let held = f.data_ref().map_or(0, |d| d.remaining() as u64);
                let inner = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(held));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(held));
                }
                hint
            }
            (_, State::Ended) => SizeHint::with_exact(0),
            (Kind::Inner { body }, _) => body.size_hint(),
        }
    }
}

/// Feeds a data frame to the learner, if any; drops the learner once it is done.
fn feed<St: BindingStore>(
    learner: &mut Option<SyncWrapper<Box<Learner<St>>>>,
    data: &impl Buf,
) -> Option<SyncWrapper<StoreOp<St>>> {
    let l = learner.as_mut()?;
    match l.get_mut().feed(data) {
        Fed::More => None,
        Fed::Done => {
            *learner = None;
            None
        }
        Fed::Learned(op) => {
            *learner = None;
            Some(SyncWrapper::new(op))
        }
    }
}

/// Strict mode's rejection message as the body's data type, when that is `Bytes` (as
/// for hyper, axum, http-body-util bodies). Any other data type gets the 400 without a
/// message body.
///
/// A runtime type check (as axum's `Body::new` does) rather than a `B::Data: From<Bytes>`
/// bound on the whole `Body` impl, which every user would pay for though only strict mode
/// builds a message.
fn message_data<D: 'static>(msg: Bytes) -> Option<D> {
    try_downcast::<D, _>(msg).ok()
}

/// Whether [`message_data`] can carry a message as `D`.
fn carries_message<D: 'static>() -> bool {
    TypeId::of::<D>() == TypeId::of::<Bytes>()
}

fn try_downcast<T: 'static, K: 'static>(k: K) -> Result<T, K> {
    let mut slot = Some(k);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>() {
        Some(t) => Ok(t.take().expect("just filled")),
        None => Err(slot.expect("not taken")),
    }
}

/// An empty pass-through body (tower-http's `TimeoutLayer` builds its timeout response
/// with `Default`).
impl<B, St> Default for ResponseBody<B, St>
where
    B: Body + Default,
    St: BindingStore,
{
    fn default() -> Self {
        Self::passthrough(B::default())
    }
}

impl<B, St> std::fmt::Debug for ResponseBody<B, St>
where
    B: Body + std::fmt::Debug,
    St: BindingStore,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Passthrough => "passthrough",
            State::AwaitFirst(_) => "awaiting first chunk",
            State::Committing { .. } => "committing",
            State::Clearing { .. } => "clearing",
            State::Ended => "ended",
        };
        let mut d = f.debug_struct("ResponseBody");
        match &self.kind {
            Kind::Inner { body } => d.field("inner", body),
            Kind::Message { msg } => d.field("message", msg),
        };
        d.field("state", &state).finish()
    }
}
