//! The behaviour table in the crate docs, row by row, with controlled frame sequences.
//!
//! The inner service is a scripted account picker: each test hands it the response to
//! return (status, `ServedBy`, and a body whose frames the test feeds through a channel),
//! and it records the `PinnedAuth` it saw.

use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use tower::{Service, ServiceExt};
use tower_sticky_session::store::BindingStore;
use tower_sticky_session::store::MemoryStore;
use tower_sticky_session::*;

use crate::support::scripted;
use scripted::{TestBody, empty, full, streaming};

type Scripted = Arc<Mutex<Option<Result<Response<TestBody>, io::Error>>>>;

#[derive(Clone, Default)]
struct Script {
    next: Scripted,
    seen_pin: Arc<Mutex<Vec<Option<AuthId>>>>,
}

impl Service<Request<()>> for Script {
    type Response = Response<TestBody>;
    type Error = io::Error;
    type Future = std::future::Ready<Result<Response<TestBody>, io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        self.seen_pin
            .lock()
            .unwrap()
            .push(req.extensions().get::<PinnedAuth>().map(|p| p.0.clone()));
        std::future::ready(self.next.lock().unwrap().take().expect("scripted response"))
    }
}

struct Harness {
    script: Script,
    svc: StickySession<Script>,
    store: MemoryStore,
    stats: Stats,
}

fn harness() -> Harness {
    harness_with(StickySessionLayer::new())
}

fn harness_with(layer: StickySessionLayer) -> Harness {
    let script = Script::default();
    let store = layer.store().clone();
    let stats = layer.stats();
    let svc = tower::Layer::layer(&layer, script.clone());
    Harness {
        script,
        svc,
        store,
        stats,
    }
}

fn respond(status: u16, served: Option<&str>, body: TestBody) -> Response<TestBody> {
    scripted::respond(status, served.map(AuthId::from).as_ref(), body)
}

fn key(session: &str) -> BindingKey {
    BindingKey::new(None, SessionId::new(session).unwrap())
}

fn req(session: &str) -> Request<()> {
    Request::builder()
        .header("sticky-session-id", session)
        .body(())
        .unwrap()
}

fn data(s: &'static str) -> Result<Frame<Bytes>, io::Error> {
    Ok(Frame::data(Bytes::from_static(s.as_bytes())))
}

impl Harness {
    async fn call(
        &mut self,
        req: Request<()>,
        res: Result<Response<TestBody>, io::Error>,
    ) -> Result<Response<ResponseBody<TestBody>>, io::Error> {
        *self.script.next.lock().unwrap() = Some(res);
        self.svc.ready().await.unwrap().call(req).await
    }

    fn bound(&self, session: &str) -> Option<String> {
        self.store
            .get(&key(session))
            .map(|b| b.auth.as_str().to_owned())
    }

    fn bind(&self, session: &str, auth: &str) {
        futures_util::FutureExt::now_or_never(
            self.store.commit(&key(session), &AuthId::from(auth)),
        )
        .unwrap()
        .unwrap();
    }

    fn last_pin(&self) -> Option<String> {
        self.script
            .seen_pin
            .lock()
            .unwrap()
            .last()
            .cloned()
            .flatten()
            .map(|a| a.as_str().to_owned())
    }

    /// Serves one successful streamed request to completion on `auth`.
    async fn serve_ok(&mut self, session: &str, auth: &str) {
        let body = full(b"ok");
        let res = self
            .call(req(session), Ok(respond(200, Some(auth), body)))
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
    }
}

// Row: success, body yields its first non-empty data frame → committed before the frame
// is handed on.
#[tokio::test]
async fn first_data_frame_commits_before_it_is_handed_on() {
    let mut h = harness();
    let (tx, body) = streaming();
    let res = h
        .call(req("s1"), Ok(respond(200, Some("a"), body)))
        .await
        .unwrap();
    // Headers are here, but no data yet: nothing is bound.
    assert_eq!(h.bound("s1"), None);
    let mut body = res.into_body();
    tx.send(data("hello")).await.unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    // The moment the client holds the first byte, the binding exists.
    assert_eq!(h.bound("s1").as_deref(), Some("a"));
    assert_eq!(frame.into_data().unwrap(), "hello");
    assert_eq!(h.stats.snapshot().commits, 1);
}

