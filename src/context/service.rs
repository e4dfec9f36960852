//! [`AccountContext`].

use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::slot::AccountSlot;
use crate::types::{HardPin, PinnedAuth};

/// Middleware made by [`AccountContextLayer`](super::AccountContextLayer): inserts the
/// request's [`AccountSlot`] and polls the inner future with it as the task's current
/// context.
#[derive(Clone, Debug)]
pub struct AccountContext<S> {
    inner: S,
}

impl<S> AccountContext<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner }
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for AccountContext<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let ext = req.extensions();
        let pin = ext.get::<PinnedAuth>().map(|p| p.0.clone());
        let hard = pin.is_some() && ext.get::<HardPin>().is_some();
        let slot = AccountSlot::new(pin, hard);
        req.extensions_mut().insert(slot.clone());
        ResponseFuture::new(self.inner.call(req), slot)
    }
}
