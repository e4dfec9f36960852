//! The log line format: `tracing-subscriber`'s default ("full", without colours), written
//! for less. The proxy writes one `info` line per request, and the generic formatter
//! spent about a tenth of a request's instructions on it: a calendar computation and a
//! timestamp format for every line, and each field through its colour-styling wrappers
//! even with colours off. [`LineFormat`] writes the same bytes:
//!
//! ```text
//! 2026-12-07T10:29:55.216412Z  INFO proxy::app::failover: proxied method=GET path="/v1/chat" status=200
//! ```
//!
//! (UTC timestamp to the microsecond, the level right-aligned in five columns, the
//! target, the message, then `name=value` with values as `Debug` shows them, strings
//! quoted, `%`-fields as `Display`). The date and time down to the second are computed
//! once a second per thread. An event inside a span (only at `debug` and below: the
//! sticky layer's span) and any colour output go to the default formatter, whose span
//! rendering this one does not repeat.
//!
//! The access line (`proxied`, one per request) is also written without `tracing`'s
//! dispatch, by [`direct`]: the fields are written straight into the line instead of
//! being visited as `dyn Debug` values through `core::fmt`, which cost the line 5 040
//! instructions (now 2 930) of a request's 83 600. The line is the same bytes, goes to
//! the same writer (the log thread's queue, with its bound and its count of dropped
//! lines) and obeys `RUST_LOG` as before: the caller first asks
//! `tracing::event_enabled!` for an event of its target, level and field names
//! (field-name directives included). Where the two could differ, [`direct`] declines
//! and the caller logs through `tracing`: before `main` installs the writer (tests that
//! build the service themselves), on a terminal (colours), and inside a span (at
//! `debug` and below).

use std::cell::RefCell;
use std::error::Error as StdError;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_appender::non_blocking::NonBlocking;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The log line format (see the module docs).
pub(crate) struct LineFormat {
    /// For events in a span, and when the writer takes colours.
    fallback: Format<Full>,
}

