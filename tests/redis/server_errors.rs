//! A Redis that answers with an error reply is a working Redis: the error fails that one
//! operation, is counted under its own reason, and never opens the circuit breaker.
//! Existing bindings keep being read and honoured.
//!
//! Real `redis-server`s: one full (`maxmemory 1mb`, `noeviction`), one read-only replica.

use crate::support::{redis_server, redis_store_util};

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_sticky_session::store::{RedisStore, RedisStoreStats};
use tower_sticky_session::{
    AuthId, DEFAULT_SESSION_HEADER, PinnedAuth, ServedBy, StickySessionLayer, store::BindingStore,
    store::StoreErrorKind,
};

use redis_server::RedisServer;
use redis_store_util::{eventually, key, wait_connected};

/// Generous per-call limit: these tests are about error replies, not speed, and CI runs
/// on a busy 2-core machine.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);

fn assert_breaker_never_opened(stats: &RedisStoreStats) {
    assert_eq!(stats.breaker_opens, 0, "breaker opened: {stats:?}");
    assert!(!stats.breaker_open, "breaker open: {stats:?}");
    assert_eq!(stats.breaker_skips, 0, "Redis was skipped: {stats:?}");
    assert_eq!(stats.timeouts, 0, "{stats:?}");
    assert_eq!(stats.errors, 0, "connection errors: {stats:?}");
}

