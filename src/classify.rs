//! Deciding what a response means for the binding.
//!
//! tower-http's `classify` traits answer a two-way question (success or failure, for
//! metrics and tracing). A binding needs three answers — commit, clear, or leave alone —
//! so this crate has its own small trait, with a blanket impl for closures.

use http::{HeaderMap, StatusCode};

/// What a response means for the session's binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseClass {
    /// The account served the request: commit the binding to [`ServedBy`](crate::ServedBy)
    /// once the body yields its first data chunk (at once if the body is known empty).
    Success,
    /// The account failed: clear the binding if it still points at that account.
    Failure,
    /// Neither: an existing binding is kept, none is created (e.g. a client error such as
    /// 400 or 404 says nothing about the account).
    Neutral,
}

/// Classifies a response for the binding's state machine.
///
/// Implemented for [`StatusClassifier`] (the default) and for any
/// `Fn(StatusCode, &HeaderMap) -> ResponseClass`:
///
/// ```
/// use http::StatusCode;
/// use tower_sticky_session::{ResponseClass, StickySessionLayer};
///
/// // An upstream that reports quota exhaustion in a header rather than a status.
/// let layer = StickySessionLayer::new().classifier(|status: StatusCode, headers: &http::HeaderMap| {
///     if headers.contains_key("x-quota-exhausted") || status.is_server_error() {
///         ResponseClass::Failure
///     } else if status.is_success() {
///         ResponseClass::Success
///     } else {
///         ResponseClass::Neutral
///     }
/// });
/// # let _ = layer;
/// ```
pub trait ClassifyResponse: Send + Sync + 'static {
    /// Classifies a response from its status and headers.
    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> ResponseClass;
}

impl<F> ClassifyResponse for F
where
    F: Fn(StatusCode, &HeaderMap) -> ResponseClass + Send + Sync + 'static,
{
    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> ResponseClass {
        self(status, headers)
    }
}

/// A classifier by status code, with per-status overrides.
///
/// Default: 429 and 5xx are [`Failure`](ResponseClass::Failure); 1xx, 2xx and 3xx are
/// [`Success`](ResponseClass::Success); every other status (4xx but 429) is
/// [`Neutral`](ResponseClass::Neutral).
///
/// "401 and 403 clear the binding, 429 keeps it":
///
/// ```
/// use http::StatusCode;
/// use tower_sticky_session::{ClassifyResponse, ResponseClass, StatusClassifier};
///
/// let c = StatusClassifier::new()
///     .failure(StatusCode::UNAUTHORIZED)
///     .failure(StatusCode::FORBIDDEN)
///     .neutral(StatusCode::TOO_MANY_REQUESTS);
/// let h = http::HeaderMap::new();
/// assert_eq!(c.classify(StatusCode::FORBIDDEN, &h), ResponseClass::Failure);
/// assert_eq!(c.classify(StatusCode::TOO_MANY_REQUESTS, &h), ResponseClass::Neutral);
/// assert_eq!(c.classify(StatusCode::BAD_GATEWAY, &h), ResponseClass::Failure);
/// ```
#[derive(Clone, Debug)]
pub struct StatusClassifier {
    // One entry per status 100..=999: a table lookup on the hot path.
    table: Box<[ResponseClass; 900]>,
}

impl StatusClassifier {
    /// The default classification (see the type's docs).
    pub fn new() -> Self {
        let mut table = Box::new([ResponseClass::Neutral; 900]);
        for (i, slot) in table.iter_mut().enumerate() {
            let code = i as u16 + 100;
            *slot = match code {
                100..=399 => ResponseClass::Success,
                429 | 500..=599 => ResponseClass::Failure,
                _ => ResponseClass::Neutral,
            };
        }
        Self { table }
    }

    /// Sets the class of one status.
    pub fn set(mut self, status: StatusCode, class: ResponseClass) -> Self {
        self.table[usize::from(status.as_u16() - 100)] = class;
        self
    }

    /// Makes `status` clear the binding.
    pub fn failure(self, status: StatusCode) -> Self {
        self.set(status, ResponseClass::Failure)
    }

    /// Makes `status` commit the binding.
    pub fn success(self, status: StatusCode) -> Self {
        self.set(status, ResponseClass::Success)
    }

    /// Makes `status` leave the binding alone.
    pub fn neutral(self, status: StatusCode) -> Self {
        self.set(status, ResponseClass::Neutral)
    }
}

impl Default for StatusClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ClassifyResponse for StatusClassifier {
    #[inline]
    fn classify(&self, status: StatusCode, _headers: &HeaderMap) -> ResponseClass {
        self.table[usize::from(status.as_u16() - 100)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_classes() {
        let c = StatusClassifier::default();
        let h = HeaderMap::new();
        let class = |s: u16| c.classify(StatusCode::from_u16(s).unwrap(), &h);
        assert_eq!(class(200), ResponseClass::Success);
        assert_eq!(class(204), ResponseClass::Success);
        assert_eq!(class(304), ResponseClass::Success);
        assert_eq!(class(429), ResponseClass::Failure);
        assert_eq!(class(500), ResponseClass::Failure);
        assert_eq!(class(503), ResponseClass::Failure);
        assert_eq!(class(599), ResponseClass::Failure);
        assert_eq!(class(400), ResponseClass::Neutral);
        assert_eq!(class(401), ResponseClass::Neutral);
        assert_eq!(class(404), ResponseClass::Neutral);
        assert_eq!(class(999), ResponseClass::Neutral);
    }
}
