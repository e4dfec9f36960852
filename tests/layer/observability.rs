//! Tracing spans: the decision and outcome are reported, and a whole session id never
//! reaches the logs.
//!
//! This binary holds this one test on purpose: a thread-scoped subscriber misses events
//! when another test registers the same callsites concurrently without one (tracing
//! caches callsite interest globally).

#[path = "../support/mod.rs"]
mod support;

use std::io;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_sticky_session::*;

use scripted::{pin_or_default_picker, session_request};
use support::scripted;

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
                .service(pin_or_default_picker());
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
                    .call(session_request(path, session))
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
