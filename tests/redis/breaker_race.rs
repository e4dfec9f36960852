//! Regression test: the Redis store's circuit breaker must not stay open for good when
//! requests reopen it in the instant between a successful probe closing it and the
//! prober standing down.
//!
//! Redis answers `PING` (so probes succeed) but holds every write (`CLIENT PAUSE … WRITE`):
//! commits time out and keep reopening the breaker. (An error reply such as `NOPERM`
//! would not do: replies never count toward the breaker.) A log writer that stalls
//! on the "breaker closed" line widens that instant so the race is hit every run. Once
//! Redis is healthy, the breaker must close again.
#![cfg(feature = "redis")]

#[path = "../support/mod.rs"]
mod support;

use support::{redis_server, redis_store_util};

use std::io::Write;
use std::time::Duration;

use redis_server::RedisServer;
use redis_store_util::{key, wait_connected};
use tower_sticky_session::store::RedisStore;
use tower_sticky_session::{AuthId, store::BindingStore};

/// Stalls (without blocking the runtime) on the "breaker closed" log line.
struct StallOnClose;

impl Write for StallOnClose {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if String::from_utf8_lossy(buf).contains("breaker closed") {
            tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(800)));
        }
        std::io::stderr().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker_reopened_while_the_prober_stands_down_still_closes_when_redis_recovers() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(|| StallOnClose)
        .init();
    let server = RedisServer::start();
    let store = RedisStore::builder(&server.url())
        .breaker_threshold(2)
        .breaker_cooldown(Duration::from_millis(100))
        // A probe stuck behind a held write gives up soon and renews the connection.
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let k = key("s1");
    let acct = AuthId::from("acct-1");
    wait_connected(&store).await;

    // Writes are held, PING still answers: commits time out and the breaker opens.
    server.command(&["CLIENT", "PAUSE", "60000", "WRITE"]);
    for _ in 0..3 {
        let _ = store.commit(&k, &acct).await;
    }
    assert!(store.stats().breaker_open, "breaker did not open");
    // A probe on a fresh connection (PING) closes it; the prober is now stalled in its
    // log line.
    let mut closed = false;
    for _ in 0..100 {
        if !store.stats().breaker_open {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        closed,
        "probe did not close the breaker: {:?}",
        store.stats()
    );
    // Requests fail again and reopen it while the prober has not stood down yet.
    let (st, kk, aa) = (store.clone(), k.clone(), acct.clone());
    tokio::spawn(async move {
        for _ in 0..3 {
            let _ = st.commit(&kk, &aa).await;
        }
    })
    .await
    .unwrap();
    assert!(store.stats().breaker_open, "breaker did not reopen");

    // Redis is fully healthy again: within a bounded time the breaker must close.
    server.command(&["CLIENT", "UNPAUSE"]);
    let mut closed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !store.stats().breaker_open {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "breaker still open 5 s after Redis recovered: {:?}",
        store.stats()
    );
    assert!(store.commit(&k, &acct).await.is_ok());
    assert_eq!(store.lookup(&k).await.unwrap(), Some(acct));
}
