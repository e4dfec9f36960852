//! Invariants under concurrency, on a multi-threaded runtime with many tasks.
//!
//! 1. A binding only ever points at an account that delivered a first data chunk (or a
//!    complete known-empty success, the table's other commit row) for that
//!    `(scope, session)`. The upstream side records each delivery *before* the chunk
//!    enters the body, so a sampler that reads the store first and the delivery log
//!    second can never see a legitimate binding it cannot account for.
//! 2. An old request's late failure never removes a newer binding: requests pinned to an
//!    account fail late in every way the table knows (failure status, inner error, stream
//!    error before the first chunk, empty stream) while newer requests keep committing
//!    another account, and a sampler checks that the newer binding never disappears.
//! 3. The same for the store alone, from OS threads: commits, promotions, clears and
//!    removals of the same keys; a late clear never removes a newer binding, and no key
//!    ends in both of `MemoryStore`'s segments.

use crate::support::scripted;

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::Request;
use http_body::Frame;
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};
use tower_sticky_session::store::BindingStore;
use tower_sticky_session::store::MemoryStore;
use tower_sticky_session::*;

use scripted::*;

const SESSIONS: usize = 4;
const SCOPES: [Option<&str>; 2] = [Some("openai"), Some("anthropic")];
const ACCOUNTS: [&str; 4] = ["acct-a", "acct-b", "acct-c", "acct-d"];
const HANG_GUARD: Duration = Duration::from_secs(60);

/// A tiny deterministic generator per task (the interleaving is what varies).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn session_name(i: usize) -> String {
    format!("conc-{i}")
}

fn all_keys() -> Vec<(usize, BindingKey)> {
    let mut keys = Vec::new();
    for (si, scope) in SCOPES.iter().enumerate() {
        for s in 0..SESSIONS {
            keys.push((si * SESSIONS + s, key(*scope, &session_name(s))));
        }
    }
    keys
}

/// Which accounts delivered a first chunk, per key index.
#[derive(Clone, Default)]
struct Deliveries(Arc<Mutex<HashMap<usize, HashSet<String>>>>);

impl Deliveries {
    fn record(&self, k: usize, account: &AuthId) {
        self.0
            .lock()
            .unwrap()
            .entry(k)
            .or_default()
            .insert(account.as_str().to_owned());
    }

    fn delivered(&self, k: usize, account: &AuthId) -> bool {
        self.0
            .lock()
            .unwrap()
            .get(&k)
            .is_some_and(|s| s.contains(account.as_str()))
    }
}

type Svc = StickySession<Scripted>;

fn layer() -> (StickySessionLayer, MemoryStore) {
    let store = MemoryStore::builder().max_bindings(10_000).build();
    let layer = StickySessionLayer::with_store(store.clone()).scope_fn(scope_from_header);
    (layer, store)
}

async fn call(svc: &mut Svc, req: Request<()>) -> Result<Response, io::Error> {
    ServiceExt::<Request<()>>::ready(svc)
        .await
        .unwrap()
        .call(req)
        .await
}

type Response = http::Response<ResponseBody<TestBody>>;

