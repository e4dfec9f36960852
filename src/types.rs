//! The values that travel in request and response extensions.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::extract::SessionId;

/// The name of an upstream account (a credential set) as the inner service knows it.
///
/// An `AuthId` is an *identifier*, not a secret: it appears in logs, in stats and (with the
/// Redis store) in the shared store. Never put an API key or token in it; use the name
/// under which your proxy keeps the credential.
///
/// Cloning is a reference-count increment. Reuse one `AuthId` per account (for example
/// build them once at start-up) and every binding to that account shares one allocation.
///
/// ```
/// use tower_sticky_session::AuthId;
///
/// let a = AuthId::from("account-a");
/// assert_eq!(a.as_str(), "account-a");
/// assert_eq!(a, AuthId::from(String::from("account-a")));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuthId(Arc<str>);

impl AuthId {
    /// Creates an account id.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }

    /// The account name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether two ids are equal, checking pointer identity first (the common case when
    /// account ids are built once and cloned).
    #[inline]
    pub(crate) fn same(&self, other: &AuthId) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl From<&str> for AuthId {
    fn from(s: &str) -> Self {
        Self(Arc::from(s))
    }
}

impl From<String> for AuthId {
    fn from(s: String) -> Self {
        Self(Arc::from(s))
    }
}

impl From<Arc<str>> for AuthId {
    fn from(s: Arc<str>) -> Self {
        Self(s)
    }
}

impl AsRef<str> for AuthId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AuthId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for AuthId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Request extension: the account this request should use if it can.
///
/// The layer inserts it when the store holds a live binding for the request's
/// [`BindingKey`]. A request that already carries a `PinnedAuth` (set by an earlier layer,
/// e.g. an admin override) keeps it: an explicit pin always wins over the store.
///
/// The inner service treats it as a strong hint: it uses that account when the account
/// can serve the request and otherwise picks normally. It must never fail a request just
/// because the pinned account is gone.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PinnedAuth(pub AuthId);

/// Response extension: the account that actually served the request.
///
/// The inner service sets it on every response it produced with an upstream account.
/// Without it a success commits nothing, and a failure can only clear a binding that
/// points at the request's [`PinnedAuth`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServedBy(pub AuthId);

/// A partition of the binding space: provider, model, tenant — whatever makes an account
/// able or unable to serve a request.
///
/// The same session id under two scopes is two independent bindings, so a session that
/// talks to two providers never pins a request to an account of the wrong provider.
/// Scopes are opaque bytes; they are hashed into the store key, never stored raw.
///
/// ```
/// use tower_sticky_session::Scope;
///
/// let s = Scope::from_static("openai/gpt-5");
/// assert_eq!(s.as_bytes(), b"openai/gpt-5");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Scope(Bytes);

impl Scope {
    /// A scope from a static string (no allocation).
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// A scope from any bytes.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// The scope's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<&'static str> for Scope {
    fn from(s: &'static str) -> Self {
        Self::from_static(s)
    }
}

impl From<String> for Scope {
    fn from(s: String) -> Self {
        Self(Bytes::from(s))
    }
}

impl From<&http::HeaderValue> for Scope {
    fn from(v: &http::HeaderValue) -> Self {
        Self(Bytes::copy_from_slice(v.as_bytes()))
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope(\"{}\")", self.0.escape_ascii())
    }
}

/// Request extension: the store key of this request's binding, `(scope, session)`.
///
/// Inserted next to [`SessionId`] whenever the request carries a valid session id. Stores
/// receive it by reference and derive their own fixed-size key from it (the in-memory
/// store a keyed 64-bit hash, the Redis store a cryptographic digest), so raw session ids
/// are never kept.
///
/// A key is either a session's key ([`BindingKey::new`]) or a learned response id's
/// ([`BindingKey::response_id`]): the two are separate namespaces in every store, so a
/// client that sends a session id equal to a learned `resp_…` string never reads or
/// overwrites the response id's binding.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BindingKey {
    scope: Option<Scope>,
    session: SessionId,
    kind: KeyKind,
}

/// Which namespace a [`BindingKey`] belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum KeyKind {
    Session,
    ResponseId,
}

impl KeyKind {
    /// The first byte of the key's encoding: 0/1 (no scope / scope) for sessions, as
    /// before response ids existed (so existing Redis keys stay valid), 2/3 for
    /// response ids.
    #[inline]
    fn marker(self, scoped: bool) -> u8 {
        let base = match self {
            KeyKind::Session => 0,
            KeyKind::ResponseId => 2,
        };
        base + u8::from(scoped)
    }
}

