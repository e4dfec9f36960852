//! SessionFromBodyLayer in a real hyper 1 stack over TCP on 127.0.0.1:
//!
//! ```text
//! client ──TCP──▶ hyper server [ SessionFromBodyLayer ] ─▶ forwarder ──TCP──▶ upstream
//! ```
//!
//! The forwarder reports what the layer found; the upstream reports the exact bytes and
//! framing headers it received. Fixtures in `tests/fixtures/clients/` hold request bodies
//! in each client's shape.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tower::Layer;
use tower_sticky_session::body_session::{
    BodySessionStats, BodySignals, BufferedBody, SessionFromBodyLayer,
};

/// What the upstream received.
#[derive(Debug)]
struct Upstream {
    content_length: Option<String>,
    chunked: bool,
    body: Vec<u8>,
    error: Option<String>,
}

/// What the forwarder saw, sent with every request it handles.
#[derive(Debug, Clone)]
struct Seen {
    signals: Option<BodySignals>,
    replay: Option<Bytes>,
}

async fn read_all(body: Incoming) -> (Vec<u8>, Option<String>) {
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    bytes.extend_from_slice(&d);
                }
            }
            Err(e) => return (bytes, Some(e.to_string())),
        }
    }
    (bytes, None)
}

/// An upstream that reports each request's framing and bytes.
async fn upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Upstream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let content_length = req
                            .headers()
                            .get("content-length")
                            .map(|v| v.to_str().unwrap().to_owned());
                        let chunked = req.headers().contains_key("transfer-encoding");
                        let (body, error) = read_all(req.into_body()).await;
                        let _ = tx.send(Upstream {
                            content_length,
                            chunked,
                            body,
                            error,
                        });
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// The forwarder: reports what the layer found, then sends the request on unchanged.
async fn forward(
    upstream: SocketAddr,
    seen: mpsc::UnboundedSender<Seen>,
    req: Request<BufferedBody<Incoming>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let _ = seen.send(Seen {
        signals: req.extensions().get::<BodySignals>().cloned(),
        replay: req.body().bytes().cloned(),
    });
    let stream = TcpStream::connect(upstream).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let status = match sender.send_request(req).await {
        Ok(res) => {
            let _ = res.into_body().collect().await;
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_GATEWAY,
    };
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = status;
    Ok(res)
}

struct Stack {
    addr: SocketAddr,
    stats: BodySessionStats,
    seen: mpsc::UnboundedReceiver<Seen>,
    upstream: mpsc::UnboundedReceiver<Upstream>,
}

async fn stack(layer: SessionFromBodyLayer) -> Stack {
    let (up, upstream) = upstream().await;
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let stats = layer.stats().clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen_tx = seen_tx.clone();
            let svc = layer.layer(tower::service_fn(move |req| {
                forward(up, seen_tx.clone(), req)
            }));
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    Stack {
        addr,
        stats,
        seen,
        upstream,
    }
}

type ClientBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn send(addr: SocketAddr, req: Request<ClientBody>) -> StatusCode {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let res = sender.send_request(req).await.unwrap();
    let status = res.status();
    let _ = res.into_body().collect().await;
    status
}

/// A request with a `Content-Length` body.
fn with_length(body: impl Into<Bytes>) -> http::request::Builder {
    let body: Bytes = body.into();
    Request::post("/v1/responses")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .header("content-length", body.len())
}

fn full(body: impl Into<Bytes>) -> ClientBody {
    Full::new(body.into()).boxed()
}

/// A chunked body fed from a task, `chunk` bytes at a time.
fn streamed(body: Bytes, chunk: usize) -> ClientBody {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        let mut at = 0;
        while at < body.len() {
            let end = (at + chunk).min(body.len());
            if tx.send(Ok(Frame::data(body.slice(at..end)))).await.is_err() {
                return;
            }
            at = end;
        }
    });
    StreamBody::new(ReceiverStream::new(rx)).boxed()
}

