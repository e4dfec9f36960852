//! The floor of `benches/peers.sh`: the least a hyper reverse proxy can do for the
//! benchmark's requests, to tell what hyper and Tokio cost on this machine from what the
//! example proxy adds on top.
//!
//! ```text
//! cargo run --release --example floor_proxy -- --listen 127.0.0.1:0 --upstream http://A --upstream http://B ...
//! ```
//!
//! It reads no configuration, checks no token, sets no timeout and writes no log: an
//! HTTP/1.1 server that hashes the `session-id` header to one of the upstreams and
//! forwards the request over a pooled hyper-util client, streaming the answer back. It is
//! a benchmark baseline, not a gateway: no bounds, no failover, no stickiness beyond the
//! hash. It prints `listening on ADDR` once bound.

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::Arc;

use http::Uri;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

struct Floor {
    client: Client<HttpConnector, Incoming>,
    upstreams: Vec<Uri>,
    hasher: RandomState,
}

fn main() {
    // FLOOR_RUNTIME=per-core: one current-thread runtime per worker, each with its own
    // SO_REUSEPORT listener and client pool (no work stealing, no cross-thread wake-ups).
    let threads: usize = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    if std::env::var("FLOOR_RUNTIME").as_deref() == Ok("per-core") {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                std::thread::spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime")
                        .block_on(run(true))
                })
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(run(false));
    }
}

async fn run(reuse_port: bool) {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().expect("a valid address");
    let mut upstreams = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value.parse().expect("--listen ADDR"),
            "--upstream" => upstreams.push(value.parse::<Uri>().expect("--upstream URL")),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!upstreams.is_empty(), "--upstream URL, once or more");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let floor = Arc::new(Floor {
        client: Client::builder(TokioExecutor::new()).build(connector),
        upstreams,
        hasher: RandomState::new(),
    });
    let listener = if reuse_port {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseport(true).expect("SO_REUSEPORT");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(listen).expect("bind");
        socket.listen(1024).expect("listen")
    } else {
        TcpListener::bind(listen).await.expect("bind")
    };
    println!("listening on {}", listener.local_addr().expect("bound"));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let floor = floor.clone();
        let task = async move {
            let service = service_fn(move |mut req: http::Request<Incoming>| {
                let floor = floor.clone();
                async move {
                    let i = req
                        .headers()
                        .get("session-id")
                        .map_or(0, |v| floor.hasher.hash_one(v.as_bytes()) as usize)
                        % floor.upstreams.len();
                    let base = &floor.upstreams[i];
                    let mut parts = base.clone().into_parts();
                    parts.path_and_query = req.uri().path_and_query().cloned();
                    *req.uri_mut() = Uri::from_parts(parts).expect("a valid URI");
                    floor.client.request(req).await
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        };
        tokio::spawn(task);
    }
}
