//! The example proxy's admin listener over real sockets: metrics, inspection and removal
//! of bindings.

use crate::admin;
use crate::app;
use crate::harness;
use crate::support::upstream;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceExt};
use tower_sticky_session::store::BindingStore;
use tower_sticky_session::store::MemoryStore;
use tower_sticky_session::*;

async fn call(addr: std::net::SocketAddr, method: Method, path: &str) -> (StatusCode, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let res = client.request(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn admin_endpoints_inspect_count_remove_and_export_metrics() {
    let layer = StickySessionLayer::new().scope_fn(|p| p.headers.get("x-model").map(Scope::from));
    let store = layer.store().clone();
    let stats = layer.stats();
    // Drive one real request through the layer so the counters move.
    let inner = tower::service_fn(|_req: Request<()>| async {
        let mut res = http::Response::new(http_body_util::Full::new(Bytes::from_static(b"x")));
        res.extensions_mut()
            .insert(ServedBy(AuthId::from("acct-1")));
        Ok::<_, std::convert::Infallible>(res)
    });
    let mut svc = tower::Layer::layer(&layer, inner);
    let req = Request::builder()
        .header("sticky-session-id", "conv&1")
        .header("x-model", "gpt")
        .body(())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    res.into_body().collect().await.unwrap();
    let other = BindingKey::new(None, SessionId::new("conv-2").unwrap());
    store.commit(&other, &AuthId::from("acct-1")).await.unwrap();
    let third = BindingKey::new(None, SessionId::new("conv-3").unwrap());
    store.commit(&third, &AuthId::from("acct-2")).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = admin::router(store.clone(), stats, None, admin::ProxyMetrics::default());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    // Scoped lookup, session id URL-encoded.
    let (status, body) = call(addr, Method::GET, "/bindings?session=conv%261&scope=gpt").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["auth"], "acct-1");
    assert!(v["age_ms"].as_u64().is_some() && v["expires_in_ms"].as_u64().is_some());
    // Unscoped, it is another binding: not found.
    let (status, _) = call(addr, Method::GET, "/bindings?session=conv%261").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(addr, Method::GET, "/bindings").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(addr, Method::GET, "/bindings?session=has%20space").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (_, body) = call(addr, Method::GET, "/bindings/count").await;
    assert_eq!(body, r#"{"count":3}"#);

    let (status, metrics) = call(addr, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("sticky_session_requests_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sticky_session_commits_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sticky_session_misses_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sticky_session_invalid_total{reason="too_long"} 0"#),
        "{metrics}"
    );
    assert!(metrics.contains("sticky_session_bindings 3"), "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");

    // Revoke acct-1: both of its bindings go, acct-2's stays.
    let (_, body) = call(addr, Method::DELETE, "/accounts/acct-1/bindings").await;
    assert_eq!(body, r#"{"removed":2}"#);
    assert!(store.get(&other).is_none());
    assert_eq!(store.get(&third).unwrap().auth.as_str(), "acct-2");

    let (_, body) = call(addr, Method::DELETE, "/bindings?session=conv-3").await;
    assert_eq!(body, r#"{"removed":"acct-2"}"#);
    let (_, body) = call(addr, Method::DELETE, "/bindings?session=conv-3").await;
    assert_eq!(body, r#"{"removed":null}"#);
    let (_, body) = call(addr, Method::GET, "/bindings/count").await;
    assert_eq!(body, r#"{"count":0}"#);
}

#[tokio::test]
async fn silent_admin_connections_are_closed_at_the_header_timeout_and_the_main_port_serves() {
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use upstream::{Account, BOUND, Mode, within};

    let a = Account::start("a", Mode::Stream).await;
    let cfg = app::ProxyConfig::new(vec![app::Upstream::new("a", &a.url()).unwrap()]);
    let store = MemoryStore::new();
    let built = app::build(&cfg, store.clone()).unwrap();
    let mut main_cfg = app::ServeConfig::new(BOUND);
    main_cfg.header_timeout = Duration::from_millis(300);
    let router = admin::router(
        store,
        built.stats.clone(),
        None,
        admin::ProxyMetrics::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = listener.local_addr().unwrap();
    tokio::spawn(app::serve(
        listener,
        router,
        std::future::pending::<()>(),
        admin::serve_config(&main_cfg),
    ));
    let proxy = harness::spawn(built.service, main_cfg).await;

    // More silent connections than the admin listener holds at once.
    let mut silent = Vec::new();
    for _ in 0..app::resources::ADMIN_MAX_CONNECTIONS + 8 {
        silent.push(tokio::net::TcpStream::connect(admin_addr).await.unwrap());
    }
    // The main port serves meanwhile.
    let req = harness::chat(Method::GET, proxy.addr, None)
        .body(http_body_util::Full::default())
        .unwrap();
    let res = harness::send(&harness::client(), req).await;
    assert_eq!(res.status(), StatusCode::OK);
    // Each silent connection is closed (those over the cap once they are accepted).
    for mut conn in silent {
        let mut out = Vec::new();
        within(
            "the admin listener closes a silent connection",
            conn.read_to_end(&mut out),
        )
        .await
        .unwrap();
        assert!(out.is_empty());
    }
    let (status, _) = call(admin_addr, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_export_the_buffer_budget_and_broken_streams_per_account() {
    let cfg = app::ProxyConfig::new(vec![
        app::Upstream::new("a", "http://127.0.0.1:9").unwrap(),
        app::Upstream::new("b", "http://127.0.0.1:9").unwrap(),
    ]);
    let store = MemoryStore::new();
    let built = app::build(&cfg, store.clone()).unwrap();
    let grant = built.budget.try_reserve(1000).unwrap();
    let router = admin::router(
        store,
        built.stats.clone(),
        None,
        admin::ProxyMetrics {
            picker: Some(built.picker.clone()),
            body: built.body_stats.clone(),
            budget: Some(built.budget.clone()),
            broken: Some(built.broken.clone()),
            loaded: None,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let (status, metrics) = call(addr, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        "sticky_proxy_buffered_bytes 1000",
        "sticky_proxy_buffered_bytes_limit 268435456",
        "sticky_proxy_buffer_refused_total 0",
        r#"sticky_proxy_broken_streams_total{account="a"} 0"#,
        r#"sticky_proxy_broken_streams_total{account="b"} 0"#,
        r#"sticky_proxy_broken_stream_cooldowns_total{account="a"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    drop(grant);
    let (_, metrics) = call(addr, Method::GET, "/metrics").await;
    assert!(
        metrics.contains("sticky_proxy_buffered_bytes 0\n"),
        "{metrics}"
    );
}
