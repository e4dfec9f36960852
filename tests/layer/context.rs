//! `AccountContextLayer` (`current_pin()`, `report_served()`, `AccountSlot`) and
//! `blame_unserved_failures(false)`: through tower, hyper over TCP and axum, with
//! streaming bodies.

use crate::support::scripted;

use std::convert::Infallible;
use std::io;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_sticky_session::context::{self, AccountContextLayer, AccountSlot};
use tower_sticky_session::{AuthId, BindingKey, ServedBy, StickySessionLayer, store::BindingStore};

use scripted::{TestBody, bound, data, respond, streaming};

fn key(session: &str) -> BindingKey {
    scripted::key(None, session)
}

fn req(session: &str, path: &str) -> Request<()> {
    Request::get(path)
        .header("sticky-session-id", session)
        .body(())
        .unwrap()
}

/// A handler that picks deep inside (`current_pin()`), reports in one line, answers a
/// streaming body; `/fail` answers 503 after reporting, `/own429` is a refusal of the
/// gateway's own (nothing reported), `/spawned` reports from a spawned task through the
/// `AccountSlot`, `/set` sets `ServedBy` itself (and reports another account).
async fn handler(req: Request<()>) -> Result<Response<TestBody>, io::Error> {
    fn pick() -> AuthId {
        context::current_pin().unwrap_or_else(|| AuthId::from("acct-a"))
    }
    let account = pick();
    let (frames, body) = streaming();
    tokio::spawn(async move {
        let _ = frames.send(data(b"data: 1\n\n")).await;
    });
    match req.uri().path() {
        "/own429" => return Ok(respond(429, None, body)),
        "/error" => return Err(io::Error::other("the gateway's own error")),
        "/spawned" => {
            let slot = req.extensions().get::<AccountSlot>().cloned().unwrap();
            let account = account.clone();
            tokio::spawn(async move { slot.report(account) })
                .await
                .unwrap();
            assert!(!context::report_served("late"), "the first report wins");
        }
        "/set" => {
            context::report_served("acct-x");
            return Ok(respond(200, Some(&AuthId::from("acct-z")), body));
        }
        _ => {
            assert!(context::report_served(account.clone()));
        }
    }
    let status = if req.uri().path() == "/fail" {
        503
    } else {
        200
    };
    Ok(respond(status, None, body))
}

async fn drain(res: Response<impl http_body::Body<Error = impl std::fmt::Debug>>) {
    res.into_body().collect().await.unwrap();
}

#[tokio::test]
async fn report_served_commits_and_current_pin_sees_the_binding_through_tower() {
    let sticky = StickySessionLayer::new();
    let store = sticky.store().clone();
    let mut svc = ServiceBuilder::new()
        .layer(sticky)
        .layer(AccountContextLayer::new())
        .service_fn(handler);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(req("c1", "/"))
        .await
        .unwrap();
    assert_eq!(
        res.extensions().get::<ServedBy>().unwrap().0.as_str(),
        "acct-a"
    );
    drain(res).await;
    assert_eq!(bound(&store, "c1").await.as_deref(), Some("acct-a"));
    // Pinned elsewhere: current_pin() sees it, the report follows it.
    store
        .commit(&key("c1"), &AuthId::from("acct-b"))
        .await
        .unwrap();
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(req("c1", "/"))
        .await
        .unwrap();
    assert_eq!(
        res.extensions().get::<ServedBy>().unwrap().0.as_str(),
        "acct-b"
    );
    drain(res).await;
    // A report from a spawned task through the slot.
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(req("c2", "/spawned"))
        .await
        .unwrap();
    assert_eq!(
        res.extensions().get::<ServedBy>().unwrap().0.as_str(),
        "acct-a"
    );
    drain(res).await;
    assert_eq!(bound(&store, "c2").await.as_deref(), Some("acct-a"));
    // A ServedBy set by the handler wins over a report.
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(req("c3", "/set"))
        .await
        .unwrap();
    assert_eq!(
        res.extensions().get::<ServedBy>().unwrap().0.as_str(),
        "acct-z"
    );
    drain(res).await;
    assert_eq!(bound(&store, "c3").await.as_deref(), Some("acct-z"));
    // A reported failure clears the reported account's binding.
    store
        .commit(&key("c4"), &AuthId::from("acct-a"))
        .await
        .unwrap();
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(req("c4", "/fail"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(bound(&store, "c4").await, None);
}

#[test]
fn outside_a_call_there_is_no_pin_and_nothing_to_report_to() {
    assert_eq!(context::current_pin(), None);
    assert!(!context::is_hard_pin());
    assert!(!context::report_served("acct-a"));
}

#[tokio::test]
async fn unserved_failures_clear_the_pin_by_default_and_not_when_switched_off() {
    for blame in [true, false] {
        let sticky = StickySessionLayer::new().blame_unserved_failures(blame);
        let store = sticky.store().clone();
        let mut svc = ServiceBuilder::new()
            .layer(sticky)
            .layer(AccountContextLayer::new())
            .service_fn(handler);
        for (path, session) in [("/own429", "u1"), ("/error", "u2")] {
            store
                .commit(&key(session), &AuthId::from("acct-a"))
                .await
                .unwrap();
            let r = svc.ready().await.unwrap().call(req(session, path)).await;
            if let Ok(res) = r {
                assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
            }
            let want = if blame { None } else { Some("acct-a") };
            assert_eq!(
                bound(&store, session).await.as_deref(),
                want,
                "{path} blame={blame}"
            );
        }
        // A failure that names its account clears either way.
        store
            .commit(&key("u3"), &AuthId::from("acct-a"))
            .await
            .unwrap();
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(req("u3", "/fail"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(bound(&store, "u3").await, None, "blame={blame}");
    }
}

#[tokio::test]
async fn over_hyper_http1_and_http2_and_axum_the_report_commits() {
    let sticky = StickySessionLayer::new();
    let store = sticky.store().clone();
    // hyper over TCP (HTTP/1 and HTTP/2 via the auto builder), streaming bodies.
    let svc = ServiceBuilder::new()
        .layer(sticky.clone())
        .layer(AccountContextLayer::new())
        .map_request(|r: Request<hyper::body::Incoming>| r.map(|_| ()))
        .service_fn(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    for (h2, session) in [(false, "h1"), (true, "h2")] {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(h2)
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let r = Request::get(format!("http://{addr}/"))
            .header("sticky-session-id", session)
            .body(http_body_util::Empty::new())
            .unwrap();
        let res = client.request(r).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        drain(res).await;
        assert_eq!(
            bound(&store, session).await.as_deref(),
            Some("acct-a"),
            "{session}"
        );
    }
    // axum: Router::layer, bottom to top: the context layer inside the sticky one.
    let app = axum::Router::new()
        .fallback(|r: Request<axum::body::Body>| async move {
            match handler(r.map(|_| ())).await {
                Ok(res) => res.map(axum::body::Body::new),
                Err(_) => {
                    let mut res = Response::new(axum::body::Body::empty());
                    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    res
                }
            }
        })
        .layer(AccountContextLayer::new())
        .layer(sticky);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = scripted::client();
    let r = Request::get(format!("http://{addr}/"))
        .header("sticky-session-id", "ax")
        .body(http_body_util::Empty::new())
        .unwrap();
    let res = client.request(r).await.unwrap();
    drain(res).await;
    assert_eq!(bound(&store, "ax").await.as_deref(), Some("acct-a"));
    let _ = Layer::<()>::layer(&AccountContextLayer::new(), ());
    let _: Option<Infallible> = None;
}
