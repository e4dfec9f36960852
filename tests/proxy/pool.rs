//! The proxy's own pool of connections to plain-`http://` accounts
//! (`examples/proxy/pool.rs`), over real sockets: connections are reused, a connection
//! the account closed while it sat idle is nobody's failure, a request that a pooled
//! connection could no longer take goes out on a new one, a response the client
//! abandons does not leave a broken connection for the next request, and the frames an
//! account sends together reach the client together while a frame that comes alone is
//! not held back.

use crate::app;
use crate::harness;
use crate::support::upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower_sticky_session::store::MemoryStore;

use app::{ProxyConfig, Upstream};
use harness::Spawned;
use upstream::{Account, Mode, within};

/// A hyper HTTP/1 account that answers every request with a short event stream and
/// counts the connections it accepted.
async fn counting_account() -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(Full::new(Bytes::from_static(b"data: hello\n\n")))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accepted, task)
}

/// An account that answers one request per connection as if it kept the connection
/// open (no `connection: close`), then closes it at once: the pooled connection is
/// closed by the time the next request looks for one.
async fn closing_account() -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // The proxy's requests here have no body: the head is the request.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                          content-length: 13\r\n\r\ndata: hello\n\n",
                    )
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, accepted, task)
}

struct Proxy {
    addr: SocketAddr,
    spawned: Spawned,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.spawned.server.abort();
    }
}

async fn proxy(urls: &[(&str, String)]) -> Proxy {
    let ups = urls
        .iter()
        .map(|(name, url)| Upstream::new(name, url).unwrap())
        .collect();
    let mut cfg = ProxyConfig::new(ups);
    cfg.failover.upstream_timeout = Duration::from_secs(5);
    let (spawned, _) = harness::start(&cfg, MemoryStore::new()).await;
    Proxy {
        addr: spawned.addr,
        spawned,
    }
}

/// The response (head) to one chat request of `session`.
async fn ask(proxy: &Proxy, session: &str) -> Response<hyper::body::Incoming> {
    let client = harness::client();
    let req = harness::chat(Method::POST, proxy.addr, Some(session))
        .body(Full::default())
        .unwrap();
    harness::send(&client, req).await
}

/// (x-served-by, status, body) of one request, body read to its end.
async fn get(proxy: &Proxy, session: &str) -> (String, StatusCode, Bytes) {
    let res = ask(proxy, session).await;
    let by = res
        .headers()
        .get("x-served-by")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let status = res.status();
    let body = within("body", res.into_body().collect())
        .await
        .expect("the body ends cleanly")
        .to_bytes();
    (by, status, body)
}

#[tokio::test]
async fn requests_one_after_another_ride_one_upstream_connection() {
    let (addr, accepted, task) = counting_account().await;
    let proxy = proxy(&[("a", format!("http://{addr}"))]).await;
    for k in 0..10 {
        let (by, status, body) = get(&proxy, &format!("conv-{k}")).await;
        assert_eq!((by.as_str(), status), ("a", StatusCode::OK));
        assert_eq!(body, "data: hello\n\n");
    }
    // Each response's body ended before the next request: its connection was back in
    // the pool, ready. Without a pool this would be 10.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    task.abort();
}

#[tokio::test]
async fn a_connection_the_account_closed_while_idle_is_nobodys_failure() {
    let (addr, accepted, task) = closing_account().await;
    // A second account: were the closed connection counted as the first account's
    // failure, requests would fail over there (and `a` would cool down).
    let b = Account::start("b", Mode::Stream).await;
    let proxy = proxy(&[("a", format!("http://{addr}")), ("b", b.url())]).await;
    for k in 0..20 {
        // One session: pinned to `a` after the first success.
        let (by, status, body) = get(&proxy, "conv-close").await;
        assert_eq!(
            (by.as_str(), status),
            ("a", StatusCode::OK),
            "request {k} after the account closed its connection"
        );
        assert_eq!(body, "data: hello\n\n");
        // Every other request comes a little later: the close is then long known.
        if k % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        20,
        "one connection per request"
    );
    assert_eq!(b.count(), 0, "nothing failed over");
    task.abort();
}

#[tokio::test]
async fn a_response_the_client_abandons_leaves_no_broken_connection_behind() {
    let a = Account::start(
        "a",
        Mode::Sse {
            chunks: 50,
            gap: Duration::from_millis(20),
        },
    )
    .await;
    let proxy = proxy(&[("a", a.url())]).await;
    let client = harness::client();
    for _ in 0..3 {
        let req = harness::chat(Method::POST, proxy.addr, Some("conv-gone"))
            .body(Full::default())
            .unwrap();
        let mut res = harness::send(&client, req).await;
        assert_eq!(res.status(), StatusCode::OK);
        // The first event, then the client goes away mid-stream.
        within("first frame", res.body_mut().frame())
            .await
            .expect("a frame")
            .expect("not an error");
        drop(res);
    }
    a.set(Mode::Stream);
    for _ in 0..3 {
        let (by, status, body) = get(&proxy, "conv-gone").await;
        assert_eq!((by.as_str(), status), ("a", StatusCode::OK));
        assert_eq!(body, "chunk-1\nchunk-2\nchunk-3\n");
    }
}

