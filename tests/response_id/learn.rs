//! Response-id affinity (`learn_response_ids(true)`): the layer learns `resp_… → account`
//! from a success's first data frames (a JSON body's `id`, the first SSE event
//! `response.created`), and a later request whose `previous_response_id` was learned is
//! hard-pinned to that account. Through tower with streaming bodies, and through hyper
//! over real TCP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};
use tower_sticky_session::body_session::{BufferedBody, SessionFromBody, SessionFromBodyLayer};
use tower_sticky_session::{
    AuthId, BindingKey, HardPin, PinnedAuth, ServedBy, SessionId, StickySession,
    StickySessionLayer, store::BindingStore, store::MemoryStore,
};

type Body = BoxBody<Bytes, Infallible>;
type Feed = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// How the inner service answers one request (a request extension).
#[derive(Clone)]
struct Answer {
    status: u16,
    served: Option<&'static str>,
    body: Arc<Mutex<Option<Body>>>,
    /// `Content-Encoding` of the answer, if any.
    encoding: Option<&'static str>,
}

impl Answer {
    fn new(status: u16, served: Option<&'static str>, body: Body) -> Self {
        Self {
            status,
            served,
            body: Arc::new(Mutex::new(Some(body))),
            encoding: None,
        }
    }

    fn encoded(mut self, encoding: &'static str) -> Self {
        self.encoding = Some(encoding);
        self
    }
}

fn full(bytes: &'static [u8]) -> Body {
    Full::new(Bytes::from_static(bytes)).boxed()
}

fn streaming() -> (Feed, Body) {
    let (tx, rx) = mpsc::channel(16);
    (tx, StreamBody::new(ReceiverStream::new(rx)).boxed())
}

fn data(bytes: impl Into<Bytes>) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(bytes.into()))
}

/// What the inner service saw.
#[derive(Clone, Debug, Default)]
struct Seen {
    pinned: Option<String>,
    hard: bool,
}

type Log = Arc<Mutex<Vec<Seen>>>;
type Inner = BoxCloneService<Request<BufferedBody<Full<Bytes>>>, Response<Body>, Infallible>;

/// Answers as the request's [`Answer`] says; `ServedBy` is the pinned account when there
/// is one (an inner service that honours pins), else the answer's.
fn inner(log: Log) -> Inner {
    BoxCloneService::new(tower::service_fn(
        move |req: Request<BufferedBody<Full<Bytes>>>| {
            let e = req.extensions();
            let pinned = e.get::<PinnedAuth>().map(|p| p.0.as_str().to_owned());
            log.lock().unwrap().push(Seen {
                pinned: pinned.clone(),
                hard: e.get::<HardPin>().is_some(),
            });
            let answer = e.get::<Answer>().cloned().expect("an Answer");
            async move {
                let body = answer.body.lock().unwrap().take().unwrap();
                let mut res = Response::new(body);
                *res.status_mut() = StatusCode::from_u16(answer.status).unwrap();
                if let Some(enc) = answer.encoding {
                    res.headers_mut()
                        .insert(http::header::CONTENT_ENCODING, enc.parse().unwrap());
                }
                if let Some(served) = pinned.as_deref().or(answer.served) {
                    res.extensions_mut().insert(ServedBy(AuthId::from(served)));
                }
                Ok::<_, Infallible>(res)
            }
        },
    ))
}

struct Stack {
    svc: SessionFromBody<StickySession<Inner>>,
    log: Log,
    store: MemoryStore,
    layer: StickySessionLayer,
}

fn stack(learn: bool) -> Stack {
    let layer = StickySessionLayer::new()
        .known_client_headers()
        .learn_response_ids(learn);
    let log = Log::default();
    let store = layer.store().clone();
    let svc = SessionFromBodyLayer::new().layer(layer.layer(inner(log.clone())));
    Stack {
        svc,
        log,
        store,
        layer,
    }
}

fn request(headers: &[(&str, &str)], body: &str, answer: Answer) -> Request<Full<Bytes>> {
    let mut req = Request::post("/v1/responses").header("content-type", "application/json");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let mut req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    req.extensions_mut().insert(answer);
    req
}

