//! Response-id learning: which account created which Responses API response.
//!
//! See [`StickySessionLayer::learn_response_ids`](crate::StickySessionLayer::learn_response_ids).
//! The response side gets a [`Learner`] on a success with `ServedBy` (unless the request
//! said `store: false`); the body feeds it its data frames until it has found the id,
//! found none, or given up, each frame searched by [`find_response_id`] (see
//! `response_id.rs`). A compressed answer's frames go through a [`Decoder`] first (see
//! [`decode`]).

mod decode;
mod response_id;

pub use self::response_id::{ResponseIdScan, find_response_id};

use std::io::IoSlice;
use std::sync::Arc;

use bytes::Buf;
use http::{HeaderValue, Response};
use tracing::Span;

use crate::classify::{ClassifyResponse, ResponseClass};
use crate::core::{Core, Shared, StoreOp};
use crate::extract::SessionId;
use crate::stats::Counters;
use crate::store::BindingStore;
use crate::types::{AuthId, BindingKey, Scope, ServedBy};

use self::decode::{Coding, Decoder, Stopped};

/// The most of a body's first bytes kept when its first frame ends before the id (a
/// `response.created` event split across frames). Past it, nothing is learned.
pub(crate) const MAX_PREFIX: usize = 8 * 1024;

/// The longest id learned (the same bound as [`find_response_id`]'s).
const MAX_ID_LEN: usize = crate::extract::DEFAULT_MAX_SESSION_ID_LEN;

/// What the request side hands the response side when learning is on.
pub(crate) struct LearnCtx<St, C> {
    pub(crate) shared: Arc<Shared<St, C>>,
    pub(crate) scope: Option<Scope>,
    /// An upgrade request's [`Binding`](crate::Binding) slot, for a request without a
    /// session of its own (with one, the session's tracking holds it).
    pub(crate) upgrade: Option<Arc<crate::upgrade::Slot<St>>>,
    /// The request said `"store": false` (its [`BodySignals`](crate::body_session::BodySignals)): the
    /// response cannot be continued, so its id is not learned.
    pub(crate) not_stored: bool,
}

impl<St, C: ClassifyResponse> LearnCtx<St, C> {
    /// A learner for a success that the inner service says `ServedBy` served.
    pub(crate) fn learner<B>(self, res: &Response<B>, span: &Span) -> Option<Box<Learner<St>>> {
        let served = res.extensions().get::<ServedBy>()?;
        if self.shared.classifier.classify(res.status(), res.headers()) != ResponseClass::Success {
            return None;
        }
        let counters = self.shared.core.counters();
        if self.not_stored {
            Counters::inc(&counters.response_ids_not_stored);
            return None;
        }
        let decoder = match Coding::of(res.headers()) {
            Coding::Identity => None,
            coding => match Decoder::new(coding) {
                Some(d) => Some(Box::new(d)),
                None => {
                    Counters::inc(&counters.response_ids_undecodable);
                    tracing::debug!(
                        parent: span,
                        coding = coding.as_str(),
                        "sticky session: response id not learned: content encoding not decoded"
                    );
                    return None;
                }
            },
        };
        Some(Box::new(Learner {
            core: self.shared.core.clone(),
            scope: self.scope,
            served: served.0.clone(),
            span: span.clone(),
            prefix: Vec::new(),
            decoder,
        }))
    }
}

/// Looks for the response id in a success's first data frames.
pub(crate) struct Learner<St> {
    core: Arc<Core<St>>,
    scope: Option<Scope>,
    served: AuthId,
    span: Span,
    /// The body's first bytes, kept only once the first frame ended before the answer.
    prefix: Vec<u8>,
    /// A compressed answer's decoder, which holds the decoded prefix (`prefix` is unused).
    decoder: Option<Box<Decoder>>,
}

