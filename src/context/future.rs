//! [`ResponseFuture`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::slot::{AccountSlot, CURRENT};
use crate::types::ServedBy;

pin_project! {
    /// Response future of [`AccountContext`](super::AccountContext): polls the inner
    /// future with the request's [`AccountSlot`] as the current context, then gives a
    /// response without [`ServedBy`] the reported account.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        slot: AccountSlot,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, slot: AccountSlot) -> Self {
        Self { inner, slot }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = this.inner;
        let mut out = ready!(CURRENT.sync_scope(this.slot.clone(), || inner.poll(cx)));
        if let Ok(res) = &mut out
            && res.extensions().get::<ServedBy>().is_none()
            && let Some(served) = this.slot.served()
        {
            res.extensions_mut().insert(ServedBy(served));
        }
        Poll::Ready(out)
    }
}
