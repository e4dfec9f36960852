//! Where bindings live.
//!
//! A [`BindingStore`] maps a [`BindingKey`] (scope, session) to the [`AuthId`] that last
//! served it well. The embedded default is [`MemoryStore`]; a networked store (Redis) sits
//! behind the same trait.
//!
//! # The interface
//!
//! Every operation returns a future named by an associated type, so an in-memory store
//! answers with [`std::future::Ready`] — no allocation, no box, resolved on the first
//! poll — while a networked store returns whatever future its client gives it. The layer
//! polls each future in place (they are required to be [`Unpin`]; a networked store
//! boxes its future, which costs one allocation next to a network round trip:
//! [`BoxStoreFuture`] and [`boxed`] are there for that).
//!
//! Stores must make [`BindingStore::clear_if`] atomic per key with respect to
//! [`BindingStore::commit`]: a compare-and-delete that runs concurrently with a commit of
//! another account must never remove the new binding.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::types::{AuthId, BindingKey};

mod hint;
mod inspect;
mod memory;
#[cfg(feature = "redis")]
mod redis;

pub(crate) use self::hint::{CommitHint, CrateOnly, HintedLookup};
pub use self::inspect::{BindingInfo, InspectStore};
pub use self::memory::{DEFAULT_MAX_BINDINGS, DEFAULT_TTL, MemoryStore, MemoryStoreBuilder};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{
    DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_THRESHOLD, DEFAULT_FAULT_LOG_INTERVAL,
    DEFAULT_REDIS_ADMIN_TIMEOUT, DEFAULT_REDIS_CONNECT_TIMEOUT, DEFAULT_REDIS_PREFIX,
    DEFAULT_REDIS_TIMEOUT, RedisBinding, RedisBreakerOpen, RedisStore, RedisStoreBuilder,
    RedisStoreFuture, RedisStoreStats,
};

/// A binding store: `(scope, session) → account`, with expiry and a capacity bound.
///
/// # Operations that outlive their request
///
/// The layer decides a [`commit`](BindingStore::commit) or a
/// [`clear_if`](BindingStore::clear_if) from the response and then polls the store's
/// future inside its [`ResponseFuture`](crate::ResponseFuture) or
/// [`ResponseBody`](crate::ResponseBody). If that future or body is dropped before the
/// store's future finished (the client went away, an outer timeout fired), the decided
/// operation is not lost:
///
/// 1. the layer polls it once more, at the drop; if it is done, that is all;
/// 2. otherwise it spawns it on the tokio runtime the drop runs on
///    ([`Handle::try_current`](tokio::runtime::Handle::try_current)), which drives it to
///    completion; its result is counted in [`Stats`](crate::Stats) as usual;
/// 3. with no tokio runtime there, nothing can drive it: it is dropped, and counted in
///    [`StatsSnapshot::store_errors`](crate::StatsSnapshot::store_errors).
///
/// A handed-off operation completes shortly after the drop, not before: a client that
/// retries at once may still be pinned to an account that just failed. Lookups are never
/// handed off (a dropped request needs no answer).
///
/// What a store should therefore do:
///
/// - take effect as early as it can: when the method is called if possible (an in-memory
///   store: [`MemoryStore`] does, its futures are [`std::future::Ready`]), else at the first
///   poll;
/// - keep its futures independent of the task that created them (they are `Send +
///   'static`): they may finish on another task of the runtime;
/// - bound each operation in time (a networked store: a timeout), since nobody waits for
///   a handed-off one.
///
/// # A custom store
///
/// A store whose operations are `async` code returns [`BoxStoreFuture`]s, made with
/// [`boxed`]. This one keeps bindings in an async map (standing in for a networked
/// client; a real store also needs expiry and a capacity bound):
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Arc;
/// use tokio::sync::RwLock;
/// use tower_sticky_session::store::{boxed, BoxStoreFuture};
/// use tower_sticky_session::{AuthId, BindingKey, store::BindingStore, StickySessionLayer};
///
/// #[derive(Clone, Default)]
/// struct AsyncMapStore {
///     map: Arc<RwLock<HashMap<BindingKey, AuthId>>>,
/// }
///
/// impl BindingStore for AsyncMapStore {
///     type LookupFuture = BoxStoreFuture<Option<AuthId>>;
///     type CommitFuture = BoxStoreFuture<()>;
///     type ClearFuture = BoxStoreFuture<bool>;
///
///     fn lookup(&self, key: &BindingKey) -> Self::LookupFuture {
///         let (map, key) = (self.map.clone(), key.clone());
///         boxed(async move { Ok(map.read().await.get(&key).cloned()) })
///     }
///
///     fn commit(&self, key: &BindingKey, auth: &AuthId) -> Self::CommitFuture {
///         let (map, key, auth) = (self.map.clone(), key.clone(), auth.clone());
///         boxed(async move {
///             map.write().await.insert(key, auth);
///             Ok(())
///         })
///     }
///
///     fn clear_if(&self, key: &BindingKey, expected: &AuthId) -> Self::ClearFuture {
///         let (map, key, expected) = (self.map.clone(), key.clone(), expected.clone());
///         // Atomic per key: the check and the removal happen under one write lock.
///         boxed(async move {
///             let mut map = map.write().await;
///             if map.get(&key) != Some(&expected) {
///                 return Ok(false);
///             }
///             map.remove(&key);
///             Ok(true)
///         })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = AsyncMapStore::default();
/// let layer = StickySessionLayer::with_store(store.clone());
/// let key = BindingKey::new(None, tower_sticky_session::SessionId::new("conv-1").unwrap());
/// store.commit(&key, &AuthId::from("account-a")).await.unwrap();
/// assert_eq!(store.lookup(&key).await.unwrap(), Some(AuthId::from("account-a")));
/// # let _ = layer;
/// # }
/// ```
pub trait BindingStore: Send + Sync + 'static {
    /// Future of [`BindingStore::lookup`].
    type LookupFuture: Future<Output = Result<Option<AuthId>, StoreError>> + Send + Unpin + 'static;
    /// Future of [`BindingStore::commit`].
    type CommitFuture: Future<Output = Result<(), StoreError>> + Send + Unpin + 'static;
    /// Future of [`BindingStore::clear_if`].
    type ClearFuture: Future<Output = Result<bool, StoreError>> + Send + Unpin + 'static;

    /// The account `key` is bound to, if the binding is live.
    fn lookup(&self, key: &BindingKey) -> Self::LookupFuture;

    /// Binds `key` to `auth`, replacing any binding and renewing its time to live. A store
    /// may treat a commit of the account the binding already holds as a renewal it can
    /// defer for a bounded fraction of the TTL ([`MemoryStore`] does, for at most 1/16 of it;
    /// so does the Redis store when its near cache is invalidated by Redis).
    fn commit(&self, key: &BindingKey, auth: &AuthId) -> Self::CommitFuture;

    /// Removes the binding of `key` only if it points at `expected`, atomically.
    /// Resolves to whether a binding was removed.
    fn clear_if(&self, key: &BindingKey, expected: &AuthId) -> Self::ClearFuture;

    /// Crate-internal: [`lookup`](BindingStore::lookup), also returning a [`CommitHint`]
    /// for a later [`commit_hinted`](BindingStore::commit_hinted) of the same key.
    ///
    /// Neither callable nor overridable outside this crate: its [`CrateOnly`] argument can
    /// be neither named nor made there. The default wraps `lookup` and returns
    /// [`CommitHint::NONE`]; [`MemoryStore`] returns a hint that lets the commit of a
    /// proven, recently renewed binding to the account it already holds skip its store
    /// access.
    #[doc(hidden)]
    fn lookup_hinted(&self, key: &BindingKey, _: CrateOnly) -> HintedLookup<Self::LookupFuture> {
        HintedLookup::plain(self.lookup(key))
    }

    /// Crate-internal: [`commit`](BindingStore::commit), given the hint that
    /// [`lookup_hinted`](BindingStore::lookup_hinted) of the **same key on this store**
    /// returned. The result must be the same as that of `commit`: a hint only lets a store
    /// skip work that `commit` would find unnecessary, and a stale hint (the binding was
    /// written, cleared or evicted since) must make it do the full commit. The default
    /// ignores the hint.
    #[doc(hidden)]
    fn commit_hinted(
        &self,
        key: &BindingKey,
        auth: &AuthId,
        hint: CommitHint,
        _: CrateOnly,
    ) -> Self::CommitFuture {
        let _ = hint;
        self.commit(key, auth)
    }
}

