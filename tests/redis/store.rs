//! The Redis binding store against a real `redis-server` (started per test on a free
//! loopback port, see `tests/support/redis_server.rs`): the store's own operations, and whole
//! stacks — two proxy replicas (layer + account picker over hyper) sharing one Redis —
//! with Redis killed, frozen and restarted under them.

use crate::support::{redis_server, redis_store_util};

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tower::Layer;
use tower_sticky_session::store::{RedisStore, RedisStoreBuilder};
use tower_sticky_session::{
    AuthId, BindingKey, DEFAULT_SESSION_HEADER, PinnedAuth, Scope, ServedBy, SessionId, Stats,
    StickySessionLayer, store::BindingStore, store::StoreError,
};

use redis_server::RedisServer;
use redis_store_util::{eventually, key, wait_connected};

/// A hang guard, not a performance threshold: generous for a noisy 2-core machine.
const HANG_GUARD: Duration = Duration::from_secs(1);

fn scoped(scope: &'static str, session: &str) -> BindingKey {
    BindingKey::new(
        Some(Scope::from_static(scope)),
        SessionId::new(session).expect("valid session id"),
    )
}

fn builder(server: &RedisServer) -> RedisStoreBuilder {
    RedisStore::builder(&server.url())
}

// ---------------------------------------------------------------------------------------
// The store's own operations
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_on_one_replica_is_found_by_another() {
    let server = RedisServer::start();
    let a = builder(&server).build().unwrap();
    let b = builder(&server).build().unwrap();
    wait_connected(&a).await;
    wait_connected(&b).await;

    let k = key("conversation-1");
    assert_eq!(b.lookup(&k).await.unwrap(), None);
    a.commit(&k, &AuthId::from("acct-a")).await.unwrap();
    assert_eq!(b.lookup(&k).await.unwrap(), Some(AuthId::from("acct-a")));
    // A later commit replaces the binding, whichever replica makes it.
    b.commit(&k, &AuthId::from("acct-b")).await.unwrap();
    assert_eq!(a.lookup(&k).await.unwrap(), Some(AuthId::from("acct-b")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_are_prefixed_digests_without_raw_session_ids() {
    let server = RedisServer::start();
    let store = builder(&server).prefix("myproxy:").build().unwrap();
    wait_connected(&store).await;

    let session = "sess-RAW-7f3a9c";
    store
        .commit(&scoped("openai/gpt-5", session), &AuthId::from("acct-1"))
        .await
        .unwrap();
    store
        .commit(&key(session), &AuthId::from("acct-2"))
        .await
        .unwrap();

    // Only this store's prefix: another test's store may find its way to this server
    // (a killed server's port, handed out again) and write under the default prefix.
    let keys = server.command(&["KEYS", "myproxy:*"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 2, "one key per (scope, session): {keys:?}");
    for k in &keys {
        let digest = k
            .strip_prefix("myproxy:v1:")
            .unwrap_or_else(|| panic!("key {k:?} lacks the prefix"));
        assert_eq!(digest.len(), 32, "{k}");
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()), "{k}");
        assert!(!k.contains(session) && !k.contains("openai"), "{k}");
        let value = server.command(&["GET", k]);
        assert!(
            value == "acct-1\n" || value == "acct-2\n",
            "value is the account name only: {value:?}"
        );
    }
    assert_eq!(
        store.redis_key(&key(session)),
        builder(&server)
            .prefix("myproxy:")
            .build()
            .unwrap()
            .redis_key(&key(session)),
        "every replica computes the same key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_sets_px_ttl_and_each_commit_renews_it() {
    let server = RedisServer::start();
    let store = builder(&server)
        .ttl(Duration::from_millis(1500))
        .build()
        .unwrap();
    wait_connected(&store).await;
    let k = key("ttl-session");
    let auth = AuthId::from("acct-1");
    let rk = store.redis_key(&k);
    let pttl = |s: &RedisServer| {
        s.command(&["PTTL", &rk])
            .trim()
            .trim_start_matches(':')
            .parse::<i64>()
            .unwrap()
    };

    store.commit(&k, &auth).await.unwrap();
    let first = pttl(&server);
    assert!(first > 1000 && first <= 1500, "PTTL after commit: {first}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(pttl(&server) <= 900, "the TTL runs down");
    store.commit(&k, &auth).await.unwrap();
    assert!(pttl(&server) > 1000, "a commit renews the TTL");
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(store.lookup(&k).await.unwrap(), None, "expired in Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_if_deletes_only_a_binding_to_the_failed_account() {
    let server = RedisServer::start();
    let store = builder(&server).build().unwrap();
    wait_connected(&store).await;
    let k = key("cas-session");
    let a = AuthId::from("acct-a");
    let b = AuthId::from("acct-b");

    store.commit(&k, &a).await.unwrap();
    assert!(
        !store.clear_if(&k, &b).await.unwrap(),
        "other account: kept"
    );
    assert_eq!(store.lookup(&k).await.unwrap(), Some(a.clone()));
    assert!(
        store.clear_if(&k, &a).await.unwrap(),
        "same account: removed"
    );
    assert_eq!(store.lookup(&k).await.unwrap(), None);
    assert!(
        !store.clear_if(&k, &a).await.unwrap(),
        "nothing left to remove"
    );
}

/// The behaviour table's compare-and-delete (crate docs) across replicas: a late failure
/// seen by replica 1 must never delete
/// the binding replica 2 committed meanwhile. Races the two, many times: with a
/// non-atomic GET-then-DEL, the interleaving GET(a) · SET(b) · DEL loses b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_clear_never_removes_a_newer_binding_from_another_replica() {
    let server = RedisServer::start();
    let r1 = builder(&server)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let r2 = builder(&server)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    wait_connected(&r1).await;
    wait_connected(&r2).await;
    let a = AuthId::from("acct-a");
    let b = AuthId::from("acct-b");

    for i in 0..300 {
        let k = key(&format!("race-{i}"));
        r1.commit(&k, &a).await.unwrap();
        let clear = tokio::spawn({
            let (r1, k, a) = (r1.clone(), k.clone(), a.clone());
            async move { r1.clear_if(&k, &a).await }
        });
        let commit = tokio::spawn({
            let (r2, k, b) = (r2.clone(), k.clone(), b.clone());
            async move { r2.commit(&k, &b).await }
        });
        clear.await.unwrap().unwrap();
        commit.await.unwrap().unwrap();
        assert_eq!(
            r1.lookup(&k).await.unwrap(),
            Some(b.clone()),
            "iteration {i}: the newer binding survives"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_session_under_two_scopes_is_two_bindings() {
    let server = RedisServer::start();
    let store = builder(&server).build().unwrap();
    wait_connected(&store).await;
    let openai = scoped("openai", "shared-id");
    let anthropic = scoped("anthropic", "shared-id");
    store.commit(&openai, &AuthId::from("oa-1")).await.unwrap();
    assert_eq!(store.lookup(&anthropic).await.unwrap(), None);
    assert_eq!(store.lookup(&key("shared-id")).await.unwrap(), None);
    store
        .commit(&anthropic, &AuthId::from("an-1"))
        .await
        .unwrap();
    assert_eq!(
        store.lookup(&openai).await.unwrap(),
        Some(AuthId::from("oa-1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_get_remove_and_remove_account() {
    let server = RedisServer::start();
    let store = builder(&server)
        .prefix("ops:")
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let other_proxy = builder(&server).prefix("other:").build().unwrap();
    wait_connected(&store).await;
    wait_connected(&other_proxy).await;
    let a = AuthId::from("revoked");
    let b = AuthId::from("healthy");

    for i in 0..1200 {
        let auth = if i % 3 == 0 { &b } else { &a };
        store.commit(&key(&format!("s{i}")), auth).await.unwrap();
    }
    other_proxy.commit(&key("s1"), &a).await.unwrap();

    let got = store.get(&key("s1")).await.unwrap().expect("bound");
    assert_eq!(got.auth, a);
    let left = got.expires_in.expect("has a TTL");
    assert!(left > Duration::from_secs(50) && left <= Duration::from_secs(60));
    assert_eq!(store.get(&key("never")).await.unwrap(), None);

    assert_eq!(store.remove(&key("s0")).await.unwrap(), Some(b.clone()));
    assert_eq!(store.remove(&key("s0")).await.unwrap(), None);

    // 800 of the 1200 point at `a`: more than one SCAN batch.
    assert_eq!(store.remove_account(&a).await.unwrap(), 800);
    assert_eq!(store.lookup(&key("s1")).await.unwrap(), None);
    assert_eq!(store.lookup(&key("s3")).await.unwrap(), Some(b.clone()));
    assert_eq!(
        other_proxy.lookup(&key("s1")).await.unwrap(),
        Some(a.clone()),
        "another prefix is another proxy: untouched"
    );
    assert_eq!(store.remove_account(&a).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_url_fails_build_without_echoing_it() {
    let err = RedisStore::builder("http://user:hunter2@example.invalid/")
        .build()
        .expect_err("not a Redis URL");
    let msg = err.to_string();
    assert!(msg.contains("invalid Redis URL"), "{msg}");
    assert!(!msg.contains("hunter2"), "the URL's password leaks: {msg}");
    let debug = format!("{:?}", RedisStore::builder("redis://:hunter2@127.0.0.1:1/"));
    assert!(!debug.contains("hunter2"), "{debug}");
}

#[test]
fn build_outside_a_tokio_runtime_is_an_error_not_a_panic() {
    let err = RedisStore::builder("redis://127.0.0.1:1/")
        .build()
        .expect_err("needs a runtime");
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_succeeds_while_redis_is_down_and_store_recovers_when_it_starts() {
    let port = RedisServer::unused_port();
    let store = RedisStore::builder(&format!("redis://:secret-pw@127.0.0.1:{port}/"))
        .breaker_cooldown(Duration::from_millis(200))
        .build()
        .expect("start-up succeeds while Redis is down");
    assert!(!format!("{store:?}").contains("secret-pw"));
    let k = key("early");

    for _ in 0..20 {
        let started = Instant::now();
        let err = store.lookup(&k).await.expect_err("Redis is down");
        assert!(started.elapsed() < HANG_GUARD, "{:?}", started.elapsed());
        let _: StoreError = err;
    }
    let stats = store.stats();
    assert!(stats.errors + stats.timeouts >= 1, "{stats:?}");
    assert!(stats.breaker_open, "{stats:?}");
    assert!(stats.breaker_skips >= 1, "{stats:?}");

    // Redis without a password would refuse AUTH; start one that accepts it.
    let server = RedisServer::start_on(port);
    server.command(&["CONFIG", "SET", "requirepass", "secret-pw"]);
    eventually(Duration::from_secs(10), "store recovers", || async {
        store.commit(&k, &AuthId::from("acct-1")).await.ok()
    })
    .await;
    assert_eq!(
        store.lookup(&k).await.unwrap(),
        Some(AuthId::from("acct-1"))
    );
    assert!(!store.stats().breaker_open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_after_consecutive_failures_skips_redis_and_closes_on_restart() {
    let mut server = RedisServer::start();
    let store = builder(&server)
        .breaker_threshold(3)
        .breaker_cooldown(Duration::from_millis(300))
        .build()
        .unwrap();
    wait_connected(&store).await;
    let k = key("breaker");
    store.commit(&k, &AuthId::from("acct-1")).await.unwrap();

    server.kill();
    let mut kinds = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let err = store.lookup(&k).await.expect_err("Redis is down");
        assert!(started.elapsed() < HANG_GUARD, "{:?}", started.elapsed());
        kinds.push(err.kind());
    }
    let stats = store.stats();
    assert_eq!(stats.breaker_opens, 1, "{stats:?}");
    assert!(stats.breaker_open);
    assert!(stats.errors + stats.timeouts >= 3, "{stats:?}");
    assert!(
        stats.breaker_skips >= 7,
        "the breaker answered the rest: {stats:?}"
    );
    let calls_while_open = stats.calls;
    for _ in 0..50 {
        store.lookup(&k).await.expect_err("skipped");
    }
    assert!(
        store.stats().calls <= calls_while_open + 1,
        "while open, requests make no Redis calls (only the background probe may)"
    );

    server.restart();
    eventually(Duration::from_secs(10), "breaker closes", || async {
        (!store.stats().breaker_open).then_some(())
    })
    .await;
    store.commit(&k, &AuthId::from("acct-2")).await.unwrap();
    assert_eq!(
        store.lookup(&k).await.unwrap(),
        Some(AuthId::from("acct-2"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_times_out_quickly_and_is_then_skipped() {
    let server = RedisServer::start();
    let store = builder(&server)
        .timeout(Duration::from_millis(50))
        .breaker_threshold(3)
        .breaker_cooldown(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    wait_connected(&store).await;
    let k = key("frozen");

    server.pause();
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let err = store.lookup(&k).await.expect_err("Redis is frozen");
        worst = worst.max(started.elapsed());
        assert!(started.elapsed() < HANG_GUARD, "{:?}", started.elapsed());
        assert!(
            matches!(
                err.kind(),
                tower_sticky_session::store::StoreErrorKind::Timeout
                    | tower_sticky_session::store::StoreErrorKind::Unavailable
            ),
            "{err}"
        );
    }
    let stats = store.stats();
    assert!(stats.timeouts >= 3, "{stats:?}");
    assert!(stats.breaker_open, "{stats:?}");
    eprintln!("frozen redis: slowest lookup {worst:?}");

    server.resume();
    eventually(
        Duration::from_secs(10),
        "breaker closes after thaw",
        || async { (!store.stats().breaker_open).then_some(()) },
    )
    .await;
    store.commit(&k, &AuthId::from("acct-1")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_cache_answers_locally_and_a_clear_empties_redis_then_local() {
    let server = RedisServer::start();
    // Without invalidation: with it, the FLUSHALL below would (rightly) reach the near
    // cache too (near_cache.rs covers that side).
    let store = builder(&server)
        .near_cache(Duration::from_secs(30), 1000)
        .near_cache_invalidation(false)
        .build()
        .unwrap();
    wait_connected(&store).await;
    let k = key("near");
    let a = AuthId::from("acct-a");

    store.commit(&k, &a).await.unwrap();
    assert_eq!(
        store.lookup(&k).await.unwrap(),
        Some(a.clone()),
        "from Redis"
    );
    // Take Redis out of the picture: the near cache alone answers.
    server.command(&["FLUSHALL"]);
    let hits = store.stats().near_hits;
    assert_eq!(
        store.lookup(&k).await.unwrap(),
        Some(a.clone()),
        "from near cache"
    );
    assert_eq!(store.stats().near_hits, hits + 1);

    // A failure clears both tiers.
    store.commit(&k, &a).await.unwrap();
    assert!(store.clear_if(&k, &a).await.unwrap());
    assert_eq!(server.command(&["EXISTS", &store.redis_key(&k)]), ":0\n");
    assert_eq!(
        store.lookup(&k).await.unwrap(),
        None,
        "local tier cleared too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_cache_follows_another_replicas_failover_within_its_ttl() {
    let server = RedisServer::start();
    let near_ttl = Duration::from_millis(400);
    let r1 = builder(&server).build().unwrap();
    let r2 = builder(&server).near_cache(near_ttl, 1000).build().unwrap();
    wait_connected(&r1).await;
    wait_connected(&r2).await;
    let k = key("failover-near");
    let a = AuthId::from("acct-a");
    let b = AuthId::from("acct-b");

    r1.commit(&k, &a).await.unwrap();
    assert_eq!(r2.lookup(&k).await.unwrap(), Some(a.clone()));
    // Replica 1 sees `a` fail and moves the session to `b`.
    assert!(r1.clear_if(&k, &a).await.unwrap());
    r1.commit(&k, &b).await.unwrap();
    let moved = Instant::now();
    let seen = eventually(Duration::from_secs(5), "replica 2 follows", || async {
        (r2.lookup(&k).await.unwrap() == Some(b.clone())).then(|| moved.elapsed())
    })
    .await;
    assert!(
        seen <= near_ttl + Duration::from_millis(600),
        "replica 2 lagged {seen:?}, near TTL {near_ttl:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_cache_is_cleared_even_while_redis_is_down() {
    let mut server = RedisServer::start();
    let store = builder(&server)
        .near_cache(Duration::from_secs(30), 1000)
        .build()
        .unwrap();
    wait_connected(&store).await;
    let k = key("near-down");
    let a = AuthId::from("acct-a");
    store.commit(&k, &a).await.unwrap();
    assert_eq!(store.lookup(&k).await.unwrap(), Some(a.clone()));

    server.kill();
    let _ = store.clear_if(&k, &a).await; // Redis fails; the local tier must still forget.
    let started = Instant::now();
    let after = store.lookup(&k).await;
    assert!(started.elapsed() < HANG_GUARD);
    assert!(
        !matches!(after, Ok(Some(_))),
        "the failed account is not pinned from the local tier: {after:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Whole stacks: replicas of a proxy (layer + account picker) over hyper, one Redis
// ---------------------------------------------------------------------------------------

/// The upstream provider as the replicas see it: accounts, some of which may be failing.
struct Upstream {
    accounts: Vec<AuthId>,
    broken: Mutex<HashSet<AuthId>>,
}

impl Upstream {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            accounts: (0..n).map(|i| AuthId::from(format!("acct-{i}"))).collect(),
            broken: Mutex::new(HashSet::new()),
        })
    }

    fn is_broken(&self, a: &AuthId) -> bool {
        self.broken.lock().unwrap().contains(a)
    }
}

/// One proxy replica: a hyper server on 127.0.0.1 running the sticky-session layer over
/// its own Redis store, in front of a round-robin account picker that honours
/// `PinnedAuth` and reports `ServedBy`. A request to a broken account answers 429.
struct Replica {
    addr: SocketAddr,
    stats: Stats,
    store: RedisStore,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn replica(store: RedisStore, upstream: Arc<Upstream>, first_pick: usize) -> Replica {
    let next = Arc::new(AtomicUsize::new(first_pick));
    let picker = tower::service_fn(move |req: Request<Incoming>| {
        let upstream = upstream.clone();
        let next = next.clone();
        async move {
            let auth = match req.extensions().get::<PinnedAuth>() {
                Some(PinnedAuth(pinned)) => pinned.clone(),
                None => {
                    // Fresh pick: round-robin over the accounts not known to be failing.
                    let n = upstream.accounts.len();
                    (0..n)
                        .map(|_| {
                            upstream.accounts[next.fetch_add(1, Ordering::Relaxed) % n].clone()
                        })
                        .find(|a| !upstream.is_broken(a))
                        .unwrap_or_else(|| upstream.accounts[0].clone())
                }
            };
            let status = if upstream.is_broken(&auth) {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::OK
            };
            let mut res = Response::new(Full::new(Bytes::from(auth.as_str().to_owned())));
            *res.status_mut() = status;
            res.extensions_mut().insert(ServedBy(auth));
            Ok::<_, Infallible>(res)
        }
    });
    let layer = StickySessionLayer::with_store(store.clone());
    let stats = layer.stats();
    let svc = layer.layer(picker);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Replica {
        addr,
        stats,
        store,
        server,
    }
}

struct Reply {
    status: StatusCode,
    account: String,
    latency: Duration,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(client: &HttpClient, to: &Replica, session: &str) -> Reply {
    let req = Request::get(format!("http://{}/v1/responses", to.addr))
        .header(DEFAULT_SESSION_HEADER, session)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let started = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("request hung")
        .expect("request failed");
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        account: String::from_utf8(body.to_vec()).unwrap(),
        latency: started.elapsed(),
    }
}

async fn two_replicas(server: &RedisServer, upstream: &Arc<Upstream>) -> (Replica, Replica) {
    let s1 = builder(server)
        .breaker_cooldown(Duration::from_millis(200))
        .build()
        .unwrap();
    let s2 = builder(server)
        .breaker_cooldown(Duration::from_millis(200))
        .build()
        .unwrap();
    wait_connected(&s1).await;
    wait_connected(&s2).await;
    // Different round-robin positions: unsticky, the two would pick different accounts.
    let r1 = replica(s1, upstream.clone(), 0).await;
    let r2 = replica(s2, upstream.clone(), 1).await;
    (r1, r2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_keep_each_session_on_one_account() {
    let server = RedisServer::start();
    let upstream = Upstream::new(3);
    let (r1, r2) = two_replicas(&server, &upstream).await;
    let client = http_client();

    for s in 0..5 {
        let session = format!("conversation-{s}");
        let first = send(&client, &r1, &session).await;
        assert_eq!(first.status, StatusCode::OK);
        for i in 0..10 {
            let to = if i % 2 == 0 { &r2 } else { &r1 };
            let reply = send(&client, to, &session).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(
                reply.account, first.account,
                "{session}, request {i}: the session moved across replicas"
            );
        }
    }
    let (s1, s2) = (r1.stats.snapshot(), r2.stats.snapshot());
    assert_eq!(s1.store_errors + s2.store_errors, 0);
    assert!(
        s2.hits >= 25,
        "replica 2 found replica 1's bindings: {s2:?}"
    );

    // Control: without a session id the replicas do pick differently, so the agreement
    // above is the store's doing.
    let mut accounts = HashSet::new();
    for to in [&r1, &r2, &r1, &r2] {
        let req = Request::get(format!("http://{}/", to.addr))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let body = client.request(req).await.unwrap().into_body();
        accounts.insert(body.collect().await.unwrap().to_bytes());
    }
    assert!(accounts.len() > 1, "{accounts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_seen_by_one_replica_is_followed_by_the_other() {
    let server = RedisServer::start();
    let upstream = Upstream::new(3);
    let (r1, r2) = two_replicas(&server, &upstream).await;
    let client = http_client();
    let session = "agent-run-42";

    let bound = send(&client, &r1, session).await;
    assert_eq!(bound.status, StatusCode::OK);
    let old = AuthId::from(bound.account.clone());
    assert_eq!(send(&client, &r2, session).await.account, bound.account);

    // The account starts failing; replica 2 is the one that sees it.
    upstream.broken.lock().unwrap().insert(old.clone());
    let failed = send(&client, &r2, session).await;
    assert_eq!(failed.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(failed.account, bound.account);
    let moved = send(&client, &r2, session).await;
    assert_eq!(moved.status, StatusCode::OK);
    assert_ne!(moved.account, bound.account, "replica 2 failed over");

    // Replica 1 never saw the failure, yet follows.
    for _ in 0..5 {
        let reply = send(&client, &r1, session).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.account, moved.account,
            "replica 1 follows the failover"
        );
    }
    let key = key(session);
    assert_eq!(
        r1.store.lookup(&key).await.unwrap(),
        Some(AuthId::from(moved.account.clone()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_succeed_while_redis_is_killed_and_sharing_resumes_after_restart() {
    let mut server = RedisServer::start();
    let upstream = Upstream::new(3);
    let (r1, r2) = two_replicas(&server, &upstream).await;
    let client = http_client();

    let mut baseline = Duration::ZERO;
    for i in 0..10 {
        let to = if i % 2 == 0 { &r1 } else { &r2 };
        let reply = send(&client, to, "before-outage").await;
        assert_eq!(reply.status, StatusCode::OK);
        baseline = baseline.max(reply.latency);
    }

    server.kill();
    let mut worst = Duration::ZERO;
    for i in 0..60 {
        let to = if i % 2 == 0 { &r1 } else { &r2 };
        let reply = send(&client, to, &format!("during-outage-{}", i % 4)).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {i} failed while Redis is down"
        );
        assert!(
            reply.latency < HANG_GUARD,
            "request {i} took {:?}",
            reply.latency
        );
        worst = worst.max(reply.latency);
    }
    eprintln!("redis killed: slowest request {worst:?} (slowest with Redis up: {baseline:?})");
    let (s1, s2) = (r1.stats.snapshot(), r2.stats.snapshot());
    assert!(s1.store_errors > 0 && s2.store_errors > 0, "faults counted");
    assert!(r1.store.stats().breaker_open || r1.store.stats().breaker_opens > 0);
    assert!(r2.store.stats().breaker_opens > 0, "{:?}", r2.store.stats());

    server.restart();
    // Sharing resumes once both breakers have closed: a new session bound through
    // replica 1 is found by replica 2.
    let mut attempt = 0;
    eventually(Duration::from_secs(15), "sharing resumes", || {
        attempt += 1;
        let session = format!("after-restart-{attempt}");
        let client = &client;
        let (r1, r2) = (&r1, &r2);
        async move {
            let first = send(client, r1, &session).await;
            assert_eq!(first.status, StatusCode::OK);
            let second = send(client, r2, &session).await;
            assert_eq!(second.status, StatusCode::OK);
            let third = send(client, r1, &session).await;
            (first.account == second.account
                && second.account == third.account
                && !r1.store.stats().breaker_open
                && !r2.store.stats().breaker_open)
                .then_some(())
        }
    })
    .await;
    for i in 0..6 {
        let to = if i % 2 == 0 { &r2 } else { &r1 };
        assert_eq!(send(&client, to, "resumed").await.status, StatusCode::OK);
    }
    let a = send(&client, &r1, "resumed").await.account;
    assert_eq!(send(&client, &r2, "resumed").await.account, a);
}

/// Redis answers but refuses the connection's handshake (here: a wrong password; in
/// production also e.g. `LOADING` while a restarted Redis reads its dataset). The
/// client does not reconnect after such a non-I/O failure on its own; the store must
/// still recover once Redis accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_recovers_after_redis_refused_its_handshake() {
    let server = RedisServer::start();
    server.command(&["CONFIG", "SET", "requirepass", "old-pw"]);
    let store = RedisStore::builder(&format!("redis://:new-pw@127.0.0.1:{}/", server.port()))
        .breaker_threshold(2)
        .breaker_cooldown(Duration::from_millis(100))
        .build()
        .expect("start-up succeeds while Redis refuses us");
    let k = key("refused");
    for _ in 0..10 {
        let started = Instant::now();
        assert!(store.commit(&k, &AuthId::from("acct-1")).await.is_err());
        assert!(started.elapsed() < HANG_GUARD, "{:?}", started.elapsed());
    }
    eventually(Duration::from_secs(5), "breaker opens", || async {
        store.stats().breaker_open.then_some(())
    })
    .await;

    // The operator rotates the password on the Redis side.
    server.command_with_auth("old-pw", &["CONFIG", "SET", "requirepass", "new-pw"]);
    eventually(Duration::from_secs(10), "store recovers", || async {
        store.commit(&k, &AuthId::from("acct-1")).await.ok()
    })
    .await;
    assert_eq!(
        store.lookup(&k).await.unwrap(),
        Some(AuthId::from("acct-1"))
    );
}
