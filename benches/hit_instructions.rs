//! Instructions per request on the hit path, counted by callgrind: a figure that does not
//! move with the load of a shared machine (criterion's times on this 2-core box swing
//! by 30 % between runs; instruction counts repeat to a few parts per million).
//!
//! Run: `benches/hit_instructions.sh` (builds this in release, runs each case under
//! `valgrind --tool=callgrind` and prints instructions per iteration and the ratios).
//! By hand: `cargo bench --bench hit_instructions -- CASE ITERATIONS`.
//!
//! Cases (each drives `ITERATIONS` iterations after 1 000 warm-up ones; the script runs
//! every case twice, with two iteration counts, and takes the difference, so set-up and
//! process start-up cancel out):
//! - `bare`: one whole request through the trivial inner service alone (the same
//!   service and driver as `benches/layer.rs`), with a 36-byte `sticky-session-id`.
//! - `layer_hit`: the same request through `StickySessionLayer` over the default
//!   `MemoryStore`, the session bound to the account that serves it (lookup hit, commit of
//!   the same account).
//! - `layer_hit_10k`: the same over 10 000 bound sessions in turn.
//! - `moka_get`: one `get` of a present key from a raw `moka::sync::Cache<u64, u64>`
//!   built like the store's segments (LRU, time-to-idle, the same capacity).
//! - `naive_hit`: the `layer_hit` request over the naive `RwLock<HashMap>` store;
//!   `naive_hit_10k`: the same over 10 000 bound sessions in turn.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
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

const HEADER: HeaderName = HeaderName::from_static("sticky-session-id");
const SESSION: &str = "5f0c9a7e-1b2d-4c3e-8f90-a1b2c3d4e5f6";
const WARM_UP: u64 = 1_000;

#[derive(Clone)]
struct Trivial {
    status: StatusCode,
    served: AuthId,
    body: Bytes,
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
        res.extensions_mut().insert(ServedBy(self.served.clone()));
        ready(Ok(res))
    }
}

fn request(session: &HeaderValue) -> Request<()> {
    let mut req = Request::new(());
    req.headers_mut().insert(HEADER, session.clone());
    req
}

fn bind<St: BindingStore>(store: &St, v: &HeaderValue, auth: &AuthId) {
    let key = BindingKey::new(
        None,
        SessionId::from_header_value(v.clone(), 256).expect("valid"),
    );
    // Twice: a second success proves the binding (the segmented store's protected part).
    now(store.commit(&key, auth)).expect("commit");
    now(store.commit(&key, auth)).expect("commit");
}

fn run_requests<S, B>(svc: &mut S, ids: &[HeaderValue], iterations: u64)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
{
    let mut next = 0;
    for _ in 0..WARM_UP + iterations {
        next = if next + 1 == ids.len() { 0 } else { next + 1 };
        drive(svc, request(&ids[next]));
    }
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let case = args.next().unwrap_or_else(|| "layer_hit".into());
    let iterations: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let acct = AuthId::from("acct-a");
    let trivial = Trivial {
        status: StatusCode::OK,
        served: acct.clone(),
        body: Bytes::from_static(b"data: hello\n\n"),
    };
    let one = vec![HeaderValue::from_static(SESSION)];
    let many: Vec<HeaderValue> = (0..10_000).map(|i| fresh_id(1 << 52 | i)).collect();
    match case.as_str() {
        "bare" => run_requests(&mut trivial.clone(), &one, iterations),
        "bare_10k" => run_requests(&mut trivial.clone(), &many, iterations),
        "layer_hit" | "layer_hit_10k" => {
            let store = MemoryStore::new();
            let ids = if case == "layer_hit" { &one } else { &many };
            for v in ids {
                bind(&store, v, &acct);
            }
            let mut svc = StickySessionLayer::with_store(store).layer(trivial);
            run_requests(&mut svc, ids, iterations);
        }
        "naive_hit" | "naive_hit_10k" => {
            let store = naive_store::NaiveStore::new(Duration::from_secs(3600));
            let ids = if case == "naive_hit" { &one } else { &many };
            for v in ids {
                bind(&store, v, &acct);
            }
            let mut svc = StickySessionLayer::with_store(store).layer(trivial);
            run_requests(&mut svc, ids, iterations);
        }
        "moka_get" => {
            let cache: moka::sync::Cache<u64, u64> = moka::sync::Cache::builder()
                .max_capacity(90_000)
                .time_to_idle(Duration::from_secs(3600))
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build();
            cache.insert(42, 7);
            for _ in 0..WARM_UP + iterations {
                black_box(cache.get(black_box(&42)));
            }
        }
        other => panic!("unknown case {other}"),
    }
}