fn pattern(len: usize) -> Bytes {
    // Valid JSON of `len` bytes: a long string member, a session field at the end.
    let tail = br#"","prompt_cache_key":"big-body-session"}"#;
    let head = br#"{"input":""#;
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(head);
    let fill = len - head.len() - tail.len();
    v.extend((0..fill).map(|i| b'a' + (i % 26) as u8));
    v.extend_from_slice(tail);
    Bytes::from(v)
}

#[tokio::test]
async fn content_length_body_is_scanned_and_reaches_the_upstream_byte_exact_with_its_length() {
    let mut s = stack(SessionFromBodyLayer::new()).await;
    let body = pattern(200_000);
    let req = with_length(body.clone()).body(full(body.clone())).unwrap();
    assert_eq!(send(s.addr, req).await, StatusCode::OK);
    let seen = s.seen.recv().await.unwrap();
    let session = seen.signals.unwrap().session.unwrap();
    assert_eq!(
        (session.field, session.id.as_str()),
        ("prompt_cache_key", "big-body-session")
    );
    assert_eq!(seen.replay.as_ref(), Some(&body));
    let up = s.upstream.recv().await.unwrap();
    assert_eq!(up.content_length.as_deref(), Some("200000"));
    assert!(!up.chunked);
    assert!(up.body == body, "same bytes");
    assert_eq!(up.error, None);
    assert_eq!(s.stats.snapshot().scanned, 1);
}

#[tokio::test]
async fn chunked_streaming_body_within_the_limit_is_scanned_and_forwarded_byte_exact() {
    let mut s = stack(SessionFromBodyLayer::new()).await;
    let body = pattern(300_000);
    let req = Request::post("/v1/responses")
        .header("content-type", "application/json")
        .body(streamed(body.clone(), 8 * 1024))
        .unwrap();
    assert_eq!(send(s.addr, req).await, StatusCode::OK);
    let seen = s.seen.recv().await.unwrap();
    assert!(seen.signals.unwrap().session.is_some());
    let up = s.upstream.recv().await.unwrap();
    assert!(up.chunked);
    assert!(up.body == body);
}

#[tokio::test]
async fn twenty_mib_body_with_content_length_streams_through_unread_byte_exact() {
    let mut s = stack(SessionFromBodyLayer::new()).await;
    let body = pattern(20 * 1024 * 1024);
    let req = with_length(body.clone()).body(full(body.clone())).unwrap();
    assert_eq!(send(s.addr, req).await, StatusCode::OK);
    let seen = s.seen.recv().await.unwrap();
    assert!(seen.signals.is_none() && seen.replay.is_none());
    let up = s.upstream.recv().await.unwrap();
    assert_eq!(up.content_length.as_deref(), Some("20971520"));
    assert_eq!(up.body.len(), body.len());
    assert!(up.body == body, "same bytes");
    assert_eq!(up.error, None);
    assert_eq!(s.stats.snapshot().too_large, 1);
}

#[tokio::test]
async fn twenty_mib_chunked_body_outgrowing_the_limit_is_forwarded_prefix_then_rest() {
    let mut s = stack(SessionFromBodyLayer::new()).await;
    let body = pattern(20 * 1024 * 1024);
    let req = Request::post("/v1/responses")
        .header("content-type", "application/json")
        .body(streamed(body.clone(), 256 * 1024 + 7))
        .unwrap();
    assert_eq!(send(s.addr, req).await, StatusCode::OK);
    let seen = s.seen.recv().await.unwrap();
    assert!(seen.signals.is_none() && seen.replay.is_none());
    let up = s.upstream.recv().await.unwrap();
    assert!(up.chunked);
    assert_eq!(up.body.len(), body.len());
    assert!(up.body == body, "same bytes in the same order");
    assert_eq!(up.error, None);
    assert_eq!(s.stats.snapshot().too_large, 1);
}

