//! Reading and validating the session id.
//!
//! - this module: the [`SessionId`] type and its validation, shared by every source;
//! - `header.rs`: reading it from an ordered list of headers or a user function;
//! - `clients.rs`: the header names real clients send ([`KNOWN_CLIENT_HEADERS`]);
//! - `body_fields.rs`: the JSON body fields the same clients put a session id in
//!   ([`BODY_FIELDS`]), and how each client's value is read.

pub(crate) mod body_fields;
mod clients;
mod header;

pub use body_fields::BODY_FIELDS;
pub use clients::KNOWN_CLIENT_HEADERS;
pub(crate) use header::{EscapedPrefix, Found, Source};

use std::fmt;

use http::{HeaderName, HeaderValue};

/// The default session header, `sticky-session-id`.
///
/// A namespaced name: a generic `x-session-id` is used by other software for other
/// meanings (tracing, web frameworks, analytics), and reading it by default would pin
/// requests on values that were never meant as a routing key. Configure
/// [`StickySessionLayer::headers`](crate::StickySessionLayer::headers) to accept such
/// aliases explicitly.
pub const DEFAULT_SESSION_HEADER: HeaderName = HeaderName::from_static("sticky-session-id");

/// The default maximum length of a session id, in bytes.
pub const DEFAULT_MAX_SESSION_ID_LEN: usize = 256;

/// Request extension: the validated session id of the request.
///
/// A session id is 1 to 256 bytes (configurable) of visible ASCII (`0x21..=0x7E`).
/// Cloning is cheap (it shares the request header's bytes). Its `Debug` output is
/// redacted to a short prefix and the length; use [`SessionId::as_str`] deliberately.
///
/// ```
/// use tower_sticky_session::SessionId;
///
/// let id = SessionId::new("conv-42").unwrap();
/// assert_eq!(id.as_str(), "conv-42");
/// assert!(SessionId::new("has space").is_err());
/// assert_eq!(format!("{id:?}"), "SessionId(\"conv…\", 7 bytes)");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId(HeaderValue);

impl SessionId {
    /// Validates `id` with the default rules (1 to 256 bytes of visible ASCII).
    pub fn new(id: &str) -> Result<Self, InvalidSessionId> {
        let value = HeaderValue::from_str(id).map_err(|_| {
            validate(id.as_bytes(), DEFAULT_MAX_SESSION_ID_LEN)
                .err()
                .unwrap_or(InvalidSessionId::Byte)
        })?;
        Self::from_header_value(value, DEFAULT_MAX_SESSION_ID_LEN)
    }

    /// Validates a header value as a session id of at most `max_len` bytes.
    pub fn from_header_value(value: HeaderValue, max_len: usize) -> Result<Self, InvalidSessionId> {
        validate(value.as_bytes(), max_len)?;
        Ok(Self(value))
    }

    /// The session id. Treat it as sensitive: log [`SessionId::redacted`] instead.
    pub fn as_str(&self) -> &str {
        // Validation admits only visible ASCII, so this cannot fail.
        self.0.to_str().unwrap_or_default()
    }

    /// The session id's bytes (visible ASCII), without the UTF-8 check of
    /// [`as_str`](Self::as_str): what stores hash.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// A form that is safe to log: a four-byte prefix and the length.
    pub fn redacted(&self) -> Redacted<'_> {
        Redacted(self.as_str())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({:?})", self.redacted())
    }
}

/// A session id shortened for logs; see [`SessionId::redacted`].
pub struct Redacted<'a>(&'a str);

