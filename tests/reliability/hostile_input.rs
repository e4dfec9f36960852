//! Failure mode 2: hostile session headers.
//!
//! The matrix — empty, 1 byte, 256 and 257 bytes, 8 KiB, spaces, tabs, control
//! characters, DEL, bytes ≥ 0x80, invalid UTF-8, several identical values, several
//! differing values, the header under two configured names — goes through the layer
//! directly and through a real hyper server. Each value must give the documented outcome
//! (a valid id is sticky; anything else is served unsticky, or answered 400 in strict
//! mode), be counted under the right reason, never panic, and never reach the log beyond
//! a short prefix. A property test feeds arbitrary header bytes.
//!
//! Control characters other than tab, and DEL, cannot be put in an `http::HeaderValue`
//! at all, so no caller of the layer can hand them over; on the wire hyper's parser
//! refuses them with its own 400 before the layer is reached. Both facts are tested.

#[path = "../support/mod.rs"]
mod support;

use support::scripted;

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Service, ServiceExt};
use tower_sticky_session::store::MemoryStore;
use tower_sticky_session::*;

use scripted::*;

const LIMIT: Duration = Duration::from_secs(10);

/// What the layer must make of a header.
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    /// A session with this id: sticky.
    Session(String),
    /// Not a session, for this reason: unsticky and counted.
    Invalid(InvalidSessionId),
}

struct Case {
    name: &'static str,
    values: Vec<Vec<u8>>,
    expect: Expect,
}

fn case(name: &'static str, values: &[&[u8]], expect: Expect) -> Case {
    Case {
        name,
        values: values.iter().map(|v| v.to_vec()).collect(),
        expect,
    }
}

fn valid(id: &str) -> Expect {
    Expect::Session(id.to_owned())
}

/// The matrix as the layer sees it (header values exactly as given).
fn matrix() -> Vec<Case> {
    use InvalidSessionId::*;
    let a256 = "a".repeat(256);
    let a257 = "b".repeat(257);
    let kib8 = "c".repeat(8 * 1024);
    vec![
        case("empty", &[b""], Expect::Invalid(Empty)),
        case("one byte", &[b"x"], valid("x")),
        case("256 bytes", &[a256.as_bytes()], valid(&a256)),
        case("257 bytes", &[a257.as_bytes()], Expect::Invalid(TooLong)),
        case("8 KiB", &[kib8.as_bytes()], Expect::Invalid(TooLong)),
        case("only visible ASCII edges", &[b"!~"], valid("!~")),
        case("inner space", &[b"conv 1"], Expect::Invalid(Byte)),
        case("leading space", &[b" conv-1"], Expect::Invalid(Byte)),
        case("only spaces", &[b"   "], Expect::Invalid(Byte)),
        case("tab", &[b"conv\t1"], Expect::Invalid(Byte)),
        case("0x80", &[b"conv\x80"], Expect::Invalid(Byte)),
        case("UTF-8 e-acute", &[b"caf\xc3\xa9"], Expect::Invalid(Byte)),
        case("0xff", &[b"\xff"], Expect::Invalid(Byte)),
        case(
            "invalid UTF-8",
            &[b"\xff\xfe\xc3\x28"],
            Expect::Invalid(Byte),
        ),
        case("identical x3", &[b"dup", b"dup", b"dup"], valid("dup")),
        case(
            "differing x2",
            &[b"one", b"two"],
            Expect::Invalid(Conflicting),
        ),
        case(
            "identical then differing",
            &[b"one", b"one", b"two"],
            Expect::Invalid(Conflicting),
        ),
        case(
            "identical invalid x2",
            &[b"a b", b"a b"],
            Expect::Invalid(Byte),
        ),
        case(
            "8 KiB twice, differing",
            &[kib8.as_bytes(), a257.as_bytes()],
            Expect::Invalid(Conflicting),
        ),
    ]
}

/// Requests with `Plan`s through the layer, polled in place.
struct Direct {
    svc: StickySession<Scripted>,
    store: MemoryStore,
    stats: Stats,
}

impl Direct {
    fn new(layer: StickySessionLayer) -> Self {
        Self {
            store: layer.store().clone(),
            stats: layer.stats(),
            svc: tower::Layer::layer(&layer, Scripted),
        }
    }

