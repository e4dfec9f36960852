//! The sticky layer's span records where the session came from (`source`) and a hard
//! pin (`hard_pin`), never a whole session id.
//!
//! This binary holds this one test on purpose: a thread-scoped subscriber misses spans
//! when another test registers the same callsites concurrently without one (tracing
//! caches callsite interest globally).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_sticky_session::body_session::{BufferedBody, SessionFromBodyLayer};
use tower_sticky_session::{
    AuthId, BindingKey, ServedBy, SessionId, StickySessionLayer, store::BindingStore,
};
use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone, Default)]
struct Fields(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Fields {
    fn on_record(
        &self,
        _: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct V<'a>(&'a mut Vec<String>);
        impl tracing::field::Visit for V<'_> {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push(format!("{}={:?}", f.name(), v));
            }
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                self.0.push(format!("{}={}", f.name(), v));
            }
            fn record_bool(&mut self, f: &tracing::field::Field, v: bool) {
                self.0.push(format!("{}={}", f.name(), v));
            }
        }
        values.record(&mut V(&mut self.0.lock().unwrap()));
    }
}

#[test]
fn span_records_the_source_and_the_hard_pin() {
    let fields = Fields::default();
    let subscriber = tracing_subscriber::registry().with(fields.clone());
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let layer = StickySessionLayer::new()
                .known_client_headers()
                .learn_response_ids(true);
            let learned = BindingKey::response_id(None, SessionId::new("resp_t").unwrap());
            layer
                .store()
                .commit(&learned, &AuthId::from("a"))
                .await
                .unwrap();
            let inner = tower::service_fn(|_: Request<BufferedBody<Full<Bytes>>>| async {
                let mut res = Response::new(Full::new(Bytes::from_static(b"{}")));
                res.extensions_mut().insert(ServedBy(AuthId::from("a")));
                Ok::<_, Infallible>(res)
            });
            let svc = SessionFromBodyLayer::new().layer(layer.layer(inner));
            for body in [
                r#"{"prompt_cache_key":"pck-span-secret"}"#,
                r#"{"previous_response_id":"resp_t"}"#,
            ] {
                let req = Request::post("/")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .unwrap();
                let res = svc.clone().oneshot(req).await.unwrap();
                res.into_body().collect().await.unwrap();
            }
        });
    });
    let got = fields.0.lock().unwrap().clone();
    assert!(
        got.iter().any(|f| f == "source=body:prompt_cache_key"),
        "{got:?}"
    );
    assert!(got.iter().any(|f| f == "source=response_id"), "{got:?}");
    assert!(got.iter().any(|f| f == "hard_pin=true"), "{got:?}");
    assert!(
        !got.iter().any(|f| f.contains("pck-span-secret")),
        "{got:?}"
    );
}
