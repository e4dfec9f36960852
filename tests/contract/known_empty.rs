//! The known-empty row of the behaviour table in the crate docs: a success that carries no body (a response to HEAD, 204,
//! 304, `Content-Length: 0`) commits at once, whatever the body type says, and even when
//! the server never polls the body.
//!
//! Every upstream body here is a *streaming* type (`StreamBody`, axum's `Body::from_stream`)
//! whose `is_end_stream()` is false, so only the response itself can tell the layer that
//! no data will come. Each case is checked through tower directly, through a hyper 1
//! server over TCP (HTTP/1 and HTTP/2; hyper drops such bodies unpolled) and through
//! axum (HEAD on a GET route: axum swaps the body for an empty one).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, Service, ServiceExt};
use tower_sticky_session::{
    AuthId, BindingKey, ServedBy, SessionId, StickySessionLayer, store::BindingStore,
    store::MemoryStore,
};

const SESSION: &str = "known-empty-1";
const ACCOUNT: &str = "acct-a";

/// How the upstream answers (`x-reply` request header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// `HEAD` request, 200 (the method decides).
    Head,
    /// 204 No Content.
    NoContent,
    /// 304 Not Modified.
    NotModified,
    /// 200 with `Content-Length: 0`.
    ContentLengthZero,
}

impl Case {
    const ALL: [Case; 4] = [
        Case::Head,
        Case::NoContent,
        Case::NotModified,
        Case::ContentLengthZero,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::Head => "head",
            Case::NoContent => "204",
            Case::NotModified => "304",
            Case::ContentLengthZero => "cl0",
        }
    }

    fn from_request<B>(req: &Request<B>) -> Case {
        match req.headers().get("x-reply").map(|v| v.as_bytes()) {
            Some(b"204") => Case::NoContent,
            Some(b"304") => Case::NotModified,
            Some(b"cl0") => Case::ContentLengthZero,
            _ => Case::Head,
        }
    }

    fn request(self) -> Request<Empty<Bytes>> {
        let method = match self {
            Case::Head => Method::HEAD,
            _ => Method::GET,
        };
        Request::builder()
            .method(method)
            .uri("/")
            .header("sticky-session-id", SESSION)
            .header("x-reply", self.name())
            .body(Empty::new())
            .unwrap()
    }
}

/// A streaming body with no data: it ends at its first poll, but says nothing about
/// that in advance (`is_end_stream()` is false), like a proxied upstream body.
type Streaming = StreamBody<tokio_stream::Empty<Result<Frame<Bytes>, io::Error>>>;

fn streaming() -> Streaming {
    StreamBody::new(tokio_stream::empty())
}

/// The upstream: answers as the request's case says, served by [`ACCOUNT`].
fn upstream<B>(req: Request<B>) -> Response<Streaming> {
    let case = Case::from_request(&req);
    if case == Case::Head {
        assert_eq!(req.method(), Method::HEAD);
    }
    let mut res = Response::new(streaming());
    match case {
        Case::Head => {}
        Case::NoContent => *res.status_mut() = StatusCode::NO_CONTENT,
        Case::NotModified => *res.status_mut() = StatusCode::NOT_MODIFIED,
        Case::ContentLengthZero => {
            res.headers_mut()
                .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(0));
        }
    }
    res.extensions_mut().insert(ServedBy(AuthId::from(ACCOUNT)));
    res
}

fn key() -> BindingKey {
    BindingKey::new(None, SessionId::new(SESSION).unwrap())
}

async fn bound(store: &MemoryStore) -> Option<String> {
    store
        .lookup(&key())
        .await
        .unwrap()
        .map(|a| a.as_str().to_owned())
}

async fn guard<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---------------------------------------------------------------- tower directly

async fn through_tower(case: Case) {
    let layer = StickySessionLayer::new();
    let store = layer.store().clone();
    let stats = layer.stats();
    let mut svc = layer.layer(tower::service_fn(|req: Request<Empty<Bytes>>| async move {
        Ok::<_, Infallible>(upstream(req))
    }));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(case.request())
        .await
        .unwrap();
    assert_eq!(
        bound(&store).await.as_deref(),
        Some(ACCOUNT),
        "{case:?}: committed before the response is handed on, body unread"
    );
    // Reading the (empty) body afterwards must not undo the commit.
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(body.is_empty());
    assert_eq!(bound(&store).await.as_deref(), Some(ACCOUNT), "{case:?}");
    let s = stats.snapshot();
    assert_eq!((s.commits, s.cleared), (1, 0), "{case:?}");
    let clear_attempts: u64 = s.clear_attempts_total();
    assert_eq!(clear_attempts, 0, "{case:?}: no empty-stream clear");
}

#[tokio::test]
async fn tower_head_request_with_streaming_body_commits_at_once() {
    through_tower(Case::Head).await;
}

#[tokio::test]
async fn tower_204_with_streaming_body_commits_at_once() {
    through_tower(Case::NoContent).await;
}

#[tokio::test]
async fn tower_304_with_streaming_body_commits_at_once() {
    through_tower(Case::NotModified).await;
}

#[tokio::test]
async fn tower_content_length_zero_with_streaming_body_commits_at_once() {
    through_tower(Case::ContentLengthZero).await;
}