    /// Sends `req` (answered 200 by `served`); returns the status, the pin the inner
    /// service saw (`None` if it was not called) and the body.
    fn send(
        &mut self,
        req: Request<()>,
        served: &AuthId,
    ) -> (StatusCode, Option<Option<AuthId>>, Bytes) {
        let plan = Plan::now(Ok(respond(200, Some(served), full(b"data: ok\n\n"))));
        let req = plan.clone().attach(req);
        let svc = ServiceExt::<Request<()>>::ready(&mut self.svc)
            .now_or_never()
            .unwrap()
            .unwrap();
        let res = svc.call(req).now_or_never().unwrap().unwrap();
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .now_or_never()
            .unwrap()
            .unwrap()
            .to_bytes();
        (status, plan.seen_pin(), body)
    }
}

fn with_values(name: &HeaderName, values: &[Vec<u8>]) -> Request<()> {
    let mut req = Request::new(());
    for v in values {
        req.headers_mut()
            .append(name.clone(), HeaderValue::from_bytes(v).unwrap());
    }
    req
}

fn bound(store: &MemoryStore, id: &str) -> Option<AuthId> {
    store
        .get(&BindingKey::new(None, SessionId::new(id).unwrap()))
        .map(|b| b.auth)
}

#[test]
fn header_matrix_gives_documented_outcome_and_is_counted() {
    let mut d = Direct::new(StickySessionLayer::new());
    let acct = AuthId::from("acct-a");
    let name = DEFAULT_SESSION_HEADER;
    for c in matrix() {
        let before = d.stats.snapshot();
        let (status, seen, body) = d.send(with_values(&name, &c.values), &acct);
        // Never a failed request, and the body is untouched.
        assert_eq!(status, StatusCode::OK, "{}", c.name);
        assert_eq!(body, "data: ok\n\n", "{}", c.name);
        assert_eq!(
            seen,
            Some(None),
            "{}: first request is never pinned",
            c.name
        );
        let after = d.stats.snapshot();
        assert_eq!(after.requests, before.requests + 1);
        match &c.expect {
            Expect::Session(id) => {
                assert_eq!(after.invalid_total(), before.invalid_total(), "{}", c.name);
                assert_eq!(after.commits, before.commits + 1, "{}", c.name);
                assert_eq!(bound(&d.store, id).as_ref(), Some(&acct), "{}", c.name);
                // The second request of the session is pinned.
                let (_, seen, _) = d.send(with_values(&name, &c.values), &acct);
                assert_eq!(seen, Some(Some(acct.clone())), "{}", c.name);
            }
            Expect::Invalid(reason) => {
                assert_eq!(
                    after.invalid(*reason),
                    before.invalid(*reason) + 1,
                    "{}",
                    c.name
                );
                assert_eq!(
                    after.invalid_total(),
                    before.invalid_total() + 1,
                    "{}",
                    c.name
                );
                assert_eq!(after.lookups, before.lookups, "{}: no lookup", c.name);
                assert_eq!(after.commits, before.commits, "{}: no commit", c.name);
            }
        }
    }
}

#[test]
fn control_characters_and_del_cannot_reach_the_layer_in_a_header_value() {
    for b in (0u8..0x20).filter(|&b| b != b'\t').chain([0x7f]) {
        let v = [b'a', b, b'b'];
        assert!(
            HeaderValue::from_bytes(&v).is_err(),
            "0x{b:02x} accepted by http::HeaderValue"
        );
    }
}

#[test]
fn strict_mode_answers_every_invalid_value_with_400_and_its_reason() {
    let mut d = Direct::new(StickySessionLayer::new().reject_invalid(true));
    let acct = AuthId::from("acct-a");
    for c in matrix() {
        let before = d.stats.snapshot();
        let (status, seen, body) = d.send(with_values(&DEFAULT_SESSION_HEADER, &c.values), &acct);
        let after = d.stats.snapshot();
        match &c.expect {
            Expect::Session(_) => {
                assert_eq!(status, StatusCode::OK, "{}", c.name);
                assert_eq!(after.rejected, before.rejected, "{}", c.name);
            }
            Expect::Invalid(reason) => {
                assert_eq!(status, StatusCode::BAD_REQUEST, "{}", c.name);
                assert_eq!(seen, None, "{}: inner service must not be called", c.name);
                let text = String::from_utf8(body.to_vec()).unwrap();
                assert!(
                    text.starts_with("invalid session id in sticky-session-id: ")
                        && text.contains(&reason.to_string()),
                    "{}: {text:?}",
                    c.name
                );
                // The 400 never echoes the value itself.
                assert!(text.len() < 200, "{}: {text:?}", c.name);
                assert_eq!(after.rejected, before.rejected + 1, "{}", c.name);
                assert_eq!(after.invalid(*reason), before.invalid(*reason) + 1);
            }
        }
    }
}

