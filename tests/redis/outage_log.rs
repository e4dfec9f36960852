//! The Redis store during an outage: faults are counted, warned about rarely, and the
//! Redis password never reaches the log.
//!
//! Alone in its binary on purpose: it captures logs with a thread-scoped subscriber, and
//! tracing's global callsite-interest cache can drop such a subscriber's events while
//! other tests register the same callsites concurrently without one.
#![cfg(feature = "redis")]

#[path = "../support/mod.rs"]
mod support;

use support::{redis_server, redis_store_util};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use redis_store_util::{key, wait_connected};
use tower_sticky_session::store::RedisStore;
use tower_sticky_session::{AuthId, store::BindingStore};

// ---------------------------------------------------------------------------------------
// Logging during an outage
// ---------------------------------------------------------------------------------------

/// Collects everything a `fmt` subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Single-threaded runtime: every task of the store runs on this thread, under this
/// thread's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn outage_faults_are_counted_but_warned_rarely_and_never_with_the_password() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut server = RedisServer::start();
    server.command(&["CONFIG", "SET", "requirepass", "secret-pw"]);
    let store = RedisStore::builder(&format!("redis://:secret-pw@127.0.0.1:{}/", server.port()))
        .breaker_threshold(3)
        .breaker_cooldown(Duration::from_millis(100))
        .build()
        .unwrap();
    wait_connected(&store).await;
    let k = key("outage-log");
    store.commit(&k, &AuthId::from("acct-1")).await.unwrap();

    server.kill();
    let started = Instant::now();
    let mut failed = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        failed += usize::from(store.lookup(&k).await.is_err());
        failed += usize::from(store.commit(&k, &AuthId::from("acct-1")).await.is_err());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = store.stats();
    assert!(failed > 100, "{failed}");
    assert!(stats.errors + stats.timeouts >= 3, "{stats:?}");
    assert!(
        stats.breaker_skips as usize + 3 >= failed - 20,
        "all but the first few failures were breaker skips: {stats:?}, {failed} failed"
    );

    let log = captured.text();
    let warns = log.lines().filter(|l| l.contains(" WARN ")).count();
    for line in log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" INFO "))
    {
        eprintln!("{line}");
    }
    assert!(warns >= 1, "the outage is logged:\n{log}");
    // The breaker opening, at most one rate-limited fault warning per 10 s interval
    // (the first fault; the probes' failures fall in the same interval).
    assert!(warns <= 3, "{warns} warnings for {failed} failures:\n{log}");
    assert!(
        !log.contains("secret-pw"),
        "the password reached the log:\n{log}"
    );
    assert!(
        log.contains(&format!("127.0.0.1:{}", server.port())),
        "{log}"
    );
}