/// One random request from one worker, driven to its end (or dropped) with yields in
/// between so that other tasks interleave.
async fn random_request(svc: &mut Svc, rng: &mut Rng, deliveries: &Deliveries) {
    let scope = rng.below(SCOPES.len() as u64) as usize;
    let session = rng.below(SESSIONS as u64) as usize;
    let k = scope * SESSIONS + session;
    let req = request(SCOPES[scope], &session_name(session));
    // The account that will serve, decided when the inner service is called: the pin
    // (60 %) or another account.
    let other = AuthId::from(ACCOUNTS[rng.below(ACCOUNTS.len() as u64) as usize]);
    let follow_pin = rng.below(10) < 6;
    let outcome = rng.below(12);

    let (reply_tx, plan) = Plan::later();
    let req = plan.clone().attach(req);
    let mut fut = std::pin::pin!(call(svc, req));
    // Poll once so the lookup happens and the inner service is called.
    let polled = fut.as_mut().now_or_never();
    assert!(polled.is_none(), "the scripted reply is not sent yet");
    let pinned = plan.seen_pin().expect("inner service was called");
    let served = match (&pinned, follow_pin) {
        (Some(p), true) => p.clone(),
        _ => other,
    };
    tokio::task::yield_now().await;

    let (tx, body) = streaming();
    let reply = match outcome {
        0 => Err(io::Error::other("connect failed")),
        1 => Ok(respond(429, Some(&served), full(b"slow down"))),
        2 => Ok(respond(503, Some(&served), full(b"unavailable"))),
        3 => Ok(respond(404, Some(&served), full(b"not found"))),
        4 => {
            // A complete known-empty success commits at once: it counts as delivery.
            deliveries.record(k, &served);
            Ok(respond(204, Some(&served), empty()))
        }
        5 => Ok(respond(200, None, full(b"unattributed"))),
        _ => Ok(respond(200, Some(&served), body)),
    };
    let _ = reply_tx.send(reply);
    let res = match fut.await {
        Ok(res) => res,
        Err(_) => return,
    };
    if outcome < 6 {
        res.into_body().collect().await.unwrap();
        return;
    }
    let mut body = res.into_body();
    let send = |f: Result<Frame<Bytes>, io::Error>| {
        let tx = tx.clone();
        async move { tx.send(f).await.unwrap() }
    };
    match outcome {
        6 => {
            // An empty data frame first (never a first chunk), then data.
            send(Ok(Frame::data(Bytes::new()))).await;
            body.frame().await.unwrap().unwrap();
            tokio::task::yield_now().await;
            deliveries.record(k, &served);
            send(data(b"data: one\n\n")).await;
            body.frame().await.unwrap().unwrap();
            tokio::task::yield_now().await;
            send(data(b"data: two\n\n")).await;
            drop(tx);
            body.collect().await.unwrap();
        }
        7 => {
            drop(tx); // empty stream
            assert!(body.frame().await.is_none());
        }
        8 => {
            send(Err(io::Error::other("reset before first chunk"))).await;
            assert!(body.frame().await.unwrap().is_err());
        }
        9 => {
            deliveries.record(k, &served);
            send(data(b"data: partial\n\n")).await;
            body.frame().await.unwrap().unwrap();
            tokio::task::yield_now().await;
            send(Err(io::Error::other("reset mid-stream"))).await;
            assert!(body.frame().await.unwrap().is_err());
        }
        10 => {
            // The client goes away before the first chunk.
            tokio::task::yield_now().await;
            drop(body);
        }
        _ => {
            // The client goes away after the first chunk.
            deliveries.record(k, &served);
            send(data(b"data: first\n\n")).await;
            body.frame().await.unwrap().unwrap();
            tokio::task::yield_now().await;
            drop(body);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_only_points_at_an_account_that_delivered_for_that_key() {
    const WORKERS: u64 = 32;
    const REQUESTS: usize = 150;
    let (layer, store) = layer();
    let stats = layer.stats();
    let svc: Svc = tower::Layer::layer(&layer, Scripted);
    let deliveries = Deliveries::default();
    let done = Arc::new(AtomicBool::new(false));

    let sampler = {
        let (store, deliveries, done) = (store.clone(), deliveries.clone(), done.clone());
        tokio::spawn(async move {
            let keys = all_keys();
            let (mut samples, mut bound) = (0u64, 0u64);
            while !done.load(Ordering::Acquire) {
                for (k, key) in &keys {
                    // Store first, log second: the log only grows.
                    if let Some(b) = store.get(key) {
                        bound += 1;
                        assert!(
                            deliveries.delivered(*k, &b.auth),
                            "key {k} bound to {} which never delivered for it",
                            b.auth
                        );
                    }
                    samples += 1;
                }
                tokio::task::yield_now().await;
            }
            (samples, bound)
        })
    };

    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (mut svc, deliveries) = (svc.clone(), deliveries.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w + 1).wrapping_mul(0x1000_0001));
            for _ in 0..REQUESTS {
                random_request(&mut svc, &mut rng, &deliveries).await;
            }
        }));
    }
    tokio::time::timeout(HANG_GUARD, async {
        for w in workers {
            w.await.unwrap();
        }
    })
    .await
    .expect("workers finished");
    done.store(true, Ordering::Release);
    let (samples, bound) = sampler.await.unwrap();

    // The final state obeys the invariant too.
    for (k, key) in all_keys() {
        if let Some(b) = store.get(&key) {
            assert!(deliveries.delivered(k, &b.auth), "final binding of key {k}");
        }
    }
    let s = stats.snapshot();
    assert_eq!(s.requests, WORKERS * REQUESTS as u64);
    // The run exercised both sides of the table, and the sampler saw bindings.
    assert!(s.commits > 0 && s.cleared > 0, "{s:?}");
    assert!(samples > 0 && bound > 0, "samples {samples}, bound {bound}");
}

type OldFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, io::Error>> + Send>>;

/// An old request pinned to the first account, held before its failure.
enum Old {
    /// Its reply (failure status or inner error) is sent late.
    Head(tokio::sync::oneshot::Sender<Reply>, Reply, OldFuture),
    /// Its 200 head arrived; its stream fails (or ends empty) late.
    Stream(Frames, ResponseBody<TestBody>, Option<FrameResult>),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_failures_of_old_requests_never_remove_a_newer_binding() {
    const OLD_PER_KEY: usize = 10;
    const NEW_PER_KEY: usize = 20;
    let (layer, store) = layer();
    let stats = layer.stats();
    let mut svc: Svc = tower::Layer::layer(&layer, Scripted);
    let old_acct = AuthId::from("acct-old");
    let new_acct = AuthId::from("acct-new");
    let keys = all_keys();

    // Every key is bound to the old account by a request that delivered a chunk.
    for (si, scope) in SCOPES.iter().enumerate() {
        for s in 0..SESSIONS {
            let plan = Plan::now(Ok(respond(200, Some(&old_acct), full(b"hi"))));
            let res = call(&mut svc, plan.attach(request(*scope, &session_name(s))))
                .await
                .unwrap();
            res.into_body().collect().await.unwrap();
            assert_eq!(
                store.get(&keys[si * SESSIONS + s].1).unwrap().auth,
                old_acct
            );
        }
    }

    // Old requests, pinned to the old account, get stuck before failing.
    let mut olds = Vec::new();
    for scope in SCOPES {
        for s in 0..SESSIONS {
            for i in 0..OLD_PER_KEY {
                let req = request(scope, &session_name(s));
                match i % 5 {
                    0 | 1 => {
                        let (tx, plan) = Plan::later();
                        let mut svc = svc.clone();
                        let req = plan.clone().attach(req);
                        let mut fut: OldFuture = Box::pin(async move { call(&mut svc, req).await });
                        assert!(fut.as_mut().now_or_never().is_none());
                        assert_eq!(plan.seen_pin(), Some(Some(old_acct.clone())));
                        let reply = if i % 5 == 0 {
                            Ok(respond(503, Some(&old_acct), full(b"overloaded")))
                        } else {
                            Err(io::Error::other("connect timeout"))
                        };
                        olds.push(Old::Head(tx, reply, fut));
                    }
                    n => {
                        let (tx, body) = streaming();
                        let plan = Plan::now(Ok(respond(200, Some(&old_acct), body)));
                        let res = call(&mut svc, plan.clone().attach(req)).await.unwrap();
                        assert_eq!(plan.seen_pin(), Some(Some(old_acct.clone())));
                        let fail = match n {
                            2 => Some(Err(io::Error::other("reset before first chunk"))),
                            3 => None, // empty stream
                            _ => Some(Ok(Frame::trailers(http::HeaderMap::new()))),
                        };
                        olds.push(Old::Stream(tx, res.into_body(), fail));
                    }
                }
            }
        }
    }

    // A newer request on every key is served by the new account and commits it.
    for scope in SCOPES {
        for s in 0..SESSIONS {
            let plan = Plan::now(Ok(respond(200, Some(&new_acct), full(b"fresh"))));
            let res = call(&mut svc, plan.attach(request(scope, &session_name(s))))
                .await
                .unwrap();
            res.into_body().collect().await.unwrap();
        }
    }
    for (_, k) in &keys {
        assert_eq!(store.get(k).unwrap().auth, new_acct);
    }
    let before = stats.snapshot();

    let done = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (store, keys, done, samples, new_acct) = (
            store.clone(),
            keys.clone(),
            done.clone(),
            samples.clone(),
            new_acct.clone(),
        );
        tokio::spawn(async move {
            while !done.load(Ordering::Acquire) {
                for (k, key) in &keys {
                    let bound = store.get(key).map(|b| b.auth);
                    assert_eq!(
                        bound.as_ref(),
                        Some(&new_acct),
                        "key {k} lost its newer binding"
                    );
                    samples.fetch_add(1, Ordering::Relaxed);
                }
                tokio::task::yield_now().await;
            }
        })
    };

