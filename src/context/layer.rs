//! [`AccountContextLayer`].

use tower_layer::Layer;

use super::service::AccountContext;

/// Gives the inner service [`current_pin`](super::current_pin) and
/// [`report_served`](super::report_served); see the [module docs](super). Place it inside
/// (after, in `ServiceBuilder` order) the sticky layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct AccountContextLayer {
    _priv: (),
}

impl AccountContextLayer {
    /// The layer.
    pub fn new() -> Self {
        Self { _priv: () }
    }
}

impl<S> Layer<S> for AccountContextLayer {
    type Service = AccountContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccountContext::new(inner)
    }
}
