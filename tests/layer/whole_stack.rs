//! The layer in real stacks over real sockets: a hyper 1 server and client on 127.0.0.1,
//! `axum::Router::layer`, and `ServiceBuilder` next to tower-http's `TraceLayer`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tower::ServiceBuilder;
use tower_sticky_session::store::BindingStore;
use tower_sticky_session::*;

type Body = BoxBody<Bytes, std::io::Error>;
type FrameTx = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;
type Streams = mpsc::UnboundedReceiver<(AuthId, FrameTx)>;

/// A tiny account picker: honours `PinnedAuth` when the account exists, otherwise
/// round-robins; streams a body whose frames the test releases through a channel.
#[derive(Clone)]
struct Picker {
    accounts: Arc<[AuthId]>,
    next: Arc<AtomicUsize>,
    /// Per request: the sender of its body frames, handed to the test.
    streams: mpsc::UnboundedSender<(AuthId, FrameTx)>,
}

impl Picker {
    fn pick(&self, req: &Request<hyper::body::Incoming>) -> AuthId {
        if let Some(PinnedAuth(p)) = req.extensions().get::<PinnedAuth>()
            && self.accounts.contains(p)
        {
            return p.clone();
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.accounts.len();
        self.accounts[i].clone()
    }
}

impl tower::Service<Request<hyper::body::Incoming>> for Picker {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<hyper::body::Incoming>) -> Self::Future {
        let auth = self.pick(&req);
        let (tx, rx) = mpsc::channel(4);
        self.streams.send((auth.clone(), tx)).unwrap();
        let mut res = Response::new(StreamBody::new(ReceiverStream::new(rx)).boxed());
        res.headers_mut()
            .insert("x-served-by", auth.as_str().parse().unwrap());
        res.extensions_mut().insert(ServedBy(auth));
        std::future::ready(Ok(res))
    }
}

fn picker() -> (Picker, Streams) {
    let (tx, rx) = mpsc::unbounded_channel();
    let p = Picker {
        accounts: Arc::from(["a", "b", "c"].map(AuthId::from)),
        next: Arc::new(AtomicUsize::new(0)),
        streams: tx,
    };
    (p, rx)
}

/// Serves `svc` with hyper 1 on 127.0.0.1 (HTTP/1, keep-alive).
async fn serve<S, B>(svc: S) -> SocketAddr
where
    S: tower::Service<Request<hyper::body::Incoming>, Response = Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn get(addr: SocketAddr, session: Option<&str>) -> Request<Empty<Bytes>> {
    let mut b = Request::get(format!("http://{addr}/v1/stream"));
    if let Some(s) = session {
        b = b.header("sticky-session-id", s);
    }
    b.body(Empty::new()).unwrap()
}

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn hyper_server_streaming_pins_only_after_first_chunk() {
    let (picker, mut streams) = picker();
    let layer = StickySessionLayer::new();
    let store = layer.store().clone();
    let addr = serve(ServiceBuilder::new().layer(layer).service(picker)).await;
    let client = client();

    // Request 1: lands on some account; its first chunk is held back.
    let res1 = tokio::time::timeout(LIMIT, async {
        let (res, (auth, tx)) = tokio::join!(client.request(get(addr, Some("conv-1"))), async {
            streams.recv().await.unwrap()
        });
        (res.unwrap(), auth, tx)
    })
    .await;
    // The response head arrived while no data has been sent.
    let (res1, first, tx1) = res1.unwrap();
    assert_eq!(res1.status(), 200);
    assert_eq!(res1.headers()["x-served-by"], first.as_str());

    // Request 2 while request 1's first chunk is pending: not pinned yet, round-robin
    // moves it to the next account.
    let res2 = client.request(get(addr, Some("conv-1")));
    let (res2, (second, tx2)) = tokio::join!(res2, async { streams.recv().await.unwrap() });
    assert_ne!(second, first, "pinned before any data was delivered");
    drop(tx2); // request 2 ends empty: clears only a binding to its own account
    res2.unwrap().into_body().collect().await.unwrap();

    // Request 1's first chunk reaches the client...
    tx1.send(Ok(Frame::data(Bytes::from_static(b"data: hello\n\n"))))
        .await
        .unwrap();
    let mut body1 = res1.into_body();
    let chunk = tokio::time::timeout(LIMIT, body1.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(chunk.into_data().unwrap(), "data: hello\n\n");

    // ...so a request sent now is pinned to request 1's account.
    let res3 = client.request(get(addr, Some("conv-1")));
    let (res3, (third, tx3)) = tokio::join!(res3, async { streams.recv().await.unwrap() });
    assert_eq!(third, first);
    let res3 = res3.unwrap();
    assert_eq!(res3.headers()["x-served-by"], first.as_str());
    tx3.send(Ok(Frame::data(Bytes::from_static(b"data: again\n\n"))))
        .await
        .unwrap();
    drop(tx3);
    assert_eq!(
        res3.into_body().collect().await.unwrap().to_bytes(),
        "data: again\n\n"
    );

    drop(tx1);
    body1.collect().await.unwrap();
    let key = BindingKey::new(None, SessionId::new("conv-1").unwrap());
    assert_eq!(store.get(&key).unwrap().auth, first);
}

#[tokio::test]
async fn hyper_server_without_session_rotates_and_binds_nothing() {
    let (picker, mut streams) = picker();
    let layer = StickySessionLayer::new();
    let store = layer.store().clone();
    let addr = serve(ServiceBuilder::new().layer(layer).service(picker)).await;
    let client = client();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let res = client.request(get(addr, None));
        let (res, (auth, tx)) = tokio::join!(res, async { streams.recv().await.unwrap() });
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
        drop(tx);
        res.unwrap().into_body().collect().await.unwrap();
        seen.push(auth);
    }
    assert_eq!(seen, ["a", "b", "c"].map(AuthId::from));
    store.run_pending_tasks();
    assert_eq!(store.entry_count(), 0);
}

