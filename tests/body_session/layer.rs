//! SessionFromBodyLayer through tower directly: what is read, what is passed on
//! unread, and that the inner service always sees the client's exact bytes, headers,
//! trailers and errors.

use std::convert::Infallible;
use std::io;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tower::{Layer, Service, ServiceExt};
use tower_sticky_session::body_session::{
    BodySessionStatsSnapshot, BodySignals, BufferedBody, SessionFromBodyLayer,
};

type TestBody = BoxBody<Bytes, io::Error>;
type FrameResult = Result<Frame<Bytes>, io::Error>;

/// What the inner service saw.
#[derive(Debug)]
struct Seen {
    signals: Option<BodySignals>,
    replay: Option<Bytes>,
    exact_len: Option<u64>,
    content_length: Option<String>,
    bytes: Vec<u8>,
    trailers: Option<HeaderMap>,
    error: Option<String>,
}

/// An inner service that reads the whole body it is given and reports what it saw.
async fn inner(req: Request<BufferedBody<TestBody>>) -> Result<Response<Seen>, Infallible> {
    let signals = req.extensions().get::<BodySignals>().cloned();
    let replay = req.body().bytes().cloned();
    let exact_len = req.body().size_hint().exact();
    let content_length = req
        .headers()
        .get("content-length")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body = req.into_body();
    let mut bytes = Vec::new();
    let mut trailers = None;
    let mut error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => bytes.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            },
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    Ok(Response::new(Seen {
        signals,
        replay,
        exact_len,
        content_length,
        bytes,
        trailers,
        error,
    }))
}

fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

