//! What the proxy's own outer layers hand to [`failover`](super::failover) with each
//! request, in one request extension ([`Handoff`]): the connection's activity
//! ([`serve`](super::serve)), the body's deadline ([`timeouts`](super::timeouts)) and its
//! place in the buffer budget ([`budget`](super::budget)).
//!
//! One value rather than one per layer: every request extension costs an allocation and
//! a hash insert on the way in and a removal on the way out. The first layer puts the
//! value there; the later ones fill in their field of it.

use http::Extensions;

use super::budget::Buffering;
use super::serve::ConnActivity;
use super::timeouts::BodyDeadline;

/// A request's hand-off from the proxy's outer layers to failover (a request extension).
#[derive(Clone, Debug, Default)]
pub(crate) struct Handoff {
    /// The client connection's activity: set by `serve` for every request.
    pub(crate) conn: Option<ConnActivity>,
    /// Whether the body missed `--body-timeout`: set for a request with a body.
    pub(crate) deadline: Option<BodyDeadline>,
    /// The body's place in `--max-buffered-total`: set for a body that may be buffered
    /// (one within `--max-body-buffer`), granted or refused.
    pub(crate) buffering: Option<Buffering>,
}

impl Handoff {
    /// The request's hand-off, put there empty when no layer has yet.
    pub(crate) fn of(extensions: &mut Extensions) -> &mut Handoff {
        extensions.get_or_insert_default()
    }

    /// Takes the request's hand-off out of its extensions (empty when there is none).
    pub(crate) fn take(extensions: &mut Extensions) -> Handoff {
        extensions.remove().unwrap_or_default()
    }

    /// The request's body budget, if a layer set it.
    pub(crate) fn buffering(extensions: &Extensions) -> Option<&Buffering> {
        extensions.get::<Handoff>()?.buffering.as_ref()
    }
}
