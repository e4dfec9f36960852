//! What a binding lookup costs through Redis on loopback, next to the in-memory store,
//! and what it costs while Redis is down.
//!
//! Starts its own `redis-server` on a free loopback port (it must be on `PATH`).
//! Run: `cargo bench --bench redis_lookup`. Every case goes through the same harness
//! (`Runtime::block_on` on a 2-worker Tokio runtime, as a request would await it), so
//! compare the cases as ratios to `lookup/moka_hit`.
//!
//! - `moka_hit`: the in-memory store, a live binding.
//! - `redis_hit`, `redis_miss`: a `GET` round trip to Redis on 127.0.0.1.
//! - `redis_near_cache_hit`: a Redis store with a near cache that holds the binding
//!   (invalidation by Redis on: RESP3 `CLIENT TRACKING`, the default).
//! - `redis_near_cache_hit_ttl_only`: the same with invalidation off (TTL only).
//! - `redis_down_breaker_open`: Redis unreachable, breaker open: no network at all.
//! - `redis_down_breaker_closed`: Redis just killed and the breaker never opening
//!   (threshold `u32::MAX`): each lookup finds the connection refused.
//! - `commit/*`: `SET … PX` against the in-memory commit; `commit/redis_near_tracking`:
//!   the commit of a store whose near cache Redis invalidates (one script that defers a
//!   same-account renewal instead of a `SET`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower_sticky_session::store::{BindingStore, MemoryStore, RedisStore};
use tower_sticky_session::{AuthId, BindingKey, SessionId};

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;

fn key(session: &str) -> BindingKey {
    BindingKey::new(None, SessionId::new(session).expect("valid session id"))
}

fn connected(rt: &tokio::runtime::Runtime, store: &RedisStore) {
    let probe = key("bench-connect");
    for _ in 0..200 {
        if rt.block_on(store.lookup(&probe)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("the benchmark's redis-server did not answer");
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _enter = rt.enter();
    let server = RedisServer::start();
    let k = key("bench-session-0123456789abcdef");
    let auth = AuthId::from("account-1");

    let moka = MemoryStore::new();
    rt.block_on(moka.commit(&k, &auth)).unwrap();
    let redis = RedisStore::builder(&server.url()).build().unwrap();
    connected(&rt, &redis);
    rt.block_on(redis.commit(&k, &auth)).unwrap();
    let near = RedisStore::builder(&server.url())
        .near_cache(Duration::from_secs(3600), 10_000)
        .build()
        .unwrap();
    connected(&rt, &near);
    rt.block_on(near.lookup(&k)).unwrap();
    assert!(near.stats().near_tracking, "{:?}", near.stats());
    let near_ttl_only = RedisStore::builder(&server.url())
        .near_cache(Duration::from_secs(3600), 10_000)
        .near_cache_invalidation(false)
        .build()
        .unwrap();
    connected(&rt, &near_ttl_only);
    rt.block_on(near_ttl_only.lookup(&k)).unwrap();

    // Redis down, breaker open: the store's warm-up fails and opens the breaker.
    let down_open = RedisStore::builder(&format!(
        "redis://127.0.0.1:{}/",
        RedisServer::unused_port()
    ))
    .build()
    .unwrap();
    // Redis killed under a connected store whose breaker never opens.
    let mut doomed = RedisServer::start();
    let down_closed = RedisStore::builder(&doomed.url())
        .breaker_threshold(u32::MAX)
        .build()
        .unwrap();
    connected(&rt, &down_closed);
    // Let the store's start-up PING finish first: failing, it would open the breaker.
    std::thread::sleep(Duration::from_millis(300));
    doomed.kill();
    std::thread::sleep(Duration::from_millis(100));
    assert!(rt.block_on(down_open.lookup(&k)).is_err());
    assert!(rt.block_on(down_closed.lookup(&k)).is_err());
    assert!(down_open.stats().breaker_open);
    assert!(!down_closed.stats().breaker_open);

    let missing = key("bench-never-bound");
    let mut g = c.benchmark_group("lookup");
    g.bench_function("moka_hit", |b| {
        b.iter(|| rt.block_on(moka.lookup(black_box(&k))))
    });
    g.bench_function("redis_hit", |b| {
        b.iter(|| rt.block_on(redis.lookup(black_box(&k))))
    });
    g.bench_function("redis_miss", |b| {
        b.iter(|| rt.block_on(redis.lookup(black_box(&missing))))
    });
    g.bench_function("redis_near_cache_hit", |b| {
        b.iter(|| rt.block_on(near.lookup(black_box(&k))))
    });
    g.bench_function("redis_near_cache_hit_ttl_only", |b| {
        b.iter(|| rt.block_on(near_ttl_only.lookup(black_box(&k))))
    });
    g.bench_function("redis_down_breaker_open", |b| {
        b.iter(|| rt.block_on(down_open.lookup(black_box(&k))))
    });
    g.bench_function("redis_down_breaker_closed", |b| {
        b.iter(|| rt.block_on(down_closed.lookup(black_box(&k))))
    });
    g.finish();

    let mut g = c.benchmark_group("commit");
    g.bench_function("moka", |b| {
        b.iter(|| rt.block_on(moka.commit(black_box(&k), &auth)))
    });
    g.bench_function("redis", |b| {
        b.iter(|| rt.block_on(redis.commit(black_box(&k), &auth)))
    });
    g.bench_function("redis_near_tracking", |b| {
        b.iter(|| rt.block_on(near.commit(black_box(&k), &auth)))
    });
    g.finish();

    eprintln!("redis_down_breaker_closed: {:?}", down_closed.stats());
}

criterion_group! {
    name = redis_lookup;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(redis_lookup);