    // All old requests fail at once, from many tasks, while newer requests keep
    // committing the new account.
    let mut tasks = Vec::new();
    for old in olds {
        tasks.push(tokio::spawn(async move {
            tokio::task::yield_now().await;
            match old {
                Old::Head(tx, reply, fut) => {
                    let _ = tx.send(reply);
                    let _ = fut.await;
                }
                Old::Stream(tx, mut body, fail) => {
                    match fail {
                        Some(Ok(trailers)) => {
                            // Trailers are not a first chunk; then the stream ends empty.
                            tx.send(Ok(trailers)).await.unwrap();
                            body.frame().await.unwrap().unwrap();
                            drop(tx);
                            assert!(body.frame().await.is_none());
                        }
                        Some(Err(e)) => {
                            tx.send(Err(e)).await.unwrap();
                            assert!(body.frame().await.unwrap().is_err());
                        }
                        None => {
                            drop(tx);
                            assert!(body.frame().await.is_none());
                        }
                    }
                }
            }
        }));
    }
    for (si, scope) in SCOPES.iter().enumerate() {
        for s in 0..SESSIONS {
            let (mut svc, new_acct) = (svc.clone(), new_acct.clone());
            let session = session_name(s);
            let scope = *scope;
            tasks.push(tokio::spawn(async move {
                for _ in 0..NEW_PER_KEY {
                    let plan = Plan::now(Ok(respond(200, Some(&new_acct), full(b"again"))));
                    let res = call(&mut svc, plan.clone().attach(request(scope, &session)))
                        .await
                        .unwrap();
                    assert_eq!(plan.seen_pin(), Some(Some(new_acct.clone())), "scope {si}");
                    res.into_body().collect().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }));
        }
    }
    tokio::time::timeout(HANG_GUARD, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("tasks finished");
    done.store(true, Ordering::Release);
    sampler.await.unwrap();

    for (_, k) in &keys {
        assert_eq!(store.get(k).unwrap().auth, new_acct);
    }
    let after = stats.snapshot();
    let olds = (keys.len() * OLD_PER_KEY) as u64;
    let attempts = |s: &StatsSnapshot| s.clear_attempts_total();
    // Every old failure tried its compare-and-delete, and none of them removed anything.
    assert_eq!(attempts(&after) - attempts(&before), olds);
    assert_eq!(after.cleared, before.cleared);
    assert!(samples.load(Ordering::Relaxed) > 0);
}

/// 3. The store alone, from OS threads: commits (first successes and promotions), clears
///    and removals of the same keys. Each owner thread commits one new account per round
///    to its keys (every other round twice, a promotion; every fourth it first clears its
///    own previous account, so that promotion starts from probation) while two others
///    clear those keys with accounts of earlier rounds (a late compare-and-delete must
///    never remove the newer binding) and commit, clear and remove a shared set of keys
///    at random. At the end, every key is counted once:
///    protected + probation bindings = keys bound (a key left in both segments would
///    count twice).
#[test]
fn store_commits_promotions_and_clears_of_the_same_keys_keep_invariants() {
    const OWNED: usize = 4;
    const SHARED: usize = 4;
    const ROUNDS: u32 = 400;
    let store = MemoryStore::builder()
        .max_bindings(10_000)
        .probation_bindings(4_096)
        .build();
    let owned: Vec<BindingKey> = (0..OWNED).map(|i| key(None, &format!("own-{i}"))).collect();
    let shared: Vec<BindingKey> = (0..SHARED)
        .map(|i| key(None, &format!("shr-{i}")))
        .collect();
    let account = |k: usize, round: u32| AuthId::from(format!("k{k}-r{round}"));
    let rounds: Vec<AtomicU64> = (0..OWNED).map(|_| AtomicU64::new(0)).collect();
    let owners_done = AtomicU64::new(0);
    std::thread::scope(|s| {
        for owner in 0..2 {
            let (store, owned, rounds, owners_done) = (&store, &owned, &rounds, &owners_done);
            s.spawn(move || {
                // Counted even if an assertion fails, so the other threads stop.
                struct Done<'a>(&'a AtomicU64);
                impl Drop for Done<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_add(1, Ordering::AcqRel);
                    }
                }
                let _done = Done(owners_done);
                for round in 1..=ROUNDS {
                    for k in (owner..OWNED).step_by(2) {
                        let a = account(k, round);
                        if round % 4 == 0 {
                            // Start over in probation, so this round's second commit
                            // is a promotion again.
                            let prev = account(k, round - 1);
                            let cleared = store.clear_if(&owned[k], &prev).now_or_never();
                            assert!(cleared.unwrap().unwrap(), "key {k} round {round}");
                        }
                        rounds[k].store(u64::from(round), Ordering::Release);
                        store.commit(&owned[k], &a).now_or_never().unwrap().unwrap();
                        if round % 2 == 0 {
                            store.commit(&owned[k], &a).now_or_never().unwrap().unwrap();
                        }
                        let got = store.lookup(&owned[k]).now_or_never().unwrap().unwrap();
                        assert_eq!(got, Some(a), "key {k} round {round}");
                    }
                }
            });
        }
        for t in 0..2u64 {
            let (store, owned, shared, rounds, owners_done) =
                (&store, &owned, &shared, &rounds, &owners_done);
            s.spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t + 1));
                while owners_done.load(Ordering::Acquire) < 2 {
                    let k = rng.below(OWNED as u64) as usize;
                    let round = rounds[k].load(Ordering::Acquire);
                    if round > 1 {
                        let old = round - 1 - rng.below(round.min(4) - 1);
                        let old = account(k, old as u32);
                        let _ = store.clear_if(&owned[k], &old).now_or_never();
                    }
                    let j = rng.below(SHARED as u64) as usize;
                    let a = account(OWNED + j, rng.below(2) as u32);
                    match rng.below(4) {
                        0 | 1 => drop(store.commit(&shared[j], &a).now_or_never()),
                        2 => drop(store.clear_if(&shared[j], &a).now_or_never()),
                        _ => drop(store.remove(&shared[j])),
                    }
                }
            });
        }
    });
    for (k, key) in owned.iter().enumerate() {
        assert_eq!(store.get(key).unwrap().auth, account(k, ROUNDS), "key {k}");
    }
    store.run_pending_tasks();
    let bound = owned
        .iter()
        .chain(&shared)
        .filter(|k| store.get(k).is_some())
        .count() as u64;
    assert_eq!(store.protected_count() + store.probation_count(), bound);
}
