//! The near cache told by Redis itself (RESP3 `CLIENT TRACKING`) when another replica
//! moves a binding, and its fallback to the TTL while that channel is down.
//!
//! A real `redis-server` on a free loopback port; two stores play two proxy replicas.

use crate::support::{redis_server, redis_store_util};

use std::time::{Duration, Instant};

use tower_sticky_session::store::RedisStore;
use tower_sticky_session::{AuthId, store::BindingStore};

use redis_server::RedisServer;
use redis_store_util::{eventually, key, wait_connected};

/// Far longer than any wait below: a replica that follows a move in less than this
/// was told, it did not wait for its entry to expire.
const LONG_NEAR_TTL: Duration = Duration::from_secs(60);
/// A hang guard, not a performance threshold.
const PROMPT: Duration = Duration::from_secs(2);

fn replica(server: &RedisServer, near_ttl: Duration) -> RedisStore {
    RedisStore::builder(&server.url())
        .timeout(Duration::from_millis(500))
        .near_cache(near_ttl, 10_000)
        .build()
        .unwrap()
}

/// Polls `store` until it answers `want` for `k`; returns how long it took.
async fn time_until(
    store: &RedisStore,
    k: &tower_sticky_session::BindingKey,
    want: Option<&AuthId>,
) -> Duration {
    let started = Instant::now();
    loop {
        if store.lookup(k).await.unwrap().as_ref() == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < PROMPT,
            "not seen within {PROMPT:?}: {:?}",
            store.stats()
        );
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replicas_rebind_reaches_the_near_cache_promptly() {
    let server = RedisServer::start();
    let a = replica(&server, LONG_NEAR_TTL);
    let b = replica(&server, LONG_NEAR_TTL);
    wait_connected(&a).await;
    wait_connected(&b).await;
    let k = key("moved-session");
    a.commit(&k, &AuthId::from("acct-0")).await.unwrap();
    assert_eq!(b.lookup(&k).await.unwrap(), Some(AuthId::from("acct-0")));
    assert!(b.stats().near_tracking, "{:?}", b.stats());
    // Answered locally now.
    let hits = b.stats().near_hits;
    assert_eq!(b.lookup(&k).await.unwrap(), Some(AuthId::from("acct-0")));
    assert_eq!(b.stats().near_hits, hits + 1);

    // Replica A moves the session again and again; B follows each move.
    let rounds = 200;
    let mut lags = Vec::with_capacity(rounds);
    for i in 1..=rounds {
        let next = AuthId::from(format!("acct-{i}"));
        a.commit(&k, &next).await.unwrap();
        lags.push(time_until(&b, &k, Some(&next)).await);
    }
    // A failure on A clears the binding: B forgets it too.
    a.clear_if(&k, &AuthId::from(format!("acct-{rounds}")))
        .await
        .unwrap();
    lags.push(time_until(&b, &k, None).await);

    lags.sort();
    let pct = |p: usize| lags[(lags.len() * p / 100).min(lags.len() - 1)];
    eprintln!(
        "near-cache invalidation lag over {} moves: p50 {:?}, p99 {:?}, max {:?} (near TTL {LONG_NEAR_TTL:?}); B: {:?}",
        lags.len(),
        pct(50),
        pct(99),
        lags[lags.len() - 1],
        b.stats()
    );
    assert!(
        b.stats().near_invalidations >= rounds as u64,
        "{:?}",
        b.stats()
    );

    // FLUSHALL: Redis tells every tracking client to drop everything.
    let x = AuthId::from("acct-x");
    a.commit(&k, &x).await.unwrap();
    time_until(&b, &k, Some(&x)).await;
    server.command(&["FLUSHALL"]);
    time_until(&b, &k, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_sessions_keep_their_near_cache_entries_on_every_replica() {
    let server = RedisServer::start();
    let a = replica(&server, LONG_NEAR_TTL);
    let b = replica(&server, LONG_NEAR_TTL);
    wait_connected(&a).await;
    wait_connected(&b).await;
    let k = key("steady-session");
    let acct = AuthId::from("acct-1");
    a.commit(&k, &acct).await.unwrap();
    assert_eq!(b.lookup(&k).await.unwrap(), Some(acct.clone()));
    let before = b.stats();
    // Each request's success commits the same account again, on either replica.
    for _ in 0..10 {
        a.commit(&k, &acct).await.unwrap();
        b.commit(&k, &acct).await.unwrap();
        assert_eq!(b.lookup(&k).await.unwrap(), Some(acct.clone()));
    }
    // Give a (wrong) invalidation time to arrive before checking none did.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(b.lookup(&k).await.unwrap(), Some(acct.clone()));
    let after = b.stats();
    assert_eq!(
        after.near_invalidations, before.near_invalidations,
        "{after:?}"
    );
    assert_eq!(after.near_hits, before.near_hits + 11, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_channel_down_the_near_cache_falls_back_to_its_ttl_and_tracking_resumes() {
    let server = RedisServer::start();
    let near_ttl = Duration::from_millis(800);
    let a = RedisStore::builder(&server.url())
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let b = replica(&server, near_ttl);
    wait_connected(&a).await;
    wait_connected(&b).await;
    let k = key("channel-down");
    a.commit(&k, &AuthId::from("acct-1")).await.unwrap();
    assert_eq!(b.lookup(&k).await.unwrap(), Some(AuthId::from("acct-1")));
    assert!(b.stats().near_tracking);

    // Every client connection is cut: B's invalidation channel is down.
    server.command(&["CLIENT", "KILL", "TYPE", "normal"]);
    eventually(PROMPT, "B notices the channel is down", || async {
        (!b.stats().near_tracking).then_some(())
    })
    .await;
    let moved_at = Instant::now();
    eventually(PROMPT, "A commits again", || async {
        a.commit(&k, &AuthId::from("acct-2")).await.ok()
    })
    .await;
    // No invalidation can reach B: it answers from its near cache until the TTL…
    let lag = eventually(near_ttl * 4, "B follows after its TTL", || async {
        (b.lookup(&k).await.ok()? == Some(AuthId::from("acct-2"))).then(|| moved_at.elapsed())
    })
    .await;
    eprintln!("channel down: B followed after {lag:?} (near TTL {near_ttl:?})");
    // …then its lookup went to Redis, on a new connection, and turned tracking back on.
    assert!(b.stats().near_tracking, "{:?}", b.stats());
    a.commit(&k, &AuthId::from("acct-3")).await.unwrap();
    let prompt = time_until(&b, &k, Some(&AuthId::from("acct-3"))).await;
    assert!(
        prompt < near_ttl,
        "tracking did not resume: {prompt:?}, {:?}",
        b.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_invalidation_the_near_cache_keeps_entries_for_its_ttl() {
    let server = RedisServer::start();
    let a = replica(&server, LONG_NEAR_TTL);
    let b = RedisStore::builder(&server.url())
        .near_cache(Duration::from_millis(300), 100)
        .near_cache_invalidation(false)
        .build()
        .unwrap();
    wait_connected(&a).await;
    wait_connected(&b).await;
    let k = key("ttl-only");
    a.commit(&k, &AuthId::from("acct-1")).await.unwrap();
    assert_eq!(b.lookup(&k).await.unwrap(), Some(AuthId::from("acct-1")));
    assert!(!b.stats().near_tracking);
    a.commit(&k, &AuthId::from("acct-2")).await.unwrap();
    // Still the old account locally (nothing told B), the new one after the TTL.
    assert_eq!(b.lookup(&k).await.unwrap(), Some(AuthId::from("acct-1")));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(b.lookup(&k).await.unwrap(), Some(AuthId::from("acct-2")));
}
