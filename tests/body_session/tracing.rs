//! `SessionFromBodyLayer`'s debug events name the body field and never log a whole
//! session id.
//!
//! This binary holds this one test on purpose: a thread-scoped subscriber misses events
//! when another test registers the same callsites concurrently without one (tracing
//! caches callsite interest globally), which made it fail now and then beside the rest of
//! the `body_session` tests.

use std::convert::Infallible;
use std::io;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_sticky_session::body_session::{BufferedBody, SessionFromBodyLayer};

type TestBody = BoxBody<Bytes, io::Error>;

fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

fn json_request() -> http::request::Builder {
    Request::post("/v1/responses").header("content-type", "application/json")
}

/// Passes the request through the layer to a service that drains the body.
async fn call(layer: &SessionFromBodyLayer, req: Request<TestBody>) {
    let svc = layer.layer(tower::service_fn(
        |req: Request<BufferedBody<TestBody>>| async move {
            req.into_body().collect().await.unwrap();
            Ok::<_, Infallible>(Response::new(()))
        },
    ));
    svc.oneshot(req).await.unwrap();
}

const CODEX: &str = r#"{"model":"gpt-5-codex","instructions":"You are Codex.","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}],"prompt_cache_key":"0199b7a4-5c1e-7d22-9f00-4a1b2c3d4e5f","stream":true}"#;

/// A `MakeWriter` that appends to a shared buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn debug_event_names_the_field_and_never_logs_the_whole_id() {
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(out.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // This binary's other tests run on other threads without a subscriber; an event
    // callsite they register first caches "never". Recompute interests for this one.
    tracing::callsite::rebuild_interest_cache();
    let layer = SessionFromBodyLayer::new();
    call(&layer, json_request().body(full(CODEX)).unwrap()).await;
    let long = "x".repeat(300);
    let body = format!(r#"{{"session_id":"{long}"}}"#);
    call(&layer, json_request().body(full(body)).unwrap()).await;
    let log = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("prompt_cache_key"), "{log}");
    assert!(log.contains("0199"), "a short prefix is shown: {log}");
    assert!(!log.contains("0199b7a4-5c1e"), "never the whole id: {log}");
    assert!(log.contains("too_long"), "{log}");
    assert!(!log.contains(&long[..20]), "{log}");
}
