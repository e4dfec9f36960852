//! The example proxy's service served in-process for the proxy tests: [`spawn`] binds
//! 127.0.0.1:0 and runs `app::serve` until the returned stop sender fires (or is
//! dropped), [`start`] builds the proxy for a configuration and spawns it, [`client`] is the plain HTTP/1 client the tests send requests with,
//! [`chat`] starts a request with an optional session id and [`send`] waits for the head.
//!
//! `main.rs` declares `mod app` (`examples/proxy/app.rs`) next to this one; the upstream
//! accounts are `tests/support/upstream.rs`.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_sticky_session::{Stats, store::MemoryStore};

use crate::app::{self, Drained, ProxyConfig, ProxyService, ServeConfig};
use crate::support::upstream::{BOUND, within};

/// A proxy serving on `addr` in a task of its own.
pub(crate) struct Spawned {
    pub(crate) addr: SocketAddr,
    /// Send (or drop) to stop accepting and drain.
    pub(crate) stop: oneshot::Sender<()>,
    /// The serving task; it ends with the drain result.
    pub(crate) server: JoinHandle<Drained>,
}

/// Serves the proxy's `service` with `cfg` on a fresh loopback port until `stop` fires.
pub(crate) async fn spawn(service: ProxyService<MemoryStore>, cfg: ServeConfig) -> Spawned {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app::serve(
        listener,
        service,
        async {
            let _ = stopped.await;
        },
        cfg,
    ));
    Spawned { addr, stop, server }
}

/// Builds the proxy for `cfg` with its bindings in `store` and serves it with a
/// [`BOUND`] grace period; also returns the sticky layer's counters.
pub(crate) async fn start(cfg: &ProxyConfig, store: MemoryStore) -> (Spawned, Stats) {
    let built = app::build(cfg, store).unwrap();
    (
        spawn(built.service, ServeConfig::new(BOUND)).await,
        built.stats,
    )
}

/// A plain HTTP/1 client for requests to the proxy.
pub(crate) fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A `method` request for `http://{addr}/v1/chat`, with `x-session-id: session` when
/// there is a session.
pub(crate) fn chat(
    method: Method,
    addr: SocketAddr,
    session: Option<&str>,
) -> http::request::Builder {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}/v1/chat"));
    if let Some(s) = session {
        b = b.header("x-session-id", s);
    }
    b
}

/// Sends `req` with `client` and returns the response as soon as its head arrives.
pub(crate) async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Response<Incoming> {
    within("response head", client.request(req))
        .await
        .expect("the proxy answers")
}
