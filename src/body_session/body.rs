//! The request body handed to the inner service.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The request body after [`SessionFromBody`](super::SessionFromBody): the same bytes
    /// as the client's body, in the same order, followed by the same trailers or the same
    /// error.
    ///
    /// - Buffered whole (the body fit in the limit and was read to its end): one data
    ///   frame with every byte, then the trailers if there were any.
    ///   [`bytes`](BufferedBody::bytes) hands out the complete body, so a proxy that
    ///   retries on another account can send it again without buffering it a second time.
    /// - Partly read (the body outgrew the limit, or failed while being read): the bytes
    ///   already read, then the rest of the original stream, or the original error.
    /// - Not read: the original body, frame by frame.
    ///
    /// `Data` is [`Bytes`] (the original body's chunks are converted with
    /// [`Buf::copy_to_bytes`], which copies nothing when they already are `Bytes`).
    /// [`size_hint`](Body::size_hint) and [`is_end_stream`](Body::is_end_stream) are
    /// exact: a buffered body reports its exact remaining length, a partly read one the
    /// bytes it holds plus the original body's hint, so a `Content-Length` request stays
    /// one.
    pub struct BufferedBody<B>
    where
        B: Body,
    {
        #[pin]
        inner: Option<B>,
        head: Option<Bytes>,
        pending: Option<Pending<B::Error>>,
        full: Option<Bytes>,
    }
}

enum Pending<E> {
    Data(Bytes),
    Trailers(HeaderMap),
    Error(E),
}

impl<B: Body> BufferedBody<B> {
    /// Wraps a body that is passed on unread, frame by frame.
    pub fn new(inner: B) -> Self {
        Self {
            inner: Some(inner),
            head: None,
            pending: None,
            full: None,
        }
    }

    /// A body read to its end: `data`, then `trailers`.
    pub(crate) fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            inner: None,
            head: Some(data.clone()),
            pending: trailers.map(Pending::Trailers),
            full: Some(data),
        }
    }

    /// A body that outgrew the limit: the bytes read so far, the chunk that did not fit,
    /// then the rest of `inner`.
    pub(crate) fn over_limit(prefix: Bytes, chunk: Bytes, inner: B) -> Self {
        Self {
            inner: Some(inner),
            head: Some(prefix),
            pending: Some(Pending::Data(chunk)),
            full: None,
        }
    }

    /// A body that failed while being read: the bytes read so far, the error, then
    /// whatever `inner` yields next.
    pub(crate) fn failed(prefix: Bytes, error: B::Error, inner: B) -> Self {
        Self {
            inner: Some(inner),
            head: Some(prefix),
            pending: Some(Pending::Error(error)),
            full: None,
        }
    }

    /// The complete body, when it was buffered whole (it fit in the limit and was read to
    /// its end); still the complete body after some or all of its frames were polled.
    /// Cloning the returned [`Bytes`] is cheap and shares the buffer: clone it before
    /// handing the body to a client, and a retry on another account can send
    /// `Full::new(bytes)` without buffering again. `None` for a body that was not read,
    /// outgrew the limit or failed.
    pub fn bytes(&self) -> Option<&Bytes> {
        self.full.as_ref()
    }

    fn held(&self) -> u64 {
        let head = self.head.as_ref().map_or(0, Bytes::len);
        let pending = match &self.pending {
            Some(Pending::Data(d)) => d.len(),
            _ => 0,
        };
        (head + pending) as u64
    }
}

impl<B> Body for BufferedBody<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(head) = this.head.take()
            && !head.is_empty()
        {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if let Some(pending) = this.pending.take() {
            return Poll::Ready(Some(match pending {
                Pending::Data(d) => Ok(Frame::data(d)),
                Pending::Trailers(t) => Ok(Frame::trailers(t)),
                Pending::Error(e) => Err(e),
            }));
        }
        match this.inner.as_pin_mut() {
            None => Poll::Ready(None),
            Some(inner) => inner.poll_frame(cx).map(|frame| {
                frame.map(|r| r.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining()))))
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.as_ref().is_none_or(Bytes::is_empty)
            && self.pending.is_none()
            && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.held();
        match &self.inner {
            None => SizeHint::with_exact(held),
            Some(inner) => {
                let h = inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(h.lower().saturating_add(held));
                if let Some(upper) = h.upper() {
                    hint.set_upper(upper.saturating_add(held));
                }
                hint
            }
        }
    }
}

impl<B> std::fmt::Debug for BufferedBody<B>
where
    B: Body,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferedBody")
            .field("buffered", &self.full.as_ref().map(Bytes::len))
            .field("held", &self.held())
            .field("streaming", &self.inner.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    type Inner = Full<Bytes>;

    #[tokio::test]
    async fn buffered_body_reports_exact_size_until_its_trailers_are_out() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-t", "1".parse().unwrap());
        let mut body = BufferedBody::<Inner>::buffered(Bytes::from_static(b"abc"), Some(trailers));
        assert_eq!(body.size_hint().exact(), Some(3));
        assert!(!body.is_end_stream());
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "abc");
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(!body.is_end_stream(), "trailers still to come");
        assert!(body.frame().await.unwrap().unwrap().is_trailers());
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        assert_eq!(body.bytes().map(|b| &b[..]), Some(&b"abc"[..]));
    }

    #[tokio::test]
    async fn over_limit_body_adds_what_it_holds_to_the_inner_hint() {
        let inner = Full::new(Bytes::from_static(b"rest"));
        let mut body = BufferedBody::over_limit(
            Bytes::from_static(b"pre"),
            Bytes::from_static(b"fix"),
            inner,
        );
        assert_eq!(body.size_hint().exact(), Some(10));
        assert!(body.bytes().is_none());
        let all = (&mut body).collect().await.unwrap().to_bytes();
        assert_eq!(all, "prefixrest");
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn passthrough_body_forwards_the_inner_hint_and_end() {
        let body = BufferedBody::new(Full::new(Bytes::from_static(b"xy")));
        assert_eq!(body.size_hint().exact(), Some(2));
        assert!(!body.is_end_stream());
        let empty = BufferedBody::new(Full::new(Bytes::new()));
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
    }
}
