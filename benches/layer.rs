//! Per-request cost of [`StickySessionLayer`] around a trivial inner service, next to the
//! bare service measured in the same run, and the cost of the binding stores alone.
//!
//! Run: `cargo bench --bench layer` (about 3 minutes), or one group:
//! `cargo bench --bench layer -- request/`. See `BENCHMARKS.md` for the figures.
//!
//! Every case drives one whole request synchronously: build a `Request<()>` (with or
//! without the `sticky-session-id` header), `poll_ready`, `call`, poll the response
//! future once (the inner service answers at once with a one-frame `Full` body and sets
//! `ServedBy`), then poll the body to its end, which is where the layer commits. The
//! `bare/*` cases do exactly the same with the inner service alone, so
//! `layer/x − bare/y` is what the layer adds. No tracing subscriber is installed (the
//! layer's span and events are then disabled callsites).
//!
//! - `request/bare/*`: the inner service alone (`header`: with a constant session header,
//!   `no_header`, `fresh_id`: a new 36-byte id per request, `failure_429`).
//! - `request/layer/no_header`, `…/invalid` (a space in the id): no store access.
//! - `request/layer/miss_new_session`: a new 36-byte id per request: lookup miss, then
//!   the first frame commits a new binding (moka at its default 100 000 capacity, so in
//!   steady state every insert goes through admission and eviction).
//! - `request/layer/hit`: bound to `acct-a`, served by `acct-a` (lookup hit + commit of
//!   the same account, which renews the TTL).
//! - `request/layer/hit_10k_sessions`: the same, cycling over 10 000 bound sessions (the
//!   store no longer fits in the L1/L2 caches); baseline `bare/header_10k_sessions`.
//! - `request/layer/hit_rebind`: bound, then served alternately by `acct-a` and `acct-b`,
//!   so every commit changes the account.
//! - `request/layer/failure_clear`: bound to `acct-a`, answered 429 by `acct-a`: the
//!   compare-and-delete removes the binding (re-made, untimed, before each request).
//! - `request/naive/*`: the same through the layer over the naive `RwLock<HashMap>` store.
//! - `store/{moka,naive}/*`: the store operations alone (`lookup_hit`: a proven binding,
//!   `lookup_hit_probation`: one with a single success; `commit_same`: the same account
//!   again, young binding; `miss_then_commit_new`: a new session's lookup and first
//!   commit, store full), next to `store/moka_raw/*`: one raw moka cache with the same
//!   settings (`get_hit`, `get_miss`, `insert_existing`, `get_miss_then_insert_new`), so
//!   the store's overhead is a ratio within one run.
//! - `contended/*`: two threads calling clones of one service at once, each on its own
//!   core; the time is per request per thread (wall time / requests of one thread).
//!   `contended/parts/arc_clone_drop_{shared,own}`: one `AuthId` clone and drop per
//!   iteration on both threads, of one shared `AuthId` or of one each.
//! - `parts/*`: pieces of the request path on their own, to explain the totals: the
//!   keyed hash of a 36-byte key, three request-extension inserts (`SessionId`,
//!   `BindingKey`, `PinnedAuth`) next to none, a disabled `debug_span!` with its
//!   records, and a clock read.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use tower::{Layer, Service};
use tower_sticky_session::store::BindingStore;
use tower_sticky_session::{
    AuthId, BindingKey, ServedBy, SessionId, StickySessionLayer, store::MemoryStore,
};

#[allow(dead_code)]
#[path = "support/naive_store.rs"]
mod naive_store;

#[path = "support/drive.rs"]
mod drive;

use drive::{drive, fresh_id, now};

use naive_store::NaiveStore;

const HEADER: HeaderName = HeaderName::from_static("sticky-session-id");
/// A 36-byte id, the length of a UUID.
const SESSION: &str = "5f0c9a7e-1b2d-4c3e-8f90-a1b2c3d4e5f6";
const TTL: Duration = Duration::from_secs(3600);

/// Who the trivial inner service says served the request.
#[derive(Clone)]
enum Served {
    Always(AuthId),
    /// Alternates between the two on each call.
    Alternate(AuthId, AuthId, bool),
}

/// The trivial inner service: answers at once with `status`, a one-frame body and
/// `ServedBy`.
#[derive(Clone)]
struct Trivial {
    status: StatusCode,
    served: Served,
    body: Bytes,
}

impl Trivial {
    fn new(status: u16, served: Served) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("status"),
            served,
            body: Bytes::from_static(b"data: hello\n\n"),
        }
    }
}

