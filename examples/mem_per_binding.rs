//! Memory per binding: the resident-memory delta of a store holding 1 000 000 bindings of
//! 36-byte session ids, divided by the bindings, for [`MemoryStore`] and for the naive
//! `RwLock<HashMap>` store of the benchmarks.
//!
//! ```text
//! cargo run --release --example mem_per_binding            # every case, one process each
//! cargo run --release --example mem_per_binding -- moka    # one case
//! ```
//!
//! Cases: `moka` (the default store, capacity 1 000 000, one shared `AuthId` per account as
//! the crate docs recommend), `moka_fresh_auth`
//! (a newly allocated `AuthId` for every commit, as an inner service that builds
//! `ServedBy(AuthId::from(name))` per response does), `naive` (shared `AuthId`s), and the
//! cost of each `MemoryStore` segment alone: `moka_all_protected` (every binding proven:
//! 1 000 000 in the protected moka cache, beside an empty probation of 1 024) and
//! `moka_all_probation` (`probation_bindings(1 000 000)`: every binding in the probation
//! segment's sharded LRU), and `moka_one_off_flood` (the default split, every key
//! committed once: 1 000 000 one-off ids through a probation of 100 000, which holds the
//! last of them; bytes per binding held).
//!
//! Each case runs in its own process: it builds the 1 000 000 keys first, reads
//! `/proc/self/statm`, commits one binding per key (accounts round-robin over 8; for
//! `moka` and `moka_fresh_auth`, 875 000 of them twice, so both segments are full at the
//! default split), lets the store finish its pending work, reads `statm` again and prints
//! the delta per binding. Session ids are not counted (they belong to the requests),
//! except where the store copies them (the naive store keeps each as an owned `String`).

use std::future::Future;
use std::pin::pin;
use std::process::Command;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::HeaderValue;
use tower_sticky_session::store::BindingStore;
use tower_sticky_session::{AuthId, BindingKey, SessionId, store::MemoryStore};

#[allow(dead_code)]
#[path = "../benches/support/naive_store.rs"]
mod naive_store;

use naive_store::NaiveStore;

const BINDINGS: u64 = 1_000_000;
const CASES: [&str; 6] = [
    "moka",
    "moka_fresh_auth",
    "moka_all_protected",
    "moka_all_probation",
    "moka_one_off_flood",
    "naive",
];

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm resident field");
    pages * 4096
}

fn now<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("in-memory store answers at once"),
    }
}

/// 36-byte, UUID-shaped session id number `n`.
fn session(n: u64) -> BindingKey {
    let mut buf = *b"00000000-0000-4000-8000-000000000000";
    let mut n = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut i = buf.len();
    while i > 0 {
        i -= 1;
        if buf[i] == b'-' {
            continue;
        }
        buf[i] = b"0123456789abcdef"[(n & 15) as usize];
        n = n.rotate_right(4);
    }
    let value = HeaderValue::from_bytes(&buf).expect("visible ASCII");
    BindingKey::new(
        None,
        SessionId::from_header_value(value, 256).expect("valid"),
    )
}

/// Commits one binding per key; the first `proven` keys twice (a second success, which
/// moves a `MemoryStore` binding to its protected segment).
fn fill<St: BindingStore>(store: &St, keys: &[BindingKey], fresh_auth: bool, proven: usize) {
    let accounts: Vec<AuthId> = (0..8).map(|i| AuthId::from(format!("acct-{i}"))).collect();
    for (i, key) in keys.iter().enumerate() {
        let auth = if fresh_auth {
            AuthId::from(format!("acct-{}", i % 8))
        } else {
            accounts[i % 8].clone()
        };
        now(store.commit(key, &auth)).expect("commit");
        if i < proven {
            now(store.commit(key, &auth)).expect("commit");
        }
    }
}

fn run_case(case: &str) {
    let keys: Vec<BindingKey> = (0..BINDINGS).map(session).collect();
    let ttl = Duration::from_secs(3600);
    let before = rss();
    let start = Instant::now();
    let (held, after) = match case {
        "moka" | "moka_fresh_auth" | "moka_all_protected" | "moka_all_probation"
        | "moka_one_off_flood" => {
            let b = MemoryStore::builder().ttl(ttl);
            let (store, proven) = match case {
                // Every binding proven; probation (1 024) ends empty.
                "moka_all_protected" => (
                    b.max_bindings(BINDINGS + 1024)
                        .probation_bindings(1024)
                        .build(),
                    BINDINGS as usize,
                ),
                // No room for protected: every binding stays in probation.
                "moka_all_probation" => (
                    b.max_bindings(BINDINGS)
                        .probation_bindings(BINDINGS)
                        .build(),
                    0,
                ),
                // The default split, every id used once: only probation fills.
                "moka_one_off_flood" => (b.max_bindings(BINDINGS).build(), 0),
                // The default split, both segments full: 875 000 proven bindings
                // (protected) and 125 000 with one success (probation, an eighth).
                _ => (
                    b.max_bindings(BINDINGS).build(),
                    (BINDINGS - BINDINGS / 8) as usize,
                ),
            };
            fill(&store, &keys, case == "moka_fresh_auth", proven);
            store.run_pending_tasks();
            let held = (store.entry_count(), rss());
            // Freeing a million entries is not what is measured.
            std::mem::forget(store);
            held
        }
        "naive" => {
            let store = NaiveStore::new(ttl);
            fill(&store, &keys, false, 0);
            let held = (store.len() as u64, rss());
            std::mem::forget(store);
            held
        }
        other => panic!("unknown case {other:?}; cases: {CASES:?}"),
    };
    report(case, before, after, held, start.elapsed());
}

fn report(case: &str, before: u64, after: u64, held: u64, took: Duration) {
    let delta = after.saturating_sub(before);
    println!(
        "{case:<18} bindings={held:>8} rss_delta={:>7.1} MiB bytes_per_binding={:>6.1} fill_time={:.2}s",
        delta as f64 / (1024.0 * 1024.0),
        delta as f64 / held.max(1) as f64,
        took.as_secs_f64(),
    );
}

fn main() {
    let cases: Vec<String> = std::env::args().skip(1).collect();
    if let [case] = cases.as_slice() {
        run_case(case);
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let cases: Vec<String> = if cases.is_empty() {
        CASES.iter().map(|c| c.to_string()).collect()
    } else {
        cases
    };
    for case in cases {
        let status = Command::new(&exe).arg(&case).status().expect("run case");
        assert!(status.success(), "case {case} failed");
    }
}
