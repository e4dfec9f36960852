//! Data frames that are ready together, gathered into one: the buffer of the proxy's
//! response body (`timeouts::ProxyBody`), also used by `examples/floor_proxy.rs` so
//! that the benchmark's floor gathers exactly as the proxy does.

use std::future::poll_fn;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};

/// Most bytes the proxy's response body (`timeouts::ProxyBody`) gathers into one frame
/// from upstream frames that are ready together (the size of the connection's write buffer, `serve::CONN_BUF`).
pub(crate) const GATHER_MAX: usize = 64 * 1024;

/// The room a gathering buffer starts with once a second frame joins the first: a few
/// events' worth, and no more than the allocator's small-block size (mimalloc's fast path
/// ends at 1 KiB).
const GATHER_ROOM: usize = 1024;

/// Data frames gathered into one: the first kept as it is, a copy only once a second one
/// joins it.
#[derive(Default)]
pub(crate) struct Gathered {
    one: Option<Bytes>,
    many: BytesMut,
}

impl Gathered {
    pub(crate) fn len(&self) -> usize {
        self.one.as_ref().map_or(0, Bytes::len) + self.many.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.one.is_none() && self.many.is_empty()
    }

    pub(crate) fn push(&mut self, data: Bytes) {
        if let Some(one) = self.one.take() {
            // Room for more than these two, so that the ones after them do not grow
            // the buffer again.
            self.many.reserve((one.len() + data.len()).max(GATHER_ROOM));
            self.many.extend_from_slice(&one);
            self.many.extend_from_slice(&data);
        } else if self.many.is_empty() {
            self.one = Some(data);
        } else {
            self.many.extend_from_slice(&data);
        }
    }

    pub(crate) fn take(&mut self) -> Option<Bytes> {
        self.one
            .take()
            .or_else(|| (!self.many.is_empty()).then(|| self.many.split().freeze()))
    }
}

/// Drives `gather` (which appends the frames that are ready and says whether to come
/// back) the way both gathering bodies do before their answer: while it asks to come
/// back (it found nothing ready, but its last yield brought data, so the upstream's
/// connection task may well have more), yield once, woken at once, and call it again.
/// Never waits for data that has not arrived.
pub(crate) async fn gather_settled(mut gather: impl FnMut(&mut Context<'_>) -> bool) {
    poll_fn(|cx| {
        if gather(cx) {
            cx.waker().wake_by_ref();
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
}