/// (name, values under the primary name, values under the alias, expected outcome)
type AliasCase = (
    &'static str,
    &'static [&'static [u8]],
    &'static [&'static [u8]],
    Expect,
);

#[test]
fn first_configured_name_with_a_valid_value_wins() {
    let primary = HeaderName::from_static("sticky-session-id");
    let alias = HeaderName::from_static("x-client-session");
    let layer = StickySessionLayer::new().headers([primary.clone(), alias.clone()]);
    let mut d = Direct::new(layer);
    let acct = AuthId::from("acct-a");
    let cases: Vec<AliasCase> = vec![
        ("both valid", &[b"p-1"], &[b"a-1"], valid("p-1")),
        ("same under both", &[b"same"], &[b"same"], valid("same")),
        ("only alias", &[], &[b"a-2"], valid("a-2")),
        ("primary invalid", &[b"bad value"], &[b"a-3"], valid("a-3")),
        ("primary empty", &[b""], &[b"a-4"], valid("a-4")),
        (
            "primary conflicting",
            &[b"x", b"y"],
            &[b"a-5"],
            valid("a-5"),
        ),
        (
            "both invalid: primary's reason",
            &[b"x", b"y"],
            &[b""],
            Expect::Invalid(InvalidSessionId::Conflicting),
        ),
        (
            "alias conflicting",
            &[],
            &[b"x", b"y"],
            Expect::Invalid(InvalidSessionId::Conflicting),
        ),
    ];
    for (name, p, a, expect) in cases {
        let mut req = Request::new(());
        for v in p {
            req.headers_mut()
                .append(primary.clone(), HeaderValue::from_bytes(v).unwrap());
        }
        for v in a {
            req.headers_mut()
                .append(alias.clone(), HeaderValue::from_bytes(v).unwrap());
        }
        let before = d.stats.snapshot();
        let (status, _, _) = d.send(req, &acct);
        assert_eq!(status, StatusCode::OK, "{name}");
        let after = d.stats.snapshot();
        match expect {
            Expect::Session(id) => {
                assert_eq!(bound(&d.store, &id).as_ref(), Some(&acct), "{name}");
                // A valid alias makes the request a session: nothing counted as invalid.
                assert_eq!(after.invalid_total(), before.invalid_total(), "{name}");
            }
            Expect::Invalid(reason) => {
                assert_eq!(after.invalid(reason), before.invalid(reason) + 1, "{name}");
                assert_eq!(after.commits, before.commits, "{name}");
            }
        }
    }
}

/// Header value bytes `http` accepts: tab, 0x20..=0x7E, 0x80..=0xFF; mostly visible ASCII
/// so that valid ids occur often.
fn header_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        20 => 0x21u8..=0x7e,
        1 => Just(b' '),
        1 => Just(b'\t'),
        1 => 0x80u8..=0xff,
    ]
}

fn applicable_reasons(v: &[u8], max: usize) -> Vec<InvalidSessionId> {
    let mut r = Vec::new();
    if v.is_empty() {
        r.push(InvalidSessionId::Empty);
    }
    if v.len() > max {
        r.push(InvalidSessionId::TooLong);
    }
    if v.iter().any(|b| !(0x21..=0x7e).contains(b)) {
        r.push(InvalidSessionId::Byte);
    }
    r
}

