//! Real clients' request shapes (`tests/fixtures/clients/`) through the whole example proxy
//! over TCP, as `app::build` wires it with the command line's defaults: the JSON-body
//! session reader, the sticky layer with response-id learning over the known-client
//! headers, failover, and three scripted upstream accounts (`tests/support/upstream.rs`).
//!
//! Accounts are picked round-robin when a request is not pinned, so a session that lost
//! its binding would move: every "stays on its account" check interleaves requests of other
//! sessions between the session's own requests, and a control test shows that a request
//! with no session signal does move under that same pattern.

use crate::app;
use crate::harness;
use crate::support::upstream;

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_sticky_session::{BindingKey, SessionId, store::MemoryStore};

use app::{Drained, ProxyConfig, ServeConfig, Upstream};
use harness::Spawned;
use upstream::{Account, BOUND, Mode, within};

/// How many times a session's request is repeated, each after a request of another session.
const ROUNDS: usize = 4;

struct Proxy {
    addr: SocketAddr,
    store: MemoryStore,
    accounts: [Account; 3],
    client: Client<HttpConnector, Full<Bytes>>,
    others: std::cell::Cell<usize>,
    _stop: oneshot::Sender<()>,
    server: JoinHandle<Drained>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Proxy {
    /// The proxy with its defaults (known-client headers, body reading on, 16 MiB buffer)
    /// in front of accounts `a`, `b` and `c`, all answering [`Mode::Stream`].
    async fn start() -> Self {
        let accounts = [
            Account::start("a", Mode::Stream).await,
            Account::start("b", Mode::Stream).await,
            Account::start("c", Mode::Stream).await,
        ];
        let upstreams = accounts
            .iter()
            .map(|a| Upstream::new(a.name, &a.url()).unwrap())
            .collect();
        let cfg = ProxyConfig::new(upstreams);
        assert!(cfg.body_session, "the proxy's default reads bodies");
        let store = MemoryStore::new();
        let (Spawned { addr, stop, server }, _) = harness::start(&cfg, store.clone()).await;
        Self {
            addr,
            store,
            accounts,
            client: harness::client(),
            others: std::cell::Cell::new(0),
            _stop: stop,
            server,
        }
    }

    fn account(&self, name: &str) -> &Account {
        self.accounts.iter().find(|a| a.name == name).unwrap()
    }

    /// Sends a JSON POST with `headers` and `body`; reads the whole answer and returns the
    /// account that served it (`x-served-by`), after checking it was a 200.
    async fn send(&self, headers: &[(&str, &str)], body: Bytes) -> String {
        let mut b = Request::post(format!("http://{}/v1/responses", self.addr))
            .header("content-type", "application/json");
        for (name, value) in headers {
            b = b.header(*name, *value);
        }
        let res = within(
            "response head",
            self.client.request(b.body(Full::new(body)).unwrap()),
        )
        .await
        .expect("the proxy answers");
        assert_eq!(res.status(), StatusCode::OK);
        let by = res
            .headers()
            .get("x-served-by")
            .map(|v| v.to_str().unwrap().to_owned())
            .expect("x-served-by");
        within("body", res.into_body().collect())
            .await
            .expect("the body ends cleanly");
        by
    }

    /// A request of a session nobody else uses (a fresh `sticky-session-id`): it is not
    /// pinned, so it advances round-robin by one account.
    async fn other_session(&self) -> String {
        let n = self.others.get() + 1;
        self.others.set(n);
        let id = format!("other-session-{n}");
        self.send(&[("sticky-session-id", &id)], Bytes::from_static(b"{}"))
            .await
    }

    fn bound(&self, session: &str) -> Option<String> {
        self.store
            .get(&BindingKey::new(None, SessionId::new(session).unwrap()))
            .map(|b| b.auth.as_str().to_owned())
    }
}

fn fixture(name: &str) -> Bytes {
    let path = format!(
        "{}/tests/fixtures/clients/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

/// Sends the request once, then `ROUNDS` more times, each after a request of another
/// session (without a pin, those alone would move it to another account); returns the
/// account it stayed on, which must also be the binding of `session` in the store.
async fn stays_on_one_account(
    proxy: &Proxy,
    headers: &[(&str, &str)],
    body: &Bytes,
    session: &str,
) -> String {
    let first = proxy.send(headers, body.clone()).await;
    let mut others = HashSet::new();
    for round in 0..ROUNDS {
        others.insert(proxy.other_session().await);
        let by = proxy.send(headers, body.clone()).await;
        assert_eq!(by, first, "round {round}: the session moved");
    }
    assert!(
        others.len() >= 2,
        "the other sessions did not rotate over the accounts: {others:?}"
    );
    assert_eq!(
        proxy.bound(session).as_deref(),
        Some(first.as_str()),
        "the session's binding is under its id"
    );
    first
}

async fn client_row(headers: &[(&str, &str)], fixture_name: &str, session: &str) {
    let proxy = Proxy::start().await;
    let body = fixture(fixture_name);
    stays_on_one_account(&proxy, headers, &body, session).await;
    // Every request reached an account with the exact bytes the client sent.
    let seen: Vec<_> = proxy.accounts.iter().flat_map(|a| a.seen()).collect();
    assert_eq!(seen.iter().filter(|s| s.body == body).count(), ROUNDS + 1);
}

#[tokio::test]
async fn control_a_request_with_no_session_signal_moves_between_accounts() {
    // A Claude `metadata.user_id` with no session part is per user: not a session.
    let proxy = Proxy::start().await;
    let body = fixture("claude_code_user_only.json");
    let mut by = HashSet::new();
    for _ in 0..ROUNDS {
        by.insert(proxy.send(&[], body.clone()).await);
        proxy.other_session().await;
    }
    assert!(by.len() >= 2, "the pattern never moved the request: {by:?}");
}

#[tokio::test]
async fn codex_current_session_id_header_with_prompt_cache_key_keeps_its_account() {
    let id = "019a6f1e-3c2b-7a40-9d55-8e1f2a3b4c5d";
    client_row(
        &[("session-id", id), ("thread-id", id)],
        "codex_current.json",
        id,
    )
    .await;
}

#[tokio::test]
async fn codex_older_session_id_underscore_header_keeps_its_account() {
    let id = "5f0c2a1e-7b3d-4e8f-a9c0-1d2e3f4a5b6c";
    client_row(
        &[("session_id", id), ("conversation_id", id)],
        "codex_older.json",
        id,
    )
    .await;
}

#[tokio::test]
async fn claude_code_new_session_header_keeps_its_account() {
    // The header's id differs from the one in the body: the binding is the header's.
    let id = "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7";
    client_row(
        &[
            ("x-claude-code-session-id", id),
            ("x-client-request-id", "a-new-one-on-every-request"),
        ],
        "claude_code_new.json",
        id,
    )
    .await;
}

#[tokio::test]
async fn claude_code_old_string_user_id_keeps_its_account_by_its_session_part() {
    client_row(
        &[],
        "claude_code_old_string.json",
        "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
    )
    .await;
}

#[tokio::test]
async fn claude_code_old_json_string_user_id_keeps_its_account_by_its_session_id() {
    client_row(
        &[],
        "claude_code_old_json.json",
        "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
    )
    .await;
}

#[tokio::test]
async fn opencode_session_affinity_header_keeps_its_account() {
    let id = "ses_6a1f3b2c9ffe4Kq2mZr8TnW0xY";
    client_row(&[("x-session-affinity", id)], "opencode_openai.json", id).await;
}

#[tokio::test]
async fn kilo_session_header_keeps_its_account() {
    // Kilo Code sends OpenCode's body shape with its own header (a different id here, so
    // that the binding shows the header was read).
    let id = "kilo-task-7f3e9a";
    client_row(&[("x-kilo-session", id)], "opencode_openai.json", id).await;
}

#[tokio::test]
async fn gemini_cli_request_session_id_in_the_body_keeps_its_account() {
    client_row(
        &[],
        "gemini_cli.json",
        "7c9e6679-7425-40de-944b-e07fc1f90ae7",
    )
    .await;
}

#[tokio::test]
async fn cline_via_litellm_session_id_in_the_body_keeps_its_account() {
    client_row(&[], "cline_litellm.json", "cline-task-1764600000000").await;
}

#[tokio::test]
async fn openai_responses_prompt_cache_key_keeps_its_account() {
    // An SDK app's Responses request: the Codex body shape with no header at all.
    client_row(
        &[],
        "codex_older.json",
        "5f0c2a1e-7b3d-4e8f-a9c0-1d2e3f4a5b6c",
    )
    .await;
}

#[tokio::test]
async fn openai_responses_conversation_string_keeps_its_account() {
    client_row(
        &[],
        "openai_responses_conversation.json",
        "conv_689667905b048191b4740501625afd940c7533ace33a2dab",
    )
    .await;
}

#[tokio::test]
async fn openai_responses_conversation_object_keeps_its_account() {
    client_row(
        &[],
        "openai_responses_conversation_object.json",
        "conv_68a0b1c2d3e48191a2b3c4d5e6f708192a3b4c5d6e7f8a9b",
    )
    .await;
}

#[tokio::test]
async fn openai_chat_completions_prompt_cache_key_keeps_its_account() {
    client_row(
        &[],
        "openai_chat_prompt_cache_key.json",
        "app-user-42-thread-7",
    )
    .await;
}

#[tokio::test]
async fn two_sessions_of_one_claude_user_are_bound_independently() {
    let proxy = Proxy::start().await;
    let one = fixture("claude_code_old_string.json");
    let two = fixture("claude_code_old_string_other_session.json");
    let (s1, s2) = (
        "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
        "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
    );
    // Back to back: round-robin gives the second session the next account, unless it
    // were keyed by the user the two share.
    let first = proxy.send(&[], one.clone()).await;
    let second = proxy.send(&[], two.clone()).await;
    assert_ne!(first, second, "the second session followed the first");
    for round in 0..ROUNDS {
        proxy.other_session().await;
        assert_eq!(proxy.send(&[], one.clone()).await, first, "round {round}");
        proxy.other_session().await;
        assert_eq!(proxy.send(&[], two.clone()).await, second, "round {round}");
    }
    assert_eq!(proxy.bound(s1).as_deref(), Some(first.as_str()));
    assert_eq!(proxy.bound(s2).as_deref(), Some(second.as_str()));
}

#[tokio::test]
async fn a_header_session_beats_the_body_session() {
    let proxy = Proxy::start().await;
    let body = fixture("claude_code_old_string.json");
    let body_session = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
    let by_body = proxy.send(&[], body.clone()).await;
    assert_eq!(proxy.bound(body_session).as_deref(), Some(by_body.as_str()));

    // The same body with a header naming another session: bound by the header, so it is
    // not pinned to the body session's account (round-robin gives it the next one).
    let hdr = [("x-claude-code-session-id", "header-session-1")];
    let by_header = proxy.send(&hdr, body.clone()).await;
    assert_ne!(by_header, by_body, "the body's session pinned the request");
    assert_eq!(
        proxy.bound("header-session-1").as_deref(),
        Some(by_header.as_str())
    );
    for round in 0..ROUNDS {
        proxy.other_session().await;
        assert_eq!(
            proxy.send(&hdr, body.clone()).await,
            by_header,
            "round {round}"
        );
        assert_eq!(
            proxy.send(&[], body.clone()).await,
            by_body,
            "round {round}"
        );
    }
    // The body session's binding was not moved by the header requests.
    assert_eq!(proxy.bound(body_session).as_deref(), Some(by_body.as_str()));
}

/// The id `openai_responses_previous.json` continues from.
const RESP_ID: &str = "resp_68af4c1e2b3c8190a1b2c3d4e5f60718";

/// `openai_responses_previous.json` with a `prompt_cache_key` added in front of its fields.
fn previous_with_prompt_cache_key(key: &str) -> Bytes {
    let body = fixture("openai_responses_previous.json");
    let text = std::str::from_utf8(&body).unwrap();
    let rest = text.trim_start().strip_prefix('{').unwrap();
    assert!(text.contains(RESP_ID));
    Bytes::from(format!("{{\"prompt_cache_key\":\"{key}\",{rest}"))
}

#[tokio::test]
async fn a_learned_previous_response_id_beats_header_and_body_sessions() {
    let proxy = Proxy::start().await;
    const CREATED: &str = "{\"id\":\"resp_68af4c1e2b3c8190a1b2c3d4e5f60718\",\"object\":\"response\",\"status\":\"completed\",\"output\":[]}";
    for a in &proxy.accounts {
        a.set(Mode::Json(CREATED));
    }
    // The response is created by whichever account serves this request.
    let creator = proxy
        .send(
            &[("session-id", "creating-session")],
            Bytes::from_static(b"{\"model\":\"gpt-5\",\"input\":\"hello\",\"store\":true}"),
        )
        .await;
    // From now on no answer carries a response id, so nothing else is learned.
    for a in &proxy.accounts {
        a.set(Mode::Stream);
    }
    // A header session and a body session, each bound to an account other than the
    // creator's (round-robin moves on from it).
    let by_header = proxy
        .send(
            &[("session-id", "header-session-2")],
            Bytes::from_static(b"{}"),
        )
        .await;
    let by_body = proxy
        .send(
            &[],
            Bytes::from_static(b"{\"prompt_cache_key\":\"body-session-2\",\"input\":\"x\"}"),
        )
        .await;
    let accounts: HashSet<_> = [&creator, &by_header, &by_body].into_iter().collect();
    assert_eq!(accounts.len(), 3, "{creator} {by_header} {by_body}");

    // The first continuation is the telling one: its header and body sessions are bound
    // elsewhere. (Served by the creator, the header session then moves there.)
    let body = previous_with_prompt_cache_key("body-session-2");
    for round in 0..ROUNDS {
        proxy.other_session().await;
        let by = proxy
            .send(&[("session-id", "header-session-2")], body.clone())
            .await;
        assert_eq!(
            by, creator,
            "round {round}: the response chain left its account"
        );
    }
    // The creator received every continuation, byte for byte.
    let continued = |a: &Account| a.seen().iter().filter(|s| s.body == body).count();
    assert_eq!(continued(proxy.account(&creator)), ROUNDS);
    // The request's session (the header's) was served by the creator, so it was
    // committed there like any success; the body's session, not the request's, kept its
    // account.
    assert_eq!(
        proxy.bound("header-session-2").as_deref(),
        Some(creator.as_str())
    );
    assert_eq!(
        proxy.bound("body-session-2").as_deref(),
        Some(by_body.as_str())
    );
}

#[tokio::test]
async fn an_unlearned_previous_response_id_falls_back_to_the_header_session() {
    let proxy = Proxy::start().await;
    let by_header = proxy
        .send(
            &[("session-id", "header-session-3")],
            Bytes::from_static(b"{}"),
        )
        .await;
    let body = fixture("openai_responses_previous.json");
    for round in 0..ROUNDS {
        proxy.other_session().await;
        let by = proxy
            .send(&[("session-id", "header-session-3")], body.clone())
            .await;
        assert_eq!(by, by_header, "round {round}");
    }
}

/// An account that answers every request with a Responses API event stream whose first
/// event, `response.created`, carries [`SSE_RESP_ID`]; it counts the requests whose body
/// names that id as `previous_response_id`.
struct SseAccount {
    addr: SocketAddr,
    continuations: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

const SSE_RESP_ID: &str = "resp_0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f";

impl Drop for SseAccount {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SseAccount {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let continuations = Arc::new(AtomicUsize::new(0));
        let count = continuations.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let count = count.clone();
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let needle = format!("\"previous_response_id\": \"{SSE_RESP_ID}\"");
                            if std::str::from_utf8(&body).is_ok_and(|b| b.contains(&needle)) {
                                count.fetch_add(1, Ordering::SeqCst);
                            }
                            let events = format!(
                                "event: response.created\ndata: {{\"type\":\"response.created\",\"sequence_number\":0,\"response\":{{\"id\":\"{SSE_RESP_ID}\",\"object\":\"response\",\"status\":\"in_progress\"}}}}\n\n\
                                 event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"delta\":\"Bonjour\"}}\n\n\
                                 event: response.completed\ndata: {{\"type\":\"response.completed\",\"sequence_number\":2,\"response\":{{\"id\":\"{SSE_RESP_ID}\",\"status\":\"completed\"}}}}\n\n"
                            );
                            let mut res = Response::new(Full::new(Bytes::from(events)));
                            res.headers_mut()
                                .insert("content-type", "text/event-stream".parse().unwrap());
                            Ok::<_, hyper::Error>(res)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            continuations,
            task,
        }
    }
}

#[tokio::test]
async fn a_response_id_learned_from_a_response_created_event_beats_header_and_body_sessions() {
    let sse = SseAccount::start().await;
    let b = Account::start("b", Mode::Stream).await;
    let c = Account::start("c", Mode::Stream).await;
    let upstreams = vec![
        Upstream::new("sse", &format!("http://{}", sse.addr)).unwrap(),
        Upstream::new("b", &b.url()).unwrap(),
        Upstream::new("c", &c.url()).unwrap(),
    ];
    let built = app::build(&ProxyConfig::new(upstreams), MemoryStore::new()).unwrap();
    let Spawned {
        addr,
        stop: _stop,
        server,
    } = harness::spawn(built.service, ServeConfig::new(BOUND)).await;
    let client = harness::client();
    let send = |headers: &'static [(&'static str, &'static str)], body: Bytes| {
        let client = client.clone();
        async move {
            let mut b = Request::post(format!("http://{addr}/v1/responses"))
                .header("content-type", "application/json");
            for (name, value) in headers {
                b = b.header(*name, *value);
            }
            let res = within(
                "response head",
                client.request(b.body(Full::new(body)).unwrap()),
            )
            .await
            .expect("the proxy answers");
            assert_eq!(res.status(), StatusCode::OK);
            let by = res.headers()["x-served-by"].to_str().unwrap().to_owned();
            let got = within("body", res.into_body().collect())
                .await
                .expect("the body ends cleanly")
                .to_bytes();
            (by, got)
        }
    };
    // Round-robin starts with the first account: the streaming one creates the response.
    let (creator, events) = send(
        &[],
        Bytes::from_static(b"{\"input\":\"hi\",\"stream\":true}"),
    )
    .await;
    assert_eq!(creator, "sse");
    assert!(events.starts_with(b"event: response.created\n"));
    let (by_header, _) = send(
        &[("x-session-affinity", "header-session-4")],
        Bytes::from_static(b"{}"),
    )
    .await;
    let (by_body, _) = send(
        &[],
        Bytes::from_static(b"{\"prompt_cache_key\":\"body-session-4\"}"),
    )
    .await;
    assert_eq!((by_header.as_str(), by_body.as_str()), ("b", "c"));

    let body = Bytes::from(
        std::str::from_utf8(&fixture("openai_responses_previous.json"))
            .unwrap()
            .replace(RESP_ID, SSE_RESP_ID)
            .replacen('{', "{\"prompt_cache_key\": \"body-session-4\",", 1),
    );
    let (by, _) = send(&[("x-session-affinity", "header-session-4")], body).await;
    assert_eq!(by, "sse", "the response chain left its account");
    assert_eq!(sse.continuations.load(Ordering::SeqCst), 1);
    server.abort();
}

fn digest(b: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// A JSON body of about `size` bytes: a long `messages` array, the session at the end.
fn big_body(size: usize, session: &str) -> Bytes {
    let mut s = String::with_capacity(size + 256);
    s.push_str("{\"model\":\"gpt-4.1\",\"messages\":[");
    let mut i = 0u64;
    while s.len() < size {
        if i > 0 {
            s.push(',');
        }
        // Varying content, so that a reordered or dropped chunk changes the digest.
        s.push_str(&format!(
            "{{\"role\":\"user\",\"content\":\"line {i} {}\"}}",
            "x".repeat((i % 997) as usize)
        ));
        i += 1;
    }
    s.push_str(&format!("],\"prompt_cache_key\":\"{session}\"}}"));
    Bytes::from(s)
}

async fn forwarded_byte_exact(proxy: &Proxy, headers: &[(&str, &str)], body: &Bytes) -> String {
    let by = proxy.send(headers, body.clone()).await;
    let seen = proxy.account(&by).seen();
    let got = &seen.last().unwrap().body;
    assert_eq!(
        (got.len(), digest(got)),
        (body.len(), digest(body)),
        "the upstream received other bytes"
    );
    assert!(got == body);
    let length = seen.last().unwrap().headers.get("content-length");
    assert_eq!(
        length.map(|v| v.to_str().unwrap().to_owned()),
        Some(body.len().to_string())
    );
    by
}

#[tokio::test]
async fn a_20_mib_body_over_the_buffer_limit_is_forwarded_byte_exact_and_sticky_by_header() {
    let proxy = Proxy::start().await;
    let body = big_body(20 * 1024 * 1024, "big-body-session");
    assert!(body.len() > 16 * 1024 * 1024);
    let hdr = [("session-id", "big-header-session")];
    let first = forwarded_byte_exact(&proxy, &hdr, &body).await;
    proxy.other_session().await;
    assert_eq!(forwarded_byte_exact(&proxy, &hdr, &body).await, first);
    assert_eq!(
        proxy.bound("big-header-session").as_deref(),
        Some(first.as_str())
    );
    // Over the limit, the body is not read for a session.
    assert_eq!(proxy.bound("big-body-session"), None);
}

#[tokio::test]
async fn a_large_body_within_the_buffer_limit_is_forwarded_byte_exact_and_sticky_by_body() {
    let proxy = Proxy::start().await;
    let body = big_body(12 * 1024 * 1024, "large-body-session");
    let first = forwarded_byte_exact(&proxy, &[], &body).await;
    proxy.other_session().await;
    assert_eq!(forwarded_byte_exact(&proxy, &[], &body).await, first);
    assert_eq!(
        proxy.bound("large-body-session").as_deref(),
        Some(first.as_str())
    );
}
