//! Tracing spans: the decision and outcome are reported, and a whole session id never
//! reaches the logs.
//!
//! This binary holds this one test on purpose: a thread-scoped subscriber misses events
//! when another test registers the same callsites concurrently without one (tracing
//! caches callsite interest globally).

use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_sticky_session::*;

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A picker that serves from the pin, or "acct-a", and answers 503 on `/fail`.
fn picker()
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

fn req(path: &str, session: &[u8]) -> Request<()> {
    let mut r = Request::builder().uri(path).body(()).unwrap();
    if !session.is_empty() {
        r.headers_mut().insert(
            "sticky-session-id",
            http::HeaderValue::from_bytes(session).unwrap(),
        );
    }
    r
}

#[test]
fn spans_report_decision_and_outcome_without_whole_session_ids() {
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    const SECRET: &str = "secret-session-0123456789abcdef";
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut svc = ServiceBuilder::new()
                .layer(StickySessionLayer::new())
                .service(picker());
            for (path, session) in [
                ("/", SECRET.as_bytes()),       // miss, committed
                ("/", SECRET.as_bytes()),       // hit, committed
                ("/fail", SECRET.as_bytes()),   // hit, cleared
                ("/", b"bad secret-value-xyz"), // invalid
            ] {
                let res = svc
                    .ready()
                    .await
                    .unwrap()
                    .call(req(path, session))
                    .await
                    .unwrap();
                res.into_body().collect().await.unwrap();
            }
        });
    });
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("decision=\"miss\"") || log.contains("decision=miss"),
        "{log}"
    );
    assert!(log.contains("hit"), "{log}");
    assert!(log.contains("committed"), "{log}");
    assert!(log.contains("cleared"), "{log}");
    assert!(log.contains("invalid"), "{log}");
    assert!(log.contains("secr"), "a short prefix is shown: {log}");
    assert!(!log.contains(SECRET), "whole session id in the log:\n{log}");
    assert!(
        !log.contains("secret-value-xyz"),
        "whole invalid value in the log:\n{log}"
    );
}