async fn send(st: &Stack, req: Request<Full<Bytes>>) -> (StatusCode, Bytes, Seen) {
    let res = st.svc.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        body,
        st.log.lock().unwrap().last().cloned().unwrap(),
    )
}

/// The response body of a request without a session, answered by `answer`, to be read
/// frame by frame.
async fn open(
    st: &Stack,
    answer: Answer,
) -> impl http_body::Body<Data = Bytes, Error = Infallible> + Unpin {
    let req = request(&[], "{}", answer);
    st.svc.clone().oneshot(req).await.unwrap().into_body()
}

fn learned(store: &MemoryStore, id: &str) -> Option<String> {
    let key = BindingKey::response_id(None, SessionId::new(id).unwrap());
    store.get(&key).map(|b| b.auth.as_str().to_owned())
}

fn continuation(id: &str) -> String {
    format!(r#"{{"model":"gpt-5","previous_response_id":"{id}","input":"next"}}"#)
}

const CREATED: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_sse1\",\"object\":\"response\",\"status\":\"in_progress\",\"instructions\":\"long\"}}\n\n";

#[tokio::test]
async fn learns_from_a_json_body_without_any_session_id_and_hard_pins_the_continuation() {
    let st = stack(true);
    let body = full(br#"{"id":"resp_json1","object":"response","status":"completed"}"#);
    let (status, got, _) = send(&st, request(&[], "{}", Answer::new(200, Some("a"), body))).await;
    assert_eq!(status, 200);
    assert_eq!(
        &got[..],
        br#"{"id":"resp_json1","object":"response","status":"completed"}"#
    );
    assert_eq!(learned(&st.store, "resp_json1").as_deref(), Some("a"));
    assert_eq!(st.layer.stats().snapshot().response_ids_learned, 1);
    // The continuation goes to `a`, hard, whatever the inner service would pick.
    let answer = Answer::new(200, Some("b"), full(br#"{"id":"resp_json2"}"#));
    let (_, _, seen) = send(&st, request(&[], &continuation("resp_json1"), answer)).await;
    assert_eq!(seen.pinned.as_deref(), Some("a"));
    assert!(seen.hard);
    // Its own response teaches the next link of the chain.
    assert_eq!(learned(&st.store, "resp_json2").as_deref(), Some("a"));
}

#[tokio::test]
async fn learns_from_the_first_sse_event_response_created() {
    let st = stack(true);
    let (tx, body) = streaming();
    tx.send(data(CREATED)).await.unwrap();
    tx.send(data(
        "event: response.output_text.delta\ndata: {\"delta\":\"hi\"}\n\n",
    ))
    .await
    .unwrap();
    drop(tx);
    let answer = Answer::new(200, Some("a"), body);
    let (_, got, _) = send(&st, request(&[("session-id", "s1")], "{}", answer)).await;
    assert!(got.starts_with(CREATED.as_bytes()));
    assert_eq!(learned(&st.store, "resp_sse1").as_deref(), Some("a"));
}

#[tokio::test]
async fn split_first_event_is_learned_before_the_frame_that_completes_the_id_is_handed_on() {
    let st = stack(true);
    let (tx, body) = streaming();
    let mut body = open(&st, Answer::new(200, Some("a"), body)).await;
    let (first, rest) = CREATED.split_at(CREATED.find("resp_sse1").unwrap() + 6);
    tx.send(data(first)).await.unwrap();
    let f = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&f[..], first.as_bytes(), "the partial frame is not delayed");
    assert_eq!(learned(&st.store, "resp_sse1"), None);
    // One byte at a time, still within the bound.
    let (mid, rest) = rest.split_at(2);
    tx.send(data(mid)).await.unwrap();
    body.frame().await.unwrap().unwrap();
    assert_eq!(learned(&st.store, "resp_sse1"), None);
    tx.send(data(rest)).await.unwrap();
    let f = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&f[..], rest.as_bytes());
    assert_eq!(learned(&st.store, "resp_sse1").as_deref(), Some("a"));
}

#[tokio::test]
async fn split_json_body_is_learned_too() {
    let st = stack(true);
    let (tx, body) = streaming();
    tx.send(data("{\"object\":\"response\",\"i")).await.unwrap();
    tx.send(data("d\":\"resp_js")).await.unwrap();
    tx.send(data("on3\",\"status\":\"completed\"}"))
        .await
        .unwrap();
    drop(tx);
    send(&st, request(&[], "{}", Answer::new(200, Some("c"), body))).await;
    assert_eq!(learned(&st.store, "resp_json3").as_deref(), Some("c"));
}

#[tokio::test]
async fn gives_up_past_the_8_kib_bound_and_learns_within_it() {
    for (pad, expect) in [(7 * 1024, Some("a")), (9 * 1024, None)] {
        let st = stack(true);
        let event = format!(
            "event: response.created\ndata: {{\"type\":\"response.created\",\"pad\":\"{}\",\"response\":{{\"id\":\"resp_pad\"}}}}\n\n",
            "x".repeat(pad)
        );
        let (tx, body) = streaming();
        let bytes = Bytes::from(event.clone());
        let sender = tokio::spawn(async move {
            for chunk in bytes.chunks(1000) {
                tx.send(data(Bytes::copy_from_slice(chunk))).await.unwrap();
            }
        });
        let (_, got, _) = send(&st, request(&[], "{}", Answer::new(200, Some("a"), body))).await;
        sender.await.unwrap();
        assert_eq!(&got[..], event.as_bytes(), "the stream is unchanged");
        assert_eq!(
            learned(&st.store, "resp_pad").as_deref(),
            expect,
            "pad {pad}"
        );
    }
}

#[tokio::test]
async fn nothing_is_learned_from_failures_unserved_other_bodies_or_when_off() {
    let st = stack(true);
    let body = br#"{"id":"resp_no1"}"#;
    send(
        &st,
        request(&[], "{}", Answer::new(500, Some("a"), full(body))),
    )
    .await;
    send(
        &st,
        request(&[], "{}", Answer::new(400, Some("a"), full(body))),
    )
    .await;
    send(&st, request(&[], "{}", Answer::new(200, None, full(body)))).await;
    let chat = br#"{"id":"chatcmpl-1","object":"chat.completion"}"#;
    send(
        &st,
        request(&[], "{}", Answer::new(200, Some("a"), full(chat))),
    )
    .await;
    let other = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"resp_no1\"}}\n\n";
    send(
        &st,
        request(&[], "{}", Answer::new(200, Some("a"), full(other))),
    )
    .await;
    assert_eq!(learned(&st.store, "resp_no1"), None);
    assert_eq!(st.layer.stats().snapshot().response_ids_learned, 0);

    let off = stack(false);
    send(
        &off,
        request(&[], "{}", Answer::new(200, Some("a"), full(body))),
    )
    .await;
    assert_eq!(learned(&off.store, "resp_no1"), None);
}

#[tokio::test]
async fn store_false_is_not_learned_and_counted_store_true_or_absent_is() {
    let st = stack(true);
    for (body, id) in [
        (
            r#"{"model":"gpt-5","store":false,"input":"hi"}"#,
            "resp_nostore",
        ),
        (
            r#"{"model":"gpt-5","store":true,"input":"hi"}"#,
            "resp_store",
        ),
        (r#"{"model":"gpt-5","input":"hi"}"#, "resp_default"),
    ] {
        let answer = format!(r#"{{"id":"{id}","object":"response"}}"#);
        let answer = Full::new(Bytes::from(answer)).boxed();
        let (status, got, _) =
            send(&st, request(&[], body, Answer::new(200, Some("a"), answer))).await;
        assert_eq!(status, 200);
        assert!(got.starts_with(format!(r#"{{"id":"{id}""#).as_bytes()));
    }
    assert_eq!(learned(&st.store, "resp_nostore"), None);
    assert_eq!(learned(&st.store, "resp_store").as_deref(), Some("a"));
    assert_eq!(learned(&st.store, "resp_default").as_deref(), Some("a"));
    let s = st.layer.stats().snapshot();
    assert_eq!((s.response_ids_not_stored, s.response_ids_learned), (1, 2));
    // A store:false request that fails is not counted: no id would have been looked for.
    let answer = Answer::new(500, Some("a"), full(br#"{"id":"resp_x"}"#));
    send(&st, request(&[], r#"{"store":false}"#, answer)).await;
    assert_eq!(st.layer.stats().snapshot().response_ids_not_stored, 1);
    // A store:false continuation is still pinned by the id it continues.
    let answer = Answer::new(200, Some("b"), full(br#"{"id":"resp_next"}"#));
    let body = r#"{"previous_response_id":"resp_store","store":false}"#;
    let (_, _, seen) = send(&st, request(&[], body, answer)).await;
    assert!(seen.hard);
    assert_eq!(seen.pinned.as_deref(), Some("a"));
    assert_eq!(learned(&st.store, "resp_next"), None);
}

#[tokio::test]
async fn failures_of_a_hard_pinned_request_never_clear_the_learned_id() {
    let st = stack(true);
    send(
        &st,
        request(
            &[],
            "{}",
            Answer::new(200, Some("a"), full(br#"{"id":"resp_keep"}"#)),
        ),
    )
    .await;
    let session = BindingKey::new(None, SessionId::new("s-fail").unwrap());
    st.store
        .commit(&session, &AuthId::from("a"))
        .into_inner()
        .unwrap();
    for status in [429, 500, 503] {
        let answer = Answer::new(status, None, full(b"{}"));
        let req = request(
            &[("session-id", "s-fail")],
            &continuation("resp_keep"),
            answer,
        );
        let (_, _, seen) = send(&st, req).await;
        assert!(seen.hard);
        assert_eq!(learned(&st.store, "resp_keep").as_deref(), Some("a"));
    }
    // The session's own binding was cleared (it pointed at the failed account).
    assert!(st.store.get(&session).is_none());
    // A stream that fails before its first byte does not clear it either.
    let (tx, body) = streaming();
    drop(tx);
    let req = request(
        &[],
        &continuation("resp_keep"),
        Answer::new(200, None, body),
    );
    send(&st, req).await;
    assert_eq!(learned(&st.store, "resp_keep").as_deref(), Some("a"));
}

#[tokio::test]
async fn learned_ids_are_scoped_like_sessions() {
    let layer = StickySessionLayer::new()
        .known_client_headers()
        .learn_response_ids(true)
        .scope_fn(|p| {
            p.headers
                .get("x-provider")
                .map(tower_sticky_session::Scope::from)
        });
    let log = Log::default();
    let store = layer.store().clone();
    let st = Stack {
        svc: SessionFromBodyLayer::new().layer(layer.layer(inner(log.clone()))),
        log,
        store,
        layer,
    };
    let answer = Answer::new(200, Some("a"), full(br#"{"id":"resp_scoped"}"#));
    send(&st, request(&[("x-provider", "openai")], "{}", answer)).await;
    let answer = Answer::new(200, Some("b"), full(b"{}"));
    let req = request(
        &[("x-provider", "azure")],
        &continuation("resp_scoped"),
        answer,
    );
    let (_, _, seen) = send(&st, req).await;
    assert!(!seen.hard, "another scope does not see the learned id");
    let answer = Answer::new(200, Some("b"), full(b"{}"));
    let req = request(
        &[("x-provider", "openai")],
        &continuation("resp_scoped"),
        answer,
    );
    let (_, _, seen) = send(&st, req).await;
    assert!(seen.hard);
    assert_eq!(seen.pinned.as_deref(), Some("a"));
}

// ---- compressed answers ----------------------------------------------------------

/// `text` as an account would send it with `Content-Encoding: coding` (`deflate` is
/// zlib-wrapped, `raw-deflate` is the raw form some servers send under `deflate`).
/// Each part is flushed, as a streaming compressor flushes each event: all of a part's
/// text can be decoded from the bytes up to its end.
fn compress(coding: &str, parts: &[&[u8]]) -> Vec<u8> {
    use std::io::Write;
    fn flushed<W: Write>(mut w: W, parts: &[&[u8]]) -> W {
        for p in parts {
            w.write_all(p).unwrap();
            w.flush().unwrap();
        }
        w
    }
    let level = flate2::Compression::default();
    match coding {
        "gzip" => flushed(flate2::write::GzEncoder::new(Vec::new(), level), parts)
            .finish()
            .unwrap(),
        "deflate" => flushed(flate2::write::ZlibEncoder::new(Vec::new(), level), parts)
            .finish()
            .unwrap(),
        "raw-deflate" => flushed(flate2::write::DeflateEncoder::new(Vec::new(), level), parts)
            .finish()
            .unwrap(),
        "br" => {
            let mut out = Vec::new();
            drop(flushed(
                brotli::CompressorWriter::new(&mut out, 4096, 5, 22),
                parts,
            ));
            out
        }
        "zstd" => flushed(zstd::stream::Encoder::new(Vec::new(), 3).unwrap(), parts)
            .finish()
            .unwrap(),
        _ => unreachable!("{coding}"),
    }
}

/// The header value for a [`compress`] coding.
fn header_of(coding: &'static str) -> &'static str {
    if coding == "raw-deflate" {
        "deflate"
    } else {
        coding
    }
}

const CODINGS: [&str; 5] = ["gzip", "deflate", "raw-deflate", "br", "zstd"];

#[tokio::test]
async fn learns_from_gzip_br_zstd_and_deflate_json_answers_and_forwards_them_byte_exact() {
    for coding in CODINGS {
        let st = stack(true);
        let json = br#"{"id":"resp_packed","object":"response","status":"completed","output":[]}"#;
        let packed = Bytes::from(compress(coding, &[json]));
        // A few bytes a frame: every header, block and checksum is split.
        let (tx, body) = streaming();
        let frames = packed.clone();
        let sender = tokio::spawn(async move {
            for chunk in frames.chunks(5) {
                tx.send(data(Bytes::copy_from_slice(chunk))).await.unwrap();
            }
        });
        let answer = Answer::new(200, Some("a"), body).encoded(header_of(coding));
        let (status, got, _) = send(&st, request(&[], "{}", answer)).await;
        sender.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            got, packed,
            "{coding}: the client gets the compressed bytes unchanged"
        );
        assert_eq!(
            learned(&st.store, "resp_packed").as_deref(),
            Some("a"),
            "{coding}"
        );
        let s = st.layer.stats().snapshot();
        assert_eq!((s.response_ids_learned, s.response_ids_undecodable), (1, 0));
    }
}

#[tokio::test]
async fn a_compressed_first_event_split_across_frames_is_learned_before_its_last_frame_is_handed_on()
 {
    for coding in CODINGS {
        let st = stack(true);
        let more = b"event: response.output_text.delta\ndata: {\"delta\":\"hi\"}\n\n";
        let first = compress(coding, &[CREATED.as_bytes()]);
        let whole = compress(coding, &[CREATED.as_bytes(), more]);
        // With the first event flushed, its compressed bytes are a prefix of the stream's
        // (minus the end-of-stream trailer the one-part encoding added).
        let event_end = (0..=first.len())
            .rev()
            .find(|&n| whole.starts_with(&first[..n]))
            .unwrap();
        let (tx, body) = streaming();
        let answer = Answer::new(200, Some("a"), body).encoded(header_of(coding));
        let mut body = open(&st, answer).await;
        // Three frames for the first event, the last of them ending where it ends.
        let cuts = [event_end / 3, 2 * event_end / 3, event_end, whole.len()];
        let mut from = 0;
        let mut got = Vec::new();
        for (i, to) in cuts.into_iter().enumerate() {
            tx.send(data(Bytes::copy_from_slice(&whole[from..to])))
                .await
                .unwrap();
            let f = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(
                &f[..],
                &whole[from..to],
                "{coding}: frames are handed on as they are"
            );
            got.extend_from_slice(&f);
            from = to;
            let known = learned(&st.store, "resp_sse1");
            if i == 0 {
                assert_eq!(known, None, "{coding}: not from a third of the event");
            }
            if i >= 2 {
                assert_eq!(known.as_deref(), Some("a"), "{coding}: frame {i}");
            }
        }
        drop(tx);
        assert!(body.frame().await.is_none());
        assert_eq!(got, whole);
    }
}

#[tokio::test]
async fn several_or_unknown_codings_are_not_learned_and_counted() {
    let st = stack(true);
    let json = br#"{"id":"resp_twice","object":"response"}"#;
    for encoding in ["gzip, br", "compress", "gzip, identity, zstd"] {
        let packed = Bytes::from(compress("gzip", &[json]));
        let answer = Answer::new(200, Some("a"), Full::new(packed.clone()).boxed());
        let (_, got, _) = send(&st, request(&[], "{}", answer.encoded(encoding))).await;
        assert_eq!(got, packed);
    }
    // `identity` alone is no encoding at all.
    let answer = Answer::new(200, Some("a"), full(br#"{"id":"resp_plain"}"#));
    send(&st, request(&[], "{}", answer.encoded("identity"))).await;
    assert_eq!(learned(&st.store, "resp_twice"), None);
    assert_eq!(learned(&st.store, "resp_plain").as_deref(), Some("a"));
    let s = st.layer.stats().snapshot();
    assert_eq!((s.response_ids_undecodable, s.response_ids_learned), (3, 1));
}

#[tokio::test]
async fn a_compressed_prefix_past_the_bound_learns_nothing_and_the_client_gets_every_byte() {
    // 100 MiB of padding before the id: about 100 KiB of gzip. The learner decodes 8 KiB
    // of it and gives up; the client still gets the whole answer.
    let pad = vec![b' '; 100 << 20];
    let head = br#"{"object":"response","pad":""#;
    let tail = br#"","id":"resp_far"}"#;
    let bomb = Bytes::from(compress("gzip", &[head, &pad, tail]));
    drop(pad);
    assert!(bomb.len() < 200 << 10, "{}", bomb.len());
    let st = stack(true);
    let (tx, body) = streaming();
    let frames = bomb.clone();
    let sender = tokio::spawn(async move {
        for chunk in frames.chunks(8 << 10) {
            tx.send(data(Bytes::copy_from_slice(chunk))).await.unwrap();
        }
    });
    let answer = Answer::new(200, Some("a"), body).encoded("gzip");
    let (_, got, _) = send(&st, request(&[], "{}", answer)).await;
    sender.await.unwrap();
    assert_eq!(got, bomb);
    assert_eq!(learned(&st.store, "resp_far"), None);
    assert_eq!(st.layer.stats().snapshot().response_ids_learned, 0);
    // Within the bound (7 KiB of padding decoded), the same shape is learned.
    let pad = vec![b' '; 7 << 10];
    let near = compress("gzip", &[head, &pad, br#"","id":"resp_near"}"#]);
    let answer = Answer::new(200, Some("a"), Full::new(Bytes::from(near)).boxed());
    send(&st, request(&[], "{}", answer.encoded("gzip"))).await;
    assert_eq!(learned(&st.store, "resp_near").as_deref(), Some("a"));
}

// ---- hyper over real TCP ----------------------------------------------------------

/// A server on 127.0.0.1: SessionFromBodyLayer → StickySessionLayer(learning) → an
/// account picker that honours pins and otherwise goes round robin over `a`, `b`, `c`,
/// and streams a Responses-API SSE answer in small frames with pauses, the first event
/// split across frames. `x-served-by` and `x-hard-pin` report what happened.
async fn server() -> SocketAddr {
    server_with(None).await
}

/// [`server`], its answers compressed with `coding` (each event flushed, the first
/// event's compressed bytes cut in four frames) when one is given.
async fn server_with(coding: Option<&'static str>) -> SocketAddr {
    let layer = StickySessionLayer::new()
        .known_client_headers()
        .learn_response_ids(true);
    let next = Arc::new(AtomicUsize::new(0));
    let counter = Arc::new(AtomicUsize::new(0));
    let picker = tower::service_fn(move |req: Request<BufferedBody<hyper::body::Incoming>>| {
        let next = next.clone();
        let counter = counter.clone();
        async move {
            let hard = req.extensions().get::<HardPin>().is_some();
            let account = match req.extensions().get::<PinnedAuth>() {
                Some(p) => p.0.clone(),
                None => AuthId::from(["a", "b", "c"][next.fetch_add(1, Ordering::Relaxed) % 3]),
            };
            let _ = req.into_body().collect().await;
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let id = format!("resp_tcp{n}_{}", account.as_str());
            let event = format!(
                "event: response.created\ndata: {{\"type\":\"response.created\",\"response\":{{\"id\":\"{id}\",\"object\":\"response\"}}}}\n\n"
            );
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            let frames = match coding {
                None => {
                    let bytes = Bytes::from(event);
                    let cut = bytes.len() / 2;
                    vec![
                        bytes.slice(..cut),
                        bytes.slice(cut..),
                        Bytes::from_static(COMPLETED.as_bytes()),
                    ]
                }
                Some(coding) => {
                    let bytes =
                        Bytes::from(compress(coding, &[event.as_bytes(), COMPLETED.as_bytes()]));
                    let q = bytes.len() / 5;
                    (0..5)
                        .map(|i| bytes.slice(i * q..if i == 4 { bytes.len() } else { (i + 1) * q }))
                        .collect()
                }
            };
            tokio::spawn(async move {
                for part in frames {
                    let _ = tx.send(data(part)).await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            let mut res = Response::new(StreamBody::new(ReceiverStream::new(rx)));
            res.headers_mut()
                .insert("x-served-by", account.as_str().parse().unwrap());
            res.headers_mut()
                .insert("x-hard-pin", if hard { "1" } else { "0" }.parse().unwrap());
            res.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            if let Some(coding) = coding {
                res.headers_mut()
                    .insert("content-encoding", header_of(coding).parse().unwrap());
            }
            res.extensions_mut().insert(ServedBy(account));
            Ok::<_, Infallible>(res)
        }
    });
    let svc = SessionFromBodyLayer::new().layer(layer.layer(picker));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

const COMPLETED: &str = "event: response.completed\ndata: {}\n\n";

/// One request over a fresh connection: (served by, hard pin, body).
async fn post(addr: SocketAddr, body: String) -> (String, bool, String) {
    let (served, hard, body) = post_raw(addr, body).await;
    (served, hard, String::from_utf8(body.to_vec()).unwrap())
}

/// [`post`], the body as received (hyper's client does not decompress).
async fn post_raw(addr: SocketAddr, body: String) -> (String, bool, Bytes) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/v1/responses")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let served = res.headers()["x-served-by"].to_str().unwrap().to_owned();
    let hard = res.headers()["x-hard-pin"] == "1";
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (served, hard, body)
}

fn response_id(sse: &str) -> String {
    let at = sse.find("\"id\":\"").unwrap() + 6;
    sse[at..at + sse[at..].find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn over_tcp_a_chain_of_previous_response_ids_stays_on_the_creating_account() {
    let addr = server().await;
    // An OpenAI SDK app: no session id at all, just the chain.
    let (first, hard, body) = post(addr, r#"{"model":"gpt-5","input":"hi"}"#.to_owned()).await;
    assert!(!hard);
    let mut id = response_id(&body);
    for _ in 0..5 {
        let (served, hard, body) = post(addr, continuation(&id)).await;
        assert_eq!(
            served, first,
            "the chain stays on the account that created it"
        );
        assert!(hard);
        id = response_id(&body);
    }
    // Without the chain, round robin moves requests around.
    let mut others = std::collections::HashSet::new();
    for _ in 0..3 {
        others.insert(post(addr, r#"{"input":"x"}"#.to_owned()).await.0);
    }
    assert!(others.len() > 1, "{others:?}");
    // An unknown id falls back (round robin, not hard).
    let (_, hard, _) = post(addr, continuation("resp_never_seen")).await;
    assert!(!hard);
}

#[tokio::test]
async fn over_tcp_a_chain_stays_on_its_account_when_the_account_gzips_its_stream() {
    use std::io::Read;
    let addr = server_with(Some("gzip")).await;
    let decode = |bytes: &Bytes| {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap();
        text
    };
    let (first, hard, mut body) =
        post_raw(addr, r#"{"model":"gpt-5","input":"hi"}"#.to_owned()).await;
    assert!(!hard);
    let mut text = decode(&body);
    for _ in 0..4 {
        // The client got exactly the bytes the account sent.
        let event = text.strip_suffix(COMPLETED).unwrap();
        assert_eq!(
            body,
            compress("gzip", &[event.as_bytes(), COMPLETED.as_bytes()])
        );
        let id = response_id(&text);
        let (served, hard, next) = post_raw(addr, continuation(&id)).await;
        assert_eq!(
            served, first,
            "the chain stays on the account that created it"
        );
        assert!(hard, "{id} was learned from the compressed stream");
        text = decode(&next);
        body = next;
    }
}
