//! `RedisStore` on a primary behind Redis Sentinel: real servers (one primary, one
//! replica, one sentinel) on free loopback ports, a forced `SENTINEL FAILOVER` under
//! load: no request fails, and bindings written after the failover are shared again.

use crate::support::{redis_load, redis_sentinel, redis_server, redis_store_util};

use std::time::{Duration, Instant};

use tower_sticky_session::store::RedisStore;
use tower_sticky_session::{AuthId, store::BindingStore};

use redis_load::{Load, replicas, request};
use redis_sentinel::RedisSentinel;
use redis_server::RedisServer;
use redis_store_util::{eventually, key, wait_connected};

const MASTER: &str = "sticky";
/// A hang guard, not a performance figure.
const HANG_GUARD: Duration = Duration::from_secs(1);

/// Waits (blocking: the servers are plain processes) until `cond` holds.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Setup {
    primary: RedisServer,
    replica: RedisServer,
    sentinel: RedisSentinel,
}

fn setup() -> Setup {
    // No 5 s wait for more replicas before the first sync (Redis 7's default).
    let primary = RedisServer::start_with(
        RedisServer::unused_port(),
        &["--repl-diskless-sync-delay", "0"],
    );
    let replica = RedisServer::start_with(
        RedisServer::unused_port(),
        &["--replicaof", "127.0.0.1", &primary.port().to_string()],
    );
    wait_for(Duration::from_secs(10), "replica in sync", || {
        replica
            .command(&["INFO", "replication"])
            .contains("master_link_status:up")
    });
    let sentinel = RedisSentinel::start(MASTER, primary.port());
    let replica_port = replica.port().to_string();
    wait_for(
        Duration::from_secs(15),
        "sentinel knows the replica",
        || {
            sentinel
                .command(&["SENTINEL", "REPLICAS", MASTER])
                .lines()
                .any(|l| l == replica_port)
        },
    );
    Setup {
        primary,
        replica,
        sentinel,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_store_finds_the_primary_and_shares_bindings() {
    let s = setup();
    let a = RedisStore::builder(&format!(
        "redis+sentinel://127.0.0.1:{}/{MASTER}",
        s.sentinel.port()
    ))
    .build()
    .unwrap();
    let b = RedisStore::sentinel_builder([s.sentinel.url()], MASTER)
        .near_cache(Duration::from_secs(60), 100)
        .build()
        .unwrap();
    wait_connected(&a).await;
    wait_connected(&b).await;
    let k = key("via-sentinel");
    a.commit(&k, &AuthId::from("acct-1")).await.unwrap();
    assert_eq!(b.lookup(&k).await.unwrap(), Some(AuthId::from("acct-1")));
    // Written to the primary, replicated to the replica.
    assert_eq!(s.primary.command(&["GET", &a.redis_key(&k)]), "acct-1\n");
    let _ = &s.replica;

    // B's near cache is told by the primary when A moves the session.
    assert_eq!(b.lookup(&k).await.unwrap(), Some(AuthId::from("acct-1")));
    assert!(b.stats().near_tracking, "{:?}", b.stats());
    a.commit(&k, &AuthId::from("acct-2")).await.unwrap();
    eventually(Duration::from_secs(2), "B follows the move", || async {
        (b.lookup(&k).await.unwrap() == Some(AuthId::from("acct-2"))).then_some(())
    })
    .await;
    assert!(b.stats().near_invalidations >= 1, "{:?}", b.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_while_sentinel_is_unreachable_succeeds() {
    let store = RedisStore::builder(&format!(
        "redis+sentinel://127.0.0.1:{}/{MASTER}",
        RedisServer::unused_port()
    ))
    .build()
    .expect("builds while no sentinel answers");
    for _ in 0..5 {
        let started = Instant::now();
        assert!(store.lookup(&key("nobody")).await.is_err());
        assert!(started.elapsed() < HANG_GUARD, "{:?}", started.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_failover_under_load_fails_no_request_and_sharing_resumes() {
    let s = setup();
    let stores: Vec<RedisStore> = (0..2)
        .map(|_| {
            RedisStore::sentinel_builder([s.sentinel.url()], MASTER)
                .timeout(Duration::from_millis(100))
                .connect_timeout(Duration::from_millis(500))
                .breaker_cooldown(Duration::from_millis(200))
                .build()
                .unwrap()
        })
        .collect();
    for st in &stores {
        wait_connected(st).await;
    }
    let services = replicas(&stores);

    let load = Load::start(&services, HANG_GUARD * 5);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let old_port = s.primary.port();
    let new_port = s.replica.port();
    let reply = s.sentinel.command(&["SENTINEL", "FAILOVER", MASTER]);
    assert_eq!(reply, "+OK\n", "SENTINEL FAILOVER refused");
    let failover = Instant::now();
    eventually(
        Duration::from_secs(20),
        "sentinel names the new primary",
        || async { (s.sentinel.primary_port(MASTER) == new_port).then_some(()) },
    )
    .await;
    let switched = failover.elapsed();
    // Sharing is back when a fresh binding made on one replica is honoured by the other
    // and sits on the new primary.
    let mut attempt = 0;
    let shared = eventually(
        Duration::from_secs(20),
        "sharing on the new primary",
        || {
            attempt += 1;
            let services = services.clone();
            let new_primary = &s.replica;
            let probe = stores[0].clone();
            async move {
                for i in 0..5 {
                    let session = format!("after-{attempt}-{i}");
                    let (_, a) = request(&services[0], &session).await;
                    let (pinned, b) = request(&services[1], &session).await;
                    if pinned.as_ref() != Some(&a) || b != a {
                        return None;
                    }
                    let raw = new_primary.command(&["GET", &probe.redis_key(&key(&session))]);
                    if raw != format!("{}\n", a.as_str()) {
                        return None;
                    }
                }
                Some(failover.elapsed())
            }
        },
    )
    .await;
    let (sent, slowest) = load.finish().await;
    eprintln!(
        "sentinel failover: requests {}, slowest {slowest:?}, sentinel switched after {switched:?}, sharing on the new primary after {shared:?}; old primary {old_port} role: {:?}; stats {:?} / {:?}",
        sent,
        s.primary
            .command(&["ROLE"])
            .lines()
            .next()
            .unwrap_or_default(),
        stores[0].stats(),
        stores[1].stats()
    );
    assert!(slowest < HANG_GUARD, "a request took {slowest:?}");
    assert!(sent > 50);
}
