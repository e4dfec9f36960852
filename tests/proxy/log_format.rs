//! The proxy's log line format writes what `tracing-subscriber`'s default formatter
//! (without colours) writes, byte for byte after the timestamp, and a timestamp of the
//! same shape and second.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

use crate::app::logfmt::{self, LineFormat};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[derive(Debug)]
struct Outer(Inner);
#[derive(Debug)]
struct Inner;
impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("outer failed")
    }
}
impl fmt::Display for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("inner cause")
    }
}
impl StdError for Outer {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}
impl StdError for Inner {}

/// Every kind of field the proxy logs, at every level.
fn events() {
    let session = "abc…(3 bytes)";
    tracing::info!(
        method = %http::Method::POST, path = "/v1/chat", session = %session,
        upstream = %"account-a", pick = "round-robin", status = 200u16, "proxied"
    );
    tracing::warn!(
        error = &Outer(Inner) as &(dyn StdError + 'static),
        "attempt failed"
    );
    tracing::error!(error = &Inner as &(dyn StdError + 'static), "plain error");
    tracing::info!(n = -3i64, f = 1.5f64, ok = true, text = ?"quoted \"x\"", "numbers {} and {}", 1, 2);
    tracing::warn!(r#type = "raw", "raw identifier");
    // String fields: plain ASCII (written between quotes as it is), and every kind of
    // character `Debug` escapes or might (quotes, backslashes, controls, non-ASCII).
    tracing::info!(
        plain = "a-b c_d/e.f:1~",
        quote = "say \"hi\"",
        backslash = "a\\b",
        control = "tab\there\nnewline",
        accent = "caf\u{e9}",
        combining = "e\u{301}",
        nul = "\0",
        empty = "",
        apostrophe = "it's",
        "strings"
    );
    tracing::info!("message only");
    tracing::info!(only = 1);
    tracing::error!(stats = ?vec![(1, 2)], "debug value");
}

fn capture(line_format: bool) -> String {
    let out = Captured::default();
    let builder = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE);
    if line_format {
        let subscriber = builder.event_format(LineFormat::new(false)).finish();
        tracing::subscriber::with_default(subscriber, events);
    } else {
        tracing::subscriber::with_default(builder.finish(), events);
    }
    String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
}

#[test]
fn the_line_format_writes_what_the_default_formatter_writes() {
    // Both within one second (a retry if they straddle one).
    let (ours, theirs) = (0..3)
        .map(|_| (capture(true), capture(false)))
        .find(|(a, b)| a.get(..19) == b.get(..19))
        .expect("two captures within one second");
    let (ours, theirs): (Vec<_>, Vec<_>) = (ours.lines().collect(), theirs.lines().collect());
    assert_eq!(ours.len(), 9, "{ours:#?}");
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        // `2026-12-07T10:29:55.216412Z ` then the rest.
        let shape = |l: &str| {
            let b = l.as_bytes();
            l.len() > 28
                && b[4] == b'-'
                && b[7] == b'-'
                && b[10] == b'T'
                && b[13] == b':'
                && b[16] == b':'
                && b[19] == b'.'
                && b[26] == b'Z'
                && b[27] == b' '
                && b[..26]
                    .iter()
                    .enumerate()
                    .all(|(i, c)| [4, 7, 10, 13, 16, 19].contains(&i) || c.is_ascii_digit())
        };
        assert!(shape(a), "{a}");
        assert!(shape(b), "{b}");
        assert_eq!(a[..19], b[..19], "the same second");
        assert_eq!(a[27..], b[27..]);
    }
}

#[test]
fn the_date_and_time_of_known_unix_seconds() {
    for (secs, text) in [
        (0, "1970-01-01T00:00:00"),
        (951_782_399, "2000-02-28T23:59:59"),
        (951_782_400, "2000-02-29T00:00:00"),
        (978_307_200, "2001-01-01T00:00:00"),
        (1_709_251_199, "2024-02-29T23:59:59"),
        (1_796_687_999, "2026-12-07T23:59:59"),
        (4_102_444_800, "2100-01-01T00:00:00"),
    ] {
        let mut out = String::new();
        crate::app::logfmt::write_second(&mut out, secs).unwrap();
        assert_eq!(out, text, "{secs}");
    }
}

/// The access line as `logfmt::direct` writes it is the line its event writes through
/// `tracing` (and so the default formatter's), for each kind of field it has: `%`-fields
/// given as strings or as `Display` values, string fields plain and escaped, numbers.
#[test]
fn the_direct_line_writes_what_the_event_writes() {
    let paths = [
        "/v1/chat/completions",
        "/say \"hi\"",
        "/caf\u{e9}",
        "/tab\there",
        "",
    ];
    for path in paths {
        for status in [0u16, 7, 200, 503, u16::MAX] {
            let event = || {
                tracing::info!(
                    method = %http::Method::POST, path, session = %"abcd…(36 bytes)",
                    source = %format_args!("header:{}", "session-id"), upstream = %"account-a",
                    pick = "round-robin", status, "proxied"
                );
            };
            let theirs = capture_one(event);
            let mut ours = String::new();
            logfmt::line(
                &mut ours,
                std::time::SystemTime::now(),
                module_path!(),
                "proxied",
                |l| {
                    l.display_str("method", http::Method::POST.as_str());
                    l.str("path", path);
                    l.display("session", "abcd…(36 bytes)");
                    l.display("source", format_args!("header:{}", "session-id"));
                    l.display_str("upstream", "account-a");
                    l.str("pick", "round-robin");
                    l.u64("status", status.into());
                },
            )
            .unwrap();
            // The same line after the timestamp (`…Z `), and a timestamp of the same shape.
            assert_eq!(ours.get(27..), theirs.get(27..), "{ours}{theirs}");
            assert_eq!(ours.len(), theirs.len());
            assert!(ours.ends_with('\n') && ours.lines().count() == 1, "{ours}");
        }
    }
}

/// What one event writes through `LineFormat`.
fn capture_one(event: impl FnOnce()) -> String {
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_ansi(false)
        .event_format(LineFormat::new(false))
        .finish();
    tracing::subscriber::with_default(subscriber, event);
    String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
}

/// The proxy's access line reaches the writer `logfmt::direct` was given without going
/// through `tracing`: the subscriber here enables `info` (so the line is wanted) but
/// writes nowhere, so the line can only have come the direct way. Fails when the
/// proxy logs its `proxied` line through `tracing` only.
#[tokio::test]
async fn the_access_line_goes_to_the_installed_writer_past_tracing() {
    use crate::support::upstream::{Account, Mode};
    use tower_sticky_session::store::MemoryStore;

    let out = Captured::default();
    let (writer, flush) = tracing_appender::non_blocking(out.clone());
    logfmt::install_direct(writer);
    let subscriber = tracing_subscriber::fmt()
        .with_writer(io::sink)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _subscriber = tracing::subscriber::set_default(subscriber);

    let a = Account::start("a", Mode::Stream).await;
    let cfg = crate::app::ProxyConfig::new(vec![crate::app::Upstream::new("a", &a.url()).unwrap()]);
    let (spawned, _) = crate::harness::start(&cfg, MemoryStore::new()).await;
    let client = crate::harness::client();
    let req = crate::harness::chat(http::Method::POST, spawned.addr, Some("conv-direct"))
        .body(http_body_util::Full::default())
        .unwrap();
    let res = crate::harness::send(&client, req).await;
    assert_eq!(res.status(), http::StatusCode::OK);
    http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap();
    spawned.server.abort();
    // The log thread writes what is queued before it ends.
    drop(flush);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(" proxied "))
        .unwrap_or_else(|| panic!("no proxied line written directly: {text:?}"));
    assert!(
        line.contains(" INFO proxy::app::failover: proxied method=POST path=\"/v1/chat\" session=conv…(11 bytes)"),
        "{line}"
    );
}