#[tokio::test]
async fn later_requests_are_pinned_to_the_committed_account() {
    let mut h = harness();
    h.serve_ok("s1", "a").await;
    h.serve_ok("s1", "a").await;
    assert_eq!(h.last_pin().as_deref(), Some("a"));
    let s = h.stats.snapshot();
    assert_eq!((s.lookups, s.hits, s.misses), (2, 1, 1));
}

#[tokio::test]
async fn stale_pin_served_by_other_account_rebinds_to_it() {
    let mut h = harness();
    h.bind("s1", "a");
    h.serve_ok("s1", "b").await;
    assert_eq!(h.last_pin().as_deref(), Some("a"));
    assert_eq!(h.bound("s1").as_deref(), Some("b"));
}

// Rows: trailers and empty data frames never count as the first chunk.
#[tokio::test]
async fn empty_data_frames_and_trailers_do_not_commit() {
    let mut h = harness();
    let (tx, body) = streaming();
    let res = h
        .call(req("s1"), Ok(respond(200, Some("a"), body)))
        .await
        .unwrap();
    let mut body = res.into_body();
    tx.send(Ok(Frame::data(Bytes::new()))).await.unwrap();
    let f = body.frame().await.unwrap().unwrap();
    assert!(f.data_ref().is_some_and(|d| d.is_empty()));
    assert_eq!(h.bound("s1"), None);
    tx.send(Ok(Frame::trailers(HeaderMap::new())))
        .await
        .unwrap();
    assert!(body.frame().await.unwrap().unwrap().is_trailers());
    assert_eq!(h.bound("s1"), None);
    drop(tx);
    assert!(body.frame().await.is_none());
    assert_eq!(
        h.stats.snapshot().clear_attempts(ClearReason::EmptyStream),
        1
    );
}

// Trailers end a stream: a server may never poll the body again after them, so a stream
// of nothing but trailers is judged empty when they arrive.
#[tokio::test]
async fn trailers_without_data_clear_before_they_are_handed_on() {
    let mut h = harness();
    h.bind("s1", "a");
    let (tx, body) = streaming();
    let res = h
        .call(req("s1"), Ok(respond(200, Some("a"), body)))
        .await
        .unwrap();
    let mut body = res.into_body();
    tx.send(Ok(Frame::trailers(HeaderMap::new())))
        .await
        .unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert!(frame.is_trailers());
    assert_eq!(h.bound("s1"), None);
    drop(tx);
    assert!(body.frame().await.is_none());
    assert_eq!(
        h.stats.snapshot().clear_attempts(ClearReason::EmptyStream),
        1
    );
}

// Row: success, body ends with no data frame → compare-and-delete, nothing committed.
#[tokio::test]
async fn empty_stream_clears_binding() {
    let mut h = harness();
    h.bind("s1", "a");
    let (tx, body) = streaming();
    let res = h
        .call(req("s1"), Ok(respond(200, Some("a"), body)))
        .await
        .unwrap();
    assert_eq!(h.last_pin().as_deref(), Some("a"));
    drop(tx);
    let mut body = res.into_body();
    assert!(body.frame().await.is_none());
    assert_eq!(h.bound("s1"), None);
    // Polling past the end stays at the end.
    assert!(body.frame().await.is_none());
    assert!(body.is_end_stream());
    let s = h.stats.snapshot();
    assert_eq!((s.commits, s.cleared), (0, 1));
}