fn used_memory(server: &RedisServer) -> u64 {
    server
        .command(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .expect("used_memory in INFO")
        .trim()
        .parse()
        .unwrap()
}

fn account(i: usize) -> AuthId {
    AuthId::from(format!("acct-{}", i % 3))
}

/// Sends one request for `session` through the layer; returns the pin the inner service
/// saw and the account that served.
async fn through_layer(store: &RedisStore, session: &str) -> (Option<AuthId>, AuthId) {
    let seen = Arc::new(Mutex::new(None));
    let seen_in = seen.clone();
    let inner = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let pinned = req.extensions().get::<PinnedAuth>().map(|p| p.0.clone());
        *seen_in.lock().unwrap() = pinned.clone();
        async move {
            let auth = pinned.unwrap_or_else(|| AuthId::from("acct-fresh"));
            let mut res = Response::new(Full::new(Bytes::from_static(b"hello")));
            res.extensions_mut().insert(ServedBy(auth));
            Ok::<_, Infallible>(res)
        }
    });
    let svc = StickySessionLayer::with_store(store.clone()).layer(inner);
    let req = Request::get("/v1/responses")
        .header(DEFAULT_SESSION_HEADER, session)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), svc.oneshot(req))
        .await
        .expect("request hung")
        .unwrap();
    let served = res.extensions().get::<ServedBy>().unwrap().0.clone();
    tokio::time::timeout(Duration::from_secs(5), res.into_body().collect())
        .await
        .expect("body hung")
        .unwrap();
    let pinned = seen.lock().unwrap().clone();
    (pinned, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_redis_under_noeviction_keeps_existing_bindings_and_never_opens_the_breaker() {
    let server = RedisServer::start_with(
        RedisServer::unused_port(),
        &["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"],
    );
    // The bindings in use: short TTL, so a renewal by the second store is visible.
    let binder = RedisStore::builder(&server.url())
        .timeout(CALL_TIMEOUT)
        .ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    let store = RedisStore::builder(&server.url())
        .timeout(CALL_TIMEOUT)
        .ttl(Duration::from_secs(600))
        .build()
        .unwrap();
    wait_connected(&binder).await;
    wait_connected(&store).await;
    for i in 0..100 {
        binder
            .commit(&key(&format!("bound-{i}")), &account(i))
            .await
            .expect("Redis has room for the first bindings");
    }

    // Leave Redis about 64 KiB (a few hundred bindings): an empty Redis 7 already uses
    // about 0.9 MB, so a fixed `maxmemory 1mb` would leave a varying, tiny headroom.
    let used = used_memory(&server);
    server.command(&[
        "CONFIG",
        "SET",
        "maxmemory",
        &(used + 64 * 1024).to_string(),
    ]);

    // A flood of one-off session ids fills Redis.
    let mut next = 0usize;
    let mut refused = 0usize;
    while refused < 300 {
        assert!(next < 50_000, "Redis never filled up: {:?}", store.stats());
        let batch = (next..next + 100).map(|i| {
            let store = store.clone();
            async move {
                store
                    .commit(&key(&format!("flood-{i}")), &AuthId::from("acct-x"))
                    .await
            }
        });
        for result in join_all(batch).await {
            if let Err(e) = result {
                assert_eq!(e.kind(), StoreErrorKind::Other, "{e}");
                assert!(e.to_string().contains("OOM"), "{e}");
                refused += 1;
            }
        }
        next += 100;
    }
    // Keep it full with a wide margin: Redis shrinks its clients' buffers once the flood
    // is over (tens of KiB), and a dip under `maxmemory` would let writes through.
    let used = used_memory(&server);
    server.command(&["CONFIG", "SET", "maxmemory", &(used / 2).to_string()]);
    let stats = store.stats();
    assert!(stats.oom_errors >= 300, "{stats:?}");
    assert_eq!(stats.server_errors, stats.oom_errors, "{stats:?}");
    assert_breaker_never_opened(&stats);

    // Redis stays full. Every existing binding is still read…
    for i in 0..100 {
        let found = store.lookup(&key(&format!("bound-{i}"))).await.unwrap();
        assert_eq!(found, Some(account(i)), "bound-{i}");
    }
    // …and honoured through the layer: the request is pinned, served by its account.
    for i in 0..20 {
        let (pinned, served) = through_layer(&store, &format!("bound-{i}")).await;
        assert_eq!(pinned, Some(account(i)), "bound-{i} not pinned");
        assert_eq!(served, account(i));
    }
    // A commit of the same account renews the binding although SET is refused.
    let k0 = key("bound-0");
    store.commit(&k0, &account(0)).await.expect("renewal");
    let pttl: i64 = server.command(&["PTTL", &store.redis_key(&k0)])[1..]
        .trim()
        .parse()
        .unwrap();
    assert!(pttl > 60_000, "binding not renewed: PTTL {pttl} ms");
    assert!(store.stats().oom_renewals >= 1, "{:?}", store.stats());
    // A move to another account and a new session are refused, one operation each.
    let moved = store.commit(&k0, &AuthId::from("acct-other")).await;
    assert_eq!(moved.unwrap_err().kind(), StoreErrorKind::Other);
    assert_eq!(store.lookup(&k0).await.unwrap(), Some(account(0)));
    let fresh = through_layer(&store, "brand-new-session").await;
    assert_eq!(fresh.0, None);
    assert_eq!(store.lookup(&key("brand-new-session")).await.unwrap(), None);
    // Clears still work (DEL is allowed when full): a failed account is forgotten.
    assert!(store.clear_if(&key("bound-1"), &account(1)).await.unwrap());
    assert_eq!(store.lookup(&key("bound-1")).await.unwrap(), None);

    let stats = store.stats();
    assert_breaker_never_opened(&stats);
    assert!(stats.oom_errors > 300, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_replica_refuses_writes_serves_reads_and_keeps_the_breaker_closed() {
    // No 5 s wait for more replicas before the first sync (Redis 7's default).
    let primary = RedisServer::start_with(
        RedisServer::unused_port(),
        &["--repl-diskless-sync-delay", "0"],
    );
    let replica = RedisServer::start_with(
        RedisServer::unused_port(),
        &["--replicaof", "127.0.0.1", &primary.port().to_string()],
    );
    let writer = RedisStore::builder(&primary.url())
        .timeout(CALL_TIMEOUT)
        .build()
        .unwrap();
    let store = RedisStore::builder(&replica.url())
        .timeout(CALL_TIMEOUT)
        .breaker_threshold(2)
        .build()
        .unwrap();
    wait_connected(&writer).await;
    wait_connected(&store).await;
    let k = key("replicated");
    writer.commit(&k, &AuthId::from("acct-1")).await.unwrap();
    eventually(Duration::from_secs(10), "binding replicated", || async {
        (store.lookup(&k).await.unwrap() == Some(AuthId::from("acct-1"))).then_some(())
    })
    .await;

    for i in 0..10 {
        let e = store
            .commit(&key(&format!("new-{i}")), &AuthId::from("acct-2"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Other, "{e}");
        assert!(e.to_string().contains("read only replica"), "{e}");
        // The compare-and-delete script's DEL is refused too, as an error reply.
        let e = store
            .clear_if(&k, &AuthId::from("acct-1"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Other, "{e}");
        // Reads keep working between the refusals.
        assert_eq!(
            store.lookup(&k).await.unwrap(),
            Some(AuthId::from("acct-1"))
        );
    }
    let stats = store.stats();
    // Both the SETs and the script's DEL are READONLY refusals.
    assert_eq!(stats.readonly_errors, 20, "{stats:?}");
    assert_eq!(stats.server_errors, 20, "{stats:?}");
    assert_breaker_never_opened(&stats);
    // Honoured through the layer.
    let (pinned, served) = through_layer(&store, "replicated").await;
    assert_eq!(pinned, Some(AuthId::from("acct-1")));
    assert_eq!(served, AuthId::from("acct-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_and_permission_errors_fail_one_operation_without_tripping_the_breaker() {
    let server = RedisServer::start();
    let store = RedisStore::builder(&server.url())
        .timeout(CALL_TIMEOUT)
        .breaker_threshold(2)
        .build()
        .unwrap();
    wait_connected(&store).await;
    let k = key("typed");
    // Something else wrote a hash under the binding's key: the script's GET fails.
    server.command(&["HSET", &store.redis_key(&k), "f", "v"]);
    for _ in 0..5 {
        let e = store
            .clear_if(&k, &AuthId::from("acct-1"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Other, "{e}");
    }
    // An ACL that forbids SET: commits are refused with NOPERM, lookups still answer.
    server.command(&["ACL", "SETUSER", "default", "-set"]);
    for _ in 0..5 {
        let e = store
            .commit(&key("other"), &AuthId::from("acct-1"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Other, "{e}");
        assert_eq!(store.lookup(&key("other")).await.unwrap(), None);
    }
    let stats = store.stats();
    assert_eq!(stats.server_errors, 10, "{stats:?}");
    assert_eq!(stats.oom_errors + stats.readonly_errors, 0, "{stats:?}");
    assert_breaker_never_opened(&stats);
}