/// The pool itself, on a connection whose account closed it after the pool last saw it
/// ready (the keep-alive race: an account closing an idle connection just as a request
/// goes out on it). hyper writes the request before it reads the close, so the request
/// may have reached the account: it is not sent again here (a POST to a model API is not
/// idempotent), it fails before its response head as no account's unreachability, and
/// failover decides. The account runs on a thread of its own, so it closes its end while
/// this runtime does not run.
#[tokio::test]
async fn a_request_on_a_connection_closed_in_the_meantime_is_not_sent_twice() {
    use std::io::Write;
    use std::sync::mpsc;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(false).unwrap();
    let addr = listener.local_addr().unwrap();
    let (close_tx, close_rx) = mpsc::channel::<()>();
    let (closed_tx, closed_rx) = mpsc::channel::<()>();
    let account = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        read_request_head(&mut conn);
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .unwrap();
        // Kept open (keep-alive) until the test says so, then closed.
        close_rx.recv().unwrap();
        drop(conn);
        closed_tx.send(()).unwrap();
        // Any further connection would be a second sending of the request.
        listener.set_nonblocking(true).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        listener.accept().is_ok()
    });

    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let pool = Arc::new(app::pool::Pool::<Full<Bytes>>::new(1, connector));
    let uri: http::Uri = format!("http://{addr}/").parse().unwrap();
    let request = || {
        http::Request::post("/v1/responses")
            .header("host", addr.to_string())
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let (res, lease) = within("the first answer", pool.send(0, &uri, request()))
        .await
        .unwrap();
    let body = within("the first body", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "ok");
    drop(lease);
    // Let the connection's task take the end of the exchange in: it is ready again.
    tokio::time::sleep(Duration::from_millis(50)).await;

    // The account closes it, and this runtime does not run until that is done.
    close_tx.send(()).unwrap();
    closed_rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let Err(err) = within("the second attempt", pool.send(0, &uri, request())).await else {
        panic!("answered on a connection the account had closed");
    };
    assert!(
        !err.is_connect(),
        "not the account's unreachability: {err:?}"
    );
    assert!(
        !account.join().unwrap(),
        "the request was sent a second time"
    );
}

/// Reads a request head (these requests have no body) from a blocking socket.
fn read_request_head(conn: &mut std::net::TcpStream) {
    use std::io::Read;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "the proxy closed before its request head");
        head.extend_from_slice(&buf[..n]);
    }
}

/// An account on a thread of its own that answers one request with an event stream's
/// head and the chunks `first`, in one write, then, once `go` says so (or after 30 s), with `rest`,
/// and closes the connection.
fn scripted_account(
    first: &'static [u8],
    rest: &'static [u8],
) -> (
    SocketAddr,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let account = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        read_request_head(&mut conn);
        conn.write_all(&[EVENTS_HEAD, first].concat()).unwrap();
        if !rest.is_empty() {
            // Longer than the test's bound: a held-back frame fails the test by timing
            // out, not by arriving late with the next.
            let _ = go_rx.recv_timeout(upstream::BOUND + Duration::from_secs(10));
            conn.write_all(rest).unwrap();
        }
        // The answer is whole: the connection closes with this thread.
    });
    (addr, go_tx, account)
}

const EVENTS_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
    transfer-encoding: chunked\r\n\r\n";

/// Four events the account sends in one write, each its own chunk, reach the client as
/// one body with a length: the body gathered every frame the account had sent before
/// the response went out, although the connection's task hands them over one at a time.
#[tokio::test]
async fn events_the_account_sends_together_reach_the_client_together() {
    let answer = b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n9\r\ndata: 3\n\n\r\n\
        e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n";
    let (addr, _go, account) = scripted_account(answer, b"");
    let proxy = proxy(&[("a", format!("http://{addr}"))]).await;
    let res = ask(&proxy, "conv-together").await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = "data: 1\n\ndata: 2\n\ndata: 3\n\ndata: [DONE]\n\n";
    assert_eq!(
        res.headers().get("content-length").map(|v| v.as_bytes()),
        Some(body.len().to_string().as_bytes()),
        "{:?}",
        res.headers()
    );
    let got = within("body", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(got, body);
    drop(proxy);
    account.join().unwrap();
}

/// An event that comes alone is handed on at once, not held back for the next: the
/// account sends its second event only once the client has the first.
#[tokio::test]
async fn an_event_that_comes_alone_is_not_held_back() {
    let first = b"9\r\ndata: 1\n\n\r\n";
    let (addr, go, account) = scripted_account(first, b"9\r\ndata: 2\n\n\r\n0\r\n\r\n");
    let proxy = proxy(&[("a", format!("http://{addr}"))]).await;
    let res = ask(&proxy, "conv-alone").await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let frame = within(
        "the first event, before the account sends the second",
        body.frame(),
    )
    .await
    .expect("a frame")
    .unwrap();
    assert_eq!(frame.into_data().unwrap(), "data: 1\n\n");
    go.send(()).unwrap();
    let rest = within("the rest", body.collect()).await.unwrap().to_bytes();
    assert_eq!(rest, "data: 2\n\n");
    drop(proxy);
    account.join().unwrap();
}
