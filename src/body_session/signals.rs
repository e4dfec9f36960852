//! What a request body says about its session.

use super::fingerprint::{FingerprintKey, fingerprint};
use super::scan::{self, lexer::Stop};
use crate::extract::{DEFAULT_MAX_SESSION_ID_LEN, InvalidSessionId, SessionId, validate};
use crate::types::Scope;

/// Request extension inserted by [`SessionFromBody`](super::SessionFromBody) when it has
/// read a JSON request body: what the body says about the request's session.
///
/// Present only when the body was buffered whole and scanned (a body over the limit, not
/// JSON, invalid JSON, or failed has none). Every id in it passed the same validation as
/// a session header (1 to 256 visible ASCII bytes by default).
///
/// How the sticky layer reads it, first match wins: a learned
/// [`previous_response_id`](Self::previous_response_id) (a hard pin), then the session
/// headers, then [`session`](Self::session), then [`fingerprint`](Self::fingerprint).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BodySignals {
    /// The session id from the first field of [`BODY_FIELDS`](super::BODY_FIELDS) that
    /// holds a valid one.
    pub session: Option<BodySession>,
    /// The body's top-level `previous_response_id` (a Responses API `resp_…`), if valid.
    /// It resolves only on the account that created that response: look it up among
    /// learned response ids before any other source.
    pub previous_response_id: Option<SessionId>,
    /// The conversation fingerprint (`fp-` and 32 hex digits), when enabled with
    /// [`SessionFromBodyLayer::fingerprint`](super::SessionFromBodyLayer::fingerprint)
    /// and the body has a first user message.
    pub fingerprint: Option<SessionId>,
    /// The body's top-level `store` member when it is a boolean (`None`: absent, or not
    /// a boolean). The Responses API's `"store": false` asks the provider not to keep the
    /// response, which then cannot be continued with `previous_response_id`: the sticky
    /// layer does not [learn](crate::StickySessionLayer::learn_response_ids) its id.
    pub store: Option<bool>,
    /// The body's top-level `model` string, as a [`Scope`] (1 to 256 bytes of visible
    /// ASCII, else `None`): what [`StickySessionLayer::scope_by_model`](crate::StickySessionLayer::scope_by_model)
    /// keys bindings by, so a session keeps one account per model.
    pub model: Option<Scope>,
}

/// A session id read from a request body, and the field it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BodySession {
    /// The validated session id.
    pub id: SessionId,
    /// The field it was read from, one of [`BODY_FIELDS`](super::BODY_FIELDS) (e.g.
    /// `"prompt_cache_key"`).
    pub field: &'static str,
}

impl BodySession {
    /// A session id and the field it came from.
    pub fn new(id: SessionId, field: &'static str) -> Self {
        Self { id, field }
    }
}

/// The scan of a complete body was not possible: the body is not JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidJson;

impl std::fmt::Display for InvalidJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body is not valid JSON")
    }
}

impl std::error::Error for InvalidJson {}

/// How to scan.
#[derive(Clone, Debug)]
pub(crate) struct ScanConfig {
    pub(crate) max_len: usize,
    pub(crate) fingerprint: Option<FingerprintKey>,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            max_len: DEFAULT_MAX_SESSION_ID_LEN,
            fingerprint: None,
        }
    }
}