#[tokio::test]
async fn content_length_response_stays_content_length_through_the_layer() {
    let inner = tower::service_fn(|_req: Request<hyper::body::Incoming>| async {
        let mut res = Response::new(http_body_util::Full::new(Bytes::from_static(b"0123456789")));
        res.extensions_mut().insert(ServedBy(AuthId::from("a")));
        Ok::<_, Infallible>(res)
    });
    let addr = serve(
        ServiceBuilder::new()
            .layer(StickySessionLayer::new())
            .service(inner),
    )
    .await;
    let res = client().request(get(addr, Some("s"))).await.unwrap();
    assert_eq!(res.headers()["content-length"], "10");
    assert!(res.headers().get("transfer-encoding").is_none());
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "0123456789"
    );
}

#[tokio::test]
async fn invalid_header_through_hyper_is_served_and_counted() {
    let (picker, mut streams) = picker();
    let layer = StickySessionLayer::new();
    let stats = layer.stats();
    let addr = serve(ServiceBuilder::new().layer(layer).service(picker)).await;
    let client = client();
    let long = "x".repeat(8 * 1024);
    for bad in ["", "with space", long.as_str()] {
        let req = Request::get(format!("http://{addr}/"))
            .header("sticky-session-id", bad)
            .body(Empty::new())
            .unwrap();
        let res = client.request(req);
        let (res, (_, tx)) = tokio::join!(res, async { streams.recv().await.unwrap() });
        drop(tx);
        assert_eq!(res.unwrap().status(), 200);
    }
    assert_eq!(stats.snapshot().invalid_total(), 3);
}

#[tokio::test]
async fn axum_router_layer_with_trace_layer() {
    use axum::Router;
    use axum::routing::get as axum_get;

    let served = Arc::new(Mutex::new(Vec::new()));
    let served2 = served.clone();
    let handler = move |req: Request<axum::body::Body>| {
        let served = served2.clone();
        async move {
            let pinned = req.extensions().get::<PinnedAuth>().map(|p| p.0.clone());
            let auth = pinned.unwrap_or_else(|| AuthId::from("b"));
            served.lock().unwrap().push(auth.clone());
            let mut res = Response::new(axum::body::Body::from("hello"));
            res.extensions_mut().insert(ServedBy(auth));
            res
        }
    };
    let layer = StickySessionLayer::new();
    let store = layer.store().clone();
    let app = Router::new().route("/v1/stream", axum_get(handler)).layer(
        ServiceBuilder::new()
            .layer(tower_http::trace::TraceLayer::new_for_http())
            .layer(layer),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = client();
    let key = BindingKey::new(None, SessionId::new("axum-1").unwrap());
    store.commit(&key, &AuthId::from("c")).await.unwrap();
    let res = client.request(get(addr, Some("axum-1"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "hello");
    assert_eq!(served.lock().unwrap().as_slice(), &[AuthId::from("c")]);
    assert_eq!(store.get(&key).unwrap().auth.as_str(), "c");
}

#[tokio::test]
async fn service_builder_with_trace_timeout_and_compression() {
    use tower_http::compression::CompressionLayer;
    use tower_http::timeout::TimeoutLayer;
    use tower_http::trace::TraceLayer;

    let (picker, mut streams) = picker();
    let layer = StickySessionLayer::new();
    let store = layer.store().clone();
    // Order (outermost first): trace, timeout, compression, then stickiness closest to
    // the account picker, so the sticky body sees the uncompressed upstream frames.
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(30),
        ))
        .layer(CompressionLayer::new())
        .layer(layer)
        .service(picker);
    let addr = serve(svc).await;
    let req = Request::get(format!("http://{addr}/"))
        .header("sticky-session-id", "stack-1")
        .header("accept-encoding", "gzip")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = client().request(req);
    let (res, (auth, tx)) = tokio::join!(res, async { streams.recv().await.unwrap() });
    let res = res.unwrap();
    assert_eq!(res.headers()["content-encoding"], "gzip");
    tx.send(Ok(Frame::data(Bytes::from(vec![b'a'; 4096]))))
        .await
        .unwrap();
    drop(tx);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(!body.is_empty() && body.len() < 4096);
    let key = BindingKey::new(None, SessionId::new("stack-1").unwrap());
    assert_eq!(store.get(&key).unwrap().auth, auth);
}
