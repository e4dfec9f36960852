//! Two replicas of the example proxy (its binary, as operators run it) sharing a real
//! `redis-server`, each with `--redis-near-cache`: a session bound through one replica is
//! served by the same account through the other, the second replica's repeated lookups
//! are answered by its near cache (`sticky_session_redis_near_hits` in `/metrics`), and a
//! rebind through the first replica reaches the second's near cache through Redis's
//! invalidation, not after the near TTL.

use crate::support::{proxy_bin, redis_server, upstream};

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::process::{Child, Command};

use redis_server::RedisServer;
use upstream::{Account, Mode, within};

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Replica {
    addr: SocketAddr,
    admin: SocketAddr,
    _child: Child,
}

async fn replica(redis: &str, accounts: &[&Account]) -> Replica {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut args = vec![
        "--listen".to_owned(),
        addr.to_string(),
        "--admin".to_owned(),
        admin.to_string(),
        "--redis".to_owned(),
        redis.to_owned(),
        "--redis-near-cache".to_owned(),
        "1000".to_owned(),
        // Longer than the test: a change seen by this replica came from an invalidation.
        "--redis-near-ttl".to_owned(),
        "600".to_owned(),
    ];
    for a in accounts {
        args.push("--upstream".to_owned());
        args.push(format!("{}={}", a.name, a.url()));
    }
    let child = Command::new(proxy_bin::proxy_binary())
        .args(&args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for a in [addr, admin] {
        within("the replica listens", async {
            while tokio::net::TcpStream::connect(a).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    Replica {
        addr,
        admin,
        _child: child,
    }
}

async fn chat(client: &TestClient, r: &Replica, session: &str) -> (StatusCode, String) {
    let req = Request::post(format!("http://{}/v1/chat", r.addr))
        .header("session-id", session)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = within("the replica answers", client.request(req))
        .await
        .unwrap();
    let status = res.status();
    let served = res
        .headers()
        .get("x-served-by")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let _ = res.into_body().collect().await;
    (status, served)
}

async fn metric(client: &TestClient, r: &Replica, name: &str) -> u64 {
    let req = Request::get(format!("http://{}/metrics", r.admin))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn two_replicas_share_bindings_and_the_near_cache_serves_and_is_invalidated() {
    let redis = RedisServer::start();
    let a = Account::start("a", Mode::Stream).await;
    let b = Account::start("b", Mode::Stream).await;
    let one = replica(&redis.url(), &[&a, &b]).await;
    let two = replica(&redis.url(), &[&a, &b]).await;
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();

    // Redis may still be connecting: the first request can be served unsticky.
    let (status, first) = chat(&client, &one, "conv-1").await;
    assert_eq!(status, StatusCode::OK);
    let bound = within("replica two follows replica one's binding", async {
        loop {
            let (_, via_one) = chat(&client, &one, "conv-1").await;
            let (_, via_two) = chat(&client, &two, "conv-1").await;
            if via_one == via_two {
                return via_one;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let _ = first;
    for _ in 0..5 {
        assert_eq!(chat(&client, &two, "conv-1").await.1, bound);
    }
    let hits = metric(&client, &two, "sticky_session_redis_near_hits").await;
    assert!(
        hits >= 3,
        "replica two's lookups came from its near cache: {hits}"
    );

    // The bound account fails through replica one: the binding moves there, and replica
    // two (whose near cache held the old account, with a 600 s TTL) follows.
    let (failed, healthy) = if bound == "a" { (&a, "b") } else { (&b, "a") };
    failed.set(Mode::Status(503, None));
    let (status, moved) = chat(&client, &one, "conv-1").await;
    assert_eq!(
        (status, moved.as_str()),
        (StatusCode::OK, healthy),
        "failed over"
    );
    within(
        "replica two sees the rebind through the invalidation",
        async {
            while chat(&client, &two, "conv-1").await.1 != healthy {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
    assert!(metric(&client, &two, "sticky_session_redis_near_invalidations").await >= 1);
}
