//! The opt-in decision header (`sticky-session: hit|miss|pinned|invalid|none`).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_sticky_session::*;

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

#[tokio::test]
async fn decision_header_is_off_by_default_and_reports_when_enabled() {
    let mut plain = ServiceBuilder::new()
        .layer(StickySessionLayer::new())
        .service(picker());
    let res = plain
        .ready()
        .await
        .unwrap()
        .call(req("/", b"s1"))
        .await
        .unwrap();
    assert!(res.headers().get(DECISION_HEADER).is_none());

    let layer = StickySessionLayer::new().report_decision(true);
    let mut svc = ServiceBuilder::new().layer(layer).service(picker());
    let mut decide = async |r: Request<()>| {
        let res = svc.ready().await.unwrap().call(r).await.unwrap();
        let d = res.headers()[DECISION_HEADER].to_str().unwrap().to_owned();
        res.into_body().collect().await.unwrap();
        d
    };
    assert_eq!(decide(req("/", b"")).await, "none");
    assert_eq!(decide(req("/", b"has space")).await, "invalid");
    assert_eq!(decide(req("/", b"s1")).await, "miss");
    assert_eq!(decide(req("/", b"s1")).await, "hit");
    let mut pinned = req("/", b"s1");
    pinned
        .extensions_mut()
        .insert(PinnedAuth(AuthId::from("acct-z")));
    assert_eq!(decide(pinned).await, "pinned");

    let strict = StickySessionLayer::new()
        .report_decision(true)
        .reject_invalid(true);
    let mut svc = ServiceBuilder::new().layer(strict).service(picker());
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(req("/", b"has space"))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()[DECISION_HEADER], "invalid");
}