#[tokio::test]
async fn client_abort_while_buffering_reaches_the_inner_service_as_a_body_error() {
    // An inner service that reads the body itself and reports how it ended.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<u8>, Option<String>, bool)>();
    let layer = SessionFromBodyLayer::new();
    let stats = layer.stats().clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let svc = layer.layer(tower::service_fn(
            move |req: Request<BufferedBody<Incoming>>| {
                let tx = tx.clone();
                async move {
                    let signals = req.extensions().get::<BodySignals>().is_some();
                    let mut body = req.into_body();
                    let mut bytes = Vec::new();
                    let mut error = None;
                    while let Some(frame) = body.frame().await {
                        match frame {
                            Ok(f) => bytes.extend_from_slice(&f.into_data().unwrap()),
                            Err(e) => {
                                error = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    let _ = tx.send((bytes, error, signals));
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }
            },
        ));
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
            .await;
    });
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              transfer-encoding: chunked\r\n\r\n10\r\n{\"session_id\":\"a\r\n",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(client); // mid-body
    let (bytes, error, signals) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bytes, b"{\"session_id\":\"a");
    assert!(error.is_some(), "the body error is handed on");
    assert!(!signals);
    assert_eq!(stats.snapshot().errors, 1);
}

/// One client fixture: the file, the headers the client sends with it, and what the body
/// scan must find.
struct Fixture {
    file: &'static str,
    headers: &'static [(&'static str, &'static str)],
    session: Option<(&'static str, &'static str)>,
    previous_response_id: Option<&'static str>,
}

const FIXTURES: &[Fixture] = &[
    Fixture {
        file: "codex_current.json",
        headers: &[
            ("session-id", "019a6f1e-3c2b-7a40-9d55-8e1f2a3b4c5d"),
            ("thread-id", "019a6f1e-3c2b-7a40-9d55-8e1f2a3b4c5d"),
        ],
        session: Some(("prompt_cache_key", "019a6f1e-3c2b-7a40-9d55-8e1f2a3b4c5d")),
        previous_response_id: None,
    },
    Fixture {
        file: "codex_older.json",
        headers: &[
            ("session_id", "5f0c2a1e-7b3d-4e8f-a9c0-1d2e3f4a5b6c"),
            ("conversation_id", "5f0c2a1e-7b3d-4e8f-a9c0-1d2e3f4a5b6c"),
        ],
        session: Some(("prompt_cache_key", "5f0c2a1e-7b3d-4e8f-a9c0-1d2e3f4a5b6c")),
        previous_response_id: None,
    },
    Fixture {
        file: "claude_code_new.json",
        headers: &[(
            "x-claude-code-session-id",
            "d4e5f6a7-b8c9-4d0e-8f1a-2b3c4d5e6f70",
        )],
        session: Some(("metadata.user_id", "d4e5f6a7-b8c9-4d0e-8f1a-2b3c4d5e6f70")),
        previous_response_id: None,
    },
    Fixture {
        file: "claude_code_old_string.json",
        headers: &[],
        session: Some(("metadata.user_id", "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")),
        previous_response_id: None,
    },
    Fixture {
        file: "claude_code_old_string_other_session.json",
        headers: &[],
        session: Some(("metadata.user_id", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")),
        previous_response_id: None,
    },
    Fixture {
        file: "claude_code_old_json.json",
        headers: &[],
        session: Some(("metadata.user_id", "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d")),
        previous_response_id: None,
    },
    Fixture {
        file: "claude_code_user_only.json",
        headers: &[],
        session: None,
        previous_response_id: None,
    },
    Fixture {
        file: "opencode_openai.json",
        headers: &[
            ("x-session-affinity", "ses_6a1f3b2c9ffe4Kq2mZr8TnW0xY"),
            ("x-session-id", "ses_6a1f3b2c9ffe4Kq2mZr8TnW0xY"),
        ],
        session: Some(("prompt_cache_key", "ses_6a1f3b2c9ffe4Kq2mZr8TnW0xY")),
        previous_response_id: None,
    },
    Fixture {
        file: "gemini_cli.json",
        headers: &[],
        session: Some(("request.session_id", "7c9e6679-7425-40de-944b-e07fc1f90ae7")),
        previous_response_id: None,
    },
    Fixture {
        file: "cline_litellm.json",
        headers: &[],
        session: Some(("litellm_session_id", "cline-task-1764600000000")),
        previous_response_id: None,
    },
    Fixture {
        file: "openai_responses_previous.json",
        headers: &[],
        session: None,
        previous_response_id: Some("resp_68af4c1e2b3c8190a1b2c3d4e5f60718"),
    },
    Fixture {
        file: "openai_responses_conversation.json",
        headers: &[],
        session: Some((
            "conversation",
            "conv_689667905b048191b4740501625afd940c7533ace33a2dab",
        )),
        previous_response_id: None,
    },
    Fixture {
        file: "openai_responses_conversation_object.json",
        headers: &[],
        session: Some((
            "conversation.id",
            "conv_68a0b1c2d3e48191a2b3c4d5e6f708192a3b4c5d6e7f8a9b",
        )),
        previous_response_id: None,
    },
    Fixture {
        file: "openai_chat_prompt_cache_key.json",
        headers: &[],
        session: Some(("prompt_cache_key", "app-user-42-thread-7")),
        previous_response_id: None,
    },
];

fn fixture(file: &str) -> Bytes {
    let path = format!(
        "{}/tests/fixtures/clients/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    Bytes::from(std::fs::read(&path).unwrap())
}

#[tokio::test]
async fn every_client_fixture_yields_its_session_field_and_id_over_tcp() {
    let mut s = stack(SessionFromBodyLayer::new()).await;
    for f in FIXTURES {
        let body = fixture(f.file);
        let mut req = with_length(body.clone());
        for (n, v) in f.headers {
            req = req.header(*n, *v);
        }
        assert_eq!(
            send(s.addr, req.body(full(body.clone())).unwrap()).await,
            StatusCode::OK
        );
        let signals = s.seen.recv().await.unwrap().signals.expect(f.file);
        let session = signals
            .session
            .as_ref()
            .map(|s| (s.field, s.id.as_str().to_owned()));
        assert_eq!(
            session,
            f.session.map(|(field, id)| (field, id.to_owned())),
            "{}",
            f.file
        );
        assert_eq!(
            signals.previous_response_id.as_ref().map(|p| p.as_str()),
            f.previous_response_id,
            "{}",
            f.file
        );
        let up = s.upstream.recv().await.unwrap();
        assert!(up.body == body, "{}: same bytes", f.file);
        assert_eq!(
            up.content_length,
            Some(body.len().to_string()),
            "{}",
            f.file
        );
    }
    let snap = s.stats.snapshot();
    assert_eq!(snap.scanned, FIXTURES.len() as u64);
    assert_eq!(snap.found_in("metadata.user_id"), 4);
    assert_eq!(snap.no_session, 2);
}

#[tokio::test]
async fn client_header_sessions_match_their_body_sessions() {
    // Where a client sends both, the header and the body name the same session: the
    // sticky layer may use either.
    for f in FIXTURES.iter().filter(|f| !f.headers.is_empty()) {
        let signals = BodySignals::from_json(&fixture(f.file)).unwrap();
        assert_eq!(
            signals.session.unwrap().id.as_str(),
            f.headers[0].1,
            "{}",
            f.file
        );
    }
}

#[tokio::test]
async fn header_clients_are_not_read_when_response_ids_are_off() {
    let mut s = stack(SessionFromBodyLayer::new().response_id_with_header(false)).await;
    for f in FIXTURES.iter().filter(|f| !f.headers.is_empty()) {
        let body = fixture(f.file);
        let mut req = with_length(body.clone());
        for (n, v) in f.headers {
            req = req.header(*n, *v);
        }
        assert_eq!(
            send(s.addr, req.body(full(body.clone())).unwrap()).await,
            StatusCode::OK
        );
        assert!(s.seen.recv().await.unwrap().signals.is_none(), "{}", f.file);
        assert!(s.upstream.recv().await.unwrap().body == body);
    }
    assert_eq!(s.stats.snapshot().header_session, 4);
}

#[tokio::test]
async fn two_sessions_of_one_claude_user_are_different_sessions() {
    let a = BodySignals::from_json(&fixture("claude_code_old_string.json")).unwrap();
    let b = BodySignals::from_json(&fixture("claude_code_old_string_other_session.json")).unwrap();
    assert_ne!(a.session.unwrap().id, b.session.unwrap().id);
}