proptest! {
    #[test]
    fn arbitrary_header_bytes_are_sticky_iff_valid_and_otherwise_counted(
        value in proptest::collection::vec(header_byte(), 0..300),
        repeat in 1usize..3,
    ) {
        let mut d = Direct::new(StickySessionLayer::new());
        let acct = AuthId::from("acct-a");
        let values = vec![value.clone(); repeat];
        let (status, seen, _) = d.send(with_values(&DEFAULT_SESSION_HEADER, &values), &acct);
        prop_assert_eq!(status, StatusCode::OK);
        prop_assert_eq!(seen, Some(None));
        let s = d.stats.snapshot();
        let reasons = applicable_reasons(&value, DEFAULT_MAX_SESSION_ID_LEN);
        if reasons.is_empty() {
            let id = std::str::from_utf8(&value).unwrap();
            prop_assert_eq!(s.invalid_total(), 0);
            prop_assert_eq!(bound(&d.store, id), Some(acct));
        } else {
            prop_assert_eq!(s.invalid_total(), 1);
            prop_assert!(reasons.iter().any(|r| s.invalid(*r) == 1), "{:?} {:?}", reasons, s);
            prop_assert_eq!(s.commits, 0);
            d.store.run_pending_tasks();
            prop_assert_eq!(d.store.entry_count(), 0);
        }
    }
}

/// A `Write` into a shared buffer, for capturing the log.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn session_ids_reach_the_log_only_as_a_short_prefix() {
    // A global subscriber: a thread-scoped one misses events now and then when other
    // tests of this binary register the same callsites concurrently. Other tests' events
    // land in the buffer too; none of them carries the secret below.
    static LOG: std::sync::OnceLock<LogBuf> = std::sync::OnceLock::new();
    let log = LOG.get_or_init(|| {
        let log = LogBuf::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        log
    });

    let mut d = Direct::new(StickySessionLayer::new());
    let acct = AuthId::from("acct-a");
    let secret = "SECRETSESSIONTOKEN-0123456789";
    let hostile: Vec<Vec<u8>> = vec![
        secret.as_bytes().to_vec(),                  // valid: logged redacted
        format!("{secret} with space").into_bytes(), // invalid: escaped prefix
        format!("{secret}\t").into_bytes(),
        [secret.as_bytes(), b"\xff"].concat(),
        secret.repeat(20).into_bytes(), // too long
    ];
    for v in &hostile {
        d.send(
            with_values(&DEFAULT_SESSION_HEADER, std::slice::from_ref(v)),
            &acct,
        );
        d.send(
            with_values(&DEFAULT_SESSION_HEADER, std::slice::from_ref(v)),
            &acct,
        );
    }
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("invalid session id") && text.contains("commit") && text.contains("SECR"),
        "the layer's events about these sessions were captured: {text}"
    );
    // The escaped prefix of an invalid value is at most 8 bytes; a valid id shows 4.
    assert!(
        !text.contains("SECRETSES"),
        "session id leaked into the log: {text}"
    );
}

/// The layer over hyper: the inner service answers 200 with `ServedBy(acct-h)` and says
/// in `x-pinned` which pin it saw.
async fn hyper_stack(layer: StickySessionLayer) -> std::net::SocketAddr {
    let inner = tower::service_fn(|req: Request<hyper::body::Incoming>| async move {
        let pinned = req.extensions().get::<PinnedAuth>().map(|p| p.0.clone());
        let mut res = Response::new(Full::new(Bytes::from_static(b"data: ok\n\n")));
        if let Some(p) = &pinned {
            res.headers_mut()
                .insert("x-pinned", HeaderValue::from_str(p.as_str()).unwrap());
        }
        res.extensions_mut()
            .insert(ServedBy(pinned.unwrap_or_else(|| AuthId::from("acct-h"))));
        Ok::<_, Infallible>(res)
    });
    serve(tower::ServiceBuilder::new().layer(layer).service(inner)).await
}

async fn hyper_get(
    client: &Client,
    addr: std::net::SocketAddr,
    headers: &[(&HeaderName, &[u8])],
) -> (StatusCode, Option<String>) {
    let mut req = Request::get(format!("http://{addr}/v1/chat"))
        .body(Empty::new())
        .unwrap();
    for (n, v) in headers {
        req.headers_mut()
            .append((*n).clone(), HeaderValue::from_bytes(v).unwrap());
    }
    let res = tokio::time::timeout(LIMIT, client.request(req))
        .await
        .expect("hang guard")
        .unwrap();
    let status = res.status();
    let pinned = res
        .headers()
        .get("x-pinned")
        .map(|v| v.to_str().unwrap().to_owned());
    res.into_body().collect().await.unwrap();
    (status, pinned)
}

