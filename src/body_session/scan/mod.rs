//! The scan of a complete request body: the handful of top-level fields the body layer
//! reads, the rest skipped.
//!
//! - this module: the walk of a request body ([`scan`]) and what it yielded ([`Scanned`]);
//! - `lexer.rs`: the JSON [`Cursor`] it walks with, shared with the response-id search
//!   (`src/learn/response_id.rs`) and the fingerprint;
//! - which fields hold a session id, in which order, and how each client's value is read
//!   (Claude Code's `metadata.user_id`, Gemini CLI's `user_prompt_id`):
//!   `src/extract/body_fields.rs`, next to the session headers of the same clients;
//! - the fingerprint's inputs and hash: `src/body_session/fingerprint.rs`.
//!
//! It is a scanner, not a validator. Where it reads (the top-level object and the
//! objects it descends into: `metadata`, `request`, `conversation`, and for the
//! fingerprint the opening messages of `messages`/`input`, Gemini's `contents` and its
//! `systemInstruction`/`system_instruction` object) it checks the grammar fully, bare words included
//! (numbers or `true`/`false`/`null`); inside an array or object it only skips, it
//! checks that strings end, brackets balance and match and nesting stays within
//! [`MAX_DEPTH`](lexer::MAX_DEPTH), and passes over whatever else lies between strings
//! and brackets (commas, colons, words). A body malformed only inside a skipped value may
//! thus be scanned successfully; since the body is forwarded unchanged, the upstream
//! still judges it.
//!
//! Escapes: a string the scanner *reads* (a key it compares, a value it returns) is
//! unescaped exactly (`\uXXXX` with surrogate pairs included); one with an invalid escape
//! or a lone surrogate never matches a field name and is never a session id.
//!
//! Duplicate keys: the last occurrence wins, as in most JSON parsers, at every level the
//! scanner reads (`conversation.id`, `metadata.*`, `request.session_id`, the `session_id`
//! inside Claude's `user_id` string), and a repeated object replaces the earlier one
//! whole. The one exception is [`find_response_id`](crate::body_session::find_response_id):
//! it stops at the first `id` of a response, so that it can answer from a response's
//! first bytes.

pub(crate) mod lexer;

use std::borrow::Cow;

use http::HeaderValue;

use self::lexer::{Cursor, RawStr, Stop, scalar_ok};
use super::fingerprint::{instruction_parts, opening_contents, opening_messages};
use crate::extract::body_fields::{
    BODY_FIELDS, CONVERSATION, CONVERSATION_ID, LITELLM_SESSION_ID, METADATA_SESSION_ID,
    METADATA_USER_ID, PROMPT_CACHE_KEY, REQUEST_SESSION_ID, SESSION_ID, SESSION_ID_CAMEL,
    USER_PROMPT_ID, claude_session, gemini_session,
};
use crate::extract::{InvalidSessionId, SessionId};

