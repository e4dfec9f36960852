//! Scripted upstream accounts for the proxy tests: hyper HTTP/1 servers on 127.0.0.1
//! whose behaviour a test sets per request and which record what they received.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// Bound on every wait, so that a bug fails the test instead of hanging it.
pub(crate) const BOUND: Duration = Duration::from_secs(20);

pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// What a scripted account does with a request.
#[derive(Clone, Debug)]
pub(crate) enum Mode {
    /// 200 `text/event-stream`, `chunk-1\n`..`chunk-3\n`, clean end.
    Stream,
    /// This status, optional `retry-after`, a short body naming the account.
    Status(u16, Option<&'static str>),
    /// 200 chunked head, then the end without a data frame.
    Empty,
    /// Never answers (holds the request).
    Hang,
    /// 200 head, then silence.
    HeadThenHang,
    /// 200 head and `chunk-1\n`, then silence.
    FirstThenHang,
    /// 200 head and `chunk-1\n`, then the body fails (connection closed mid-stream).
    FirstThenBreak,
    /// 200, the request body echoed back (content-length).
    Echo,
    /// 200 `application/json` with this body (content-length).
    Json(&'static str),
    /// 200 `text/event-stream`: `chunks` events `data: i\n\n`, `gap` apart, then
    /// `data: [DONE]\n\n`.
    Sse { chunks: u32, gap: Duration },
}

/// A request as an account received it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) method: http::Method,
    pub(crate) uri: http::Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

type UpBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, std::io::Error>>>;

/// A scripted account.
pub(crate) struct Account {
    pub(crate) name: &'static str,
    pub(crate) addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Account {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Account {
    pub(crate) async fn start(name: &'static str, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (m, s) = (mode.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (m, s) = (m.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let mode = m.lock().unwrap().clone();
                        respond(mode, s.clone(), name, req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            name,
            addr,
            mode,
            seen,
            task,
        }
    }

    pub(crate) fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until the account has received `n` requests in all.
    pub(crate) async fn wait_seen(&self, n: usize) {
        within("the account receives the request", async {
            while self.count() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
}

async fn respond(
    mode: Mode,
    seen: Arc<Mutex<Vec<Seen>>>,
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let (tx, rx) = mpsc::channel(4);
    let mut res = Response::new(StreamBody::new(ReceiverStream::new(rx)));
    res.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    let data = |s: String| Ok(Frame::data(Bytes::from(s)));
    match mode {
        Mode::Stream => {
            tokio::spawn(async move {
                for i in 1..=3 {
                    let _ = tx.send(data(format!("chunk-{i}\n"))).await;
                }
            });
        }
        Mode::Status(code, retry_after) => {
            *res.status_mut() = StatusCode::from_u16(code).unwrap();
            if let Some(r) = retry_after {
                res.headers_mut().insert("retry-after", r.parse().unwrap());
            }
            let _ = tx.try_send(data(format!("status {code} from {name}\n")));
        }
        Mode::Empty => drop(tx),
        Mode::Hang => std::future::pending::<()>().await,
        Mode::HeadThenHang => {
            tokio::spawn(async move { tx.closed().await });
        }
        Mode::FirstThenHang => {
            tokio::spawn(async move {
                let _ = tx.send(data("chunk-1\n".into())).await;
                tx.closed().await;
            });
        }
        Mode::FirstThenBreak => {
            tokio::spawn(async move {
                let _ = tx.send(data("chunk-1\n".into())).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tx.send(Err(std::io::Error::other("broken"))).await;
            });
        }
        Mode::Sse { chunks, gap } => {
            tokio::spawn(async move {
                for i in 1..=chunks {
                    tokio::time::sleep(gap).await;
                    if tx.send(data(format!("data: {i}\n\n"))).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(data("data: [DONE]\n\n".into())).await;
            });
        }
        Mode::Json(json) => {
            res.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            res.headers_mut()
                .insert("content-length", json.len().into());
            let _ = tx.try_send(Ok(Frame::data(Bytes::from_static(json.as_bytes()))));
        }
        Mode::Echo => {
            res.headers_mut()
                .insert("content-length", body.len().into());
            let _ = tx.try_send(Ok(Frame::data(body)));
        }
    }
    Ok(res)
}

/// An address where nothing listens (bound, then released).
pub(crate) async fn unreachable_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}