#[tokio::test]
async fn empty_stream_from_new_session_creates_nothing() {
    let mut h = harness();
    let (tx, body) = streaming();
    let res = h
        .call(req("s1"), Ok(respond(200, Some("a"), body)))
        .await
        .unwrap();
    drop(tx);
    assert!(
        res.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    assert_eq!(h.bound("s1"), None);
}

// Row: success, body errors before the first data frame → compare-and-delete.
#[tokio::test]
async fn error_before_first_frame_clears_binding() {
    let mut h = harness();
    h.bind("s1", "a");
    let (tx, body) = streaming();
    let res = h
        .call(req("s1"), Ok(respond(200, Some("a"), body)))
        .await
        .unwrap();
    tx.send(Err(io::Error::other("upstream reset")))
        .await
        .unwrap();
    let mut body = res.into_body();
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "upstream reset");
    assert_eq!(h.bound("s1"), None);
    assert_eq!(
        h.stats.snapshot().clear_attempts(ClearReason::StreamError),
        1
    );
}

// Row: body errors after the first data frame → binding kept.
#[tokio::test]
async fn error_after_first_frame_keeps_binding() {
    let mut h = harness();
    let (tx, body) = streaming();
    let res = h
        .call(req("s1"), Ok(respond(200, Some("a"), body)))
        .await
        .unwrap();
    let mut body = res.into_body();
    tx.send(data("first")).await.unwrap();
    body.frame().await.unwrap().unwrap();
    tx.send(Err(io::Error::other("mid-stream reset")))
        .await
        .unwrap();
    assert!(body.frame().await.unwrap().is_err());
    assert_eq!(h.bound("s1").as_deref(), Some("a"));
}

// Row: body dropped before the first data frame → no commit, no clear.
#[tokio::test]
async fn drop_before_first_frame_neither_commits_nor_clears() {
    let mut h = harness();
    h.bind("s1", "a");
    let (_tx, body) = streaming();
    let res = h
        .call(req("s1"), Ok(respond(200, Some("b"), body)))
        .await
        .unwrap();
    drop(res);
    assert_eq!(h.bound("s1").as_deref(), Some("a"));
    let (_tx, body) = streaming();
    let res = h
        .call(req("s2"), Ok(respond(200, Some("b"), body)))
        .await
        .unwrap();
    drop(res);
    assert_eq!(h.bound("s2"), None);
    let s = h.stats.snapshot();
    assert_eq!((s.commits, s.cleared, s.clear_attempts_total()), (0, 0, 0));
}

// Row: known-empty success body (204, 304, HEAD, Content-Length: 0) → committed at once.
#[tokio::test]
async fn known_empty_success_commits_at_once() {
    let mut h = harness();
    for (i, status) in [204u16, 304, 200].into_iter().enumerate() {
        let session = format!("s{i}");
        let empty = empty();
        let res = h
            .call(req(&session), Ok(respond(status, Some("a"), empty)))
            .await
            .unwrap();
        // Committed before the response is even handed over, body never polled.
        assert_eq!(h.bound(&session).as_deref(), Some("a"), "status {status}");
        assert!(res.body().is_end_stream());
    }
}

// Row: response classified as failure → compare-and-delete against ServedBy.
#[tokio::test]
async fn failure_status_clears_binding_of_served_account() {
    for status in [429u16, 500, 502, 503] {
        let mut h = harness();
        h.bind("s1", "a");
        let body = full(b"busy");
        let res = h
            .call(req("s1"), Ok(respond(status, Some("a"), body)))
            .await
            .unwrap();
        // Cleared before the client sees the failure, so its retry is not pinned again.
        assert_eq!(h.bound("s1"), None, "status {status}");
        assert_eq!(res.status().as_u16(), status);
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "busy");
    }
}

#[tokio::test]
async fn failure_of_another_account_keeps_binding() {
    let mut h = harness();
    h.bind("s1", "a");
    let body = empty();
    h.call(req("s1"), Ok(respond(503, Some("b"), body)))
        .await
        .unwrap();
    assert_eq!(h.bound("s1").as_deref(), Some("a"));
}

#[tokio::test]
async fn failure_without_served_by_clears_pinned_account() {
    let mut h = harness();
    h.bind("s1", "a");
    let body = empty();
    h.call(req("s1"), Ok(respond(502, None, body)))
        .await
        .unwrap();
    assert_eq!(h.bound("s1"), None);
}

