//! The session id from an ordered list of headers, or from a user function.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderName, HeaderValue};

use super::{InvalidSessionId, SessionId, validate};
use crate::types::SessionSource;

/// A user function that finds the raw session id in the request parts.
pub(crate) type SessionFn = Arc<dyn Fn(&Parts) -> Option<HeaderValue> + Send + Sync>;

/// Where the layer looks for the session id.
#[derive(Clone)]
pub(crate) enum Source {
    /// Header names in priority order: the first one present with a valid value wins.
    Headers(Arc<[HeaderName]>),
    /// A user function over the request parts.
    Fn(SessionFn),
}

/// What the layer found on a request.
#[derive(Debug)]
pub(crate) enum Found {
    /// No session header at all.
    None,
    /// A valid id.
    Valid(SessionId),
    /// Something was there, but not a valid id. `header` is the name it was read from;
    /// `value` is kept (a cheap clone) only so a log line can show a short escaped
    /// prefix of it, formatted only if that log line is enabled.
    Invalid {
        reason: InvalidSessionId,
        header: Option<HeaderName>,
        value: HeaderValue,
    },
}

/// At most 8 bytes of an invalid value, escaped: what a log line may show of it.
pub(crate) struct EscapedPrefix<'a>(pub(crate) &'a [u8]);

impl fmt::Display for EscapedPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0[..self.0.len().min(8)].escape_ascii())
    }
}

#[cfg(test)]
fn escaped_prefix(bytes: &[u8]) -> String {
    EscapedPrefix(bytes).to_string()
}

impl Source {
    pub(crate) fn extract(&self, parts: &Parts, max_len: usize) -> Found {
        self.extract_sourced(parts, max_len).0
    }

