//! The layer dropped into a gateway it was not written for, as a Rust developer would:
//! an axum app with its own concurrency limit (answering 429 itself), a router that picks
//! one of several deployments per model *inside* its handler, and upstream calls through
//! reqwest to mock accounts over TCP.
//!
//! The sticky glue is six lines, marked `// sticky:` below — the layers (three: the body
//! reader, the sticky layer with `blame_unserved_failures(false)` and scope by model, and
//! `AccountContextLayer`), `current_pin()` in the router, and `report_served()` once per
//! upstream call — where the same integration took about 100 lines by hand (an
//! extractor on every handler, `_pinned` variants of the routing functions, each handler
//! wrapped to set `ServedBy` around its early returns, the layer put route by route to
//! stay clear of the gateway's own 429).

use crate::support::upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use tokio::sync::Semaphore;
use tower_sticky_session::body_session::SessionFromBodyLayer;
use tower_sticky_session::context::{self, AccountContextLayer};
use tower_sticky_session::{Stats, StickySessionLayer, store::MemoryStore};

use upstream::{Account, Mode, within};

/// The gateway's deployments: model → (name, base URL), picked round-robin.
struct Gateway {
    deployments: HashMap<&'static str, Vec<(&'static str, String)>>,
    next: AtomicUsize,
    http: reqwest::Client,
    limit: Semaphore,
}

impl Gateway {
    /// The deployment for `model`: the pinned one if it serves this model, else the next.
    fn route(&self, model: &str) -> Option<&(&'static str, String)> {
        let list = self.deployments.get(model)?;
        let pin = context::current_pin(); // sticky: the pin, read where the choice is made
        if let Some(d) = list
            .iter()
            .find(|(name, _)| pin.as_ref().is_some_and(|p| p.as_str() == *name))
        {
            return Some(d);
        }
        Some(&list[self.next.fetch_add(1, Ordering::Relaxed) % list.len()])
    }
}

/// The gateway's own concurrency limit: 429 when full — the gateway's refusal, no
/// account's.
async fn limit(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    match gw.limit.try_acquire() {
        Ok(_permit) => next.run(req).await,
        Err(_) => (StatusCode::TOO_MANY_REQUESTS, "concurrency limit reached\n").into_response(),
    }
}

/// A chat handler with early returns, like real ones.
async fn chat(State(gw): State<Arc<Gateway>>, body: Bytes) -> Response {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "invalid JSON\n").into_response();
    };
    let Some(model) = json["model"].as_str() else {
        return (StatusCode::BAD_REQUEST, "no model\n").into_response();
    };
    let Some((name, url)) = gw.route(model) else {
        return (StatusCode::NOT_FOUND, "unknown model\n").into_response();
    };
    let upstream = match gw
        .http
        .post(format!("{url}/v1/chat"))
        .body(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(_) => return (StatusCode::BAD_GATEWAY, "upstream unreachable\n").into_response(),
    };
    context::report_served(*name); // sticky: who served, one line
    let status = upstream.status().as_u16();
    let mut res = Response::new(Body::from_stream(upstream.bytes_stream()));
    *res.status_mut() = StatusCode::from_u16(status).unwrap();
    res
}

struct Running {
    addr: SocketAddr,
    stats: Stats,
    gateway: Arc<Gateway>,
}

async fn start(deployments: HashMap<&'static str, Vec<(&'static str, String)>>) -> Running {
    let gateway = Arc::new(Gateway {
        deployments,
        next: AtomicUsize::new(0),
        http: reqwest::Client::new(),
        limit: Semaphore::new(8),
    });
    let sticky = StickySessionLayer::<MemoryStore>::new()
        .known_client_headers()
        .scope_by_model() // sticky: a session keeps one account per model
        .blame_unserved_failures(false); // sticky: the gateway's own 429s are no account's
    let stats = sticky.stats();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .layer(middleware::from_fn_with_state(gateway.clone(), limit))
        .layer(AccountContextLayer::new()) // sticky: current_pin() and report_served()
        .layer(sticky)
        .layer(SessionFromBodyLayer::new()) // sticky: sessions and the model from the body
        .with_state(gateway.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Running {
        addr,
        stats,
        gateway,
    }
}

/// A chat request for `model` with `session-id: session`; the deployment that served.
async fn ask(addr: SocketAddr, model: &str, session: Option<&str>) -> (StatusCode, String) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"model":"{model}","stream":true,"messages":[]}}"#
        ));
    if let Some(s) = session {
        req = req.header("session-id", s);
    }
    let res = within("the gateway answers", req.send()).await.unwrap();
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap();
    let body = within("the body", res.text()).await.unwrap();
    (status, body)
}