fn stream(frames: Vec<FrameResult>) -> TestBody {
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

fn data(b: &[u8]) -> FrameResult {
    Ok(Frame::data(Bytes::copy_from_slice(b)))
}

fn json_request() -> http::request::Builder {
    Request::post("/v1/responses").header("content-type", "application/json")
}

async fn call(layer: &SessionFromBodyLayer, req: Request<TestBody>) -> Seen {
    let svc = layer.layer(tower::service_fn(inner));
    svc.oneshot(req).await.unwrap().into_body()
}

fn stats(layer: &SessionFromBodyLayer) -> BodySessionStatsSnapshot {
    layer.stats().snapshot()
}

const CODEX: &str = r#"{"model":"gpt-5-codex","instructions":"You are Codex.","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}],"prompt_cache_key":"0199b7a4-5c1e-7d22-9f00-4a1b2c3d4e5f","stream":true}"#;

#[tokio::test]
async fn small_json_body_is_scanned_and_passed_on_byte_exact_with_its_content_length() {
    let layer = SessionFromBodyLayer::new();
    let req = json_request()
        .header("content-length", CODEX.len())
        .body(full(CODEX))
        .unwrap();
    let seen = call(&layer, req).await;
    assert_eq!(seen.bytes, CODEX.as_bytes());
    assert_eq!(
        seen.content_length.as_deref(),
        Some(&*CODEX.len().to_string())
    );
    assert_eq!(seen.exact_len, Some(CODEX.len() as u64));
    assert_eq!(seen.replay.as_deref(), Some(CODEX.as_bytes()));
    let session = seen.signals.unwrap().session.unwrap();
    assert_eq!(session.field, "prompt_cache_key");
    assert_eq!(session.id.as_str(), "0199b7a4-5c1e-7d22-9f00-4a1b2c3d4e5f");
    let s = stats(&layer);
    assert_eq!((s.scanned, s.found_in("prompt_cache_key")), (1, 1));
}

#[tokio::test]
async fn body_in_many_chunks_is_gathered_and_replayable() {
    let layer = SessionFromBodyLayer::new();
    let frames = CODEX.as_bytes().chunks(7).map(data).collect();
    let req = json_request().body(stream(frames)).unwrap();
    let seen = call(&layer, req).await;
    assert_eq!(seen.bytes, CODEX.as_bytes());
    assert_eq!(seen.replay.as_deref(), Some(CODEX.as_bytes()));
    assert_eq!(seen.exact_len, Some(CODEX.len() as u64));
    assert!(seen.signals.unwrap().session.is_some());
}

#[tokio::test]
async fn trailers_follow_the_buffered_bytes() {
    let layer = SessionFromBodyLayer::new();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let frames = vec![
        data(&CODEX.as_bytes()[..10]),
        data(&CODEX.as_bytes()[10..]),
        Ok(Frame::trailers(trailers.clone())),
    ];
    let seen = call(&layer, json_request().body(stream(frames)).unwrap()).await;
    assert_eq!(seen.bytes, CODEX.as_bytes());
    assert_eq!(seen.trailers, Some(trailers));
    assert!(seen.signals.is_some());
}

#[tokio::test]
async fn header_session_skips_the_body_read_when_response_ids_are_not_wanted() {
    let layer = SessionFromBodyLayer::new().response_id_with_header(false);
    let req = json_request()
        .header("session-id", "0199b7a4")
        .body(full(CODEX))
        .unwrap();
    let seen = call(&layer, req).await;
    assert_eq!(seen.bytes, CODEX.as_bytes());
    assert!(seen.signals.is_none(), "not read");
    assert!(seen.replay.is_none());
    assert_eq!(stats(&layer).header_session, 1);

    // An invalid header value is no session: the body is read.
    let req = json_request()
        .header("session-id", "has space")
        .body(full(CODEX))
        .unwrap();
    assert!(call(&layer, req).await.signals.is_some());
}

#[tokio::test]
async fn header_session_still_reads_previous_response_id_by_default() {
    let layer = SessionFromBodyLayer::new();
    let body = r#"{"model":"gpt-5","previous_response_id":"resp_0abc","input":"next"}"#;
    let req = json_request()
        .header("x-session-affinity", "ses_1")
        .body(full(body))
        .unwrap();
    let seen = call(&layer, req).await;
    let signals = seen.signals.unwrap();
    assert_eq!(signals.previous_response_id.unwrap().as_str(), "resp_0abc");
    assert_eq!(stats(&layer).header_session, 0);
}

#[tokio::test]
async fn custom_header_list_replaces_the_known_clients() {
    let layer = SessionFromBodyLayer::new()
        .headers(["x-my-session".parse().unwrap()])
        .response_id_with_header(false);
    let req = json_request()
        .header("session-id", "known-but-not-configured")
        .body(full(CODEX))
        .unwrap();
    assert!(call(&layer, req).await.signals.is_some());
    let req = json_request()
        .header("x-my-session", "s")
        .body(full(CODEX))
        .unwrap();
    assert!(call(&layer, req).await.signals.is_none());
}

#[tokio::test]
async fn non_json_compressed_and_empty_bodies_are_not_read() {
    let layer = SessionFromBodyLayer::new();
    let req = Request::post("/")
        .header("content-type", "text/plain")
        .body(full(CODEX))
        .unwrap();
    let seen = call(&layer, req).await;
    assert!(seen.signals.is_none());
    assert_eq!(seen.bytes, CODEX.as_bytes());

    let req = json_request()
        .header("content-encoding", "gzip")
        .body(full(&b"\x1f\x8b not really"[..]))
        .unwrap();
    let seen = call(&layer, req).await;
    assert!(seen.signals.is_none());
    assert_eq!(seen.bytes, b"\x1f\x8b not really");

    let req = Request::get("/")
        .body(Empty::new().map_err(|e| match e {}).boxed())
        .unwrap();
    assert!(call(&layer, req).await.signals.is_none());

    let s = stats(&layer);
    assert_eq!((s.not_json, s.empty, s.scanned), (2, 1, 0));
}

#[tokio::test]
async fn absent_content_type_is_read_as_json() {
    let layer = SessionFromBodyLayer::new();
    let req = Request::post("/").body(full(CODEX)).unwrap();
    assert!(call(&layer, req).await.signals.is_some());
}

#[tokio::test]
async fn invalid_json_is_passed_on_unchanged_and_counted() {
    let layer = SessionFromBodyLayer::new();
    let body = r#"{"prompt_cache_key":"abc","#;
    let seen = call(&layer, json_request().body(full(body)).unwrap()).await;
    assert!(seen.signals.is_none());
    assert_eq!(seen.bytes, body.as_bytes());
    assert_eq!(stats(&layer).invalid_json, 1);
}

#[tokio::test]
async fn content_length_over_the_limit_is_streamed_unread() {
    let layer = SessionFromBodyLayer::new().max_buffer(64);
    let body = CODEX; // longer than 64 bytes
    let req = json_request()
        .header("content-length", body.len())
        .body(full(body))
        .unwrap();
    let seen = call(&layer, req).await;
    assert!(seen.signals.is_none());
    assert!(seen.replay.is_none());
    assert_eq!(seen.bytes, body.as_bytes());
    assert_eq!(seen.exact_len, Some(body.len() as u64));
    assert_eq!(stats(&layer).too_large, 1);
}

#[tokio::test]
async fn chunked_body_outgrowing_the_limit_is_passed_on_prefix_first_then_the_rest() {
    let layer = SessionFromBodyLayer::new().max_buffer(50);
    let frames: Vec<_> = CODEX.as_bytes().chunks(20).map(data).collect();
    let seen = call(&layer, json_request().body(stream(frames)).unwrap()).await;
    assert_eq!(seen.bytes, CODEX.as_bytes());
    assert!(seen.signals.is_none());
    assert!(seen.replay.is_none());
    assert_eq!(stats(&layer).too_large, 1);
}

#[tokio::test]
async fn stream_error_while_buffering_reaches_the_inner_service_after_the_bytes_read() {
    let layer = SessionFromBodyLayer::new();
    let frames = vec![
        data(b"{\"prompt_cache_key\":"),
        data(b"\"abc\""),
        Err(io::Error::other("client reset the stream")),
    ];
    let seen = call(&layer, json_request().body(stream(frames)).unwrap()).await;
    assert_eq!(seen.bytes, b"{\"prompt_cache_key\":\"abc\"");
    assert_eq!(seen.error.as_deref(), Some("client reset the stream"));
    assert!(seen.signals.is_none());
    assert!(seen.replay.is_none());
    assert_eq!(stats(&layer).errors, 1);
}

#[tokio::test]
async fn a_streaming_body_waits_only_on_the_client() {
    // The inner service is called only once the body has ended; nothing else times it.
    let layer = SessionFromBodyLayer::new();
    let (tx, rx) = mpsc::channel::<FrameResult>(4);
    let body = StreamBody::new(ReceiverStream::new(rx)).boxed();
    let svc = layer.layer(tower::service_fn(inner));
    let call = tokio::spawn(svc.oneshot(json_request().body(body).unwrap()));
    tx.send(data(&CODEX.as_bytes()[..30])).await.unwrap();
    tokio::task::yield_now().await;
    assert!(!call.is_finished());
    tx.send(data(&CODEX.as_bytes()[30..])).await.unwrap();
    drop(tx);
    let seen = call.await.unwrap().unwrap().into_body();
    assert_eq!(seen.bytes, CODEX.as_bytes());
    assert!(seen.signals.is_some());
}

#[tokio::test]
async fn poll_ready_is_delegated_and_the_ready_service_is_the_one_called() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<BufferedBody<TestBody>>, ()>();
    let mut svc = SessionFromBodyLayer::new().layer(mock);
    handle.allow(0);
    assert!(
        svc.poll_ready(&mut std::task::Context::from_waker(std::task::Waker::noop()))
            .is_pending(),
        "not ready while the inner service is not"
    );
    handle.allow(1);
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let fut = svc.call(json_request().body(full(CODEX)).unwrap());
    let respond = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert!(req.extensions().get::<BodySignals>().is_some());
        send.send_response(());
    });
    fut.await.unwrap();
    respond.await.unwrap();
}