impl LineFormat {
    /// `ansi`: whether the output takes colours (a terminal).
    pub(crate) fn new(ansi: bool) -> Self {
        Self {
            fallback: Format::default().with_ansi(ansi),
        }
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if writer.has_ansi_escapes() || ctx.lookup_current().is_some() {
            return self.fallback.format_event(ctx, writer, event);
        }
        write_timestamp(&mut writer, SystemTime::now())?;
        let meta = event.metadata();
        writer.write_str(level_str(*meta.level()))?;
        writer.write_char(' ')?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let mut fields = Fields {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// The default formatter's level column.
fn level_str(level: Level) -> &'static str {
    match level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

/// Fields as the default formatter's visitor writes them.
struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    /// One field as the default visitor writes it: none for `log.*` names; else a space
    /// before all but the first, `name=` unless it is the message, then `value`.
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        self.result = self.pad().and_then(|()| {
            if name != "message" {
                self.writer
                    .write_str(name.strip_prefix("r#").unwrap_or(name))?;
                self.writer.write_char('=')?;
            }
            value(self.writer)
        });
    }

    fn pad(&mut self) -> fmt::Result {
        if self.first {
            self.first = false;
            Ok(())
        } else {
            self.writer.write_char(' ')
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.field(field, |w| write_str_debug(w, value));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn StdError + 'static)) {
        if let Some(source) = value.source() {
            self.record_debug(
                field,
                &format_args!("{} {}.sources={}", value, field, SourceList(source)),
            );
        } else {
            self.record_debug(field, &format_args!("{value}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| write!(w, "{value:?}"));
    }
}

/// Writes what `{s:?}` writes: when that is `s` between quotes (printable ASCII with no
/// `"` or `\`; `str`'s `Debug` escapes quotes, backslashes, control and non-ASCII
/// characters), without the formatting machinery.
fn write_str_debug(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    if s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        w.write_char('"')?;
        w.write_str(s)?;
        w.write_char('"')
    } else {
        write!(w, "{s:?}")
    }
}

/// An error's sources as the default formatter lists them: `[a, b]`.
struct SourceList<'a>(&'a (dyn StdError + 'static));

impl fmt::Display for SourceList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        let mut curr = Some(self.0);
        while let Some(e) = curr {
            list.entry(&format_args!("{e}"));
            curr = e.source();
        }
        list.finish()
    }
}

/// `YYYY-MM-DDTHH:MM:SS.uuuuuuZ ` (UTC), the seconds part computed once per second.
fn write_timestamp(w: &mut impl fmt::Write, now: SystemTime) -> fmt::Result {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            cached.1.clear();
            write_second(&mut cached.1, secs)?;
            cached.0 = secs;
        }
        w.write_str(&cached.1)?;
        // `.{:06}Z `, without the formatting machinery.
        let mut tail = *b".000000Z ";
        let mut micros = since.subsec_micros();
        for digit in tail[1..7].iter_mut().rev() {
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        w.write_str(std::str::from_utf8(&tail).map_err(|_| fmt::Error)?)
    })
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (UTC).
pub(crate) fn write_second(w: &mut impl fmt::Write, secs: u64) -> fmt::Result {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or(fmt::Error)?;
    write!(
        w,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The writer [`direct`] writes to: the one the subscriber has, set by `main` when the
/// output takes no colours.
static DIRECT: OnceLock<NonBlocking> = OnceLock::new();

/// Lets [`direct`] write to `writer` (the subscriber's own; plain text only).
pub(crate) fn install_direct(writer: NonBlocking) {
    let _ = DIRECT.set(writer);
}

/// Writes an `INFO` line of `target` to the installed writer, in this format, with the
/// fields `fields` adds; `false` when it did not and the caller must log through
/// `tracing` (no writer installed, or a span is current: see the module docs). The
/// caller has checked that the level is enabled for `target`.
pub(crate) fn direct(target: &str, message: &str, fields: impl FnOnce(&mut Line<'_>)) -> bool {
    thread_local! {
        /// The line's buffer, and this thread's own handle on the writer: cloning the
        /// shared one for every line (as the subscriber does for each event) counts a
        /// sender in and out of the log thread's queue, two atomic operations on a
        /// counter every worker shares, per line.
        static LOCAL: RefCell<(String, Option<NonBlocking>)> =
            const { RefCell::new((String::new(), None)) };
    }
    let Some(writer) = DIRECT.get() else {
        return false;
    };
    if !tracing::Span::current().is_none() {
        return false;
    }
    LOCAL.with(|local| {
        let Ok(mut local) = local.try_borrow_mut() else {
            return false;
        };
        let (buf, own) = &mut *local;
        buf.clear();
        if line(buf, SystemTime::now(), target, message, fields).is_err() {
            return false;
        }
        // As the subscriber writes: a lossy queue, whose drops are counted.
        let _ = own
            .get_or_insert_with(|| writer.clone())
            .write_all(buf.as_bytes());
        // A line that once grew the buffer past a few lines' size does not keep it.
        if buf.capacity() > 4096 {
            *buf = String::new();
        }
        true
    })
}

/// An `INFO` line, as [`LineFormat`] writes an event of `target` with `message` and
/// the fields `fields` adds.
pub(crate) fn line(
    buf: &mut String,
    now: SystemTime,
    target: &str,
    message: &str,
    fields: impl FnOnce(&mut Line<'_>),
) -> fmt::Result {
    write_timestamp(buf, now)?;
    buf.push_str(level_str(Level::INFO));
    buf.push(' ');
    buf.push_str(target);
    buf.push_str(": ");
    buf.push_str(message);
    let mut line = Line {
        buf,
        result: Ok(()),
    };
    fields(&mut line);
    line.result?;
    buf.push('\n');
    Ok(())
}

/// The fields of a [`direct`] line, each written as the event's field of the same kind.
pub(crate) struct Line<'a> {
    buf: &'a mut String,
    result: fmt::Result,
}

impl Line<'_> {
    fn name(&mut self, name: &str) {
        self.buf.push(' ');
        self.buf.push_str(name);
        self.buf.push('=');
    }

    /// A `%value` field.
    pub(crate) fn display(&mut self, name: &str, value: impl fmt::Display) {
        self.name(name);
        if self.result.is_ok() {
            self.result = write!(self.buf, "{value}");
        }
    }

    /// A `%value` field whose value is a string already.
    pub(crate) fn display_str(&mut self, name: &str, value: &str) {
        self.name(name);
        self.buf.push_str(value);
    }

    /// A string field (`name = value`): quoted, escaped as `Debug` escapes.
    pub(crate) fn str(&mut self, name: &str, value: &str) {
        self.name(name);
        if self.result.is_ok() {
            self.result = write_str_debug(self.buf, value);
        }
    }

    /// An unsigned number field.
    pub(crate) fn u64(&mut self, name: &str, value: u64) {
        self.name(name);
        let mut digits = [0u8; 20];
        let mut k = digits.len();
        let mut rest = value;
        loop {
            k -= 1;
            digits[k] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.buf.extend(digits[k..].iter().map(|&d| char::from(d)));
    }
}