#[tokio::test]
async fn header_matrix_through_hyper_gives_documented_outcome_and_is_counted() {
    let layer = StickySessionLayer::new();
    let (store, stats) = (layer.store().clone(), layer.stats());
    let addr = hyper_stack(layer).await;
    let client = client();
    let name = DEFAULT_SESSION_HEADER;
    let mut cases = matrix();
    // On the wire, optional whitespace around a field value is not part of it (RFC 9110
    // §5.5): hyper strips it, and the id inside is valid.
    cases.retain(|c| c.name != "leading space" && c.name != "only spaces");
    cases.push(case(
        "padded with spaces",
        &[b"  padded  "],
        valid("padded"),
    ));
    cases.push(case(
        "only spaces on the wire",
        &[b"   "],
        Expect::Invalid(InvalidSessionId::Empty),
    ));
    for c in cases {
        let before = stats.snapshot();
        let headers: Vec<(&HeaderName, &[u8])> =
            c.values.iter().map(|v| (&name, v.as_slice())).collect();
        let (status, pinned) = hyper_get(&client, addr, &headers).await;
        assert_eq!(status, StatusCode::OK, "{}", c.name);
        assert_eq!(pinned, None, "{}", c.name);
        let after = stats.snapshot();
        assert_eq!(after.requests, before.requests + 1, "{}", c.name);
        match &c.expect {
            Expect::Session(id) => {
                assert_eq!(after.invalid_total(), before.invalid_total(), "{}", c.name);
                assert_eq!(
                    bound(&store, id).map(|a| a.as_str().to_owned()).as_deref(),
                    Some("acct-h"),
                    "{}",
                    c.name
                );
                let (_, pinned) = hyper_get(&client, addr, &headers).await;
                assert_eq!(pinned.as_deref(), Some("acct-h"), "{}", c.name);
            }
            Expect::Invalid(reason) => {
                assert_eq!(
                    after.invalid(*reason),
                    before.invalid(*reason) + 1,
                    "{}",
                    c.name
                );
                assert_eq!(
                    after.invalid_total(),
                    before.invalid_total() + 1,
                    "{}",
                    c.name
                );
                assert_eq!(after.commits, before.commits, "{}", c.name);
            }
        }
    }

    // Two configured names over the wire.
    let primary = HeaderName::from_static("sticky-session-id");
    let alias = HeaderName::from_static("x-client-session");
    let layer = StickySessionLayer::new().headers([primary.clone(), alias.clone()]);
    let (store, stats) = (layer.store().clone(), layer.stats());
    let addr = hyper_stack(layer).await;
    hyper_get(&client, addr, &[(&primary, b"wire-p"), (&alias, b"wire-a")]).await;
    assert!(bound(&store, "wire-p").is_some() && bound(&store, "wire-a").is_none());
    hyper_get(
        &client,
        addr,
        &[(&primary, b"bad value"), (&alias, b"wire-b")],
    )
    .await;
    assert!(bound(&store, "wire-b").is_some());
    hyper_get(
        &client,
        addr,
        &[(&primary, b"x"), (&primary, b"y"), (&alias, b"")],
    )
    .await;
    let s = stats.snapshot();
    assert_eq!(s.invalid_total(), 1);
    assert_eq!(s.invalid(InvalidSessionId::Conflicting), 1);
}

/// Sends raw bytes as a request and returns the response's status line.
async fn raw_request(addr: std::net::SocketAddr, head: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(LIMIT, stream.read_to_end(&mut buf))
        .await
        .expect("hang guard");
    let text = String::from_utf8_lossy(&buf);
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn control_characters_and_del_on_the_wire_are_refused_by_hyper_before_the_layer() {
    let layer = StickySessionLayer::new();
    let (store, stats) = (layer.store().clone(), layer.stats());
    let addr = hyper_stack(layer).await;
    for b in [0x00u8, 0x01, 0x08, 0x0b, 0x0c, 0x1b, 0x1f, 0x7f] {
        let mut head = Vec::new();
        write!(
            head,
            "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\nsticky-session-id: "
        )
        .unwrap();
        head.extend_from_slice(&[b'a', b, b'b']);
        head.extend_from_slice(b"\r\n\r\n");
        let status = raw_request(addr, &head).await;
        assert!(status.starts_with("HTTP/1.1 400"), "0x{b:02x}: {status:?}");
    }
    // None of them reached the layer, and the server still serves.
    assert_eq!(stats.snapshot().requests, 0);
    let status = raw_request(
        addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\nsticky-session-id: fine\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
    assert_eq!(stats.snapshot().requests, 1);
    assert!(bound(&store, "fine").is_some());
}
