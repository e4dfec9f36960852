//! Helpers shared by the Redis store tests: keys, polling with a bound, and waiting for a
//! store's background connection.

use std::future::Future;
use std::time::{Duration, Instant};

use tower_sticky_session::store::RedisStore;
use tower_sticky_session::{BindingKey, SessionId, store::BindingStore};

/// An unscoped binding key for `session`.
pub(crate) fn key(session: &str) -> BindingKey {
    BindingKey::new(None, SessionId::new(session).expect("valid session id"))
}

/// Polls `f` until it returns `Some`, for at most `limit`.
pub(crate) async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the store reaches Redis (its background connection is up).
pub(crate) async fn wait_connected(store: &RedisStore) {
    let probe = key("connectivity-probe");
    eventually(Duration::from_secs(10), "store reaches redis", || async {
        store.lookup(&probe).await.ok()
    })
    .await;
}