/// Sends the request and names the account that received it (the one whose count of
/// requests went up).
async fn served_by(
    addr: SocketAddr,
    acc: &[Account; 4],
    model: &str,
    session: Option<&str>,
) -> (StatusCode, &'static str) {
    let before: Vec<usize> = acc.iter().map(Account::count).collect();
    let (status, _) = ask(addr, model, session).await;
    let after: Vec<usize> = acc.iter().map(Account::count).collect();
    let hit: Vec<&'static str> = acc
        .iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| a > b)
        .map(|(acct, _)| acct.name)
        .collect();
    assert_eq!(hit.len(), 1, "exactly one deployment is called: {hit:?}");
    (status, hit[0])
}

async fn accounts() -> [Account; 4] {
    [
        Account::start("d1", Mode::Stream).await,
        Account::start("d2", Mode::Stream).await,
        Account::start("d3", Mode::Stream).await,
        Account::start("e1", Mode::Stream).await,
    ]
}

fn deployments(acc: &[Account; 4]) -> HashMap<&'static str, Vec<(&'static str, String)>> {
    HashMap::from([
        (
            "gpt-5",
            vec![
                (acc[0].name, acc[0].url()),
                (acc[1].name, acc[1].url()),
                (acc[2].name, acc[2].url()),
            ],
        ),
        (
            "gpt-5-mini",
            vec![(acc[3].name, acc[3].url()), (acc[1].name, acc[1].url())],
        ),
    ])
}

#[tokio::test]
async fn sessions_stay_on_one_deployment_while_others_rotate_and_move_on_failure() {
    let acc = accounts().await;
    let gw = start(deployments(&acc)).await;
    let (status, first) = served_by(gw.addr, &acc, "gpt-5", Some("conv-1")).await;
    assert_eq!(status, StatusCode::OK);
    let mut others = Vec::new();
    for _ in 0..5 {
        // Requests without a session rotate; conv-1 stays.
        others.push(served_by(gw.addr, &acc, "gpt-5", None).await.1);
        assert_eq!(
            served_by(gw.addr, &acc, "gpt-5", Some("conv-1")).await.1,
            first
        );
    }
    others.sort_unstable();
    others.dedup();
    assert!(
        others.len() > 1,
        "requests without a session rotate: {others:?}"
    );
    // The bound deployment fails: the failure is reported as its, the binding goes and
    // the session moves.
    let bound = acc.iter().find(|a| a.name == first).unwrap();
    bound.set(Mode::Status(503, None));
    let (status, _) = served_by(gw.addr, &acc, "gpt-5", Some("conv-1")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        gw.stats.snapshot().cleared >= 1,
        "the failure cleared the binding"
    );
    // Unbound, the session goes round-robin again (this gateway has no cooldown: it may
    // meet the failed deployment once more) until a deployment serves it; there it stays.
    let mut moved = None;
    for _ in 0..3 {
        if let (StatusCode::OK, d) = served_by(gw.addr, &acc, "gpt-5", Some("conv-1")).await {
            moved = Some(d);
            break;
        }
    }
    let moved = moved.expect("a healthy deployment serves the session");
    assert_ne!(moved, first, "moved after its deployment failed");
    for _ in 0..3 {
        let _ = served_by(gw.addr, &acc, "gpt-5", None).await;
        assert_eq!(
            served_by(gw.addr, &acc, "gpt-5", Some("conv-1")).await.1,
            moved
        );
    }
}

#[tokio::test]
async fn the_gateways_own_429_clears_no_binding() {
    let acc = accounts().await;
    let gw = start(deployments(&acc)).await;
    let (_, first) = served_by(gw.addr, &acc, "gpt-5", Some("conv-2")).await;
    // Fill the gateway's own limit: its next request is refused before any deployment.
    let held = gw.gateway.limit.acquire_many(8).await.unwrap();
    let (status, body) = ask(gw.addr, "gpt-5", Some("conv-2")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body.contains("concurrency limit"));
    drop(held);
    for _ in 0..3 {
        let _ = served_by(gw.addr, &acc, "gpt-5", None).await;
        let (_, again) = served_by(gw.addr, &acc, "gpt-5", Some("conv-2")).await;
        assert_eq!(again, first, "the gateway's 429 moved the session");
    }
    assert_eq!(gw.stats.snapshot().cleared, 0);
}

#[tokio::test]
async fn a_session_that_switches_models_keeps_one_account_per_model() {
    let acc = accounts().await;
    let gw = start(deployments(&acc)).await;
    let (_, big) = served_by(gw.addr, &acc, "gpt-5", Some("conv-3")).await;
    let (_, mini) = served_by(gw.addr, &acc, "gpt-5-mini", Some("conv-3")).await;
    for _ in 0..4 {
        let _ = served_by(gw.addr, &acc, "gpt-5", None).await;
        let _ = served_by(gw.addr, &acc, "gpt-5-mini", None).await;
        assert_eq!(
            served_by(gw.addr, &acc, "gpt-5", Some("conv-3")).await.1,
            big
        );
        assert_eq!(
            served_by(gw.addr, &acc, "gpt-5-mini", Some("conv-3"))
                .await
                .1,
            mini
        );
    }
    // Two bindings, one per model.
    assert!(gw.stats.snapshot().commits >= 2);
}