#[tokio::test]
async fn layer_clones_share_their_stats() {
    let layer = SessionFromBodyLayer::new();
    let clone = layer.clone();
    call(&clone, json_request().body(full(CODEX)).unwrap()).await;
    assert_eq!(stats(&layer).scanned, 1);
}

#[tokio::test]
async fn fingerprint_is_off_by_default_and_on_when_asked() {
    let body = r#"{"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":"hello"}]}"#;
    let off = SessionFromBodyLayer::new();
    let seen = call(&off, json_request().body(full(body)).unwrap()).await;
    assert!(seen.signals.unwrap().fingerprint.is_none());
    let on = SessionFromBodyLayer::new().fingerprint(true);
    let a = call(&on, json_request().body(full(body)).unwrap()).await;
    let b = call(&on, json_request().body(full(body)).unwrap()).await;
    let (a, b) = (
        a.signals.unwrap().fingerprint,
        b.signals.unwrap().fingerprint,
    );
    assert!(a.is_some());
    assert_eq!(a, b);
    assert_eq!(stats(&on).fingerprints, 2);
}

#[tokio::test]
async fn gemini_api_turns_of_one_conversation_share_a_fingerprint() {
    // Gemini CLI with an API key: `POST /v1beta/models/{model}:streamGenerateContent`, no
    // session id; the second turn resends the first with a model turn and a new user turn.
    let system = r#""systemInstruction":{"role":"user","parts":[{"text":"You are Gemini CLI."}]}"#;
    let rest = r#""generationConfig":{"temperature":0},"tools":[{"functionDeclarations":[{"name":"ls"}]}]"#;
    let opener = r#"{"role":"user","parts":[{"text":"This is the Gemini CLI."}]}"#;
    let turn1 = format!(r#"{{"contents":[{opener}],{system},{rest}}}"#);
    let turn2 = format!(
        r#"{{"contents":[{opener},{{"role":"model","parts":[{{"text":"hi"}},{{"functionCall":{{"name":"ls","args":{{}}}}}}]}},{{"role":"user","parts":[{{"functionResponse":{{"name":"ls","response":{{}}}}}}]}},{{"role":"user","parts":[{{"text":"say hi again"}}]}}],{system},{rest}}}"#
    );
    let request = |body: &str| {
        Request::post("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
            .header("content-type", "application/json")
            .body(stream(body.as_bytes().chunks(7).map(data).collect()))
            .unwrap()
    };
    let layer = SessionFromBodyLayer::new().fingerprint(true);
    let a = call(&layer, request(&turn1)).await.signals.unwrap();
    let b = call(&layer, request(&turn2)).await.signals.unwrap();
    assert!(a.session.is_none());
    let a = a.fingerprint.expect("a Gemini body is fingerprinted");
    assert!(a.as_str().starts_with("fp-"));
    assert_eq!(Some(a.clone()), b.fingerprint);
    // The snake_case spelling of the system instruction: the same conversation.
    let snake = turn1.replace("systemInstruction", "system_instruction");
    let c = call(&layer, request(&snake)).await.signals.unwrap();
    assert_eq!(Some(a.clone()), c.fingerprint);
    // Another system instruction or opener: another conversation.
    for other in [
        turn1.replace("You are Gemini CLI.", "You are someone else."),
        turn1.replace("This is the Gemini CLI.", "This is not the Gemini CLI."),
    ] {
        let d = call(&layer, request(&other)).await.signals.unwrap();
        assert_ne!(Some(a.clone()), d.fingerprint);
    }
    assert_eq!(stats(&layer).fingerprints, 5);
}

#[tokio::test]
async fn a_stream_with_no_data_is_counted_empty_and_ends_empty() {
    let layer = SessionFromBodyLayer::new();
    let frames = vec![data(b""), data(b"")];
    let seen = call(&layer, json_request().body(stream(frames)).unwrap()).await;
    assert!(seen.bytes.is_empty());
    assert_eq!(seen.exact_len, Some(0));
    let s = stats(&layer);
    assert_eq!((s.empty, s.invalid_json), (1, 0));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever the chunking, the limit and the content, the inner service gets the
    /// client's bytes, in order, and a replay buffer only when the body fit.
    #[test]
    fn any_chunking_and_limit_passes_on_the_same_bytes(
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        json in proptest::prelude::any::<bool>(),
        cuts in proptest::collection::vec(0usize..600, 0..8),
        limit in 0usize..700,
    ) {
        let body = if json {
            let mut b = format!(r#"{{"prompt_cache_key":"p","x":"{}"}}"#, "y".repeat(body.len())).into_bytes();
            b.truncate(b.len().min(600));
            b
        } else {
            body
        };
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
        cuts.push(0);
        cuts.push(body.len());
        cuts.sort_unstable();
        let frames: Vec<FrameResult> = cuts.windows(2).map(|w| data(&body[w[0]..w[1]])).collect();
        let layer = SessionFromBodyLayer::new().max_buffer(limit);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let seen = rt.block_on(call(&layer, json_request().body(stream(frames)).unwrap()));
        proptest::prop_assert_eq!(&seen.bytes, &body);
        if let Some(replay) = &seen.replay {
            proptest::prop_assert_eq!(&replay[..], &body[..]);
            proptest::prop_assert!(body.len() <= limit);
        }
        proptest::prop_assert!(seen.error.is_none());
    }
}