#[tokio::test]
async fn tower_known_empty_commit_keeps_the_binding_of_a_failed_over_session() {
    // A session bound to acct-old fails over to acct-a with a 204: the binding moves to
    // acct-a at once (not cleared as an empty stream, not left on acct-old).
    let layer = StickySessionLayer::new();
    let store = layer.store().clone();
    store
        .commit(&key(), &AuthId::from("acct-old"))
        .await
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|req: Request<Empty<Bytes>>| async move {
        Ok::<_, Infallible>(upstream(req))
    }));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Case::NoContent.request())
        .await
        .unwrap();
    assert_eq!(bound(&store).await.as_deref(), Some(ACCOUNT));
    drop(res);
    assert_eq!(bound(&store).await.as_deref(), Some(ACCOUNT));
}

// ---------------------------------------------------------------- hyper over TCP

#[derive(Clone, Copy, Debug)]
enum Proto {
    Http1,
    Http2,
}

/// A hyper 1 server on 127.0.0.1 serving the layer over [`upstream`].
async fn hyper_server(proto: Proto) -> (SocketAddr, MemoryStore) {
    let layer = StickySessionLayer::new();
    let store = layer.store().clone();
    let svc = layer.layer(tower::service_fn(
        |req: Request<hyper::body::Incoming>| async move { Ok::<_, Infallible>(upstream(req)) },
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            let io = TokioIo::new(stream);
            tokio::spawn(async move {
                let _ = match proto {
                    Proto::Http1 => {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await
                    }
                    Proto::Http2 => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await
                    }
                };
            });
        }
    });
    (addr, store)
}

/// Sends `case`'s request; returns the status once the response head arrived, and the
/// binding as it was at that moment; then reads the body to its end.
async fn send(addr: SocketAddr, proto: Proto, case: Case, store: &MemoryStore) -> StatusCode {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let res = match proto {
        Proto::Http1 => {
            let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            guard("response head", tx.send_request(case.request()))
                .await
                .unwrap()
        }
        Proto::Http2 => {
            let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            guard("response head", tx.send_request(case.request()))
                .await
                .unwrap()
        }
    };
    assert_eq!(
        bound(store).await.as_deref(),
        Some(ACCOUNT),
        "{proto:?} {case:?}: bound when the client sees the response head"
    );
    let status = res.status();
    let body = guard("response body", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert!(body.is_empty());
    // The server is done with the body by now (or dropped it unpolled): still bound.
    tokio::task::yield_now().await;
    assert_eq!(bound(store).await.as_deref(), Some(ACCOUNT), "{case:?}");
    status
}

#[tokio::test]
async fn hyper_http1_head_request_commits_at_once() {
    let (addr, store) = hyper_server(Proto::Http1).await;
    assert_eq!(
        send(addr, Proto::Http1, Case::Head, &store).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn hyper_http1_streamed_204_commits_at_once() {
    let (addr, store) = hyper_server(Proto::Http1).await;
    assert_eq!(
        send(addr, Proto::Http1, Case::NoContent, &store).await,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn hyper_http1_streamed_304_commits_at_once() {
    let (addr, store) = hyper_server(Proto::Http1).await;
    assert_eq!(
        send(addr, Proto::Http1, Case::NotModified, &store).await,
        StatusCode::NOT_MODIFIED
    );
}

#[tokio::test]
async fn hyper_http1_streamed_content_length_zero_commits_at_once() {
    let (addr, store) = hyper_server(Proto::Http1).await;
    assert_eq!(
        send(addr, Proto::Http1, Case::ContentLengthZero, &store).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn hyper_http2_known_empty_successes_commit_at_once() {
    for case in Case::ALL {
        // A fresh server (and store) per case: each starts unbound.
        let (addr, store) = hyper_server(Proto::Http2).await;
        send(addr, Proto::Http2, case, &store).await;
    }
}

// ---------------------------------------------------------------- axum

async fn axum_get_route(
    _: Request<axum::body::Body>,
) -> (axum::Extension<ServedBy>, axum::body::Body) {
    let stream = tokio_stream::iter([Ok::<_, io::Error>(Bytes::from_static(b"hello"))]);
    (
        axum::Extension(ServedBy(AuthId::from(ACCOUNT))),
        axum::body::Body::from_stream(stream),
    )
}

#[tokio::test]
async fn axum_head_on_get_route_commits_at_once() {
    let layer = StickySessionLayer::new();
    let store = layer.store().clone();
    let app = axum::Router::new()
        .route("/", axum::routing::get(axum_get_route))
        .layer(layer);

    // tower directly on the router.
    let res = app.clone().oneshot(Case::Head.request()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        bound(&store).await.as_deref(),
        Some(ACCOUNT),
        "router oneshot"
    );
    drop(res);

    // And served over TCP, a fresh store.
    let layer = StickySessionLayer::new();
    let store = layer.store().clone();
    let app = axum::Router::new()
        .route("/", axum::routing::get(axum_get_route))
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let res = guard("axum head", tx.send_request(Case::Head.request()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(bound(&store).await.as_deref(), Some(ACCOUNT), "axum::serve");

    // GET on the same route still commits on its first chunk, as before.
    let get = Request::get("/")
        .header("sticky-session-id", "known-empty-get")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = guard("axum get", tx.send_request(get)).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello");
    let get_key = BindingKey::new(None, SessionId::new("known-empty-get").unwrap());
    assert_eq!(
        store
            .lookup(&get_key)
            .await
            .unwrap()
            .map(|a| a.as_str().to_owned()),
        Some(ACCOUNT.to_owned())
    );
}
