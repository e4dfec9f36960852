//! The baseline store for the benchmarks: a `RwLock<HashMap>` as a simple gateway would
//! write it, with the same TTL semantics as [`MemoryStore`](tower_sticky_session::store::MemoryStore)
//! (a binding lives `ttl` after its last commit; commit renews it; `clear_if` is a
//! compare-and-delete) but **no capacity bound**, owned `String` keys (the raw session id)
//! and lazy expiry only (an expired binding reads as absent and stays in memory until it is
//! overwritten or [`NaiveStore::sweep`] walks the whole map under the write lock).
//!
//! It is not for production: it exists so the benchmarks can show what the bounded store
//! costs next to what most gateways ship. Included with `#[path]` by `benches/layer.rs`
//! and `examples/mem_per_binding.rs`.

use std::collections::HashMap;
use std::future::{Ready, ready};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use tower_sticky_session::store::{BindingStore, StoreError};
use tower_sticky_session::{AuthId, BindingKey};

/// `RwLock<HashMap<String, (AuthId, Instant)>>` with a sliding TTL.
pub(crate) struct NaiveStore {
    map: RwLock<HashMap<String, NaiveBinding>>,
    ttl: Duration,
}

struct NaiveBinding {
    auth: AuthId,
    committed: Instant,
}

impl NaiveStore {
    /// An empty store whose bindings live `ttl` after their last commit.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            ttl,
        }
    }

    /// Entries held, expired ones included.
    pub(crate) fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Drops expired bindings: the periodic clean-up such a gateway runs, which walks the
    /// whole map under the write lock (a flood of one-off session ids makes that walk long;
    /// see "Store, capacity and expiry" in the crate docs).
    pub(crate) fn sweep(&self) {
        let ttl = self.ttl;
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, b| b.committed.elapsed() < ttl);
    }
}

/// The map key: the session id, prefixed by the scope when there is one.
fn with_key<R>(key: &BindingKey, f: impl FnOnce(&str) -> R) -> R {
    match key.scope() {
        None => f(key.session().as_str()),
        Some(scope) => {
            let mut k = String::from_utf8_lossy(scope.as_bytes()).into_owned();
            k.push('\0');
            k.push_str(key.session().as_str());
            f(&k)
        }
    }
}

impl BindingStore for NaiveStore {
    type LookupFuture = Ready<Result<Option<AuthId>, StoreError>>;
    type CommitFuture = Ready<Result<(), StoreError>>;
    type ClearFuture = Ready<Result<bool, StoreError>>;

    fn lookup(&self, key: &BindingKey) -> Self::LookupFuture {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let found = with_key(key, |k| {
            map.get(k)
                .filter(|b| b.committed.elapsed() < self.ttl)
                .map(|b| b.auth.clone())
        });
        ready(Ok(found))
    }

    fn commit(&self, key: &BindingKey, auth: &AuthId) -> Self::CommitFuture {
        let binding = NaiveBinding {
            auth: auth.clone(),
            committed: Instant::now(),
        };
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        with_key(key, |k| match map.get_mut(k) {
            Some(b) => *b = binding,
            None => {
                map.insert(k.to_owned(), binding);
            }
        });
        ready(Ok(()))
    }

    fn clear_if(&self, key: &BindingKey, expected: &AuthId) -> Self::ClearFuture {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let removed = with_key(key, |k| match map.get(k) {
            Some(b) if b.auth == *expected && b.committed.elapsed() < self.ttl => {
                map.remove(k);
                true
            }
            _ => false,
        });
        ready(Ok(removed))
    }
}