    /// What the request carries, and for a valid id where it came from.
    pub(crate) fn extract_sourced(
        &self,
        parts: &Parts,
        max_len: usize,
    ) -> (Found, Option<SessionSource>) {
        match self {
            Source::Headers(names) => {
                let mut first_invalid = None;
                for name in names.iter() {
                    let mut values = parts.headers.get_all(name).iter();
                    let Some(first) = values.next() else {
                        continue;
                    };
                    // Several identical values are one value; differing values are no session.
                    let conflicting = values.any(|v| v != first);
                    let result = if conflicting {
                        Err(InvalidSessionId::Conflicting)
                    } else {
                        validate(first.as_bytes(), max_len)
                    };
                    match result {
                        Ok(()) => {
                            return (
                                Found::Valid(SessionId(first.clone())),
                                Some(SessionSource::Header(name.clone())),
                            );
                        }
                        Err(reason) => {
                            if first_invalid.is_none() {
                                first_invalid = Some(Found::Invalid {
                                    reason,
                                    header: Some(name.clone()),
                                    value: first.clone(),
                                });
                            }
                        }
                    }
                }
                (first_invalid.unwrap_or(Found::None), None)
            }
            Source::Fn(f) => match f(parts) {
                None => (Found::None, None),
                Some(v) => match validate(v.as_bytes(), max_len) {
                    Ok(()) => (Found::Valid(SessionId(v)), Some(SessionSource::Function)),
                    Err(reason) => (
                        Found::Invalid {
                            reason,
                            header: None,
                            value: v,
                        },
                        None,
                    ),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::DEFAULT_SESSION_HEADER;

    fn parts(headers: &[(&str, &[u8])]) -> Parts {
        let mut req = http::Request::builder().uri("/");
        for (n, v) in headers {
            req = req.header(*n, HeaderValue::from_bytes(v).unwrap());
        }
        req.body(()).unwrap().into_parts().0
    }

    fn headers(names: &[&'static str]) -> Source {
        Source::Headers(names.iter().map(|n| HeaderName::from_static(n)).collect())
    }

    fn reason(found: Found) -> Option<InvalidSessionId> {
        match found {
            Found::Invalid { reason, .. } => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn accepts_visible_ascii_up_to_limit() {
        let s = headers(&["sid"]);
        let id = "a".repeat(256);
        assert!(
            matches!(s.extract(&parts(&[("sid", id.as_bytes())]), 256), Found::Valid(v) if v.as_str() == id)
        );
        assert!(matches!(
            s.extract(&parts(&[("sid", b"!~")]), 256),
            Found::Valid(_)
        ));
    }

    #[test]
    fn rejects_257_bytes_as_too_long() {
        let s = headers(&["sid"]);
        let id = "a".repeat(257);
        assert_eq!(
            reason(s.extract(&parts(&[("sid", id.as_bytes())]), 256)),
            Some(InvalidSessionId::TooLong)
        );
    }

    #[test]
    fn configurable_max_len() {
        let s = headers(&["sid"]);
        assert_eq!(
            reason(s.extract(&parts(&[("sid", b"abcde")]), 4)),
            Some(InvalidSessionId::TooLong)
        );
        assert!(matches!(
            s.extract(&parts(&[("sid", b"abcd")]), 4),
            Found::Valid(_)
        ));
    }

    #[test]
    fn rejects_empty_space_tab_control_del_and_high_bytes() {
        let s = headers(&["sid"]);
        assert_eq!(
            reason(s.extract(&parts(&[("sid", b"")]), 256)),
            Some(InvalidSessionId::Empty)
        );
        for bad in [&b"a b"[..], b"a\tb", b"caf\xc3\xa9", b"\xff\xfe"] {
            assert_eq!(
                reason(s.extract(&parts(&[("sid", bad)]), 256)),
                Some(InvalidSessionId::Byte),
                "{bad:?}"
            );
        }
        // Control characters other than tab cannot be in a HeaderValue at all; validate directly.
        assert_eq!(validate(b"a\x01b", 256), Err(InvalidSessionId::Byte));
        assert_eq!(validate(b"a\nb", 256), Err(InvalidSessionId::Byte));
        assert_eq!(validate(b"a\x7fb", 256), Err(InvalidSessionId::Byte));
    }

    #[test]
    fn duplicate_identical_values_are_one_value_differing_values_are_invalid() {
        let s = headers(&["sid"]);
        assert!(matches!(
            s.extract(&parts(&[("sid", b"abc"), ("sid", b"abc")]), 256),
            Found::Valid(_)
        ));
        assert_eq!(
            reason(s.extract(&parts(&[("sid", b"abc"), ("sid", b"abd")]), 256)),
            Some(InvalidSessionId::Conflicting)
        );
    }

    #[test]
    fn first_present_valid_header_wins_in_configured_order() {
        let s = headers(&["primary", "alias"]);
        let p = parts(&[("alias", b"from-alias"), ("primary", b"from-primary")]);
        assert!(matches!(s.extract(&p, 256), Found::Valid(v) if v.as_str() == "from-primary"));
        // An invalid primary falls through to a valid alias.
        let p = parts(&[("alias", b"from-alias"), ("primary", b"bad value")]);
        assert!(matches!(s.extract(&p, 256), Found::Valid(v) if v.as_str() == "from-alias"));
        // Only invalid values: the first invalid one is reported.
        let p = parts(&[("alias", b""), ("primary", b"bad value")]);
        assert_eq!(reason(s.extract(&p, 256)), Some(InvalidSessionId::Byte));
        assert!(matches!(s.extract(&parts(&[]), 256), Found::None));
    }

    #[test]
    fn generic_header_is_not_read_by_default() {
        let s = Source::Headers(Arc::from([DEFAULT_SESSION_HEADER]));
        assert!(matches!(
            s.extract(&parts(&[("x-session-id", b"abc")]), 256),
            Found::None
        ));
        assert!(matches!(
            s.extract(&parts(&[("sticky-session-id", b"abc")]), 256),
            Found::Valid(_)
        ));
    }

    #[test]
    fn log_prefix_is_short_and_escaped() {
        // Eight bytes at most, escaped.
        assert_eq!(escaped_prefix(b"\x01secret-session-token"), "\\x01secret-");
        let id = SessionId::new("abcdefgh-secret").unwrap();
        let shown = format!("{id:?} {}", id.redacted());
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn session_fn_output_is_validated() {
        let s = Source::Fn(Arc::new(|p: &Parts| {
            p.uri
                .query()
                .and_then(|q| q.strip_prefix("s="))
                .and_then(|v| HeaderValue::from_str(v).ok())
        }));
        let p = http::Request::get("/x?s=abc")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert!(matches!(s.extract(&p, 256), Found::Valid(v) if v.as_str() == "abc"));
        let p = http::Request::get("/x?s=").body(()).unwrap().into_parts().0;
        assert_eq!(reason(s.extract(&p, 256)), Some(InvalidSessionId::Empty));
    }
}