/// A field whose value is not a valid session id, and why.
pub(crate) type Rejected = (&'static str, InvalidSessionId);

/// What a complete request body yielded, before validation.
#[derive(Default, Debug)]
pub(crate) struct Scanned<'a> {
    /// Candidates per field (index into [`BODY_FIELDS`]); the last occurrence of a key
    /// wins.
    pub(crate) candidates: [Option<Cow<'a, [u8]>>; BODY_FIELDS.len()],
    /// The top-level `previous_response_id` string.
    pub(crate) previous_response_id: Option<Cow<'a, [u8]>>,
    /// The top-level `store` member, when it is `true` or `false`.
    pub(crate) store: Option<bool>,
    /// The top-level `model` string.
    pub(crate) model: Option<Cow<'a, [u8]>>,
    /// The fingerprint's first input, when asked for: the system prompt's value as raw
    /// JSON (`system`, else Gemini's `systemInstruction`/`system_instruction` `parts`,
    /// else `instructions`, else the first `system`/`developer` message's content).
    pub(crate) system: Option<&'a [u8]>,
    /// The fingerprint's second input, when asked for: the first user message's content
    /// as raw JSON (or the Responses API's `input` when it is a string), else the `parts`
    /// of Gemini's first user content.
    pub(crate) first_user: Option<&'a [u8]>,
}

impl<'a> Scanned<'a> {
    /// The first candidate in priority order that is a valid session id, and the first
    /// rejected one before it (for a debug event).
    pub(crate) fn session(
        &self,
        max_len: usize,
    ) -> (Option<(SessionId, &'static str)>, Option<Rejected>) {
        let mut rejected = None;
        for (i, c) in self.candidates.iter().enumerate() {
            let Some(v) = c else { continue };
            match session_id(v, max_len) {
                Ok(id) => return (Some((id, BODY_FIELDS[i])), rejected),
                Err(reason) => {
                    rejected.get_or_insert((BODY_FIELDS[i], reason));
                }
            }
        }
        (None, rejected)
    }
}

/// `bytes` as a session id of at most `max_len` bytes, validated once (by
/// [`SessionId::from_header_value`]; `HeaderValue`'s own check rejects nothing it would
/// accept).
pub(crate) fn session_id(bytes: &[u8], max_len: usize) -> Result<SessionId, InvalidSessionId> {
    // Too long: rejected before `HeaderValue` copies it.
    if bytes.len() > max_len {
        return Err(InvalidSessionId::TooLong);
    }
    let value = HeaderValue::from_bytes(bytes).map_err(|_| InvalidSessionId::Byte)?;
    SessionId::from_header_value(value, max_len)
}

/// A read string's value, unescaped (a copy only if it holds escapes; its length is
/// bounded by the buffered body's).
fn read(s: Option<RawStr<'_>>) -> Option<Cow<'_, [u8]>> {
    s?.unescaped()
}

/// Scans a complete request body. `fingerprint` asks for the fingerprint's inputs too.
pub(crate) fn scan(body: &[u8], fingerprint: bool) -> Result<Scanned<'_>, Stop> {
    let mut out = Scanned::default();
    let mut c = Cursor::new(body);
    let first = c.peek().map_err(|_| Stop::Invalid)?;
    if first != b'{' {
        // Valid JSON that is not an object has none of our fields.
        if !matches!(first, b'"' | b'[') {
            // A bare scalar: the whole body is the token.
            return if scalar_ok(body.trim_ascii()) {
                Ok(out)
            } else {
                Err(Stop::Invalid)
            };
        }
        c.skip_value()?;
        return if c.at_end() {
            Ok(out)
        } else {
            Err(Stop::Invalid)
        };
    }
    let mut system = None;
    let mut system_instruction = None;
    let mut instructions = None;
    let mut system_message = None;
    let mut first_content = None;
    c.object(|c, key| {
        let k = if key.escaped() {
            match key.unescaped() {
                Some(k) => k,
                None => return c.skip_value().map(|_| false),
            }
        } else {
            Cow::Borrowed(key.raw())
        };
        match &*k {
            // A repeated object key replaces the earlier value whole, as in a DOM: what an
            // earlier `conversation`, `metadata` or `request` held is forgotten first.
            b"conversation" => {
                out.candidates[CONVERSATION] = None;
                out.candidates[CONVERSATION_ID] = None;
                if c.peek()? == b'{' {
                    out.candidates[CONVERSATION_ID] = read(c.last_string(b"id")?);
                } else {
                    out.candidates[CONVERSATION] = read(c.string_value()?);
                }
            }
            b"metadata" => {
                out.candidates[METADATA_USER_ID] = None;
                out.candidates[METADATA_SESSION_ID] = None;
                if c.peek()? != b'{' {
                    c.skip_value()?;
                    return Ok(false);
                }
                c.object(|c, k| {
                    if k.is(b"user_id") {
                        out.candidates[METADATA_USER_ID] =
                            read(c.string_value()?).and_then(|v| claude_session(&v));
                    } else if k.is(b"session_id") {
                        out.candidates[METADATA_SESSION_ID] = read(c.string_value()?);
                    } else {
                        c.skip_value()?;
                    }
                    Ok(false)
                })?;
            }
            b"request" => {
                out.candidates[REQUEST_SESSION_ID] = None;
                if c.peek()? != b'{' {
                    c.skip_value()?;
                    return Ok(false);
                }
                c.object(|c, k| {
                    if k.is(b"session_id") {
                        out.candidates[REQUEST_SESSION_ID] = read(c.string_value()?);
                    } else {
                        c.skip_value()?;
                    }
                    Ok(false)
                })?;
            }
            b"prompt_cache_key" => out.candidates[PROMPT_CACHE_KEY] = read(c.string_value()?),
            b"session_id" => out.candidates[SESSION_ID] = read(c.string_value()?),
            b"sessionId" => out.candidates[SESSION_ID_CAMEL] = read(c.string_value()?),
            b"litellm_session_id" => {
                out.candidates[LITELLM_SESSION_ID] = read(c.string_value()?);
            }
            b"user_prompt_id" => {
                out.candidates[USER_PROMPT_ID] = read(c.string_value()?).and_then(|v| match v {
                    Cow::Borrowed(b) => gemini_session(b).map(Cow::Borrowed),
                    Cow::Owned(o) => gemini_session(&o).map(|s| Cow::Owned(s.to_vec())),
                });
            }
            b"previous_response_id" => out.previous_response_id = read(c.string_value()?),
            b"model" => out.model = read(c.string_value()?),
            // A bare word, checked as any skipped scalar is: only its bytes are compared.
            b"store" => {
                out.store = match c.skip_value()? {
                    b"true" => Some(true),
                    b"false" => Some(false),
                    _ => None,
                };
            }
            b"system" if fingerprint => system = Some(c.skip_value()?),
            // Gemini: the proto field's JSON name and its original name, one field (the
            // later occurrence replaces the earlier, as a repeated key does).
            b"systemInstruction" | b"system_instruction" if fingerprint => {
                system_instruction = instruction_parts(c)?;
            }
            b"instructions" if fingerprint => instructions = Some(c.skip_value()?),
            b"messages" | b"input" if fingerprint => {
                if c.peek()? == b'"' {
                    // Responses API: `input` may be the user's text itself.
                    out.first_user.get_or_insert(c.skip_value()?);
                } else if c.peek()? == b'[' {
                    opening_messages(c, &mut system_message, &mut out.first_user)?;
                } else {
                    c.skip_value()?;
                }
            }
            b"contents" if fingerprint && c.peek()? == b'[' => {
                opening_contents(c, &mut first_content)?;
            }
            _ => {
                c.skip_value()?;
            }
        }
        Ok(false)
    })?;
    if !c.at_end() {
        return Err(Stop::Invalid);
    }
    // One body has one API's shape; for a body with several, the top-level system fields
    // come first (Anthropic's, then Gemini's, then the Responses API's), then a system
    // message, and a user message of `messages`/`input` before a Gemini content.
    out.system = system
        .or(system_instruction)
        .or(instructions)
        .or(system_message);
    out.first_user = out.first_user.or(first_content);
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::lexer::MAX_DEPTH;
    use super::*;

    /// The winning session (field, id) of a body.
    pub(crate) fn session(body: &str) -> Option<(&'static str, String)> {
        let s = scan(body.as_bytes(), false).expect("valid JSON");
        let (found, _) = s.session(256);
        found.map(|(v, f)| (f, v.as_str().to_owned()))
    }

    fn invalid(body: &[u8]) -> bool {
        scan(body, false).is_err()
    }

    #[test]
    fn fields_win_in_priority_order_whatever_their_position() {
        // All fields present, in reverse priority order in the body.
        let all = concat!(
            "{\"user_prompt_id\":\"i########1\",",
            r#""request":{"session_id":"h"},
            "metadata":{"session_id":"g","user_id":"user_x_account_y_session_c"},
            "litellm_session_id":"f","sessionId":"e","session_id":"d","prompt_cache_key":"b",
            "conversation":"a"}"#
        );
        assert_eq!(session(all), Some(("conversation", "a".into())));
        let without = all.replace(r#""conversation":"a""#, r#""x":1"#);
        assert_eq!(session(&without), Some(("metadata.user_id", "c".into())));
        let without = without.replace("_session_c", "");
        assert_eq!(session(&without), Some(("prompt_cache_key", "b".into())));
        let without = without.replace(r#""prompt_cache_key":"b""#, r#""y":2"#);
        assert_eq!(session(&without), Some(("session_id", "d".into())));
    }

    #[test]
    fn conversation_object_id_is_found_among_other_members() {
        let body = r#"{"conversation":{"object":"conversation","id":"conv_9","meta":{"id":"no"}},"prompt_cache_key":"p"}"#;
        assert_eq!(session(body), Some(("conversation.id", "conv_9".into())));
        // An object without an id is no session; the next field wins.
        let body = r#"{"conversation":{"object":"conversation"},"prompt_cache_key":"p"}"#;
        assert_eq!(session(body), Some(("prompt_cache_key", "p".into())));
    }

    #[test]
    fn long_escaped_value_is_judged_unescaped() {
        // 6000 bytes of escapes are 1000 bytes unescaped: too long for 256, valid for 2000.
        let body = format!(r#"{{"session_id":"{}"}}"#, "\\u0041".repeat(1000));
        let scanned = scan(body.as_bytes(), false).unwrap();
        assert_eq!(
            scanned.session(256).1.map(|r| r.1),
            Some(InvalidSessionId::TooLong)
        );
        let (found, _) = scanned.session(2000);
        assert_eq!(found.map(|(v, _)| v.as_str().len()), Some(1000));
    }

    #[test]
    fn invalid_value_falls_through_to_the_next_field_and_is_reported() {
        let long = "x".repeat(257);
        let body = format!(r#"{{"prompt_cache_key":"{long}","session_id":"ok"}}"#);
        let s = scan(body.as_bytes(), false).unwrap();
        let (found, rejected) = s.session(256);
        assert_eq!(found.map(|f| f.1), Some("session_id"));
        assert_eq!(
            rejected,
            Some(("prompt_cache_key", InvalidSessionId::TooLong))
        );
        let body = r#"{"prompt_cache_key":"has space","session_id":""}"#;
        let scanned = scan(body.as_bytes(), false).unwrap();
        let (found, rejected) = scanned.session(256);
        assert!(found.is_none());
        assert_eq!(rejected, Some(("prompt_cache_key", InvalidSessionId::Byte)));
    }

    #[test]
    fn values_of_other_types_are_ignored() {
        for v in ["1", "null", "true", "[\"a\"]", "{\"id\":\"x\"}", "-1.5e3"] {
            let body = format!(r#"{{"prompt_cache_key":{v},"session_id":"s"}}"#);
            assert_eq!(session(&body), Some(("session_id", "s".into())), "{v}");
        }
        // metadata / request that are not objects.
        assert_eq!(
            session(r#"{"metadata":"m","request":[1],"sessionId":"c"}"#),
            Some(("sessionId", "c".into()))
        );
    }

    #[test]
    fn escapes_in_values_are_unescaped_before_validation() {
        assert_eq!(
            session(r#"{"session_id":"a\/b\u0041"}"#),
            Some(("session_id", "a/bA".into()))
        );
        // An escape that decodes to a space or control character is not a valid id.
        let scanned = scan(br#"{"session_id":"a\u0020b"}"#, false).unwrap();
        let (found, rejected) = scanned.session(256);
        assert!(found.is_none());
        assert_eq!(rejected.unwrap().1, InvalidSessionId::Byte);
        // Non-ASCII (even written as an escape) is not a valid id.
        assert_eq!(session(r#"{"session_id":"caf\u00e9"}"#), None);
        // Invalid escapes and lone surrogates never count.
        for v in [
            r#"a\x"#,
            r#"a\u12"#,
            r#"a\ud800"#,
            r#"a\udc00b"#,
            r#"a\ud800\u0041"#,
        ] {
            let body = format!(r#"{{"session_id":"{v}","sessionId":"next"}}"#);
            assert_eq!(session(&body), Some(("sessionId", "next".into())), "{v}");
        }
    }

    #[test]
    fn escaped_keys_match_their_unescaped_names() {
        assert_eq!(
            session(r#"{"prompt\u005fcache_key":"p"}"#),
            Some(("prompt_cache_key", "p".into()))
        );
        assert_eq!(
            session(r#"{"meta\u0064ata":{"session\u005fid":"m"}}"#),
            Some(("metadata.session_id", "m".into()))
        );
        // An escaped quote inside a key is part of it.
        assert_eq!(session(r#"{"session_id\"":"x"}"#), None);
    }

    #[test]
    fn last_occurrence_of_a_repeated_key_wins() {
        assert_eq!(
            session(r#"{"session_id":"first","session_id":"second"}"#),
            Some(("session_id", "second".into()))
        );
        // Inside the objects the scanner reads, too.
        assert_eq!(
            session(r#"{"conversation":{"id":"c1","object":"conversation","id":"c2"}}"#),
            Some(("conversation.id", "c2".into()))
        );
        assert_eq!(
            session(r#"{"metadata":{"session_id":"m1","session_id":"m2"}}"#),
            Some(("metadata.session_id", "m2".into()))
        );
        assert_eq!(
            session(r#"{"request":{"session_id":"r1","session_id":"r2"}}"#),
            Some(("request.session_id", "r2".into()))
        );
        // ... and inside Claude's JSON-string `user_id`.
        let inner = r#"{"session_id":"u1","device_id":"d","session_id":"u2"}"#;
        let body = serde_json::json!({"metadata": {"user_id": inner}}).to_string();
        assert_eq!(session(&body), Some(("metadata.user_id", "u2".into())));
        // A later value that is not a string hides an earlier one.
        assert_eq!(
            session(r#"{"conversation":{"id":"c1","id":null},"session_id":"s"}"#),
            Some(("session_id", "s".into()))
        );
        assert_eq!(
            session(
                r#"{"metadata":{"user_id":"user_a_account_b_session_u1","user_id":7},"session_id":"s"}"#
            ),
            Some(("session_id", "s".into()))
        );
    }

    #[test]
    fn a_repeated_object_replaces_the_earlier_one_whole() {
        // As in a DOM: the second `metadata` has no `session_id`, so there is none.
        assert_eq!(
            session(
                r#"{"metadata":{"session_id":"m1"},"metadata":{"user_id":"x"},"sessionId":"c"}"#
            ),
            Some(("sessionId", "c".into()))
        );
        assert_eq!(
            session(r#"{"request":{"session_id":"r1"},"request":null}"#),
            None
        );
        // `conversation` as a string, then as an object: the object's id.
        assert_eq!(
            session(r#"{"conversation":"conv_a","conversation":{"id":"conv_b"}}"#),
            Some(("conversation.id", "conv_b".into()))
        );
        assert_eq!(
            session(r#"{"conversation":{"id":"conv_b"},"conversation":"conv_a"}"#),
            Some(("conversation", "conv_a".into()))
        );
        // The same bodies through serde_json agree.
        for body in [
            r#"{"metadata":{"session_id":"m1"},"metadata":{"user_id":"x"}}"#,
            r#"{"conversation":"conv_a","conversation":{"id":"conv_b"}}"#,
        ] {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            let dom = v["metadata"]["session_id"]
                .as_str()
                .or(v["conversation"]["id"].as_str());
            let ours = session(body).map(|(_, id)| id);
            assert_eq!(ours.as_deref(), dom, "{body}");
        }
    }

    #[test]
    fn nested_fields_are_not_read_at_the_wrong_level() {
        let body = r#"{"messages":[{"role":"user","content":"x","session_id":"nested","prompt_cache_key":"n2"}],
            "tools":[{"metadata":{"session_id":"deep"}}],"input":{"request":{"session_id":"deeper"}}}"#;
        assert_eq!(session(body), None);
        // A key inside a string is just text.
        assert_eq!(session(r#"{"text":"\"session_id\":\"fake\""}"#), None);
    }

    #[test]
    fn top_level_store_is_read_when_it_is_a_boolean() {
        let store = |body: &str| scan(body.as_bytes(), false).expect("valid JSON").store;
        assert_eq!(
            store(r#"{"model":"gpt-5","store":false,"input":"hi"}"#),
            Some(false)
        );
        assert_eq!(store(r#"{"store" : true}"#), Some(true));
        assert_eq!(store(r#"{"input":"hi"}"#), None);
        // Not a boolean, nested, or escaped key: as JSON has it.
        assert_eq!(store(r#"{"store":"false"}"#), None);
        assert_eq!(store(r#"{"store":null}"#), None);
        assert_eq!(store(r#"{"metadata":{"store":false}}"#), None);
        assert_eq!(store(r#"{"store":false}"#), Some(false));
        // The last occurrence wins, as for every field.
        assert_eq!(store(r#"{"store":false,"store":true}"#), Some(true));
        assert_eq!(store(r#"{"store":true,"store":false}"#), Some(false));
        // A misspelt word is still invalid JSON.
        assert!(invalid(br#"{"store":fals}"#));
    }

    #[test]
    fn the_top_level_model_is_read_and_the_last_one_wins() {
        let model = |b: &str| {
            scan(b.as_bytes(), false)
                .unwrap()
                .model
                .map(|m| m.into_owned())
        };
        assert_eq!(
            model(r#"{"model":"gpt-5","input":"hi"}"#),
            Some(b"gpt-5".to_vec())
        );
        assert_eq!(model(r#"{"metadata":{"model":"x"}}"#), None);
        assert_eq!(model(r#"{"model":"a","model":"b"}"#), Some(b"b".to_vec()));
        assert_eq!(model(r#"{"model":"gpt\u002d5"}"#), Some(b"gpt-5".to_vec()));
        assert_eq!(model(r#"{"model":5}"#), None);
    }

    #[test]
    fn previous_response_id_is_read_separately() {
        let s = scan(
            br#"{"previous_response_id":"resp_123","input":"hi"}"#,
            false,
        )
        .unwrap();
        assert_eq!(s.previous_response_id.as_deref(), Some(&b"resp_123"[..]));
        assert_eq!(s.session(256).0, None);
    }

    #[test]
    fn non_object_json_has_no_fields_but_is_valid() {
        for body in [
            "[1,2,{\"session_id\":\"x\"}]",
            "\"session_id\"",
            "42 ",
            "null",
        ] {
            let s = scan(body.as_bytes(), false).expect(body);
            assert!(s.session(256).0.is_none());
        }
    }

    #[test]
    fn malformed_bodies_are_invalid() {
        for body in [
            &b""[..],
            b"   ",
            b"{",
            b"{\"a\":",
            b"{\"a\":1",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{a:1}",
            b"{\"a\":1}}",
            b"{\"a\":1} x",
            b"{\"a\":[1,2}",
            b"{\"a\":{\"b\":1]}",
            b"{\"a\":tru}",
            b"{\"a\":nope}",
            b"{\"a\":\"unterminated}",
            b"{\"a\":\"ends in escape\\",
            b"{\"session_id\":\"x\"",
            b"\xff\xfe",
            b"data: {}",
        ] {
            assert!(invalid(body), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_invalid() {
        let ok = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert!(!invalid(ok.as_bytes()));
        let deep = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert!(invalid(deep.as_bytes()));
        // Far deeper input fails fast, without recursion.
        let huge = format!("{{\"a\":{}", "[".repeat(1_000_000));
        assert!(invalid(huge.as_bytes()));
    }

    #[test]
    fn a_skipped_container_is_checked_for_strings_and_brackets_only() {
        // What lies between strings and brackets inside a skipped value is passed over...
        assert!(!invalid(br#"{"a":[nope,:,{"k" 1}],"session_id":"s"}"#));
        // ... but a bare word the scanner reads is checked.
        assert!(invalid(br#"{"a":nope,"session_id":"s"}"#));
    }

    #[test]
    fn whitespace_everywhere_is_accepted() {
        let body = " \n{ \"metadata\" :\t{ \"session_id\" : \"m\" } ,\r\n \"x\" : [ 1 , { } ] } \n";
        assert_eq!(session(body), Some(("metadata.session_id", "m".into())));
    }

    #[test]
    fn quotes_after_even_and_odd_backslash_runs() {
        // In skipped values (inside a container) and in read values (at the top level),
        // with runs of every length from 0 to 6 and at every distance from the opening
        // quote, so the inline search and memchr both see them.
        for run in 0..=6 {
            for pad in [0, 7, 8, 63, 64, 65, 200] {
                let text = format!("{}{}", "x".repeat(pad), "\\".repeat(run));
                if run % 2 == 0 {
                    // An even run: the quote after it ends the string.
                    let body =
                        format!(r#"{{"messages":[{{"content":"{text}"}}],"session_id":"s{run}"}}"#);
                    assert_eq!(session(&body), Some(("session_id", format!("s{run}"))));
                    let body = format!(r#"{{"prompt_cache_key":"{text}","session_id":"s"}}"#);
                    let s = scan(body.as_bytes(), false).unwrap();
                    let want = "\\".repeat(run / 2);
                    let want = format!("{}{want}", "x".repeat(pad));
                    assert_eq!(
                        s.candidates[PROMPT_CACHE_KEY].as_deref(),
                        Some(want.as_bytes())
                    );
                } else {
                    // An odd run: the quote is escaped and the string goes on.
                    let body = format!(
                        r#"{{"messages":[{{"content":"{text}" ]}} tail"}}],"session_id":"s"}}"#
                    );
                    assert_eq!(session(&body), Some(("session_id", "s".into())), "{body}");
                    let body = format!(r#"{{"session_id":"{text}" x","sessionId":"c"}}"#);
                    let s = scan(body.as_bytes(), false).unwrap();
                    let want = "\\".repeat(run / 2);
                    let want = format!("{}{want}\" x", "x".repeat(pad));
                    assert_eq!(s.candidates[SESSION_ID].as_deref(), Some(want.as_bytes()));
                    assert_eq!(s.candidates[SESSION_ID_CAMEL].as_deref(), Some(&b"c"[..]));
                }
            }
        }
        // A string that is all backslashes up to its end is unterminated.
        assert!(invalid(br#"{"a":["\\\"]}"#));
        assert!(!invalid(br#"{"a":["\\\\"]}"#));
    }

    #[test]
    fn brackets_inside_strings_are_text() {
        for text in ["]", "}", "[[[", "{{{", "]}]}", "[{\\\"]}", "a]b}c[d{e"] {
            let body = format!(
                r#"{{"messages":[{{"content":"{text}","x":["{text}",{{"{text}":"{text}"}}]}}],"session_id":"s"}}"#
            );
            assert_eq!(session(&body), Some(("session_id", "s".into())), "{body}");
        }
        // Brackets of both kinds, nested to the limit, across the eight-byte words.
        let nested = format!(
            r#"{{"a":{}1{},"session_id":"s"}}"#,
            "[{\"k\":".repeat(40),
            "}]".repeat(40)
        );
        assert_eq!(session(&nested), Some(("session_id", "s".into())));
        // Mismatched brackets around a string holding the matching one.
        assert!(invalid(br#"{"a":["}"}}"#));
        assert!(invalid(br#"{"a":{"]":1]}"#));
    }

    mod prop {
        use super::*;
        use crate::body_session::find_response_id;
        use proptest::prelude::{
            Just, Strategy, any, prop_assert, prop_assert_eq, prop_oneof, proptest,
        };
        use proptest::{collection, sample};

        proptest! {
            #[test]
            fn scanner_never_panics_on_arbitrary_bytes(bytes in collection::vec(any::<u8>(), 0..512)) {
                let _ = scan(&bytes, true);
                let _ = find_response_id(&bytes);
            }

            #[test]
            fn scanner_never_panics_on_json_like_noise(
                s in collection::vec(
                    sample::select(&[
                        "{", "}", "[", "]", ",", ":", "\"", "\\", "\\u", "d83d", "a", "1", "-", "e",
                        "true", "null", " ", "\"session_id\"", "\"metadata\"", "\"user_id\"",
                        "\"conversation\"", "\"messages\"", "\"role\"", "\"user\"", "\"content\"",
                        "\"text\"", "data:", "event:", "\n", "\"response\"", "\"id\"", "\"resp_1\"",
                        "\"contents\"", "\"parts\"", "\"systemInstruction\"", "\"model\"",
                    ][..]),
                    0..64,
                )
            ) {
                let body = s.concat();
                let _ = scan(body.as_bytes(), true);
                let _ = find_response_id(body.as_bytes());
            }

            #[test]
            fn scanner_agrees_with_serde_json_on_serialized_values(
                id in "\\PC{0,40}",
                filler in "\\PC{0,200}",
                pos in 0usize..3,
            ) {
                let mut members = vec![
                    ("messages", serde_json::json!([{"role": "user", "content": filler.clone()}])),
                    ("model", serde_json::json!("m")),
                ];
                members.insert(pos.min(members.len()), ("prompt_cache_key", serde_json::json!(id.clone())));
                let obj: serde_json::Map<String, serde_json::Value> =
                    members.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                let body = serde_json::to_vec(&obj).unwrap();
                let s = scan(&body, true).unwrap();
                prop_assert_eq!(s.candidates[PROMPT_CACHE_KEY].as_deref(), Some(id.as_bytes()));
            }

            #[test]
            fn scanner_accepts_what_serde_json_accepts(v in arb_json()) {
                let body = serde_json::to_vec(&v).unwrap();
                prop_assert!(scan(&body, true).is_ok());
                let pretty = serde_json::to_vec_pretty(&v).unwrap();
                prop_assert!(scan(&pretty, true).is_ok());
            }
        }

        fn arb_json() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::Bool),
                any::<i64>().prop_map(|n| serde_json::json!(n)),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(|n| serde_json::json!(n)),
                "\\PC{0,20}".prop_map(serde_json::Value::String),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
                    collection::btree_map("\\PC{0,10}", inner, 0..8)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }
    }
}
