//! Helpers shared by the layer's own tests (the reliability suite, the layer area and its
//! tracing tests): a scripted inner service whose reply travels with the request,
//! channel-fed streaming bodies, and a hyper server and client.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tower::Service;
use tower_sticky_session::{AuthId, BindingKey, PinnedAuth, Scope, ServedBy, SessionId};

/// The body type every scripted upstream answers with.
pub(crate) type TestBody = BoxBody<Bytes, io::Error>;
/// A frame of a [`TestBody`], as fed through a channel.
pub(crate) type FrameResult = Result<Frame<Bytes>, io::Error>;
/// The sending half of a channel-fed body.
pub(crate) type Frames = mpsc::Sender<FrameResult>;
/// What the inner service answers: a response or an inner error.
pub(crate) type Reply = Result<Response<TestBody>, io::Error>;

/// A body whose frames the test sends one by one; dropping the sender ends it.
pub(crate) fn streaming() -> (Frames, TestBody) {
    let (tx, rx) = mpsc::channel(16);
    (tx, StreamBody::new(ReceiverStream::new(rx)).boxed())
}

/// A body of one data frame.
pub(crate) fn full(bytes: &'static [u8]) -> TestBody {
    Full::new(Bytes::from_static(bytes))
        .map_err(|e| match e {})
        .boxed()
}

/// A body that is known to be empty (`is_end_stream()` from the start).
pub(crate) fn empty() -> TestBody {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed()
}

/// A response with `status`, optional `ServedBy(served)` and `body`.
pub(crate) fn respond(status: u16, served: Option<&AuthId>, body: TestBody) -> Response<TestBody> {
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::from_u16(status).unwrap();
    if let Some(a) = served {
        res.extensions_mut().insert(ServedBy(a.clone()));
    }
    res
}

/// The store key of `session` under `scope`.
pub(crate) fn key(scope: Option<&'static str>, session: &str) -> BindingKey {
    BindingKey::new(
        scope.map(Scope::from_static),
        SessionId::new(session).unwrap(),
    )
}

/// The account `session` (no scope) is bound to in `store`, if any.
pub(crate) async fn bound(
    store: &tower_sticky_session::store::MemoryStore,
    session: &str,
) -> Option<String> {
    use tower_sticky_session::store::BindingStore;
    store
        .lookup(&key(None, session))
        .await
        .unwrap()
        .map(|a| a.as_str().to_owned())
}

/// A data frame.
pub(crate) fn data(bytes: &'static [u8]) -> FrameResult {
    Ok(Frame::data(Bytes::from_static(bytes)))
}

/// How the scripted inner service answers one request.
pub(crate) enum Answer {
    /// At once.
    Now(Reply),
    /// When the test sends the reply (a slow upstream, an old request's late failure).
    Later(oneshot::Receiver<Reply>),
}

/// The script of one request, carried in its extensions so that concurrent requests
/// each get their own answer. Also records the [`PinnedAuth`] the inner service saw.
#[derive(Clone)]
pub(crate) struct Plan {
    answer: Arc<Mutex<Option<Answer>>>,
    seen: Arc<Mutex<Option<Option<AuthId>>>>,
}

impl Plan {
    /// A plan that answers with `answer`.
    pub(crate) fn new(answer: Answer) -> Self {
        Self {
            answer: Arc::new(Mutex::new(Some(answer))),
            seen: Arc::new(Mutex::new(None)),
        }
    }

    /// A plan answering `reply` at once.
    pub(crate) fn now(reply: Reply) -> Self {
        Self::new(Answer::Now(reply))
    }

    /// A plan whose reply the test sends later through the returned sender.
    pub(crate) fn later() -> (oneshot::Sender<Reply>, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, Self::new(Answer::Later(rx)))
    }

    /// `None` if the inner service was never called; else the pin it saw.
    pub(crate) fn seen_pin(&self) -> Option<Option<AuthId>> {
        self.seen.lock().unwrap().clone()
    }

    /// Attaches the plan to a request.
    pub(crate) fn attach<B>(self, mut req: Request<B>) -> Request<B> {
        req.extensions_mut().insert(self);
        req
    }
}

/// The inner service (the proxy's account picker, scripted): answers each request as the
/// [`Plan`] in its extensions says.
#[derive(Clone, Default)]
pub(crate) struct Scripted;

/// The future of [`Scripted`].
pub(crate) type ScriptedFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

impl<B> Service<Request<B>> for Scripted {
    type Response = Response<TestBody>;
    type Error = io::Error;
    type Future = ScriptedFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let plan = req
            .extensions()
            .get::<Plan>()
            .expect("every test request carries a Plan")
            .clone();
        let pin = req.extensions().get::<PinnedAuth>().map(|p| p.0.clone());
        *plan.seen.lock().unwrap() = Some(pin);
        let answer = plan
            .answer
            .lock()
            .unwrap()
            .take()
            .expect("one call per plan");
        match answer {
            Answer::Now(reply) => Box::pin(std::future::ready(reply)),
            Answer::Later(rx) => Box::pin(async move {
                rx.await
                    .unwrap_or_else(|_| Err(io::Error::other("test dropped the reply")))
            }),
        }
    }
}

/// A GET request carrying `session` in the default header (and `scope` in `x-scope`).
pub(crate) fn request(scope: Option<&'static str>, session: &str) -> Request<()> {
    let mut b = Request::get("/v1/responses").header("sticky-session-id", session);
    if let Some(s) = scope {
        b = b.header("x-scope", s);
    }
    b.body(()).unwrap()
}

/// The scope function the tests configure: the `x-scope` header.
pub(crate) fn scope_from_header(parts: &http::request::Parts) -> Option<Scope> {
    parts.headers.get("x-scope").map(Scope::from)
}

/// Serves `svc` with hyper 1 on 127.0.0.1 (HTTP/1, keep-alive), one task per connection.
pub(crate) async fn serve<S, B>(svc: S) -> std::net::SocketAddr
where
    S: Service<Request<hyper::body::Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A hyper client for requests without a body.
pub(crate) type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

/// A new client that does not reuse connections (every request is a fresh connection, so
/// a test's dropped response never affects the next request).
pub(crate) fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// A picker that serves from the pin (a `Full` body), or "acct-a", and answers 503 on `/fail`.
pub(crate) fn pin_or_default_picker()
-> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
+ Clone {
    tower::service_fn(|req: Request<()>| async move {
        let auth = req
            .extensions()
            .get::<PinnedAuth>()
            .map(|p| p.0.clone())
            .unwrap_or_else(|| AuthId::from("acct-a"));
        let mut res = Response::new(Full::new(Bytes::from_static(b"data")));
        if req.uri().path() == "/fail" {
            *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        res.extensions_mut().insert(ServedBy(auth));
        Ok::<_, Infallible>(res)
    })
}

pub(crate) fn session_request(path: &str, session: &[u8]) -> Request<()> {
    let mut r = Request::builder().uri(path).body(()).unwrap();
    if !session.is_empty() {
        r.headers_mut().insert(
            "sticky-session-id",
            http::HeaderValue::from_bytes(session).unwrap(),
        );
    }
    r
}
