//! Where a session comes from, through tower: `SessionFromBodyLayer` in front of
//! `StickySessionLayer`, first valid source wins — a learned `previous_response_id` (a
//! hard pin), the headers, the body's session field, its fingerprint. The source is
//! visible to the inner service (`SessionSource`) and counted in `Stats`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};
use tower_sticky_session::body_session::{BufferedBody, SessionFromBody, SessionFromBodyLayer};
use tower_sticky_session::store::{BoxStoreFuture, boxed};
use tower_sticky_session::{
    AuthId, BindingKey, HardPin, PinnedAuth, ServedBy, SessionId, SessionSource, SessionSourceKind,
    StickySession, StickySessionLayer, store::BindingStore, store::MemoryStore,
};

/// What the inner service saw on one request.
#[derive(Clone, Debug, Default, PartialEq)]
struct Seen {
    session: Option<String>,
    source: Option<SessionSource>,
    pinned: Option<String>,
    hard: bool,
    key_is_response_id: Option<bool>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

type Inner = BoxCloneService<Request<BufferedBody<Full<Bytes>>>, Response<Full<Bytes>>, Infallible>;
type Svc<St = MemoryStore> = SessionFromBody<StickySession<Inner, St>>;

/// The inner service: serves with the pinned account, else with the account named by
/// the `x-pick` header (default `b`), and records what it saw.
fn inner(log: Log) -> Inner {
    BoxCloneService::new(tower::service_fn(
        move |req: Request<BufferedBody<Full<Bytes>>>| {
            let e = req.extensions();
            let seen = Seen {
                session: e.get::<SessionId>().map(|s| s.as_str().to_owned()),
                source: e.get::<SessionSource>().cloned(),
                pinned: e.get::<PinnedAuth>().map(|p| p.0.as_str().to_owned()),
                hard: e.get::<HardPin>().is_some(),
                key_is_response_id: e.get::<BindingKey>().map(|k| k.is_response_id()),
            };
            let account = match &seen.pinned {
                Some(p) => p.clone(),
                None => req
                    .headers()
                    .get("x-pick")
                    .map_or("b".to_owned(), |v| v.to_str().unwrap().to_owned()),
            };
            log.lock().unwrap().push(seen);
            async move {
                let mut res = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
                res.extensions_mut()
                    .insert(ServedBy(AuthId::from(account.as_str())));
                Ok::<_, Infallible>(res)
            }
        },
    ))
}

struct Stack<St: BindingStore = MemoryStore> {
    svc: Svc<St>,
    log: Log,
    store: MemoryStore,
    layer: StickySessionLayer<St>,
}

fn stack(sticky: StickySessionLayer, body: SessionFromBodyLayer) -> Stack {
    let log = Log::default();
    let store = sticky.store().clone();
    let svc = body.layer(sticky.layer(inner(log.clone())));
    Stack {
        svc,
        log,
        store,
        layer: sticky,
    }
}

fn default_stack() -> Stack {
    stack(
        StickySessionLayer::new()
            .known_client_headers()
            .learn_response_ids(true),
        SessionFromBodyLayer::new(),
    )
}

fn post(headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut req = Request::post("/v1/responses").header("content-type", "application/json");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

/// Sends one request, reads the whole response body (commits happen on the first
/// chunk), and returns what the inner service saw.
async fn send<St: BindingStore>(st: &Stack<St>, req: Request<Full<Bytes>>) -> Seen {
    let res = st.svc.clone().oneshot(req).await.unwrap();
    res.into_body().collect().await.unwrap();
    st.log.lock().unwrap().last().cloned().unwrap()
}

fn header(name: &'static str) -> Option<SessionSource> {
    Some(SessionSource::Header(HeaderName::from_static(name)))
}

fn learn(store: &MemoryStore, resp: &str, account: &str) {
    let key = BindingKey::response_id(None, SessionId::new(resp).unwrap());
    store
        .commit(&key, &AuthId::from(account))
        .into_inner()
        .unwrap();
}

fn session_key(s: &str) -> BindingKey {
    BindingKey::new(None, SessionId::new(s).unwrap())
}

#[tokio::test]
async fn known_client_headers_reads_each_client_header_with_its_name_as_source() {
    let st = default_stack();
    for name in tower_sticky_session::KNOWN_CLIENT_HEADERS {
        let seen = send(&st, post(&[(name.as_str(), "sess-1")], "{}")).await;
        assert_eq!(seen.session.as_deref(), Some("sess-1"), "{name}");
        assert_eq!(seen.source, Some(SessionSource::Header(name.clone())));
    }
}

#[tokio::test]
async fn header_beats_body_field() {
    let st = default_stack();
    let body = r#"{"model":"gpt-5","prompt_cache_key":"from-body"}"#;
    let seen = send(&st, post(&[("session-id", "from-header")], body)).await;
    assert_eq!(seen.session.as_deref(), Some("from-header"));
    assert_eq!(seen.source, header("session-id"));
}

#[tokio::test]
async fn body_field_is_the_session_without_a_header_and_binds() {
    let st = default_stack();
    let body = r#"{"model":"gpt-5","prompt_cache_key":"pck-1"}"#;
    let seen = send(&st, post(&[("x-pick", "c")], body)).await;
    assert_eq!(seen.session.as_deref(), Some("pck-1"));
    assert_eq!(
        seen.source,
        Some(SessionSource::BodyField("prompt_cache_key"))
    );
    assert_eq!(seen.pinned, None);
    // Committed under the body's session: the next request is pinned to `c`.
    let seen = send(&st, post(&[], body)).await;
    assert_eq!(seen.pinned.as_deref(), Some("c"));
    assert!(!seen.hard);
    assert_eq!(
        st.store.get(&session_key("pck-1")).unwrap().auth.as_str(),
        "c"
    );
}

#[tokio::test]
async fn invalid_header_falls_back_to_the_body_field_with_the_same_validation() {
    let st = default_stack();
    let body = r#"{"prompt_cache_key":"pck-2"}"#;
    let seen = send(&st, post(&[("session-id", "has space")], body)).await;
    assert_eq!(seen.session.as_deref(), Some("pck-2"));
    // An invalid body value is no session either.
    let long = "x".repeat(300);
    let body = format!(r#"{{"prompt_cache_key":"{long}"}}"#);
    let seen = send(&st, post(&[], &body)).await;
    assert_eq!(seen.session, None);
    assert_eq!(seen.source, None);
}

#[tokio::test]
async fn fingerprint_is_the_last_source() {
    let st = stack(
        StickySessionLayer::new().known_client_headers(),
        SessionFromBodyLayer::new().fingerprint(true),
    );
    let body = r#"{"system":"S","messages":[{"role":"user","content":"hello"}]}"#;
    let seen = send(&st, post(&[], body)).await;
    assert!(seen.session.as_deref().unwrap().starts_with("fp-"));
    assert_eq!(seen.source, Some(SessionSource::Fingerprint));
    // A body field beats it.
    let body =
        r#"{"system":"S","messages":[{"role":"user","content":"hello"}],"prompt_cache_key":"k"}"#;
    let seen = send(&st, post(&[], body)).await;
    assert_eq!(
        seen.source,
        Some(SessionSource::BodyField("prompt_cache_key"))
    );
}

#[tokio::test]
async fn session_function_is_reported_as_function() {
    let st = stack(
        StickySessionLayer::new().session_fn(|p| p.headers.get("x-custom").cloned()),
        SessionFromBodyLayer::new(),
    );
    let seen = send(&st, post(&[("x-custom", "fn-1")], "{}")).await;
    assert_eq!(seen.source, Some(SessionSource::Function));
}

#[tokio::test]
async fn learned_previous_response_id_beats_header_and_body() {
    let st = default_stack();
    learn(&st.store, "resp_abc", "a");
    // The session (header) is bound to `b`, the body's field to `c`.
    st.store
        .commit(&session_key("hdr-1"), &AuthId::from("b"))
        .into_inner()
        .unwrap();
    let body = r#"{"previous_response_id":"resp_abc","prompt_cache_key":"pck-3"}"#;
    let seen = send(&st, post(&[("session-id", "hdr-1")], body)).await;
    assert_eq!(seen.pinned.as_deref(), Some("a"));
    assert!(seen.hard);
    // The request keeps its own session and its source; it commits that session.
    assert_eq!(seen.session.as_deref(), Some("hdr-1"));
    assert_eq!(seen.source, header("session-id"));
    assert_eq!(seen.key_is_response_id, Some(false));
    assert_eq!(
        st.store.get(&session_key("hdr-1")).unwrap().auth.as_str(),
        "a"
    );
    let stats = st.layer.stats().snapshot();
    assert_eq!(stats.hard_pins, 1);
    assert_eq!(stats.hits, 1);
    assert_eq!(stats.lookups, 1);
}

#[tokio::test]
async fn learned_previous_response_id_without_a_session_is_the_session() {
    let st = default_stack();
    learn(&st.store, "resp_only", "a");
    let seen = send(&st, post(&[], r#"{"previous_response_id":"resp_only"}"#)).await;
    assert_eq!(seen.pinned.as_deref(), Some("a"));
    assert!(seen.hard);
    assert_eq!(seen.session.as_deref(), Some("resp_only"));
    assert_eq!(seen.source, Some(SessionSource::ResponseId));
    assert_eq!(seen.key_is_response_id, Some(true));
    let stats = st.layer.stats().snapshot();
    assert_eq!(stats.sessions_from(SessionSourceKind::ResponseId), 1);
    assert_eq!(stats.hard_pins, 1);
    // Counted as a request without a session of its own.
    assert_eq!(stats.no_session, 1);
    assert_eq!(stats.requests, 1);
}

#[tokio::test]
async fn unknown_previous_response_id_falls_back_to_the_usual_sources() {
    let st = default_stack();
    st.store
        .commit(&session_key("pck-4"), &AuthId::from("c"))
        .into_inner()
        .unwrap();
    let body = r#"{"previous_response_id":"resp_unknown","prompt_cache_key":"pck-4"}"#;
    let seen = send(&st, post(&[], body)).await;
    assert_eq!(seen.pinned.as_deref(), Some("c"));
    assert!(!seen.hard);
    assert_eq!(
        seen.source,
        Some(SessionSource::BodyField("prompt_cache_key"))
    );
    // Without any other source: unsticky.
    let seen = send(&st, post(&[], r#"{"previous_response_id":"resp_nope"}"#)).await;
    assert_eq!(seen.pinned, None);
    assert_eq!(seen.session, None);
    let stats = st.layer.stats().snapshot();
    assert_eq!(stats.response_ids_unknown, 2);
    assert_eq!(stats.hard_pins, 0);
    assert_eq!(stats.hits, 1);
    assert_eq!(stats.no_session, 1);
}

#[tokio::test]
async fn client_session_id_equal_to_a_learned_response_id_gets_no_hard_pin() {
    let st = default_stack();
    learn(&st.store, "resp_collide", "a");
    let seen = send(&st, post(&[("session-id", "resp_collide")], "{}")).await;
    assert_eq!(
        seen.pinned, None,
        "a session key never reads a response id's"
    );
    assert!(!seen.hard);
    // Its own commit does not touch the learned id either.
    let learned = BindingKey::response_id(None, SessionId::new("resp_collide").unwrap());
    assert_eq!(st.store.get(&learned).unwrap().auth.as_str(), "a");
    assert_eq!(
        st.store
            .get(&session_key("resp_collide"))
            .unwrap()
            .auth
            .as_str(),
        "b"
    );
    // And a body session field with that value is no hard pin either.
    let seen = send(&st, post(&[], r#"{"prompt_cache_key":"resp_collide"}"#)).await;
    assert_eq!(seen.pinned.as_deref(), Some("b"));
    assert!(!seen.hard);
}

#[tokio::test]
async fn previous_response_id_is_ignored_unless_learning_is_on() {
    let st = stack(
        StickySessionLayer::new().known_client_headers(),
        SessionFromBodyLayer::new(),
    );
    learn(&st.store, "resp_off", "a");
    let seen = send(&st, post(&[], r#"{"previous_response_id":"resp_off"}"#)).await;
    assert_eq!(seen.pinned, None);
    assert!(!seen.hard);
    assert_eq!(st.layer.stats().snapshot().response_ids_unknown, 0);
}

#[tokio::test]
async fn explicit_pin_beats_a_learned_response_id() {
    let st = default_stack();
    learn(&st.store, "resp_x", "a");
    let mut req = post(&[], r#"{"previous_response_id":"resp_x"}"#);
    req.extensions_mut()
        .insert(PinnedAuth(AuthId::from("admin")));
    let seen = send(&st, req).await;
    assert_eq!(seen.pinned.as_deref(), Some("admin"));
    assert!(!seen.hard);
}

#[tokio::test]
async fn stats_count_sessions_by_source() {
    let st = stack(
        StickySessionLayer::new()
            .known_client_headers()
            .learn_response_ids(true),
        SessionFromBodyLayer::new().fingerprint(true),
    );
    learn(&st.store, "resp_s", "a");
    send(&st, post(&[("x-claude-code-session-id", "h1")], "{}")).await;
    send(&st, post(&[("session-id", "h2")], "{}")).await;
    send(&st, post(&[], r#"{"metadata":{"session_id":"m1"}}"#)).await;
    send(
        &st,
        post(&[], r#"{"messages":[{"role":"user","content":"hi"}]}"#),
    )
    .await;
    send(&st, post(&[], r#"{"previous_response_id":"resp_s"}"#)).await;
    send(&st, post(&[], r#"{"model":"m"}"#)).await;
    let s = st.layer.stats().snapshot();
    assert_eq!(s.sessions_from(SessionSourceKind::Header), 2);
    assert_eq!(s.sessions_from(SessionSourceKind::BodyField), 1);
    assert_eq!(s.sessions_from(SessionSourceKind::Fingerprint), 1);
    assert_eq!(s.sessions_from(SessionSourceKind::ResponseId), 1);
    assert_eq!(s.sessions_from(SessionSourceKind::Function), 0);
    assert_eq!(s.requests, 6);
    assert_eq!(s.no_session, 2);
    assert_eq!(
        s.sessions_by_source()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["header", "body", "response_id", "fingerprint", "function"]
    );
}

/// A store whose every operation is pending once before it answers (a networked store).
#[derive(Clone)]
struct Deferred(MemoryStore);

async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

impl BindingStore for Deferred {
    type LookupFuture = BoxStoreFuture<Option<AuthId>>;
    type CommitFuture = BoxStoreFuture<()>;
    type ClearFuture = BoxStoreFuture<bool>;

    fn lookup(&self, key: &BindingKey) -> Self::LookupFuture {
        let (s, k) = (self.0.clone(), key.clone());
        boxed(async move {
            yield_once().await;
            s.lookup(&k).await
        })
    }

    fn commit(&self, key: &BindingKey, auth: &AuthId) -> Self::CommitFuture {
        let (s, k, a) = (self.0.clone(), key.clone(), auth.clone());
        boxed(async move {
            yield_once().await;
            s.commit(&k, &a).await
        })
    }

    fn clear_if(&self, key: &BindingKey, expected: &AuthId) -> Self::ClearFuture {
        let (s, k, a) = (self.0.clone(), key.clone(), expected.clone());
        boxed(async move {
            yield_once().await;
            s.clear_if(&k, &a).await
        })
    }
}

fn deferred_stack() -> Stack<Deferred> {
    let store = MemoryStore::new();
    let sticky = StickySessionLayer::with_store(Deferred(store.clone()))
        .known_client_headers()
        .learn_response_ids(true);
    let log = Log::default();
    let svc = SessionFromBodyLayer::new().layer(sticky.layer(inner(log.clone())));
    Stack {
        svc,
        log,
        store,
        layer: sticky,
    }
}

#[tokio::test]
async fn deferred_store_learned_response_id_beats_the_session_and_unknown_falls_back() {
    let st = deferred_stack();
    learn(&st.store, "resp_d", "a");
    st.store
        .commit(&session_key("hdr-d"), &AuthId::from("b"))
        .into_inner()
        .unwrap();
    let body = r#"{"previous_response_id":"resp_d"}"#;
    let seen = send(&st, post(&[("session-id", "hdr-d")], body)).await;
    assert_eq!(seen.pinned.as_deref(), Some("a"));
    assert!(seen.hard);
    assert_eq!(seen.source, header("session-id"));
    // Unknown id: the session's own binding (now `a`, committed by the success above).
    let body = r#"{"previous_response_id":"resp_unknown"}"#;
    let seen = send(&st, post(&[("session-id", "hdr-d")], body)).await;
    assert_eq!(seen.pinned.as_deref(), Some("a"));
    assert!(!seen.hard);
    // No session of its own: the response id is the session.
    let seen = send(&st, post(&[], r#"{"previous_response_id":"resp_d"}"#)).await;
    assert_eq!(seen.source, Some(SessionSource::ResponseId));
    assert!(seen.hard);
    let s = st.layer.stats().snapshot();
    assert_eq!(s.hard_pins, 2);
    assert_eq!(s.response_ids_unknown, 1);
    assert_eq!(s.lookups, 2);
    assert_eq!(s.hits, 2);
    assert_eq!(s.unresolved, 0);
    assert_eq!(s.requests, 3);
}

#[tokio::test]
async fn openai_sdk_fixture_with_a_learned_previous_response_id_is_hard_pinned() {
    let st = default_stack();
    let body = include_str!("../fixtures/clients/openai_responses_previous.json");
    learn(&st.store, "resp_68af4c1e2b3c8190a1b2c3d4e5f60718", "a");
    let seen = send(&st, post(&[], body)).await;
    assert_eq!(seen.pinned.as_deref(), Some("a"));
    assert!(seen.hard);
    // Codex sends its session both as a header and as prompt_cache_key: the header wins.
    let body = include_str!("../fixtures/clients/codex_current.json");
    let seen = send(&st, post(&[("session-id", "codex-hdr")], body)).await;
    assert_eq!(seen.source, header("session-id"));
}
