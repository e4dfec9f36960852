//! The example proxy's front door over TCP: client tokens in every place clients send an
//! API key (`authorization`, `x-api-key`, `x-goog-api-key`, `?key=`), removed before
//! forwarding; duplicate credentials refused; tenants whose bindings are their own; and
//! requests never forwarded (CONNECT, TRACE, `OPTIONS *`, dot-segments).

use crate::app;
use crate::harness;
use crate::support::upstream;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tower_sticky_session::{BindingKey, Scope, SessionId, store::MemoryStore};

use app::auth::{ClientToken, Tenant};
use app::keys::Secret;
use app::{ProxyConfig, Upstream};
use harness::Spawned;
use upstream::{Account, Mode, within};

const TOKEN_A: &str = "ct-alpha-19e4b7";
const TOKEN_B: &str = "ct-bravo-6c02f1";

struct Proxy {
    addr: SocketAddr,
    store: MemoryStore,
    client: Client<HttpConnector, Full<Bytes>>,
    _stop: oneshot::Sender<()>,
}

fn token(tenant: &str, token: &str) -> ClientToken {
    ClientToken {
        tenant: Tenant::new(tenant).unwrap(),
        token: Secret::from(token),
    }
}

impl Proxy {
    /// The proxy in front of `accounts` (keyless), with `tokens`, one attempt per request
    /// (so that a failing account's answer is the client's) and `x-session-id` sessions.
    async fn start(
        accounts: &[&Account],
        tokens: Vec<ClientToken>,
        scope_header: Option<&str>,
    ) -> Self {
        Self::start_with(accounts, tokens, scope_header, |_| {}).await
    }

    /// [`start`](Self::start), with `tweak` applied to the configuration last.
    async fn start_with(
        accounts: &[&Account],
        tokens: Vec<ClientToken>,
        scope_header: Option<&str>,
        tweak: impl FnOnce(&mut ProxyConfig),
    ) -> Self {
        let upstreams = accounts
            .iter()
            .map(|a| Upstream::new(a.name, &a.url()).unwrap())
            .collect();
        let mut cfg = ProxyConfig::new(upstreams);
        cfg.session_headers = vec!["x-session-id".parse().unwrap()];
        cfg.scope_header = scope_header.map(|h| h.parse().unwrap());
        cfg.client_tokens = tokens;
        cfg.failover.attempts = 1;
        tweak(&mut cfg);
        let store = MemoryStore::new();
        let (Spawned { addr, stop, .. }, _) = harness::start(&cfg, store.clone()).await;
        Self {
            addr,
            store,
            client: harness::client(),
            _stop: stop,
        }
    }

    /// Sends `req` (a path and query on the proxy, with headers) and reads the whole
    /// answer: status, `x-served-by` (or ""), body.
    async fn send(&self, pq: &str, headers: &[(&str, &str)]) -> (StatusCode, String, Bytes) {
        self.send_body(pq, headers, Bytes::new()).await
    }

    /// [`send`](Self::send) with a request body.
    async fn send_body(
        &self,
        pq: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> (StatusCode, String, Bytes) {
        let mut b = Request::post(format!("http://{}{pq}", self.addr));
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let res = harness::send(&self.client, b.body(Full::new(body)).unwrap()).await;
        let status = res.status();
        let by = res
            .headers()
            .get("x-served-by")
            .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
        let body = within("body", res.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        (status, by, body)
    }

    fn bound(&self, scope: Option<&'static str>, session: &str) -> Option<String> {
        let key = BindingKey::new(
            scope.map(Scope::from_static),
            SessionId::new(session).unwrap(),
        );
        self.store.get(&key).map(|b| b.auth.as_str().to_owned())
    }
}

/// Every header and the target an account received, as text.
fn received(a: &Account) -> String {
    a.seen()
        .iter()
        .map(|s| {
            let mut t = format!("{} {}\n", s.method, s.uri);
            for (n, v) in &s.headers {
                t.push_str(&format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())));
            }
            t
        })
        .collect()
}