impl BindingKey {
    /// A key for `session` under an optional `scope`.
    pub fn new(scope: Option<Scope>, session: SessionId) -> Self {
        Self {
            scope,
            session,
            kind: KeyKind::Session,
        }
    }

    /// The key of a learned Responses API id (`resp_…`) under an optional `scope`: which
    /// account created that response (see
    /// [`StickySessionLayer::learn_response_ids`](crate::StickySessionLayer::learn_response_ids)).
    /// Never equal to, and never hashed like, a session's key with the same string.
    ///
    /// ```
    /// use tower_sticky_session::{BindingKey, SessionId};
    ///
    /// let id = SessionId::new("resp_123").unwrap();
    /// let learned = BindingKey::response_id(None, id.clone());
    /// assert!(learned.is_response_id());
    /// assert_ne!(learned, BindingKey::new(None, id));
    /// ```
    pub fn response_id(scope: Option<Scope>, id: SessionId) -> Self {
        Self {
            scope,
            session: id,
            kind: KeyKind::ResponseId,
        }
    }

    /// Whether this is a learned response id's key rather than a session's.
    pub fn is_response_id(&self) -> bool {
        self.kind == KeyKind::ResponseId
    }

    /// The scope, if the layer was configured with one and it applied to the request.
    pub fn scope(&self) -> Option<&Scope> {
        self.scope.as_ref()
    }

    /// The session id.
    pub fn session(&self) -> &SessionId {
        &self.session
    }

    /// Feeds the key into a hasher in an unambiguous encoding: a scope marker and length
    /// prefix keep `("a", "bc")` and `("ab", "c")` apart, "no scope" apart from an
    /// empty scope, and a session apart from a learned response id.
    pub fn hash_into(&self, state: &mut impl std::hash::Hasher) {
        state.write_u8(self.kind.marker(self.scope.is_some()));
        if let Some(s) = &self.scope {
            state.write_usize(s.0.len());
            state.write(&s.0);
        }
        let id = self.session.as_bytes();
        state.write_usize(id.len());
        state.write(id);
    }

    /// The same unambiguous encoding as bytes, for stores that hash with a digest
    /// function rather than a [`std::hash::Hasher`] (e.g. a cryptographic hash).
    pub fn encode(&self) -> Vec<u8> {
        let id = self.session.as_bytes();
        let scope_len = self.scope.as_ref().map_or(0, |s| s.0.len());
        let mut out = Vec::with_capacity(18 + scope_len + id.len());
        out.push(self.kind.marker(self.scope.is_some()));
        if let Some(s) = &self.scope {
            out.extend_from_slice(&(s.0.len() as u64).to_be_bytes());
            out.extend_from_slice(&s.0);
        }
        out.extend_from_slice(&(id.len() as u64).to_be_bytes());
        out.extend_from_slice(id);
        out
    }
}

impl fmt::Debug for BindingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("BindingKey");
        d.field("scope", &self.scope)
            .field("session", &self.session);
        if self.is_response_id() {
            d.field("response_id", &true);
        }
        d.finish()
    }
}

/// Request extension: where the request's [`SessionId`] came from.
///
/// Inserted by the layer next to `SessionId`; also the `source` field of the layer's
/// tracing span and the label of [`StatsSnapshot::sessions_by_source`](crate::StatsSnapshot::sessions_by_source).
/// Sources are tried in this order, first valid one wins: a learned response id (only
/// when it pins the request and the request has no session of its own), the headers
/// (or the session function), the body's session field, the body's fingerprint.
///
/// ```
/// use http::HeaderName;
/// use tower_sticky_session::SessionSource;
///
/// let s = SessionSource::Header(HeaderName::from_static("x-claude-code-session-id"));
/// assert_eq!(s.to_string(), "header:x-claude-code-session-id");
/// assert_eq!(SessionSource::BodyField("prompt_cache_key").to_string(), "body:prompt_cache_key");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionSource {
    /// A request header, by name.
    Header(http::HeaderName),
    /// A JSON body field read by [`SessionFromBodyLayer`](crate::body_session::SessionFromBodyLayer),
    /// one of [`BODY_FIELDS`](crate::body_session::BODY_FIELDS).
    BodyField(&'static str),
    /// The body's `previous_response_id`, learned from a response of the account it now
    /// pins to ([`HardPin`]). Only for a request with no session of its own; a request
    /// with one keeps that session's source and carries [`HardPin`].
    ResponseId,
    /// The conversation fingerprint computed by
    /// [`SessionFromBodyLayer::fingerprint`](crate::body_session::SessionFromBodyLayer::fingerprint).
    Fingerprint,
    /// The layer's [`session_fn`](crate::StickySessionLayer::session_fn).
    Function,
}

