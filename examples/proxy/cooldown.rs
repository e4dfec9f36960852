//! Cooldown: an account that answered 429 (or could not be reached) is skipped by
//! round-robin and by pins until its `retry-after` (or `--cooldown`) has passed.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::RETRY_AFTER;

/// The longest cooldown a `retry-after` can ask for: an account asking for more is
/// still retried after an hour.
pub(crate) const MAX_COOLDOWN: Duration = Duration::from_secs(3600);

/// Why an account cools down (the status page shows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CoolReason {
    /// It answered 429 (for its `retry-after`, else `--cooldown`), over HTTP or inside a
    /// WebSocket.
    RateLimited,
    /// It could not be reached.
    Unreachable,
    /// It broke `--max-broken-streams` streams in a row after their first byte.
    BrokenStreams,
    /// It failed inside a WebSocket (an error event or an overload close code).
    FailedInSocket,
}

impl CoolReason {
    const ALL: [CoolReason; 4] = [
        Self::RateLimited,
        Self::Unreachable,
        Self::BrokenStreams,
        Self::FailedInSocket,
    ];

    /// Words for the status page and logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "429",
            Self::Unreachable => "unreachable",
            Self::BrokenStreams => "broken streams",
            Self::FailedInSocket => "failed inside a WebSocket",
        }
    }
}

/// Per-account cooldown deadlines, lock-free.
pub(crate) struct Cooldowns {
    start: Instant,
    /// Milliseconds since `start` until which account `i` cools down (0: never cooled).
    until: Box<[AtomicU64]>,
    /// Why the running cooldown of account `i` was set (an index into `CoolReason::ALL`).
    why: Box<[AtomicU8]>,
}

impl Cooldowns {
    /// No account cooling, `n` accounts.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            start: Instant::now(),
            until: (0..n).map(|_| AtomicU64::new(0)).collect(),
            why: (0..n).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Account `i` cools down for `d` (capped at [`MAX_COOLDOWN`]). A longer cooldown
    /// already running is kept.
    pub(crate) fn cool(&self, i: usize, d: Duration, why: CoolReason) {
        let d = d.min(MAX_COOLDOWN);
        let until = self.now_ms() + d.as_millis() as u64 + 1;
        if self.until[i].fetch_max(until, Ordering::Relaxed) < until {
            // This cooldown is the one running now: its reason is shown.
            let k = CoolReason::ALL.iter().position(|r| *r == why).unwrap_or(0);
            self.why[i].store(k as u8, Ordering::Relaxed);
        }
    }

    /// Why account `i`'s running cooldown was set, `None` when it is not cooling.
    pub(crate) fn reason(&self, i: usize) -> Option<CoolReason> {
        self.is_cooling(i)
            .then(|| CoolReason::ALL[usize::from(self.why[i].load(Ordering::Relaxed)) % 4])
    }

    /// Whether account `i` is cooling down now.
    pub(crate) fn is_cooling(&self, i: usize) -> bool {
        // 0: never cooled down, told without reading the clock (every request asks).
        let until = self.until[i].load(Ordering::Relaxed);
        until != 0 && until > self.now_ms()
    }

    /// How much longer account `i` cools down, `None` when it is not cooling (the
    /// status page shows it as a deadline).
    pub(crate) fn remaining(&self, i: usize) -> Option<Duration> {
        let (until, now) = (self.until[i].load(Ordering::Relaxed), self.now_ms());
        (until > now).then(|| Duration::from_millis(until - now))
    }
}

/// How long a 429's `retry-after` asks to wait: delay-seconds or an HTTP date. `None`
/// when absent or unreadable (the caller then uses `--cooldown`).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_imf_fixdate(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7), the HTTP
/// date format senders must generate. The obsolete formats are not accepted (their
/// `retry-after` falls back to `--cooldown`).
pub(crate) fn parse_imf_fixdate(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 29 || &b[3..5] != b", " || &b[25..] != b" GMT" {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let day = num(5..7)?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let name = s.get(8..11)?;
    let month = MONTHS.iter().position(|m| *m == name)? as u64 + 1;
    let year = num(12..16)?;
    let (hh, mm, ss) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if !(1..=31).contains(&day) || year < 1970 || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}
