//! The accept workers (`--workers`): a worker with more than its share of the open
//! connections leaves new ones to the others, so a burst of connections that arrives
//! while one worker is busy does not all land on the other one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::app;

/// Opens one connection, sends one request, returns the worker that served it and the
/// connection's sender (the caller keeps the connection open, counted, while it holds it).
async fn worker_of(
    addr: std::net::SocketAddr,
) -> (usize, hyper::client::conn::http1::SendRequest<Empty<Bytes>>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let res = send
        .send_request(Request::get("/").body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (std::str::from_utf8(&body).unwrap().parse().unwrap(), send)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_while_one_worker_is_busy_is_shared_once_it_is_free() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let blocked_once = Arc::new(AtomicBool::new(false));
    let service = tower::service_fn(move |_: Request<hyper::body::Incoming>| {
        let blocked_once = blocked_once.clone();
        async move {
            // The first request holds its worker's thread for a while: that worker
            // accepts nothing meanwhile.
            if !blocked_once.swap(true, Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(600));
            }
            let me = app::serve::worker().to_string();
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(me))))
        }
    });
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let _done = app::serve::serve_workers(
        listener,
        2,
        service,
        stop_rx,
        app::ServeConfig::new(Duration::from_secs(1)),
    )
    .unwrap();
    let first = tokio::spawn(worker_of(addr));
    // The first request is being held.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let burst: Vec<_> = (0..11).map(|_| tokio::spawn(worker_of(addr))).collect();
    let mut served = [0usize; 2];
    // The connections stay open until the end of the test.
    let mut open = Vec::new();
    let (busy, send) = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .unwrap()
        .unwrap();
    served[busy] += 1;
    open.push(send);
    for b in burst {
        let (w, send) = tokio::time::timeout(Duration::from_secs(10), b)
            .await
            .unwrap()
            .unwrap();
        served[w] += 1;
        open.push(send);
    }
    // Without the rule the free worker takes all 11 (served = 1 and 11).
    assert!(
        served[busy] >= 4 && served[1 - busy] >= 4,
        "connections per worker: {served:?} (worker {busy} was busy)"
    );
}
