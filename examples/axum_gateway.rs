//! The layer dropped into an axum gateway whose handler picks the account itself and
//! forwards with reqwest — the shape of most existing Rust LLM gateways.
//!
//! ```text
//! cargo run --example axum_gateway
//! curl -s -H 'session-id: conv-1' -d '{"model":"gpt-5","messages":[]}' localhost:3000/v1/chat/completions
//! ```
//!
//! Two in-process accounts answer with their name; requests of one session stay on one
//! account, per model. The sticky glue is four lines, marked `// sticky:`:
//!
//! - `SessionFromBodyLayer` + `StickySessionLayer` (`scope_by_model`,
//!   `blame_unserved_failures(false)` because the gateway's own 429 below is no account's)
//!   + `AccountContextLayer` around the whole `Router`;
//! - `context::current_pin()` where the handler picks;
//! - `context::report_served(name)` where it called the upstream.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_sticky_session::StickySessionLayer;
use tower_sticky_session::body_session::SessionFromBodyLayer;
use tower_sticky_session::context::{self, AccountContextLayer};

struct Gateway {
    /// The accounts: (name, base URL).
    accounts: Vec<(String, String)>,
    next: AtomicUsize,
    http: reqwest::Client,
    /// The gateway's own concurrency limit.
    limit: Semaphore,
}

async fn chat(State(gw): State<Arc<Gateway>>, body: Bytes) -> Response {
    let Ok(_permit) = gw.limit.try_acquire() else {
        // The gateway's own refusal: no account was asked, no binding is touched.
        return (StatusCode::TOO_MANY_REQUESTS, "busy\n").into_response();
    };
    // The pinned account if it is one of ours, else round-robin.
    let pin = context::current_pin(); // sticky: the pin, where the choice is made
    let (name, url) = match gw
        .accounts
        .iter()
        .find(|(n, _)| pin.as_ref().is_some_and(|p| p.as_str() == n))
    {
        Some(a) => a,
        None => &gw.accounts[gw.next.fetch_add(1, Ordering::Relaxed) % gw.accounts.len()],
    };
    let upstream = match gw
        .http
        .post(format!("{url}/v1/chat/completions"))
        .body(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(_) => return (StatusCode::BAD_GATEWAY, "account unreachable\n").into_response(),
    };
    context::report_served(name.as_str()); // sticky: who served, success or failure
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut res = Response::new(Body::from_stream(upstream.bytes_stream()));
    *res.status_mut() = status;
    res
}

/// A stand-in account that streams two events naming itself.
async fn account(name: &'static str) -> String {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || async move {
            let events = format!("data: {{\"account\":\"{name}\"}}\n\ndata: [DONE]\n\n");
            ([("content-type", "text/event-stream")], events)
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::main]
async fn main() -> Result<(), Infallible> {
    let accounts = vec![
        ("account-a".to_owned(), account("account-a").await),
        ("account-b".to_owned(), account("account-b").await),
    ];
    let gw = Arc::new(Gateway {
        accounts,
        next: AtomicUsize::new(0),
        http: reqwest::Client::new(),
        limit: Semaphore::new(256),
    });
    let sticky = StickySessionLayer::new()
        .known_client_headers()
        .scope_by_model()
        .blame_unserved_failures(false);
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(gw)
        // sticky: Router::layer runs bottom to top — the body reader first, then the
        // sticky layer, then the context the handler reads.
        .layer(AccountContextLayer::new())
        .layer(sticky)
        .layer(SessionFromBodyLayer::new());
    let listener = TcpListener::bind("127.0.0.1:3000").await.unwrap();
    println!("gateway on http://127.0.0.1:3000 in front of account-a and account-b; try:");
    println!(
        "  curl -s -H 'session-id: conv-1' -d '{{\"model\":\"gpt-5\",\"messages\":[]}}' localhost:3000/v1/chat/completions"
    );
    axum::serve(listener, app).await.unwrap();
    Ok(())
}
