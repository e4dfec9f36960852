//! The opt-in decision header (`sticky-session: hit|miss|pinned|invalid|none`).

use http::Request;
use http_body_util::BodyExt;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_sticky_session::*;

use crate::support::scripted;
use scripted::{pin_or_default_picker, session_request};

#[tokio::test]
async fn decision_header_is_off_by_default_and_reports_when_enabled() {
    let mut plain = ServiceBuilder::new()
        .layer(StickySessionLayer::new())
        .service(pin_or_default_picker());
    let res = plain
        .ready()
        .await
        .unwrap()
        .call(session_request("/", b"s1"))
        .await
        .unwrap();
    assert!(res.headers().get(DECISION_HEADER).is_none());

    let layer = StickySessionLayer::new().report_decision(true);
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(pin_or_default_picker());
    let mut decide = async |r: Request<()>| {
        let res = svc.ready().await.unwrap().call(r).await.unwrap();
        let d = res.headers()[DECISION_HEADER].to_str().unwrap().to_owned();
        res.into_body().collect().await.unwrap();
        d
    };
    assert_eq!(decide(session_request("/", b"")).await, "none");
    assert_eq!(decide(session_request("/", b"has space")).await, "invalid");
    assert_eq!(decide(session_request("/", b"s1")).await, "miss");
    assert_eq!(decide(session_request("/", b"s1")).await, "hit");
    let mut pinned = session_request("/", b"s1");
    pinned
        .extensions_mut()
        .insert(PinnedAuth(AuthId::from("acct-z")));
    assert_eq!(decide(pinned).await, "pinned");

    let strict = StickySessionLayer::new()
        .report_decision(true)
        .reject_invalid(true);
    let mut svc = ServiceBuilder::new()
        .layer(strict)
        .service(pin_or_default_picker());
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(session_request("/", b"has space"))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()[DECISION_HEADER], "invalid");
}