/// The future of a store operation written as `async` code: boxed, `Send`, [`Unpin`]
/// and `'static`, as [`BindingStore`]'s associated types require.
pub type BoxStoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// Boxes a store operation's future as a [`BoxStoreFuture`] (one allocation).
///
/// ```
/// use tower_sticky_session::store::{boxed, BoxStoreFuture};
///
/// let fut: BoxStoreFuture<bool> = boxed(async { Ok(true) });
/// # let _ = fut;
/// ```
pub fn boxed<T, F>(fut: F) -> BoxStoreFuture<T>
where
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    Box::pin(fut)
}

/// A store operation failed.
///
/// The layer fails open: a failed lookup is a miss, a failed commit or clear is logged
/// and counted, and the request is served either way.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

/// What kind of failure a [`StoreError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The operation did not finish within the store's time limit.
    Timeout,
    /// The store is unreachable, or skipped while a circuit breaker is open.
    Unavailable,
    /// Any other failure.
    Other,
}

impl StoreError {
    /// A new error of `kind`, optionally caused by `source`.
    pub fn new(kind: StoreErrorKind, source: Option<Box<dyn StdError + Send + Sync>>) -> Self {
        Self { kind, source }
    }

    /// The error's kind.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            StoreErrorKind::Timeout => "binding store timed out",
            StoreErrorKind::Unavailable => "binding store unavailable",
            StoreErrorKind::Other => "binding store error",
        };
        match &self.source {
            Some(source) => write!(f, "{what}: {source}"),
            None => f.write_str(what),
        }
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl<St: BindingStore> BindingStore for std::sync::Arc<St> {
    type LookupFuture = St::LookupFuture;
    type CommitFuture = St::CommitFuture;
    type ClearFuture = St::ClearFuture;

    fn lookup(&self, key: &BindingKey) -> Self::LookupFuture {
        (**self).lookup(key)
    }

    fn commit(&self, key: &BindingKey, auth: &AuthId) -> Self::CommitFuture {
        (**self).commit(key, auth)
    }

    fn clear_if(&self, key: &BindingKey, expected: &AuthId) -> Self::ClearFuture {
        (**self).clear_if(key, expected)
    }

    fn lookup_hinted(
        &self,
        key: &BindingKey,
        token: CrateOnly,
    ) -> HintedLookup<Self::LookupFuture> {
        (**self).lookup_hinted(key, token)
    }

    fn commit_hinted(
        &self,
        key: &BindingKey,
        auth: &AuthId,
        hint: CommitHint,
        token: CrateOnly,
    ) -> Self::CommitFuture {
        (**self).commit_hinted(key, auth, hint, token)
    }
}
