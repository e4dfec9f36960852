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

use std::cell::RefCell;
use std::error::Error as StdError;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

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
        } else if debug_is_quoted(value) {
            // What `{value:?}` writes, without the formatting machinery.
            self.field(field, |w| {
                w.write_char('"')?;
                w.write_str(value)?;
                w.write_char('"')
            });
        } else {
            self.record_debug(field, &value);
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

/// Whether `{s:?}` is `s` between quotes: printable ASCII with no `"` or `\` (what
/// `str`'s `Debug` escapes are quotes, backslashes, control and non-ASCII characters).
fn debug_is_quoted(s: &str) -> bool {
    s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
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
        write!(w, "{}.{:06}Z ", cached.1, since.subsec_micros())
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