impl SessionSource {
    /// The kind of source, without its detail (a stats label).
    pub fn kind(&self) -> SessionSourceKind {
        match self {
            Self::Header(_) => SessionSourceKind::Header,
            Self::BodyField(_) => SessionSourceKind::BodyField,
            Self::ResponseId => SessionSourceKind::ResponseId,
            Self::Fingerprint => SessionSourceKind::Fingerprint,
            Self::Function => SessionSourceKind::Function,
        }
    }
}

impl fmt::Display for SessionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(h) => {
                f.write_str("header:")?;
                f.write_str(h.as_str())
            }
            Self::BodyField(field) => {
                f.write_str("body:")?;
                f.write_str(field)
            }
            other => f.write_str(other.kind().as_str()),
        }
    }
}

/// The kind of a [`SessionSource`]: what [`StatsSnapshot::sessions_by_source`](crate::StatsSnapshot::sessions_by_source)
/// counts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionSourceKind {
    /// [`SessionSource::Header`].
    Header,
    /// [`SessionSource::BodyField`].
    BodyField,
    /// [`SessionSource::ResponseId`].
    ResponseId,
    /// [`SessionSource::Fingerprint`].
    Fingerprint,
    /// [`SessionSource::Function`].
    Function,
}

impl SessionSourceKind {
    /// All kinds, in a fixed order (crate-internal: the enum may grow).
    pub(crate) const ALL: [SessionSourceKind; 5] = [
        Self::Header,
        Self::BodyField,
        Self::ResponseId,
        Self::Fingerprint,
        Self::Function,
    ];

    /// A short machine-readable name (`header`, `body`, `response_id`, `fingerprint`,
    /// `function`), used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::BodyField => "body",
            Self::ResponseId => "response_id",
            Self::Fingerprint => "fingerprint",
            Self::Function => "function",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Self::Header => 0,
            Self::BodyField => 1,
            Self::ResponseId => 2,
            Self::Fingerprint => 3,
            Self::Function => 4,
        }
    }
}

impl fmt::Display for SessionSourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Request extension: the request's [`PinnedAuth`] is a *hard* pin.
///
/// Inserted next to `PinnedAuth` when the pin comes from a learned
/// `previous_response_id` (see
/// [`StickySessionLayer::learn_response_ids`](crate::StickySessionLayer::learn_response_ids)):
/// the response it continues lives only on the pinned account, so another account would
/// answer "not found". The inner service must serve the request with the pinned account
/// or not at all — no failover to another account. (A pinned account that is down or
/// rate limited cannot resolve the chain either; the client sees its error.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardPin;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_key_encoding_is_unchanged_and_response_ids_are_apart() {
        let id = SessionId::new("resp_1").unwrap();
        let session = BindingKey::new(None, id.clone());
        let mut expected = vec![0u8];
        expected.extend_from_slice(&6u64.to_be_bytes());
        expected.extend_from_slice(b"resp_1");
        assert_eq!(session.encode(), expected, "existing Redis keys stay valid");
        let learned = BindingKey::response_id(None, id.clone());
        assert_eq!(learned.encode()[0], 2);
        assert_eq!(learned.encode()[1..], session.encode()[1..]);
        let scoped = BindingKey::response_id(Some(Scope::from_static("p")), id.clone());
        assert_eq!(scoped.encode()[0], 3);
        assert_eq!(
            BindingKey::new(Some(Scope::from_static("p")), id).encode()[0],
            1
        );
    }

    #[test]
    fn response_id_keys_hash_apart_from_session_keys() {
        use std::hash::{BuildHasher, Hasher};
        let state = std::hash::RandomState::new();
        let digest = |k: &BindingKey| {
            let mut h = state.build_hasher();
            k.hash_into(&mut h);
            h.finish()
        };
        let id = SessionId::new("resp_1").unwrap();
        assert_ne!(
            digest(&BindingKey::new(None, id.clone())),
            digest(&BindingKey::response_id(None, id))
        );
    }
}
