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
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BindingKey {
    scope: Option<Scope>,
    session: SessionId,
}

impl BindingKey {
    /// A key for `session` under an optional `scope`.
    pub fn new(scope: Option<Scope>, session: SessionId) -> Self {
        Self { scope, session }
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
    /// prefix keep `("a", "bc")` and `("ab", "c")` apart, and "no scope" apart from an
    /// empty scope.
    pub fn hash_into(&self, state: &mut impl std::hash::Hasher) {
        match &self.scope {
            None => state.write_u8(0),
            Some(s) => {
                state.write_u8(1);
                state.write_usize(s.0.len());
                state.write(&s.0);
            }
        }
        let id = self.session.as_str().as_bytes();
        state.write_usize(id.len());
        state.write(id);
    }

    /// The same unambiguous encoding as bytes, for stores that hash with a digest
    /// function rather than a [`std::hash::Hasher`] (e.g. a cryptographic hash).
    pub fn encode(&self) -> Vec<u8> {
        let id = self.session.as_str().as_bytes();
        let scope_len = self.scope.as_ref().map_or(0, |s| s.0.len());
        let mut out = Vec::with_capacity(18 + scope_len + id.len());
        match &self.scope {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                out.extend_from_slice(&(s.0.len() as u64).to_be_bytes());
                out.extend_from_slice(&s.0);
            }
        }
        out.extend_from_slice(&(id.len() as u64).to_be_bytes());
        out.extend_from_slice(id);
        out
    }
}

impl fmt::Debug for BindingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BindingKey")
            .field("scope", &self.scope)
            .field("session", &self.session)
            .finish()
    }
}