/// The result of a scan, for the middleware: the signals, and the first field whose
/// value was rejected (for a debug event).
pub(crate) struct Outcome {
    pub(crate) signals: BodySignals,
    pub(crate) rejected: Option<(&'static str, InvalidSessionId)>,
}

pub(crate) fn scan_body(body: &[u8], config: &ScanConfig) -> Result<Outcome, InvalidJson> {
    let scanned = scan::scan(body, config.fingerprint.is_some()).map_err(|_: Stop| InvalidJson)?;
    let (found, rejected) = scanned.session(config.max_len);
    let session = found.map(|(id, field)| BodySession::new(id, field));
    let previous_response_id = scanned
        .previous_response_id
        .as_deref()
        .and_then(|v| scan::session_id(v, config.max_len).ok());
    let fingerprint = match (config.fingerprint, scanned.first_user) {
        (Some(key), Some(user)) => fingerprint(&key, scanned.system, user),
        _ => None,
    };
    Ok(Outcome {
        signals: BodySignals {
            session,
            previous_response_id,
            fingerprint,
            store: scanned.store,
            // Held to the session-id rules (visible ASCII, at most 256 bytes), copied
            // once: `validate` is the whole rule, no `HeaderValue` needed on the way.
            model: scanned
                .model
                .as_deref()
                .filter(|v| validate(v, DEFAULT_MAX_SESSION_ID_LEN).is_ok())
                .map(|m| Scope::new(bytes::Bytes::copy_from_slice(m))),
        },
        rejected,
    })
}

impl BodySignals {
    /// Scans a complete JSON request body with the default settings (no fingerprint,
    /// ids of at most 256 bytes). For bodies a proxy has already buffered itself.
    ///
    /// ```
    /// use tower_sticky_session::body_session::BodySignals;
    ///
    /// let body = br#"{"model":"gpt-5","input":"hi","prompt_cache_key":"0199a213-81c0"}"#;
    /// let signals = BodySignals::from_json(body).unwrap();
    /// let session = signals.session.unwrap();
    /// assert_eq!((session.id.as_str(), session.field), ("0199a213-81c0", "prompt_cache_key"));
    /// assert!(BodySignals::from_json(b"{\"a\":").is_err());
    /// ```
    pub fn from_json(body: &[u8]) -> Result<Self, InvalidJson> {
        scan_body(body, &ScanConfig::default()).map(|o| o.signals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_carry_validated_ids_and_the_field() {
        let s = BodySignals::from_json(
            br#"{"previous_response_id":"resp_1","conversation":{"id":"conv_7"}}"#,
        )
        .unwrap();
        let session = s.session.unwrap();
        assert_eq!(session.field, "conversation.id");
        assert_eq!(session.id.as_str(), "conv_7");
        assert_eq!(s.previous_response_id.unwrap().as_str(), "resp_1");
        // An invalid previous_response_id is dropped.
        let s = BodySignals::from_json(br#"{"previous_response_id":"resp 1"}"#).unwrap();
        assert_eq!(s.previous_response_id, None);
        assert_eq!(BodySignals::from_json(b"{"), Err(InvalidJson));
    }

    #[test]
    fn signals_carry_the_model_as_a_scope() {
        let s = BodySignals::from_json(br#"{"model":"gpt-5-mini","input":"hi"}"#).unwrap();
        assert_eq!(s.model, Some(Scope::from_static("gpt-5-mini")));
        let s = BodySignals::from_json(br#"{"model":"has space"}"#).unwrap();
        assert_eq!(s.model, None);
        // Held to the session-id rules: not empty, at most 256 bytes, visible ASCII.
        for (model, kept) in [
            ("", false),
            ("é", false),
            (&*"m".repeat(256), true),
            (&*"m".repeat(257), false),
        ] {
            let body = format!(r#"{{"model":"{model}"}}"#);
            let s = BodySignals::from_json(body.as_bytes()).unwrap();
            assert_eq!(s.model.is_some(), kept, "{} bytes", model.len());
        }
    }

    #[test]
    fn signals_carry_the_store_flag() {
        let s = BodySignals::from_json(br#"{"store":false,"prompt_cache_key":"k"}"#).unwrap();
        assert_eq!(s.store, Some(false));
        assert_eq!(s.session.unwrap().field, "prompt_cache_key");
        let s = BodySignals::from_json(br#"{"store":true}"#).unwrap();
        assert_eq!(s.store, Some(true));
        assert_eq!(BodySignals::from_json(b"{}").unwrap().store, None);
    }

    #[test]
    fn configured_max_len_applies_to_body_ids() {
        let config = ScanConfig {
            max_len: 4,
            fingerprint: None,
        };
        let out = scan_body(
            br#"{"prompt_cache_key":"abcde","session_id":"abcd"}"#,
            &config,
        )
        .unwrap();
        assert_eq!(out.signals.session.unwrap().field, "session_id");
        assert_eq!(
            out.rejected,
            Some(("prompt_cache_key", InvalidSessionId::TooLong))
        );
    }
}