#[tokio::test]
async fn gemini_key_header_and_key_query_parameter_carry_the_token_and_never_reach_the_account() {
    let a = Account::start("a", Mode::Stream).await;
    let proxy = Proxy::start(&[&a], vec![token("default", TOKEN_A)], None).await;

    let (status, _, _) = proxy.send("/v1/chat", &[("x-goog-api-key", TOKEN_A)]).await;
    assert_eq!(status, StatusCode::OK);
    // The key parameter is cut out; the other parameters keep their bytes and order.
    let pq = format!("/v1beta/models/g:streamGenerateContent?alt=sse&key={TOKEN_A}&x=%2Fa+b&&y");
    let (status, _, _) = proxy.send(&pq, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = proxy.send(&format!("/v1/m?key={TOKEN_A}"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    // A percent-encoded name or value is the same parameter to an upstream.
    let (status, _, _) = proxy
        .send(
            &format!("/v1/m?k%65y={}&z=1", TOKEN_A.replace('-', "%2D")),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let seen = a.seen();
    assert_eq!(seen.len(), 4, "{}", received(&a));
    assert_eq!(seen[0].uri.path_and_query().unwrap(), "/v1/chat");
    assert!(!seen[0].headers.contains_key("x-goog-api-key"));
    assert_eq!(
        seen[1].uri.path_and_query().unwrap(),
        "/v1beta/models/g:streamGenerateContent?alt=sse&x=%2Fa+b&&y"
    );
    assert_eq!(seen[2].uri.path_and_query().unwrap(), "/v1/m");
    assert_eq!(seen[3].uri.path_and_query().unwrap(), "/v1/m?z=1");
    assert!(!received(&a).contains(TOKEN_A), "{}", received(&a));
    assert!(!received(&a).contains("%2D"), "{}", received(&a));

    // A wrong key, in either place: 401, nothing forwarded.
    let (status, _, _) = proxy.send("/v1/m?key=nope", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = proxy.send("/v1/m", &[("x-goog-api-key", "nope")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.count(), 4);
}

#[tokio::test]
async fn a_duplicate_credential_gets_400_and_the_token_never_reaches_a_keyless_account() {
    let a = Account::start("a", Mode::Stream).await;
    let proxy = Proxy::start(&[&a], vec![token("default", TOKEN_A)], None).await;
    let bearer = format!("Bearer {TOKEN_A}");
    // The attack: junk first, the proxy's token second. Either order.
    for headers in [
        [
            ("authorization", "Bearer junk"),
            ("authorization", &*bearer),
        ],
        [
            ("authorization", &*bearer),
            ("authorization", "Bearer junk"),
        ],
        [("x-api-key", "junk"), ("x-api-key", TOKEN_A)],
        [("x-goog-api-key", TOKEN_A), ("x-goog-api-key", "junk")],
    ] {
        let (status, by, body) = proxy.send("/v1/chat", &headers).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{headers:?}");
        assert_eq!(by, "");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("more than one"), "{body}");
        assert!(body.contains(headers[0].0), "{body}");
    }
    let (status, _, body) = proxy
        .send(&format!("/v1/m?key=junk&key={TOKEN_A}"), &[])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("`key` query parameter"));
    assert_eq!(a.count(), 0, "{}", received(&a));

    // One credential: served, without the token.
    let (status, _, _) = proxy.send("/v1/chat", &[("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!received(&a).contains(TOKEN_A), "{}", received(&a));
}

#[tokio::test]
async fn duplicate_credentials_get_400_without_client_tokens_too() {
    let a = Account::start("a", Mode::Stream).await;
    let proxy = Proxy::start(&[&a], Vec::new(), None).await;
    let (status, _, _) = proxy
        .send(
            "/v1/chat",
            &[("authorization", "Bearer x"), ("authorization", "Bearer y")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(a.count(), 0);
    let (status, _, _) = proxy
        .send("/v1/chat", &[("authorization", "Bearer x")])
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn two_tenants_with_one_session_id_get_independent_bindings() {
    let a = Account::start("a", Mode::Stream).await;
    let b = Account::start("b", Mode::Stream).await;
    let tokens = vec![token("acme", TOKEN_A), token("bolt", TOKEN_B)];
    let proxy = Proxy::start(&[&a, &b], tokens, None).await;
    let as_tenant = |t: &'static str| [("x-api-key", t), ("x-session-id", "conv-1")];

    // Round-robin: acme's conv-1 lands on a; bolt's conv-1 is a session of its own, so it
    // is not pinned to a but takes the next account.
    let (_, by, _) = proxy.send("/v1/chat", &as_tenant(TOKEN_A)).await;
    assert_eq!(by, "a");
    let (_, by, _) = proxy.send("/v1/chat", &as_tenant(TOKEN_B)).await;
    assert_eq!(by, "b");
    for _ in 0..2 {
        assert_eq!(proxy.send("/v1/chat", &as_tenant(TOKEN_A)).await.1, "a");
        assert_eq!(proxy.send("/v1/chat", &as_tenant(TOKEN_B)).await.1, "b");
    }
    assert_eq!(proxy.bound(Some("acme"), "conv-1").as_deref(), Some("a"));
    assert_eq!(proxy.bound(Some("bolt"), "conv-1").as_deref(), Some("b"));
    assert_eq!(proxy.bound(None, "conv-1"), None);
}

#[tokio::test]
async fn one_tenants_failure_does_not_unbind_another_tenants_session() {
    let a = Account::start("a", Mode::Stream).await;
    let tokens = vec![token("acme", TOKEN_A), token("bolt", TOKEN_B)];
    let proxy = Proxy::start(&[&a], tokens, Some("x-model")).await;
    let headers = |t: &'static str| {
        [
            (
                "authorization",
                if t == TOKEN_A {
                    "Bearer ct-alpha-19e4b7"
                } else {
                    "Bearer ct-bravo-6c02f1"
                },
            ),
            ("x-session-id", "conv-1"),
            ("x-model", "m1"),
        ]
    };
    let (status, by, _) = proxy.send("/v1/chat", &headers(TOKEN_A)).await;
    assert_eq!((status, by.as_str()), (StatusCode::OK, "a"));
    assert_eq!(proxy.bound(Some("acme/m1"), "conv-1").as_deref(), Some("a"));

    // bolt, same session id and model, on the same account, fails: only bolt's key is
    // cleared.
    a.set(Mode::Status(500, None));
    let (status, by, _) = proxy.send("/v1/chat", &headers(TOKEN_B)).await;
    assert_eq!(
        (status, by.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "a")
    );
    assert_eq!(proxy.bound(Some("acme/m1"), "conv-1").as_deref(), Some("a"));
    assert_eq!(proxy.bound(Some("bolt/m1"), "conv-1"), None);

    // Tokens of two tenants in one request: ambiguous, refused.
    a.set(Mode::Stream);
    let (status, _, _) = proxy
        .send(
            "/v1/chat",
            &[
                ("authorization", "Bearer ct-alpha-19e4b7"),
                ("x-api-key", TOKEN_B),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(a.count(), 2);
}

#[tokio::test]
async fn fingerprint_keeps_one_opening_on_its_account_within_a_tenant_never_across_tenants() {
    let a = Account::start("a", Mode::Stream).await;
    let b = Account::start("b", Mode::Stream).await;
    let tokens = vec![token("acme", TOKEN_A), token("bolt", TOKEN_B)];
    let proxy = Proxy::start_with(&[&a, &b], tokens, None, |cfg| cfg.fingerprint = true).await;
    // No session header, no session field: only the opening identifies the conversation.
    let turn = |n: usize| {
        let mut messages = vec![
            r#"{"role":"system","content":"be brief"}"#.to_owned(),
            r#"{"role":"user","content":"hi"}"#.to_owned(),
        ];
        for i in 0..n {
            messages.push(format!(r#"{{"role":"assistant","content":"a{i}"}}"#));
            messages.push(format!(r#"{{"role":"user","content":"u{i}"}}"#));
        }
        Bytes::from(format!(
            r#"{{"model":"m","messages":[{}]}}"#,
            messages.join(",")
        ))
    };
    let json = ("content-type", "application/json");
    let mut seen = Vec::new();
    for n in 0..3 {
        for t in [TOKEN_A, TOKEN_B] {
            let (status, by, _) = proxy
                .send_body("/v1/chat", &[json, ("x-api-key", t)], turn(n))
                .await;
            assert_eq!(status, StatusCode::OK);
            seen.push(by);
        }
        // A request with no session signal at all moves round-robin on by one: an
        // unsticky conversation would change accounts.
        let (status, _, _) = proxy.send("/v1/chat", &[("x-api-key", TOKEN_A)]).await;
        assert_eq!(status, StatusCode::OK);
    }
    // Round-robin gave acme's conversation a and bolt's (the same opening) b; each then
    // stays.
    assert_eq!(seen, ["a", "b", "a", "b", "a", "b"]);
}

#[tokio::test]
async fn fingerprint_keeps_a_gemini_api_conversation_on_its_account() {
    let a = Account::start("a", Mode::Stream).await;
    let b = Account::start("b", Mode::Stream).await;
    let tokens = vec![token("acme", TOKEN_A), token("bolt", TOKEN_B)];
    let proxy = Proxy::start_with(&[&a, &b], tokens, None, |cfg| cfg.fingerprint = true).await;
    // Gemini CLI with an API key: the key in `x-goog-api-key` or `?key=`, no session id;
    // each turn resends the conversation with a model turn and a user turn more.
    let turn = |n: usize, opener: &str| {
        let mut contents = vec![format!(
            r#"{{"role":"user","parts":[{{"text":"{opener}"}}]}}"#
        )];
        for i in 0..n {
            contents.push(format!(r#"{{"role":"model","parts":[{{"text":"a{i}"}}]}}"#));
            contents.push(format!(r#"{{"role":"user","parts":[{{"text":"u{i}"}}]}}"#));
        }
        Bytes::from(format!(
            r#"{{"contents":[{}],"systemInstruction":{{"parts":[{{"text":"be brief"}}]}},"generationConfig":{{}}}}"#,
            contents.join(",")
        ))
    };
    let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
    let path_with_key = format!("{path}&key={TOKEN_B}");
    let json = ("content-type", "application/json");
    let mut seen = Vec::new();
    for n in 0..3 {
        let (status, by, _) = proxy
            .send_body(path, &[json, ("x-goog-api-key", TOKEN_A)], turn(n, "hi"))
            .await;
        assert_eq!(status, StatusCode::OK);
        seen.push(by);
        let (status, by, _) = proxy
            .send_body(&path_with_key, &[json], turn(n, "hello"))
            .await;
        assert_eq!(status, StatusCode::OK);
        seen.push(by);
        // A request with no session signal moves round-robin on by one.
        let (status, _, _) = proxy.send(path, &[("x-goog-api-key", TOKEN_A)]).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(seen, ["a", "b", "a", "b", "a", "b"]);
}

#[tokio::test]
async fn a_response_id_learned_for_one_tenant_does_not_pin_another_tenants_request() {
    const CREATED: &str = r#"{"id":"resp_0a1b2c3d4e5f","object":"response","output":[]}"#;
    let a = Account::start("a", Mode::Json(CREATED)).await;
    let b = Account::start("b", Mode::Json(CREATED)).await;
    let tokens = vec![token("acme", TOKEN_A), token("bolt", TOKEN_B)];
    let proxy = Proxy::start(&[&a, &b], tokens, None).await;
    let json = ("content-type", "application/json");
    let (_, by, _) = proxy
        .send_body(
            "/v1/responses",
            &[json, ("x-api-key", TOKEN_A)],
            Bytes::from_static(b"{}"),
        )
        .await;
    assert_eq!(by, "a");
    let chained = Bytes::from_static(br#"{"previous_response_id":"resp_0a1b2c3d4e5f"}"#);
    // acme's chain is pinned (hard) to a, past the round-robin turn of b.
    let (_, by, _) = proxy
        .send_body(
            "/v1/responses",
            &[json, ("x-api-key", TOKEN_A)],
            chained.clone(),
        )
        .await;
    assert_eq!(by, "a");
    // bolt names the same id: not acme's binding; round-robin gives b.
    let (_, by, _) = proxy
        .send_body("/v1/responses", &[json, ("x-api-key", TOKEN_B)], chained)
        .await;
    assert_eq!(by, "b");
}

/// Sends raw `head` to the proxy on a new connection and returns the status line of its
/// answer.
async fn raw_status(addr: SocketAddr, head: &str) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    within("the proxy's status line", async {
        let mut buf = [0u8; 512];
        while !out.contains(&b'\n') {
            match conn.read(&mut buf).await.unwrap() {
                0 => break,
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let out = String::from_utf8_lossy(&out);
    out.lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn connect_trace_asterisk_form_and_dot_segments_are_refused_and_not_forwarded() {
    let a = Account::start("a", Mode::Stream).await;
    let proxy = Proxy::start(&[&a], Vec::new(), None).await;
    let close = "host: p\r\nconnection: close\r\n\r\n";
    for (line, status) in [
        ("CONNECT example.com:443 HTTP/1.1", "405"),
        ("TRACE /v1/chat HTTP/1.1", "405"),
        ("OPTIONS * HTTP/1.1", "400"),
        ("GET /../../admin HTTP/1.1", "400"),
        ("GET /v1/%2e%2e/x HTTP/1.1", "400"),
        ("GET /v1/.%2E/x HTTP/1.1", "400"),
        ("GET /v1/./x HTTP/1.1", "400"),
        ("GET /v1/a%2f..%2fx HTTP/1.1", "400"),
        ("GET /v1/..%5cx HTTP/1.1", "400"),
        ("GET /v1/chat/.. HTTP/1.1", "400"),
    ] {
        let got = raw_status(proxy.addr, &format!("{line}\r\n{close}")).await;
        assert!(
            got.starts_with(&format!("HTTP/1.1 {status}")),
            "{line}: {got}"
        );
    }
    assert_eq!(a.count(), 0, "{}", received(&a));

    // Dots that are not segments pass; a WebSocket upgrade (a GET) is not refused here.
    for line in [
        "GET /v1/models/gpt-4.1/x..y/.well HTTP/1.1",
        "OPTIONS /v1/chat HTTP/1.1",
    ] {
        let got = raw_status(proxy.addr, &format!("{line}\r\n{close}")).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{line}: {got}");
    }
    let got = raw_status(
        proxy.addr,
        "GET /v1/realtime HTTP/1.1\r\nhost: p\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(!got.contains(" 400") && !got.contains(" 405"), "{got}");
    assert_eq!(a.count(), 3, "{}", received(&a));
}