const LOG_PREFIX: usize = 4;

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{prefix}…({len} bytes)`, piece by piece: one access line per request writes
        // it, and `write!` would run the formatting machinery for the template.
        let prefix = &self.0[..self.0.len().min(LOG_PREFIX)];
        f.write_str(prefix)?;
        f.write_str("…(")?;
        // The length's digits (not `Display::fmt(&len, f)`, which would take the
        // caller's width and fill).
        let mut digits = [0u8; 20];
        let mut k = digits.len();
        let mut rest = self.0.len();
        loop {
            k -= 1;
            digits[k] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        f.write_str(std::str::from_utf8(&digits[k..]).map_err(|_| fmt::Error)?)?;
        f.write_str(" bytes)")
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = &self.0[..self.0.len().min(LOG_PREFIX)];
        write!(f, "\"{prefix}…\", {} bytes", self.0.len())
    }
}

/// Why a request's session id was not accepted.
///
/// The request is then served without stickiness (or, in strict mode, answered with
/// 400 and this reason's [`Display`](fmt::Display) text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidSessionId {
    /// The value is empty.
    Empty,
    /// The value is longer than the configured maximum.
    TooLong,
    /// The value holds a byte outside visible ASCII (space, tab, control characters,
    /// DEL, bytes ≥ 0x80).
    Byte,
    /// The header appears several times with different values.
    Conflicting,
}

impl InvalidSessionId {
    /// All reasons, in a fixed order (crate-internal: the enum may grow).
    pub(crate) const ALL: [InvalidSessionId; 4] =
        [Self::Empty, Self::TooLong, Self::Byte, Self::Conflicting];

    /// A short machine-readable name (`empty`, `too_long`, `invalid_byte`, `conflicting`),
    /// used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLong => "too_long",
            Self::Byte => "invalid_byte",
            Self::Conflicting => "conflicting",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Self::Empty => 0,
            Self::TooLong => 1,
            Self::Byte => 2,
            Self::Conflicting => 3,
        }
    }
}

impl fmt::Display for InvalidSessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "session id is empty",
            Self::TooLong => "session id is too long",
            Self::Byte => "session id must be visible ASCII (0x21-0x7E) without spaces",
            Self::Conflicting => "session header is repeated with different values",
        })
    }
}

impl std::error::Error for InvalidSessionId {}

#[inline]
pub(crate) fn validate(bytes: &[u8], max_len: usize) -> Result<(), InvalidSessionId> {
    if bytes.is_empty() {
        return Err(InvalidSessionId::Empty);
    }
    if bytes.len() > max_len {
        return Err(InvalidSessionId::TooLong);
    }
    // Without an early exit, so the compiler checks many bytes per instruction: ids are
    // short and almost always valid, and this runs on every request.
    if !bytes
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x5e))
    {
        return Err(InvalidSessionId::Byte);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redacted_form_is_a_prefix_and_the_length_whatever_the_width_asked() {
        for (id, shown) in [
            ("a", "a…(1 bytes)"),
            ("conv", "conv…(4 bytes)"),
            ("conv-42", "conv…(7 bytes)"),
            (&"x".repeat(256) as &str, "xxxx…(256 bytes)"),
            (&"y".repeat(1234567) as &str, "yyyy…(1234567 bytes)"),
        ] {
            assert_eq!(Redacted(id).to_string(), shown);
            assert_eq!(format!("{:>40}", Redacted(id)), shown, "no padding");
            assert_eq!(format!("{:<3}", Redacted(id)), shown, "no padding");
        }
    }

    #[test]
    fn validate_admits_exactly_visible_ascii_at_every_position() {
        for b in 0..=u8::MAX {
            let visible = (0x21..=0x7e).contains(&b);
            // Alone, first, last and in the middle of an otherwise valid id.
            for id in [
                vec![b],
                vec![b, b'a', b'b'],
                vec![b'a', b'b', b],
                vec![b'a', b, b'b'],
            ] {
                let expected = if visible {
                    Ok(())
                } else {
                    Err(InvalidSessionId::Byte)
                };
                assert_eq!(validate(&id, 256), expected, "byte {b:#04x} in {id:?}");
            }
        }
        // A long id with one bad byte far from either end is still caught.
        let mut long = vec![b'x'; 200];
        long[137] = b' ';
        assert_eq!(validate(&long, 256), Err(InvalidSessionId::Byte));
        assert_eq!(validate(&[], 256), Err(InvalidSessionId::Empty));
        assert_eq!(validate(&[b'a'; 5], 4), Err(InvalidSessionId::TooLong));
    }
}