// Row: inner service returns Err → compare-and-delete of the pinned account.
#[tokio::test]
async fn inner_error_clears_pinned_account() {
    let mut h = harness();
    h.bind("s1", "a");
    let err = h
        .call(req("s1"), Err(io::Error::other("connect failed")))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "connect failed");
    assert_eq!(h.bound("s1"), None);
    assert_eq!(
        h.stats.snapshot().clear_attempts(ClearReason::InnerError),
        1
    );
}

// Row: other responses (400, 404 by default) → existing binding kept, none created.
#[tokio::test]
async fn neutral_status_keeps_existing_and_creates_none() {
    let mut h = harness();
    h.bind("s1", "a");
    for status in [400u16, 401, 404] {
        let body = full(b"no");
        let res = h
            .call(req("s1"), Ok(respond(status, Some("a"), body)))
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
        assert_eq!(h.bound("s1").as_deref(), Some("a"));
        let body = full(b"no");
        let res = h
            .call(req("s2"), Ok(respond(status, Some("b"), body)))
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
        assert_eq!(h.bound("s2"), None);
    }
}

#[tokio::test]
async fn success_without_served_by_commits_nothing() {
    let mut h = harness();
    let body = full(b"ok");
    let res = h
        .call(req("s1"), Ok(respond(200, None, body)))
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
    assert_eq!(h.bound("s1"), None);
}

#[tokio::test]
async fn custom_classifier_401_clears_429_keeps() {
    let classifier = StatusClassifier::new()
        .failure(StatusCode::UNAUTHORIZED)
        .failure(StatusCode::FORBIDDEN)
        .neutral(StatusCode::TOO_MANY_REQUESTS);
    let layer = StickySessionLayer::new().classifier(classifier);
    let store = layer.store().clone();
    let script = Script::default();
    let mut svc = tower::Layer::layer(&layer, script.clone());
    let k = key("s1");
    store.commit(&k, &AuthId::from("a")).await.unwrap();
    for (status, kept) in [(429u16, true), (401, false)] {
        let body = empty();
        *script.next.lock().unwrap() = Some(Ok(respond(status, Some("a"), body)));
        svc.ready().await.unwrap().call(req("s1")).await.unwrap();
        assert_eq!(store.get(&k).is_some(), kept, "status {status}");
    }
}

// Failure mode 5: a late failure of an old request never deletes a newer binding.
#[tokio::test]
async fn late_failure_of_old_request_keeps_newer_binding() {
    let mut h = harness();
    h.bind("s1", "a");
    // Old request, pinned to a, is still waiting for its first chunk.
    let (old_tx, old_body) = streaming();
    let old = h
        .call(req("s1"), Ok(respond(200, Some("a"), old_body)))
        .await
        .unwrap();
    // Meanwhile a fails for someone else and a newer request re-binds to b.
    h.store
        .clear_if(&key("s1"), &AuthId::from("a"))
        .await
        .unwrap();
    h.serve_ok("s1", "b").await;
    assert_eq!(h.bound("s1").as_deref(), Some("b"));
    // Now the old request's stream breaks before its first chunk.
    old_tx
        .send(Err(io::Error::other("late reset")))
        .await
        .unwrap();
    let mut old = old.into_body();
    assert!(old.frame().await.unwrap().is_err());
    assert_eq!(h.bound("s1").as_deref(), Some("b"));
    // And an old request's late 503 from a: same.
    let body = empty();
    *h.script.next.lock().unwrap() = Some(Ok(respond(503, Some("a"), body)));
    let mut req_a = req("s1");
    req_a.extensions_mut().insert(PinnedAuth(AuthId::from("a")));
    h.svc.ready().await.unwrap().call(req_a).await.unwrap();
    assert_eq!(h.bound("s1").as_deref(), Some("b"));
}

