//! The example proxy's status page on its admin listener (`GET /`, `GET /status.json`)
//! as a black box: its numbers are `/metrics`' numbers, it follows the admin token rule,
//! and the HTML carries the accounts and their state. (The page in a real browser:
//! `scripts/status_page_check.sh`.)

use crate::support::{proxy_bin, upstream};

use std::process::Stdio;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::process::Command;

use proxy_bin::{free_addr, wait_listening};
use upstream::{Account, Mode, within};

const ADMIN_TOKEN: &str = "at-status-3e9f1a7c";

type TestClient = Client<HttpConnector, Full<Bytes>>;

async fn call(client: &TestClient, req: http::request::Builder) -> (StatusCode, String, String) {
    let res = within("answer", client.request(req.body(Full::default()).unwrap()))
        .await
        .unwrap();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let status = res.status();
    let body = within("body", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, ct, String::from_utf8_lossy(&body).into_owned())
}

/// The value of the sample `name` (with its labels, e.g. `x{account="a"}`) in an
/// OpenMetrics text.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_status_page_shows_the_numbers_metrics_shows_behind_the_admin_token() {
    let a = Account::start("a", Mode::Stream).await;
    let b = Account::start("b", Mode::Stream).await;
    let (listen, admin) = (free_addr(), free_addr());
    let (ua, ub) = (format!("a={}", a.url()), format!("b={}", b.url()));
    let mut child = Command::new(proxy_bin::proxy_binary())
        .args([
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .args(["--upstream", &ua, "--upstream", &ub])
        .args(["--admin-token", "TSS_STATUS_ADMIN_TOKEN"])
        .env("TSS_STATUS_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_listening(listen).await;
    wait_listening(admin).await;
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{listen}/v1/chat");

    // Three requests of one session (a miss, then two hits), one without a session.
    for _ in 0..3 {
        let (status, _, _) = call(&client, Request::post(&url).header("x-session-id", "s-1")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, _) = call(&client, Request::post(&url)).await;
    assert_eq!(status, StatusCode::OK);
    // Account b answers 429 with a long retry-after: it cools down, a retry serves.
    b.set(Mode::Status(429, Some("600")));
    a.set(Mode::Status(429, Some("600")));
    let (status, _, _) = call(&client, Request::post(&url).header("x-session-id", "s-2")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    a.set(Mode::Stream);

    // The admin token rule holds for the page and its JSON.
    for path in ["/", "/status.json"] {
        let (status, _, _) = call(&client, Request::get(format!("http://{admin}{path}"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let get = |path: &str| {
        Request::get(format!("http://{admin}{path}")).header("authorization", auth.clone())
    };
    let (status, _, metrics) = call(&client, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, ct, json) = call(&client, get("/status.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ct.starts_with("application/json"), "{ct}");
    let s: Value = serde_json::from_str(&json).unwrap();

    // The same numbers as /metrics (nothing ran in between).
    for (key, metric) in [
        ("requests", "sticky_session_requests_total"),
        ("lookups", "sticky_session_lookups_total"),
        ("hits", "sticky_session_hits_total"),
        ("misses", "sticky_session_misses_total"),
        ("no_session", "sticky_session_no_session_total"),
        ("commits", "sticky_session_commits_total"),
        ("bindings", "sticky_session_bindings"),
        ("retries", "sticky_proxy_retries_total"),
    ] {
        assert_eq!(
            s[key].as_f64(),
            Some(sample(&metrics, metric)),
            "{key} vs {metric}"
        );
    }
    assert_eq!(s["hits"], 2);
    assert_eq!(s["retries"], 1);
    assert_eq!(
        s["hit_ratio"].as_f64().unwrap(),
        sample(&metrics, "sticky_session_hits_total")
            / sample(&metrics, "sticky_session_lookups_total")
    );
    assert_eq!(
        s["sources"]["header"].as_f64(),
        Some(sample(
            &metrics,
            "sticky_session_sources_total{source=\"header\"}"
        ))
    );
    assert_eq!(
        s["ws"]["upgrades"].as_f64(),
        Some(sample(&metrics, "sticky_proxy_ws_upgrades_total"))
    );
    assert_eq!(
        s["ws"]["open"].as_f64(),
        Some(sample(&metrics, "sticky_proxy_ws_open"))
    );
    assert_eq!(
        s["config"]["generation"].as_f64(),
        Some(sample(&metrics, "sticky_proxy_config_generation"))
    );
    assert_eq!(
        s["config"]["loaded_at"]
            .as_f64()
            .map(|ms| (ms / 1000.0).floor()),
        Some(sample(&metrics, "sticky_proxy_config_loaded_timestamp_seconds").floor())
    );
    let accounts = s["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 2);
    for acc in accounts {
        let name = acc["name"].as_str().unwrap();
        let label = format!("{{account=\"{name}\"}}");
        assert_eq!(
            acc["in_flight"].as_f64(),
            Some(sample(&metrics, &format!("sticky_proxy_in_flight{label}")))
        );
        let cooling = sample(&metrics, &format!("sticky_proxy_cooling{label}")) == 1.0;
        assert_eq!(acc["state"] == "cooling", cooling, "{name}");
        assert!(cooling, "{name} answered 429 with retry-after: 600");
        let left = acc["cooling_for_ms"].as_u64().unwrap();
        assert!(left > 500_000 && left <= 600_001, "{name}: {left}");
        assert!(acc["cooling_until"].as_u64().unwrap() > s["generated_at"].as_u64().unwrap());
        assert_eq!(acc["cooling_why"], "429", "{name}: why it cools down");
    }

    // The page: HTML, the accounts and their state rendered on the server.
    let (status, ct, html) = call(&client, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(
        html.contains("<td>a</td>") && html.contains("<td>b</td>"),
        "{html}"
    );
    assert!(html.contains("cooling down until"), "{html}");
    assert!(html.contains("(429)"), "the reason is shown: {html}");
    assert!(
        html.contains("fetch(\"status.json\""),
        "the page refreshes itself"
    );
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no external asset"
    );

    let _ = child.start_kill();
    let _ = child.wait().await;
}