impl<B> Service<Request<B>> for Trivial {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let mut res = Response::new(Full::new(self.body.clone()));
        *res.status_mut() = self.status;
        let served = match &mut self.served {
            Served::Always(a) => Some(a.clone()),
            Served::Alternate(a, b, flip) => {
                *flip = !*flip;
                Some(if *flip { a.clone() } else { b.clone() })
            }
        };
        if let Some(a) = served {
            res.extensions_mut().insert(ServedBy(a));
        }
        ready(Ok(res))
    }
}

fn request(session: Option<&HeaderValue>) -> Request<()> {
    let mut req = Request::new(());
    if let Some(v) = session {
        req.headers_mut().insert(HEADER, v.clone());
    }
    req
}

fn key_of(v: &HeaderValue) -> BindingKey {
    BindingKey::new(
        None,
        SessionId::from_header_value(v.clone(), 256).expect("valid"),
    )
}

fn accounts() -> (AuthId, AuthId) {
    (AuthId::from("acct-a"), AuthId::from("acct-b"))
}

/// The request-path cases of one store, under `prefix` (`layer` or `naive`).
fn request_cases<St: BindingStore>(c: &mut Criterion, prefix: &str, make: impl Fn() -> St) {
    let (a, b) = accounts();
    let session = HeaderValue::from_static(SESSION);
    let mut g = c.benchmark_group("request");

    if prefix == "layer" {
        let layer = StickySessionLayer::with_store(make());
        let mut svc = layer.layer(Trivial::new(200, Served::Always(a.clone())));
        g.bench_function("layer/no_header", |bch| {
            bch.iter(|| drive(&mut svc, request(None)))
        });

        let bad = HeaderValue::from_static("not a valid id");
        g.bench_function("layer/invalid", |bch| {
            bch.iter(|| drive(&mut svc, request(Some(&bad))))
        });

        let n = AtomicU64::new(1);
        g.bench_function("layer/miss_new_session", |bch| {
            bch.iter(|| {
                let id = fresh_id(n.fetch_add(1, Ordering::Relaxed));
                drive(&mut svc, request(Some(&id)))
            })
        });
    }

    let layer = StickySessionLayer::with_store(make());
    let store_key = key_of(&session);
    now(layer.store().commit(&store_key, &a)).expect("commit");
    let mut svc = layer.layer(Trivial::new(200, Served::Always(a.clone())));
    g.bench_function(format!("{prefix}/hit"), |bch| {
        bch.iter(|| drive(&mut svc, request(Some(&session))))
    });

    // The same over 10 000 bound sessions in turn: the store's memory no longer sits in
    // the L1/L2 caches, as in a server with many sessions.
    let many: Vec<HeaderValue> = (0..10_000).map(|i| fresh_id(1 << 52 | i)).collect();
    for id in &many {
        now(layer.store().commit(&key_of(id), &a)).expect("commit");
    }
    let mut next = 0;
    g.bench_function(format!("{prefix}/hit_10k_sessions"), |bch| {
        bch.iter(|| {
            next = (next + 1) % many.len();
            drive(&mut svc, request(Some(&many[next])))
        })
    });

    let mut svc = layer.layer(Trivial::new(
        200,
        Served::Alternate(a.clone(), b.clone(), false),
    ));
    g.bench_function(format!("{prefix}/hit_rebind"), |bch| {
        bch.iter(|| drive(&mut svc, request(Some(&session))))
    });

    // Each request finds its binding and clears it; the binding is re-made untimed.
    let ids: Vec<HeaderValue> = (0..4096).map(|i| fresh_id(1 << 40 | i)).collect();
    let keys: Vec<BindingKey> = ids.iter().map(key_of).collect();
    let mut svc = layer.layer(Trivial::new(429, Served::Always(a.clone())));
    let mut i = 0;
    let store = layer.store();
    g.bench_function(format!("{prefix}/failure_clear"), |bch| {
        bch.iter_batched(
            || {
                i = (i + 1) % ids.len();
                now(store.commit(&keys[i], &a)).expect("commit");
                request(Some(&ids[i]))
            },
            |req| drive(&mut svc, req),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bare_cases(c: &mut Criterion) {
    let (a, _) = accounts();
    let session = HeaderValue::from_static(SESSION);
    let mut g = c.benchmark_group("request");
    let mut svc = Trivial::new(200, Served::Always(a.clone()));
    g.bench_function("bare/header", |bch| {
        bch.iter(|| drive(&mut svc, request(Some(&session))))
    });
    g.bench_function("bare/no_header", |bch| {
        bch.iter(|| drive(&mut svc, request(None)))
    });
    let many: Vec<HeaderValue> = (0..10_000).map(|i| fresh_id(1 << 52 | i)).collect();
    let mut next = 0;
    g.bench_function("bare/header_10k_sessions", |bch| {
        bch.iter(|| {
            next = (next + 1) % many.len();
            drive(&mut svc, request(Some(&many[next])))
        })
    });
    let n = AtomicU64::new(1);
    g.bench_function("bare/fresh_id", |bch| {
        bch.iter(|| {
            let id = fresh_id(n.fetch_add(1, Ordering::Relaxed));
            drive(&mut svc, request(Some(&id)))
        })
    });
    let mut failing = Trivial::new(429, Served::Always(a));
    g.bench_function("bare/failure_429", |bch| {
        bch.iter_batched(
            || request(Some(&session)),
            |req| drive(&mut failing, req),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn request_path(c: &mut Criterion) {
    bare_cases(c);
    request_cases(c, "layer", MemoryStore::new);
    request_cases(c, "naive", || NaiveStore::new(TTL));
}

fn store_cases<St: BindingStore>(c: &mut Criterion, name: &str, store: St) {
    let (a, b) = accounts();
    let key = key_of(&HeaderValue::from_static(SESSION));
    let young = key_of(&HeaderValue::from_static("young-session"));
    let absent = key_of(&HeaderValue::from_static("absent-session"));
    // Two successes: `key` is proven (MemoryStore's protected segment); `young` has one
    // (probation).
    now(store.commit(&key, &a)).expect("commit");
    now(store.commit(&key, &a)).expect("commit");
    now(store.commit(&young, &a)).expect("commit");
    let mut g = c.benchmark_group("store");
    g.bench_function(format!("{name}/lookup_hit"), |bch| {
        bch.iter(|| black_box(now(store.lookup(black_box(&key)))))
    });
    g.bench_function(format!("{name}/lookup_hit_probation"), |bch| {
        bch.iter(|| black_box(now(store.lookup(black_box(&young)))))
    });
    g.bench_function(format!("{name}/lookup_miss"), |bch| {
        bch.iter(|| black_box(now(store.lookup(black_box(&absent)))))
    });
    g.bench_function(format!("{name}/commit_same"), |bch| {
        bch.iter(|| black_box(now(store.commit(black_box(&key), &a))))
    });
    let mut flip = false;
    g.bench_function(format!("{name}/commit_change"), |bch| {
        bch.iter(|| {
            flip = !flip;
            black_box(now(
                store.commit(black_box(&key), if flip { &b } else { &a })
            ))
        })
    });
    g.bench_function(format!("{name}/clear_if_other_account"), |bch| {
        bch.iter(|| black_box(now(store.clear_if(black_box(&key), &b))))
    });
    // New keys, cycling over 1 000 000 (a store of 100 000 evicts): a lookup miss, then
    // the commit of a new binding, as a new session's first request does.
    let keys: Vec<BindingKey> = (0..1_000_000u64)
        .map(|i| key_of(&fresh_id(1 << 44 | i)))
        .collect();
    let mut i = 0;
    g.bench_function(format!("{name}/miss_then_commit_new"), |bch| {
        bch.iter(|| {
            i = (i + 1) % keys.len();
            black_box(now(store.lookup(&keys[i])).expect("lookup"));
            black_box(now(store.commit(&keys[i], &a)))
        })
    });
    g.finish();
}

/// One raw moka cache with the store's settings (LRU, time-to-idle, 100 000 entries,
/// `u64` keys and values), measured in the same run: the baseline the store's ratios are
/// taken against.
fn raw_moka_cases(c: &mut Criterion) {
    let cache: moka::sync::Cache<u64, u64> = moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_idle(TTL)
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .build();
    cache.insert(7, 7);
    let mut g = c.benchmark_group("store");
    g.bench_function("moka_raw/get_hit", |bch| {
        bch.iter(|| black_box(cache.get(black_box(&7))))
    });
    g.bench_function("moka_raw/get_miss", |bch| {
        bch.iter(|| black_box(cache.get(black_box(&8))))
    });
    g.bench_function("moka_raw/insert_existing", |bch| {
        bch.iter(|| cache.insert(black_box(7), 7))
    });
    let mut i = 1_000u64;
    g.bench_function("moka_raw/get_miss_then_insert_new", |bch| {
        bch.iter(|| {
            i = (i + 1) % 1_000_000 + 1_000;
            black_box(cache.get(&i));
            cache.insert(i, i)
        })
    });
    g.finish();
}

fn store_ops(c: &mut Criterion) {
    raw_moka_cases(c);
    store_cases(c, "moka", MemoryStore::new());
    store_cases(c, "naive", NaiveStore::new(TTL));
}

/// Two threads, each calling its own clone of `svc` with `pick(i)`'s session id.
fn two_threads<S, B>(iters: u64, svc: &S, ids: &[HeaderValue]) -> Duration
where
    S: Service<Request<()>, Response = Response<B>> + Clone + Send,
    S::Error: std::fmt::Debug,
    B: Body,
{
    let barrier = Barrier::new(2);
    let times: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2u64)
            .map(|t| {
                let mut svc = svc.clone();
                let barrier = &barrier;
                s.spawn(move || {
                    let start_at = (t as usize * 7919) % ids.len();
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters as usize {
                        let id = &ids[(start_at + i) % ids.len()];
                        drive(&mut svc, request(Some(id)));
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect()
    });
    times.into_iter().max().unwrap_or_default()
}

fn contended_cases<St: BindingStore>(c: &mut Criterion, name: &str, make: impl Fn() -> St) {
    let (a, _) = accounts();
    let hot = vec![HeaderValue::from_static(SESSION)];
    let many: Vec<HeaderValue> = (0..10_000).map(|i| fresh_id(1 << 48 | i)).collect();
    let mut g = c.benchmark_group("contended");
    for (case, ids) in [("hot_session", &hot), ("many_sessions", &many)] {
        let layer = StickySessionLayer::with_store(make());
        for id in ids.iter() {
            now(layer.store().commit(&key_of(id), &a)).expect("commit");
        }
        let svc = layer.layer(Trivial::new(200, Served::Always(a.clone())));
        g.bench_function(format!("{name}/{case}"), |bch| {
            bch.iter_custom(|iters| two_threads(iters, &svc, ids))
        });
    }
    g.finish();
}

fn contended(c: &mut Criterion) {
    let (a, _) = accounts();
    let ids = vec![HeaderValue::from_static(SESSION)];
    let bare = Trivial::new(200, Served::Always(a));
    let mut g = c.benchmark_group("contended");
    g.bench_function("bare/2_threads", |bch| {
        bch.iter_custom(|iters| two_threads(iters, &bare, &ids))
    });
    // What one reference-count round trip costs when both cores hit the same counter
    // (one account's `AuthId`, the layer's shared state) or each its own.
    for (case, shared) in [
        ("arc_clone_drop_shared", true),
        ("arc_clone_drop_own", false),
    ] {
        g.bench_function(format!("parts/{case}"), |bch| {
            bch.iter_custom(|iters| {
                let common = AuthId::from("acct-a");
                let barrier = Barrier::new(2);
                std::thread::scope(|s| {
                    let handles: Vec<_> = (0..2)
                        .map(|_| {
                            // Own ids are large enough not to share a cache line.
                            let id = if shared {
                                common.clone()
                            } else {
                                AuthId::from("a".repeat(256))
                            };
                            let barrier = &barrier;
                            s.spawn(move || {
                                barrier.wait();
                                let start = Instant::now();
                                for _ in 0..iters {
                                    black_box(black_box(&id).clone());
                                }
                                start.elapsed()
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().expect("bench thread"))
                        .max()
                        .unwrap_or_default()
                })
            })
        });
    }
    g.finish();
    contended_cases(c, "layer", MemoryStore::new);
    contended_cases(c, "naive", || NaiveStore::new(TTL));
}

fn parts(c: &mut Criterion) {
    use std::hash::{BuildHasher, Hasher, RandomState};
    let (a, _) = accounts();
    let session = HeaderValue::from_static(SESSION);
    let key = key_of(&session);
    let mut g = c.benchmark_group("parts");
    let keys = RandomState::new();
    g.bench_function("siphash_binding_key", |bch| {
        bch.iter(|| {
            let mut h = keys.build_hasher();
            black_box(&key).hash_into(&mut h);
            black_box(h.finish())
        })
    });
    g.bench_function("request_no_extensions", |bch| {
        bch.iter(|| black_box(request(Some(&session))))
    });
    g.bench_function("request_3_extensions", |bch| {
        bch.iter(|| {
            let mut req = request(Some(&session));
            let id = SessionId::from_header_value(session.clone(), 256).expect("valid");
            req.extensions_mut().insert(id.clone());
            req.extensions_mut().insert(BindingKey::new(None, id));
            req.extensions_mut()
                .insert(tower_sticky_session::PinnedAuth(a.clone()));
            black_box(req)
        })
    });
    g.bench_function("debug_span_disabled", |bch| {
        bch.iter(|| {
            let span = tracing::debug_span!(
                "sticky_session",
                session = tracing::field::Empty,
                decision = tracing::field::Empty,
            );
            span.record("session", "5f0c…(36 bytes)");
            span.record("decision", "hit");
            black_box(span)
        })
    });
    g.bench_function("instant_now", |bch| bch.iter(|| black_box(Instant::now())));
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40)
}

criterion_group! {
    name = benches;
    config = config();
    targets = request_path, store_ops, contended, parts
}
criterion_main!(benches);
