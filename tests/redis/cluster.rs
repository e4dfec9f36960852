//! `RedisStore` on a real 3-primary Redis Cluster: bindings shared by two stores, keys
//! spread over the primaries, the compare-and-delete script per key, a primary killed
//! under load (requests served without failure, each within the time limit), and
//! stickiness back after the cluster recovers.

use crate::support::{redis_cluster, redis_load, redis_store_util};

use std::time::{Duration, Instant};

use tower_sticky_session::store::RedisStore;
use tower_sticky_session::{AuthId, store::BindingStore};

use redis_cluster::RedisCluster;
use redis_load::{Load, replicas, request};
use redis_store_util::{eventually, key, wait_connected};

/// A hang guard, not a performance figure: generous for a busy 2-core machine.
const HANG_GUARD: Duration = Duration::from_secs(1);
const CALL_TIMEOUT: Duration = Duration::from_millis(100);

fn store(cluster: &RedisCluster, seed: usize) -> RedisStore {
    // Each store knows one seed node only: it learns the others from it.
    RedisStore::cluster_builder([cluster.urls()[seed].clone()])
        .timeout(CALL_TIMEOUT)
        .connect_timeout(Duration::from_millis(300))
        .breaker_cooldown(Duration::from_millis(200))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_bindings_are_shared_spread_over_primaries_and_cleared_per_key() {
    let cluster = RedisCluster::start(2000);
    let a = store(&cluster, 0);
    let b = RedisStore::builder(&cluster.url())
        .timeout(CALL_TIMEOUT)
        .build()
        .unwrap();
    wait_connected(&a).await;
    wait_connected(&b).await;

    for i in 0..60 {
        a.commit(
            &key(&format!("s-{i}")),
            &AuthId::from(format!("acct-{}", i % 3)),
        )
        .await
        .unwrap();
    }
    for i in 0..60 {
        assert_eq!(
            b.lookup(&key(&format!("s-{i}"))).await.unwrap(),
            Some(AuthId::from(format!("acct-{}", i % 3))),
            "s-{i}"
        );
    }
    let sizes = cluster.dbsizes();
    assert!(sizes.iter().all(|&n| n > 0), "keys not spread: {sizes:?}");
    assert_eq!(sizes.iter().sum::<u64>(), 60);

    // Compare-and-delete: only the failed account's binding goes.
    let k = key("s-0");
    assert!(!b.clear_if(&k, &AuthId::from("acct-1")).await.unwrap());
    assert!(b.clear_if(&k, &AuthId::from("acct-0")).await.unwrap());
    assert_eq!(a.lookup(&k).await.unwrap(), None);

    // Operator functions walk every primary.
    let got = a.get(&key("s-1")).await.unwrap().unwrap();
    assert_eq!(got.auth, AuthId::from("acct-1"));
    assert!(got.expires_in.is_some());
    assert_eq!(
        a.remove(&key("s-1")).await.unwrap(),
        Some(AuthId::from("acct-1"))
    );
    // s-4, s-7, … s-58: 19 left on acct-1.
    assert_eq!(b.remove_account(&AuthId::from("acct-1")).await.unwrap(), 19);
    assert_eq!(cluster.dbsizes().iter().sum::<u64>(), 60 - 1 - 1 - 19);
    let stats = a.stats();
    assert_eq!(
        stats.errors + stats.timeouts + stats.breaker_opens,
        0,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_while_the_cluster_is_unreachable_succeeds_and_the_store_recovers() {
    let mut cluster = RedisCluster::start(2000);
    for n in &mut cluster.nodes {
        n.kill();
    }
    let store = store(&cluster, 0);
    let k = key("late");
    for _ in 0..5 {
        let started = Instant::now();
        assert!(store.lookup(&k).await.is_err());
        assert!(started.elapsed() < HANG_GUARD, "{:?}", started.elapsed());
    }
    for n in &mut cluster.nodes {
        n.restart();
    }
    cluster.wait_ok(Duration::from_secs(20));
    eventually(
        Duration::from_secs(15),
        "store reaches the cluster",
        || async { store.commit(&k, &AuthId::from("acct-1")).await.ok() },
    )
    .await;
    assert_eq!(
        store.lookup(&k).await.unwrap(),
        Some(AuthId::from("acct-1"))
    );
}

/// One request through the sticky layer: returns the account that served it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_under_load_fails_no_request_and_stickiness_returns_after_recovery() {
    let mut cluster = RedisCluster::start(1000);
    let stores = [store(&cluster, 0), store(&cluster, 1)];
    for s in &stores {
        wait_connected(s).await;
    }
    // Two replicas of a proxy, each an inner service that honours the pin and otherwise
    // picks its own account ("replica-0"/"replica-1" accounts differ on purpose).
    let services = replicas(&stores);

    // Load: 8 sessions, alternating replicas, one request after the other.
    let load = Load::start(&services, HANG_GUARD * 5);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Sticky before the fault: one session's requests on both replicas, same account.
    let (_, first) = request(&services[0], "probe-before").await;
    let (pinned, second) = request(&services[1], "probe-before").await;
    assert_eq!(pinned.as_ref(), Some(&first));
    assert_eq!(second, first);

    // Kill a primary under load, keep the load on for 3 s (the cluster declares the
    // node failed after 1 s and answers CLUSTERDOWN), then bring it back.
    cluster.nodes[1].kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.nodes[1].restart();
    let restarted = Instant::now();
    cluster.wait_ok(Duration::from_secs(20));
    let cluster_ok = restarted.elapsed();
    // Stickiness is back when a fresh session bound on one replica is honoured by the
    // other, for sessions whose keys live on every primary.
    let mut attempt = 0;
    let back = eventually(Duration::from_secs(15), "sharing resumes", || {
        attempt += 1;
        let services = services.clone();
        let sessions: Vec<String> = (0..12).map(|i| format!("after-{attempt}-{i}")).collect();
        async move {
            for s in &sessions {
                let (_, a) = request(&services[0], s).await;
                let (pinned, b) = request(&services[1], s).await;
                if pinned.as_ref() != Some(&a) || b != a {
                    return None;
                }
            }
            Some(restarted.elapsed())
        }
    })
    .await;
    let (sent, slowest) = load.finish().await;
    eprintln!(
        "cluster failover: requests {}, slowest {slowest:?}, cluster ok {cluster_ok:?} after restart, sharing back {back:?} after restart; stats {:?} / {:?}",
        sent,
        stores[0].stats(),
        stores[1].stats()
    );
    assert!(slowest < HANG_GUARD, "a request took {slowest:?}");
    assert!(sent > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_near_cache_follows_another_replicas_rebind_promptly() {
    let cluster = RedisCluster::start(2000);
    let replica = || {
        RedisStore::builder(&cluster.url())
            .timeout(Duration::from_millis(500))
            // Far longer than the test: following a move means Redis told us.
            .near_cache(Duration::from_secs(60), 1000)
            .build()
            .unwrap()
    };
    let (a, b) = (replica(), replica());
    wait_connected(&a).await;
    wait_connected(&b).await;
    // Sessions on every primary.
    let keys: Vec<_> = (0..12).map(|i| key(&format!("near-{i}"))).collect();
    for k in &keys {
        a.commit(k, &AuthId::from("acct-0")).await.unwrap();
        assert_eq!(b.lookup(k).await.unwrap(), Some(AuthId::from("acct-0")));
    }
    assert!(b.stats().near_tracking, "{:?}", b.stats());
    let hits = b.stats().near_hits;
    for k in &keys {
        assert_eq!(b.lookup(k).await.unwrap(), Some(AuthId::from("acct-0")));
    }
    assert_eq!(
        b.stats().near_hits,
        hits + keys.len() as u64,
        "answered locally"
    );

    let mut lags = Vec::new();
    for round in 1..=5 {
        let next = AuthId::from(format!("acct-{round}"));
        for k in &keys {
            a.commit(k, &next).await.unwrap();
            let moved = Instant::now();
            loop {
                if b.lookup(k).await.unwrap().as_ref() == Some(&next) {
                    break;
                }
                assert!(
                    moved.elapsed() < Duration::from_secs(2),
                    "B did not follow a move: {:?}",
                    b.stats()
                );
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
            lags.push(moved.elapsed());
        }
    }
    lags.sort();
    eprintln!(
        "cluster near-cache invalidation lag over {} moves: p50 {:?}, p99 {:?}, max {:?}; B: {:?}",
        lags.len(),
        lags[lags.len() / 2],
        lags[(lags.len() * 99 / 100).min(lags.len() - 1)],
        lags[lags.len() - 1],
        b.stats()
    );
    assert!(b.stats().near_invalidations >= 60, "{:?}", b.stats());
}