#[test]
fn compare_and_delete_races_with_commits_never_remove_the_new_binding() {
    // One thread commits "old" then "new" and reads back; another keeps clearing "old".
    // If compare-and-delete were a read followed by an unconditional delete, the clear
    // could read "old", lose the race to the commit of "new" and delete "new": the read
    // back would then find nothing.
    let store = MemoryStore::new();
    let k = key("race");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clearer = {
        let (store, k, stop) = (store.clone(), k.clone(), stop.clone());
        std::thread::spawn(move || {
            let old = AuthId::from("old");
            let mut removed = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if futures_util::FutureExt::now_or_never(store.clear_if(&k, &old))
                    .unwrap()
                    .unwrap()
                {
                    removed += 1;
                }
            }
            removed
        })
    };
    let (old, new) = (AuthId::from("old"), AuthId::from("new"));
    for _ in 0..20_000 {
        futures_util::FutureExt::now_or_never(store.commit(&k, &old))
            .unwrap()
            .unwrap();
        // Leave "old" in place long enough for the clearer to see it.
        for _ in 0..500 {
            std::hint::spin_loop();
        }
        futures_util::FutureExt::now_or_never(store.commit(&k, &new))
            .unwrap()
            .unwrap();
        for _ in 0..500 {
            std::hint::spin_loop();
        }
        assert_eq!(store.get(&k).map(|b| b.auth), Some(new.clone()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let removed = clearer.join().unwrap();
    // The clearer did take part in the race (it removed some "old" bindings).
    assert!(removed > 0, "the clearing thread never hit an old binding");
}

// Explicit pin precedence.
#[tokio::test]
async fn explicit_pin_wins_over_store() {
    let mut h = harness();
    h.bind("s1", "a");
    let mut r = req("s1");
    r.extensions_mut()
        .insert(PinnedAuth(AuthId::from("admin-choice")));
    let body = full(b"ok");
    let res = h
        .call(r, Ok(respond(200, Some("admin-choice"), body)))
        .await
        .unwrap();
    assert_eq!(h.last_pin().as_deref(), Some("admin-choice"));
    res.into_body().collect().await.unwrap();
    assert_eq!(h.bound("s1").as_deref(), Some("admin-choice"));
    let s = h.stats.snapshot();
    assert_eq!((s.explicit_pins, s.lookups), (1, 0));
}

// Failure mode 3: bindings keyed by (scope, session).
#[tokio::test]
async fn same_session_under_two_scopes_is_two_bindings() {
    let layer =
        StickySessionLayer::new().scope_fn(|p| p.headers.get("x-provider").map(Scope::from));
    let mut h = harness_with(layer);
    let scoped = |provider: &'static str| {
        let mut r = req("s1");
        r.headers_mut()
            .insert("x-provider", provider.parse().unwrap());
        r
    };
    let ok = || full(b"ok");
    let res = h
        .call(scoped("openai"), Ok(respond(200, Some("openai-1"), ok())))
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
    let res = h
        .call(
            scoped("anthropic"),
            Ok(respond(200, Some("anthropic-2"), ok())),
        )
        .await
        .unwrap();
    assert_eq!(
        h.last_pin(),
        None,
        "a binding of another scope must not pin"
    );
    res.into_body().collect().await.unwrap();
    let res = h
        .call(scoped("openai"), Ok(respond(200, Some("openai-1"), ok())))
        .await
        .unwrap();
    assert_eq!(h.last_pin().as_deref(), Some("openai-1"));
    res.into_body().collect().await.unwrap();
    let res = h
        .call(
            scoped("anthropic"),
            Ok(respond(200, Some("anthropic-2"), ok())),
        )
        .await
        .unwrap();
    assert_eq!(h.last_pin().as_deref(), Some("anthropic-2"));
    res.into_body().collect().await.unwrap();
    // The unscoped binding is a third, separate one.
    assert_eq!(h.bound("s1"), None);
}

#[tokio::test]
async fn session_id_and_binding_key_are_in_request_extensions() {
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let inner = tower::service_fn(move |req: Request<()>| {
        let ext = (
            req.extensions().get::<SessionId>().cloned(),
            req.extensions().get::<BindingKey>().cloned(),
        );
        *seen2.lock().unwrap() = Some(ext);
        async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
    });
    let mut svc = tower::ServiceBuilder::new()
        .layer(StickySessionLayer::new())
        .service(inner);
    svc.ready()
        .await
        .unwrap()
        .call(req("conv-7"))
        .await
        .unwrap();
    let (id, key) = seen.lock().unwrap().take().unwrap();
    assert_eq!(id.unwrap().as_str(), "conv-7");
    assert_eq!(key.unwrap().session().as_str(), "conv-7");
}

// Bad input: unsticky, counted, never a failure (unless strict).
#[tokio::test]
async fn invalid_session_header_is_served_unsticky_and_counted() {
    let mut h = harness();
    h.bind("s1", "a");
    let long = "x".repeat(257);
    let cases: Vec<(Vec<&[u8]>, InvalidSessionId)> = vec![
        (vec![b""], InvalidSessionId::Empty),
        (vec![long.as_bytes()], InvalidSessionId::TooLong),
        (vec![b"has space"], InvalidSessionId::Byte),
        (vec![b"tab\there"], InvalidSessionId::Byte),
        (vec![b"caf\xc3\xa9"], InvalidSessionId::Byte),
        (vec![b"s1", b"s2"], InvalidSessionId::Conflicting),
    ];
    for (values, reason) in &cases {
        let mut r = Request::new(());
        for v in values {
            r.headers_mut().append(
                "sticky-session-id",
                http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        let body = full(b"ok");
        let res = h.call(r, Ok(respond(200, Some("b"), body))).await.unwrap();
        assert_eq!(res.status(), 200, "{reason:?}");
        assert_eq!(h.last_pin(), None);
        res.into_body().collect().await.unwrap();
        assert!(
            h.stats.snapshot().invalid(*reason) > 0,
            "{reason:?} not counted"
        );
    }
    assert_eq!(h.stats.snapshot().invalid_total(), cases.len() as u64);
    // Nothing was committed under any of those, and the real binding is untouched.
    assert_eq!(h.stats.snapshot().commits, 0);
    assert_eq!(h.bound("s1").as_deref(), Some("a"));
}

#[tokio::test]
async fn strict_mode_answers_400_with_reason() {
    let mut h = harness_with(StickySessionLayer::new().reject_invalid(true));
    let r = Request::builder()
        .header("sticky-session-id", "x".repeat(300))
        .body(())
        .unwrap();
    let res = h.svc.ready().await.unwrap().call(r).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let expected =
        "invalid session id in sticky-session-id: session id is too long (at most 256 bytes)\n";
    assert_eq!(res.body().size_hint().exact(), Some(expected.len() as u64));
    assert_eq!(res.headers()["content-type"], "text/plain; charset=utf-8");
    let text = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, expected);
    assert!(
        h.script.seen_pin.lock().unwrap().is_empty(),
        "inner service must not be called"
    );
    assert_eq!(h.stats.snapshot().rejected, 1);
    // A request without any header is still fine in strict mode.
    let body = empty();
    let res = h
        .call(Request::new(()), Ok(respond(200, Some("a"), body)))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn no_session_header_passes_through_untouched() {
    let mut h = harness();
    let body = full(b"ok");
    let res = h
        .call(Request::new(()), Ok(respond(200, Some("a"), body)))
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
    assert_eq!(h.store.entry_count(), 0);
    let s = h.stats.snapshot();
    assert_eq!((s.no_session, s.lookups, s.commits), (1, 0, 0));
}

// Tower hygiene.
#[tokio::test]
async fn poll_ready_is_delegated() {
    let (mut svc, mut handle) =
        tower_test::mock::spawn_layer::<Request<()>, Response<Empty<Bytes>>, _>(
            StickySessionLayer::new(),
        );
    handle.allow(0);
    assert!(svc.poll_ready().is_pending());
    handle.send_error(io::Error::other("not ready"));
    let err = match svc.poll_ready() {
        Poll::Ready(Err(e)) => e,
        other => panic!("expected inner readiness error, got {other:?}"),
    };
    assert_eq!(err.to_string(), "not ready");

    let (mut svc, mut handle) =
        tower_test::mock::spawn_layer::<Request<()>, Response<Empty<Bytes>>, _>(
            StickySessionLayer::new(),
        );
    handle.allow(1);
    assert!(svc.poll_ready().is_ready());
    let fut = svc.call(req("s1"));
    let (r, send) = handle.next_request().await.unwrap();
    assert_eq!(r.extensions().get::<SessionId>().unwrap().as_str(), "s1");
    send.send_response(Response::new(Empty::new()));
    fut.await.unwrap();
}

#[tokio::test]
async fn size_hint_and_end_of_stream_are_forwarded_exactly() {
    let mut h = harness();
    let body = full(b"12345");
    let res = h
        .call(req("s1"), Ok(respond(200, Some("a"), body)))
        .await
        .unwrap();
    let mut body = res.into_body();
    assert_eq!(body.size_hint().exact(), Some(5));
    assert!(!body.is_end_stream());
    body.frame().await.unwrap().unwrap();
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));

    // Untracked responses too.
    let body = full(b"123");
    let res = h
        .call(Request::new(()), Ok(respond(200, None, body)))
        .await
        .unwrap();
    assert_eq!(res.body().size_hint().exact(), Some(3));
}

fn assert_send_sync<T: Send + Sync>() {}
fn assert_send<T: Send>() {}

#[test]
fn service_future_and_body_are_send_and_sync() {
    assert_send_sync::<StickySessionLayer>();
    assert_send_sync::<StickySession<Script>>();
    assert_send::<<StickySession<Script> as Service<Request<()>>>::Future>();
    assert_send_sync::<ResponseBody<Full<Bytes>>>();
    // A networked store's futures are Send but not Sync; the body stays Sync anyway
    // (http-body-util's BoxBody and others require it).
    #[cfg(feature = "redis")]
    assert_send_sync::<ResponseBody<Full<Bytes>, tower_sticky_session::store::RedisStore>>();
    // A body whose error is Send but not Sync.
    type SendOnlyError =
        http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send>>;
    assert_send_sync::<ResponseBody<SendOnlyError>>();
}

/// The layer adds its extensions next to whatever the request already carries (hyper's
/// upgrade handle, axum's `MatchedPath`, an outer layer's values), with or without a map
/// already there, and a hit's `PinnedAuth` lands in the same map.
#[tokio::test]
async fn extensions_already_on_the_request_are_kept_next_to_ours() {
    #[derive(Clone, Debug, PartialEq)]
    struct Outer(u32);
    #[derive(Clone, Debug, PartialEq)]
    struct Another(&'static str);

    type Seen = Arc<
        Mutex<
            Vec<(
                Option<Outer>,
                Option<Another>,
                bool,
                bool,
                bool,
                Option<AuthId>,
            )>,
        >,
    >;
    let seen: Seen = Arc::default();
    let layer = StickySessionLayer::new();
    let s = seen.clone();
    let mut svc = tower::Layer::layer(
        &layer,
        tower::service_fn(move |req: Request<()>| {
            let e = req.extensions();
            s.lock().unwrap().push((
                e.get::<Outer>().cloned(),
                e.get::<Another>().cloned(),
                e.get::<SessionId>().is_some(),
                e.get::<BindingKey>().is_some(),
                e.get::<SessionSource>().is_some(),
                e.get::<PinnedAuth>().map(|p| p.0.clone()),
            ));
            let mut res = Response::new(Full::new(Bytes::from_static(b"x")));
            res.extensions_mut()
                .insert(ServedBy(AuthId::from("acct-a")));
            std::future::ready(Ok::<_, Infallible>(res))
        }),
    );
    let send = |with: bool| {
        let mut r = req("ext-session");
        if with {
            r.extensions_mut().insert(Outer(7));
            r.extensions_mut().insert(Another("kept"));
        }
        r
    };
    for with in [false, true, true] {
        let res = svc.ready().await.unwrap().call(send(with)).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    let seen = seen.lock().unwrap();
    // First request: no map on the request, a miss (no pin); then two hits with a map.
    assert_eq!(seen[0], (None, None, true, true, true, None));
    for s in &seen[1..] {
        assert_eq!(
            *s,
            (
                Some(Outer(7)),
                Some(Another("kept")),
                true,
                true,
                true,
                Some(AuthId::from("acct-a"))
            )
        );
    }
}
