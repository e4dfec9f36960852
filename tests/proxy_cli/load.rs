//! Load run of the example proxy (ignored by default; run by `benches/proxy_load.sh`):
//! 1 000 concurrent clients streaming server-sent events through the proxy binary for
//! 30 s, over three accounts of which one answers 503 to everything, so that about a
//! third of the requests first hit a failing account (every request is a new session by
//! default, so round-robin spreads first attempts evenly; `SESSIONS=N` draws them from a
//! pool of N instead). Checks that no client sees a failure (status, broken or incomplete
//! stream) and prints the proxy's RSS over time.
//!
//! ```text
//! cargo test --release --test proxy_load -- --ignored --nocapture
//! CLIENTS=1000 SECS=30 SESSIONS=5000 PROXY_BIN=target/release/examples/proxy \
//!     cargo test --release --test proxy_load -- --ignored --nocapture
//! ```
//!
//! `ADMIN_WALK=1`: from 2/3 of the run to 5/6 of it, `DELETE /accounts/nobody/bindings`
//! runs back to back on the admin listener (each walks every binding and removes none);
//! the time to the response head of proxied requests (p50/p99) is printed for that window
//! and for the window of the same length before it.

#[path = "../support/mod.rs"]
mod support;

use support::{proxy_bin, upstream};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use proxy_bin::{feature_args, scrub_cargo_env};
use upstream::{Account, Mode};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proxy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PROXY_BIN") {
        return p.into();
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
    scrub_cargo_env(&mut cmd);
    cmd.args(["build", "--example", "proxy"])
        .args(feature_args());
    if profile == "release" {
        cmd.arg("--release");
    }
    let ok = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "cargo build --example proxy");
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/{profile}/examples/proxy"))
}

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "load run, about a minute: benches/proxy_load.sh"]
async fn thousand_streaming_clients_see_no_failure_while_one_account_fails() {
    let clients: usize = env_or("CLIENTS", 1000);
    let secs: u64 = env_or("SECS", 30);
    // 0: every request is a new session (round-robin puts a third of them on the failing
    // account first); N: sessions drawn from a pool of N (they stick to healthy accounts).
    let sessions: usize = env_or("SESSIONS", 0);
    let sse = Mode::Sse {
        chunks: 5,
        gap: Duration::from_millis(100),
    };
    let a = Account::start("a", sse.clone()).await;
    let b = Account::start("b", sse).await;
    let c = Account::start("c", Mode::Status(503, None)).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin_walk = std::env::var("ADMIN_WALK").is_ok_and(|v| v == "1");
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let mut child = tokio::process::Command::new(proxy_bin())
        .args(["--listen", &addr.to_string()])
        .args(["--admin", &admin.to_string()])
        .args(["--upstream", &format!("c={}", c.url())])
        .args(["--upstream", &format!("a={}", a.url())])
        .args(["--upstream", &format!("b={}", b.url())])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let (ok, failed) = (ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            // (seconds since start, time to the response head)
            let mut heads: Vec<(f64, Duration)> = Vec::new();
            let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
            let mut n = i;
            let mut k = 0u64;
            while Instant::now() < deadline {
                n = n.wrapping_mul(2_654_435_761).wrapping_add(1);
                k += 1;
                let session = if sessions == 0 {
                    format!("load-{i}-{k}")
                } else {
                    format!("load-{}", n % sessions)
                };
                let req = Request::post(format!("http://{addr}/v1/chat/completions"))
                    .header("x-session-id", session)
                    .body(Empty::new())
                    .unwrap();
                let sent = Instant::now();
                let res = client.request(req).await;
                heads.push(((sent - start).as_secs_f64(), sent.elapsed()));
                let good = match res {
                    Ok(res) if res.status() == StatusCode::OK => {
                        match res.into_body().collect().await {
                            Ok(body) => body.to_bytes().ends_with(b"data: [DONE]\n\n"),
                            Err(_) => false,
                        }
                    }
                    _ => false,
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            heads
        }));
    }
    let walks = Arc::new(AtomicU64::new(0));
    let walker = admin_walk.then(|| {
        let walks = walks.clone();
        let (from, to) = (secs as f64 * 4.0 / 6.0, secs as f64 * 5.0 / 6.0);
        tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
            tokio::time::sleep_until((start + Duration::from_secs_f64(from)).into()).await;
            while start.elapsed().as_secs_f64() < to {
                let req = Request::delete(format!("http://{admin}/accounts/nobody/bindings"))
                    .body(Empty::new())
                    .unwrap();
                let res = client.request(req).await.unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                res.into_body().collect().await.unwrap();
                walks.fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = start.elapsed().as_secs();
        let rss = rss_kib(pid);
        samples.push(rss);
        println!(
            "t={t:>3}s rss={:>7} KiB ok={} failed={}",
            rss,
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed)
        );
    }
    let mut heads = Vec::new();
    for t in tasks {
        heads.extend(t.await.unwrap());
    }
    if let Some(w) = walker {
        w.await.unwrap();
        let window = |from: f64, to: f64| {
            let mut v: Vec<Duration> = heads
                .iter()
                .filter(|(t, _)| (from..to).contains(t))
                .map(|(_, d)| *d)
                .collect();
            v.sort();
            let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize];
            (v.len(), q(0.5), q(0.99))
        };
        let s = secs as f64;
        let (n0, p50_0, p99_0) = window(s * 3.0 / 6.0, s * 4.0 / 6.0);
        let (n1, p50_1, p99_1) = window(s * 4.0 / 6.0, s * 5.0 / 6.0);
        println!(
            "time to response head: before the admin walks {n0} requests p50 {p50_0:?} p99 {p99_0:?}; \
             during {} walks {n1} requests p50 {p50_1:?} p99 {p99_1:?}",
            walks.load(Ordering::Relaxed)
        );
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let n = samples.len();
    let early = samples[..n.min(5)].iter().copied().max().unwrap_or(0);
    let late = samples[n.saturating_sub(5)..]
        .iter()
        .copied()
        .max()
        .unwrap_or(0);
    let peak = samples.iter().copied().max().unwrap_or(0);
    println!(
        "clients={clients} secs={secs} requests ok={ok} failed={failed} ({:.0}/s); \
         account requests: a={} b={} c(503)={}; proxy RSS KiB: max of first 5 s {early}, \
         max of last 5 s {late}, peak {peak}",
        ok as f64 / secs as f64,
        a.count(),
        b.count(),
        c.count(),
    );
    let _ = child.start_kill();
    assert_eq!(failed, 0, "client-visible failures");
    assert!(ok > 0);
}
