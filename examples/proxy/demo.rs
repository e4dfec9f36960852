//! Demo accounts: small in-process upstreams that stream server-sent events, so
//! `cargo run --example proxy` works with nothing else running.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body::Frame;
use http_body_util::StreamBody;
use hyper::body::Incoming;
use tokio::net::TcpListener;

/// Events per demo response.
const EVENTS: u32 = 4;
/// Pause before each event.
const PAUSE: Duration = Duration::from_millis(250);

/// A running demo account.
pub(crate) struct DemoAccount {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
}

/// Starts one demo account per name, each on its own loopback port, serving until the
/// process ends. Every request gets a `text/event-stream` of a few events that name the
/// account.
pub(crate) async fn start(names: &[&str]) -> std::io::Result<Vec<DemoAccount>> {
    let mut accounts = Vec::with_capacity(names.len());
    for &name in names {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let account: Arc<str> = Arc::from(name);
        let served = Arc::new(AtomicU64::new(0));
        let svc = tower::service_fn(move |req: Request<Incoming>| {
            let n = served.fetch_add(1, Ordering::Relaxed) + 1;
            std::future::ready(Ok::<_, Infallible>(events(account.clone(), n, &req)))
        });
        // Demo accounts stop with the process; the proxy drains in front of them.
        tokio::spawn(crate::app::serve(
            listener,
            svc,
            std::future::pending(),
            crate::app::ServeConfig::new(Duration::ZERO),
        ));
        accounts.push(DemoAccount {
            name: name.to_owned(),
            addr,
        });
    }
    Ok(accounts)
}

type EventStream =
    StreamBody<Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>>;

fn events(account: Arc<str>, request: u64, req: &Request<Incoming>) -> Response<EventStream> {
    tracing::debug!(
        account = &*account,
        request,
        path = req.uri().path(),
        "demo account: request"
    );
    let stream = futures_util::stream::unfold(1, move |i| {
        let account = account.clone();
        async move {
            if i > EVENTS + 1 {
                return None;
            }
            tokio::time::sleep(PAUSE).await;
            let event = if i <= EVENTS {
                format!(
                    "data: {{\"account\":\"{account}\",\"request\":{request},\"event\":{i},\"of\":{EVENTS}}}\n\n"
                )
            } else {
                "data: [DONE]\n\n".to_owned()
            };
            Some((Ok(Frame::data(Bytes::from(event))), i + 1))
        }
    });
    let mut res: Response<EventStream> = Response::new(StreamBody::new(Box::pin(stream)));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}
