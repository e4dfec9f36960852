//! Operator access to bindings: look one up, remove one, drop an account, count.

use std::future::Future;
use std::time::Duration;

use super::{BindingStore, StoreError};
use crate::types::{AuthId, BindingKey};

/// A binding as a store reports it to an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BindingInfo {
    /// The account the session is bound to.
    pub auth: AuthId,
    /// Time since the binding was last committed, if the store knows it.
    pub age: Option<Duration>,
    /// Time left before the binding expires unless a commit renews it, if known.
    pub expires_in: Option<Duration>,
}

impl BindingInfo {
    /// A binding of `auth` with optional age and remaining time to live.
    pub fn new(auth: AuthId, age: Option<Duration>, expires_in: Option<Duration>) -> Self {
        Self {
            auth,
            age,
            expires_in,
        }
    }
}

/// The admin side of a store, used off the request path (e.g. by an admin endpoint):
/// "which account is session S stuck to?", "drop every binding of the account I just
/// revoked".
///
/// ```
/// use tower_sticky_session::{AuthId, BindingKey, store::BindingStore, store::MemoryStore, SessionId};
/// use tower_sticky_session::store::InspectStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::new();
/// let key = BindingKey::new(None, SessionId::new("conv-1").unwrap());
/// store.commit(&key, &AuthId::from("acct-2")).await.unwrap();
///
/// let info = store.inspect(&key).await.unwrap().unwrap();
/// assert_eq!(info.auth.as_str(), "acct-2");
/// // (MemoryStore also has a synchronous inherent `remove_account`.)
/// let removed = InspectStore::remove_account(&store, &AuthId::from("acct-2")).await;
/// assert_eq!(removed.unwrap(), 1);
/// assert!(store.inspect(&key).await.unwrap().is_none());
/// # }
/// ```
pub trait InspectStore: BindingStore {
    /// The live binding of `key`.
    fn inspect(
        &self,
        key: &BindingKey,
    ) -> impl Future<Output = Result<Option<BindingInfo>, StoreError>> + Send;

    /// Removes the binding of `key` whatever it points at; returns the account it pointed at.
    fn remove(
        &self,
        key: &BindingKey,
    ) -> impl Future<Output = Result<Option<AuthId>, StoreError>> + Send;

    /// Removes every binding that points at `auth` (compare-and-delete each, so a binding
    /// re-committed meanwhile to another account stays); returns how many were removed.
    fn remove_account(
        &self,
        auth: &AuthId,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// The number of bindings held, if the store can count them cheaply. It may include
    /// bindings that have expired but whose memory is not reclaimed yet
    /// ([`MemoryStore`](super::MemoryStore) reclaims an expired proven binding once it has not
    /// been read for a TTL, and a probation binding once its slot is reused).
    fn count(&self) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;
}

impl InspectStore for super::MemoryStore {
    async fn inspect(&self, key: &BindingKey) -> Result<Option<BindingInfo>, StoreError> {
        Ok(self.get(key))
    }

    async fn remove(&self, key: &BindingKey) -> Result<Option<AuthId>, StoreError> {
        Ok(super::MemoryStore::remove(self, key))
    }

    async fn remove_account(&self, auth: &AuthId) -> Result<usize, StoreError> {
        Ok(super::MemoryStore::remove_account(self, auth))
    }

    async fn count(&self) -> Result<Option<u64>, StoreError> {
        self.run_pending_tasks();
        Ok(Some(self.entry_count()))
    }
}

#[cfg(feature = "redis")]
impl InspectStore for super::RedisStore {
    async fn inspect(&self, key: &BindingKey) -> Result<Option<BindingInfo>, StoreError> {
        Ok(self
            .get(key)
            .await?
            .map(|b| BindingInfo::new(b.auth, None, b.expires_in)))
    }

    async fn remove(&self, key: &BindingKey) -> Result<Option<AuthId>, StoreError> {
        super::RedisStore::remove(self, key).await
    }

    async fn remove_account(&self, auth: &AuthId) -> Result<usize, StoreError> {
        super::RedisStore::remove_account(self, auth).await
    }

    /// Redis holds other keys too and counting ours means a full `SCAN`: not cheap.
    async fn count(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
}