/// What one data frame told a [`Learner`].
pub(crate) enum Fed<St: BindingStore> {
    /// No answer yet: feed the next data frame.
    More,
    /// Nothing to learn (no id where one is looked for, or the bound was reached).
    Done,
    /// The id: its commit, to finish before the frame is handed on.
    Learned(StoreOp<St>),
}

impl<St: BindingStore> Learner<St> {
    /// Scans the body's next data frame. The first frame is scanned in place; only if it
    /// ends before the answer are bytes copied (at most [`MAX_PREFIX`] in all).
    pub(crate) fn feed(&mut self, data: &impl Buf) -> Fed<St> {
        if self.decoder.is_some() {
            return self.feed_encoded(data);
        }
        let chunk = data.chunk();
        if self.prefix.is_empty() && chunk.len() == data.remaining() {
            match find_response_id(chunk) {
                ResponseIdScan::Found(id) => return self.learned(id),
                ResponseIdScan::Absent => return Fed::Done,
                ResponseIdScan::NeedMore if chunk.len() >= MAX_PREFIX => return Fed::Done,
                ResponseIdScan::NeedMore => {}
            }
        }
        let room = MAX_PREFIX - self.prefix.len();
        let mut slices = [IoSlice::new(&[]); 16];
        let n = data.chunks_vectored(&mut slices);
        let mut copied = 0;
        for s in &slices[..n] {
            let take = s.len().min(room - copied);
            self.prefix.extend_from_slice(&s[..take]);
            copied += take;
            if copied == room {
                break;
            }
        }
        if copied < room && copied < data.remaining() {
            // More chunks than the slices could show: the prefix would have a hole.
            return Fed::Done;
        }
        let found = match find_response_id(&self.prefix) {
            ResponseIdScan::Found(id) => Some(id_of(id)),
            ResponseIdScan::Absent => None,
            ResponseIdScan::NeedMore if self.prefix.len() >= MAX_PREFIX => None,
            ResponseIdScan::NeedMore => return Fed::More,
        };
        match found.flatten() {
            Some(id) => self.commit(id),
            None => Fed::Done,
        }
    }

    /// [`feed`](Self::feed) for a compressed answer: the frame goes through the decoder,
    /// and the decoded prefix (at most [`MAX_PREFIX`]) is scanned.
    fn feed_encoded(&mut self, data: &impl Buf) -> Fed<St> {
        let Some(decoder) = self.decoder.as_deref_mut() else {
            return Fed::Done;
        };
        let mut slices = [IoSlice::new(&[]); 16];
        let n = data.chunks_vectored(&mut slices);
        if slices[..n].iter().map(|s| s.len()).sum::<usize>() < data.remaining() {
            // More chunks than the slices could show: the stream would have a hole.
            return Fed::Done;
        }
        let mut stopped = None;
        for s in &slices[..n] {
            if let Err(why) = decoder.write(s) {
                stopped = Some(why);
                break;
            }
        }
        let found = match find_response_id(decoder.decoded()) {
            ResponseIdScan::Found(id) => id_of(id),
            ResponseIdScan::NeedMore if stopped.is_none() => return Fed::More,
            _ => None,
        };
        if found.is_none() && stopped == Some(Stopped::Invalid) {
            tracing::debug!(
                parent: &self.span,
                "sticky session: response id not learned: compressed answer not decodable"
            );
        }
        match found {
            Some(id) => self.commit(id),
            None => Fed::Done,
        }
    }

    fn learned(&mut self, id: &str) -> Fed<St> {
        match id_of(id) {
            Some(id) => self.commit(id),
            None => Fed::Done,
        }
    }

    fn commit(&mut self, id: SessionId) -> Fed<St> {
        let key = BindingKey::response_id(self.scope.take(), id);
        Fed::Learned(StoreOp::learn(&self.core, &key, &self.served, &self.span))
    }
}

/// The id as a `SessionId` (a copy of its few bytes, not of the frame).
fn id_of(id: &str) -> Option<SessionId> {
    SessionId::from_header_value(HeaderValue::from_str(id).ok()?, MAX_ID_LEN).ok()
}
