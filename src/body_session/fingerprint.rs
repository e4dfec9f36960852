//! The conversation fingerprint: which parts of a request body it reads, and how they are
//! hashed.
//!
//! A last-resort session for a body with no session id anywhere (see
//! [`SessionFromBodyLayer::fingerprint`](super::SessionFromBodyLayer::fingerprint)): a
//! keyed hash of the system prompt's text and the first user message's text, which stay
//! the same from turn to turn of one conversation. The request scan collects the two
//! values as raw JSON, from the top-level fields of each API's shape:
//!
//! | API | system prompt | first user message |
//! |---|---|---|
//! | Anthropic Messages | `system` | the first `messages` item with role `user`: its `content` |
//! | Gemini | `systemInstruction` or `system_instruction`: its `parts` | the first `contents` item with role `user` or none: its `parts` |
//! | OpenAI Responses | `instructions`, else the first `input` item with role `system` or `developer` | a string `input`, or the first `input` item with role `user`: its `content` |
//! | OpenAI Chat Completions | the first `messages` item with role `system` or `developer` | as Anthropic's |
//!
//! A body has one API's shape. Should one hold several, the system prompt is the first
//! found of `system`, Gemini's instruction, `instructions`, a `system`/`developer`
//! item of `messages`/`input`; the user message is one of `messages`/`input` before
//! one of Gemini's `contents`. Gemini's two spellings are one field: the later
//! occurrence replaces the earlier one, whole.
//!
//! [`opening_messages`] walks a `messages` / `input` array, [`opening_contents`] Gemini's
//! `contents`, [`instruction_parts`] Gemini's system instruction; [`hash_text`] feeds
//! the values' text into the hash: a string as it is, the `text` members of an array of
//! content blocks (Anthropic's and OpenAI's) or of parts (Gemini's), nothing else. So a
//! Gemini body and an Anthropic body with the same texts get the same fingerprint. The
//! values are fixed (replicas and stored bindings depend on them): reading Gemini's shape
//! changed no other API's body's fingerprint, unless that body also holds a Gemini
//! field.

use std::fmt::Write as _;
use std::hash::Hasher;

use siphasher::sip::SipHasher24;

use super::scan::lexer::{Cursor, R, RawStr};
use crate::extract::SessionId;

/// The key of the conversation fingerprint's hash.
pub(crate) type FingerprintKey = [u8; 16];

/// The fingerprint key used unless one is configured (public, so only good for ids that
/// need not be unguessable).
pub(crate) const DEFAULT_FINGERPRINT_KEY: FingerprintKey = *b"tower-sticky-fp1";

/// A keyed 128-bit hash of the system prompt's text and the first user message's text.
pub(crate) fn fingerprint(
    key: &FingerprintKey,
    system: Option<&[u8]>,
    user: &[u8],
) -> Option<SessionId> {
    let (k0, k1) = key.split_at(8);
    let k0 = u64::from_le_bytes(k0.try_into().unwrap_or_default());
    let k1 = u64::from_le_bytes(k1.try_into().unwrap_or_default());
    // SipHash-2-4, twice with different keys for 128 bits: a fixed algorithm, since
    // replicas must compute the same fingerprint.
    let mut hashers = [
        SipHasher24::new_with_keys(k0, k1),
        SipHasher24::new_with_keys(k1 ^ 0x6670_5f68_6967_6800, k0),
    ];
    let mut out = String::with_capacity(35);
    out.push_str("fp-");
    for h in &mut hashers {
        h.write_u8(u8::from(system.is_some()));
        if let Some(system) = system {
            hash_text(system, h);
        }
        h.write_u8(0xff);
        hash_text(user, h);
        let _ = write!(out, "{:016x}", h.finish());
    }
    // 35 bytes of visible ASCII: always a valid id.
    SessionId::new(&out).ok()
}

/// Walks a `messages` / `input` array (the cursor at its `[`), recording the content of
/// the first `system`/`developer` message and of the first `user` message.
pub(crate) fn opening_messages<'a>(
    c: &mut Cursor<'a>,
    system: &mut Option<&'a [u8]>,
    user: &mut Option<&'a [u8]>,
) -> R<()> {
    c.array(|c| {
        if user.is_some() || c.peek()? != b'{' {
            return c.skip_value().map(drop);
        }
        let mut role = None;
        let mut content = None;
        c.object(|c, k| {
            if k.is(b"role") {
                role = c.string_value()?;
            } else if k.is(b"content") {
                content = Some(c.skip_value()?);
            } else {
                c.skip_value()?;
            }
            Ok(false)
        })?;
        match (role, content) {
            (Some(r), Some(v)) if r.is(b"user") => *user = Some(v),
            (Some(r), Some(v)) if r.is(b"system") || r.is(b"developer") => {
                system.get_or_insert(v);
            }
            _ => {}
        }
        Ok(())
    })
}

/// Walks Gemini's `contents` array (the cursor at its `[`), recording the `parts` of the
/// first content that is the user's: `role` `"user"`, or no role (absent, `null` or `""`:
/// the Gemini API takes a content without a role for the user's). A content whose `parts`
/// is not an array is passed over, as a message without `content` is.
pub(crate) fn opening_contents<'a>(c: &mut Cursor<'a>, user: &mut Option<&'a [u8]>) -> R<()> {
    c.array(|c| {
        if user.is_some() || c.peek()? != b'{' {
            return c.skip_value().map(drop);
        }
        let mut by_user = true;
        let mut parts = None;
        c.object(|c, k| {
            if k.is(b"role") {
                by_user = if c.peek()? == b'"' {
                    let r = c.string()?;
                    r.raw().is_empty() || r.is(b"user")
                } else {
                    c.skip_value()? == b"null"
                };
            } else if k.is(b"parts") {
                parts = parts_value(c)?;
            } else {
                c.skip_value()?;
            }
            Ok(false)
        })?;
        if by_user && parts.is_some() {
            *user = parts;
        }
        Ok(())
    })
}

/// The `parts` of Gemini's `systemInstruction` (the cursor at its value): the last
/// `parts` member when the value is an object and that member an array; `None` otherwise
/// (its `role`, which Gemini ignores there, is not read).
pub(crate) fn instruction_parts<'a>(c: &mut Cursor<'a>) -> R<Option<&'a [u8]>> {
    if c.peek()? != b'{' {
        c.skip_value()?;
        return Ok(None);
    }
    let mut parts = None;
    c.object(|c, k| {
        if k.is(b"parts") {
            parts = parts_value(c)?;
        } else {
            c.skip_value()?;
        }
        Ok(false)
    })?;
    Ok(parts)
}

/// A `parts` value as raw JSON when it is an array (skipped and `None` otherwise). An
/// array of parts hashes as an array of content blocks does: the string `text` member
/// of each, nothing of the others (`inlineData`, `functionCall`, ...).
fn parts_value<'a>(c: &mut Cursor<'a>) -> R<Option<&'a [u8]>> {
    let array = c.peek()? == b'[';
    let v = c.skip_value()?;
    Ok(array.then_some(v))
}

/// Feeds the text of a prompt value into `h`: a string as it is, or the `text` members of
/// an array of content blocks (other members, such as `cache_control`, which clients move
/// from turn to turn, are left out).
pub(crate) fn hash_text(value: &[u8], h: &mut impl Hasher) {
    fn piece(h: &mut impl Hasher, s: RawStr<'_>) {
        h.write_usize(s.raw().len());
        h.write(s.raw());
    }
    let mut c = Cursor::new(value);
    let _ = (|| -> R<()> {
        match c.peek()? {
            b'"' => piece(h, c.string()?),
            b'[' => c.array(|c| {
                match c.peek()? {
                    b'"' => piece(h, c.string()?),
                    b'{' => c.object(|c, k| {
                        if k.is(b"text") {
                            if let Some(s) = c.string_value()? {
                                piece(h, s);
                            }
                        } else {
                            c.skip_value()?;
                        }
                        Ok(false)
                    })?,
                    _ => {
                        c.skip_value()?;
                    }
                }
                Ok(())
            })?,
            _ => {}
        }
        Ok(())
    })();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body_session::BodySignals;
    use crate::body_session::scan::{lexer, scan};
    use crate::body_session::signals::{ScanConfig, scan_body};
    use crate::extract::DEFAULT_MAX_SESSION_ID_LEN;

    /// Replicas of different versions must agree: the fingerprint of a given opening
    /// under a given key never changes.
    #[test]
    fn fingerprint_values_are_fixed() {
        let with_system = fingerprint(
            &DEFAULT_FINGERPRINT_KEY,
            Some(br#""be brief""#),
            br#""hello""#,
        );
        let without = fingerprint(b"0123456789abcdef", None, br#""hello""#);
        assert_eq!(
            with_system.unwrap().as_str(),
            "fp-12df0388c6a2a5a603844641ee7b652e"
        );
        assert_eq!(
            without.unwrap().as_str(),
            "fp-6d8ae12014080a44443c6fdd803b9468"
        );
    }

    #[test]
    fn fingerprint_inputs_are_found_in_each_api_shape() {
        let anthropic = br#"{"system":[{"type":"text","text":"S"}],"messages":[{"role":"user","content":"U"},{"role":"user","content":"U2"}]}"#;
        let s = scan(anthropic, true).unwrap();
        assert_eq!(s.system, Some(&br#"[{"type":"text","text":"S"}]"#[..]));
        assert_eq!(s.first_user, Some(&br#""U""#[..]));
        let chat = br#"{"messages":[{"role":"developer","content":"D"},{"role":"assistant","content":"A"},{"content":"U","role":"user"}]}"#;
        let s = scan(chat, true).unwrap();
        assert_eq!(s.system, Some(&br#""D""#[..]));
        assert_eq!(s.first_user, Some(&br#""U""#[..]));
        let responses = br#"{"instructions":"I","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"U"}]}]}"#;
        let s = scan(responses, true).unwrap();
        assert_eq!(s.system, Some(&br#""I""#[..]));
        assert_eq!(
            s.first_user,
            Some(&br#"[{"type":"input_text","text":"U"}]"#[..])
        );
        let s = scan(br#"{"input":"just text"}"#, true).unwrap();
        assert_eq!(s.first_user, Some(&br#""just text""#[..]));
        let gemini = br#"{"contents":[{"role":"model","parts":[{"text":"M"}]},{"role":"user","parts":[{"text":"U"}]},{"role":"user","parts":[{"text":"U2"}]}],"systemInstruction":{"role":"user","parts":[{"text":"S"}]}}"#;
        let s = scan(gemini, true).unwrap();
        assert_eq!(s.system, Some(&br#"[{"text":"S"}]"#[..]));
        assert_eq!(s.first_user, Some(&br#"[{"text":"U"}]"#[..]));
        let s = scan(
            br#"{"system_instruction":{"parts":[]},"contents":[{"parts":[{"text":"U"}]}]}"#,
            true,
        )
        .unwrap();
        assert_eq!(s.system, Some(&b"[]"[..]));
        assert_eq!(s.first_user, Some(&br#"[{"text":"U"}]"#[..]));
        // Not asked for: not collected.
        for body in [&anthropic[..], gemini] {
            let s = scan(body, false).unwrap();
            assert!(s.system.is_none() && s.first_user.is_none());
        }
    }

    #[test]
    fn a_body_with_several_shapes_reads_them_in_a_fixed_order() {
        let user = |b: &[u8]| scan(b, true).unwrap().first_user.map(<[u8]>::to_vec);
        let system = |b: &[u8]| scan(b, true).unwrap().system.map(<[u8]>::to_vec);
        let gemini_system = r#""systemInstruction":{"parts":[{"text":"G"}]}"#;
        // Whatever the order of the keys: `system`, then Gemini's, then `instructions`,
        // then a system message.
        for body in [
            format!(r#"{{{gemini_system},"system":"A","instructions":"I"}}"#),
            format!(r#"{{"instructions":"I","system":"A",{gemini_system}}}"#),
        ] {
            assert_eq!(system(body.as_bytes()), Some(br#""A""#.to_vec()), "{body}");
            let body = body.replace(r#""system":"A""#, r#""x":0"#);
            assert_eq!(system(body.as_bytes()), Some(br#"[{"text":"G"}]"#.to_vec()));
        }
        let body = br#"{"messages":[{"role":"system","content":"D"}],"system_instruction":{"parts":[{"text":"G"}]}}"#;
        assert_eq!(system(body), Some(br#"[{"text":"G"}]"#.to_vec()));
        // The two spellings are one field: the later replaces the earlier, whole.
        let body = br#"{"systemInstruction":{"parts":[{"text":"1"}]},"system_instruction":{"parts":[{"text":"2"}]}}"#;
        assert_eq!(system(body), Some(br#"[{"text":"2"}]"#.to_vec()));
        let body = br#"{"systemInstruction":{"parts":[{"text":"1"}]},"system_instruction":{"role":"user"}}"#;
        assert_eq!(system(body), None);
        // A user message of `messages`/`input` before a Gemini content.
        for body in [
            &br#"{"contents":[{"role":"user","parts":[{"text":"G"}]}],"messages":[{"role":"user","content":"M"}]}"#[..],
            br#"{"messages":[{"role":"user","content":"M"}],"contents":[{"role":"user","parts":[{"text":"G"}]}]}"#,
        ] {
            assert_eq!(user(body), Some(br#""M""#.to_vec()));
        }
    }

    #[test]
    fn hash_text_ignores_members_other_than_text() {
        use std::hash::{DefaultHasher, Hasher};
        let h = |v: &[u8]| {
            let mut h = DefaultHasher::new();
            hash_text(v, &mut h);
            h.finish()
        };
        let a = h(br#"[{"type":"text","text":"hello"}]"#);
        let b = h(br#"[{"type":"text","text":"hello","cache_control":{"type":"ephemeral"}}]"#);
        let c = h(br#"[{"type":"text","text":"hellO"}]"#);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Two pieces are not one concatenated piece.
        assert_ne!(h(br#"["ab","c"]"#), h(br#"["a","bc"]"#));
        // Gemini's parts hash as content blocks do: their text, nothing of the rest.
        assert_eq!(h(br#"[{"text":"hello"}]"#), a);
        assert_eq!(h(br#""hello""#), a);
        let parts = br#"[{"inlineData":{"mimeType":"image/png","data":"iVBO"}},{"text":"hello","thoughtSignature":"c2ln"},{"functionCall":{"name":"f","args":{"text":"x"}}}]"#;
        assert_eq!(h(parts), a);
    }

    fn fp(body: &str, key: FingerprintKey) -> Option<String> {
        let config = ScanConfig {
            max_len: DEFAULT_MAX_SESSION_ID_LEN,
            fingerprint: Some(key),
        };
        let out = scan_body(body.as_bytes(), &config).unwrap();
        out.signals.fingerprint.map(|f| f.as_str().to_owned())
    }

    const K: FingerprintKey = DEFAULT_FINGERPRINT_KEY;

    #[test]
    fn fingerprint_is_stable_across_turns_of_one_conversation() {
        let turn1 = r#"{"system":[{"type":"text","text":"You are Claude Code."}],"messages":[{"role":"user","content":[{"type":"text","text":"fix the bug","cache_control":{"type":"ephemeral"}}]}]}"#;
        let turn2 = r#"{"system":[{"type":"text","text":"You are Claude Code.","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":[{"type":"text","text":"fix the bug"}]},{"role":"assistant","content":"done"},{"role":"user","content":"thanks"}]}"#;
        let a = fp(turn1, K).unwrap();
        assert!(a.starts_with("fp-") && a.len() == 35, "{a}");
        assert_eq!(Some(a), fp(turn2, K));
    }

    #[test]
    fn fingerprint_differs_by_opener_system_prompt_and_key() {
        let base = r#"{"system":"S","messages":[{"role":"user","content":"hello"}]}"#;
        let other_user = r#"{"system":"S","messages":[{"role":"user","content":"hellO"}]}"#;
        let other_system = r#"{"system":"T","messages":[{"role":"user","content":"hello"}]}"#;
        let no_system = r#"{"messages":[{"role":"user","content":"hello"}]}"#;
        let a = fp(base, K);
        assert_ne!(a, fp(other_user, K));
        assert_ne!(a, fp(other_system, K));
        assert_ne!(a, fp(no_system, K));
        assert_ne!(a, fp(base, *b"another-key-0123"));
        // The known risk: the same opener is the same fingerprint.
        assert_eq!(a, fp(base, K));
    }

    /// A Gemini API request (`contents` of `role`/`parts`, `systemInstruction`).
    fn gemini(system_key: &str, system: &str, turns: &[(&str, &str)]) -> String {
        let contents: Vec<_> = turns
            .iter()
            .map(|(role, text)| serde_json::json!({"role": role, "parts": [{"text": text}]}))
            .collect();
        serde_json::json!({
            "contents": contents,
            system_key: {"role": "user", "parts": [{"text": system}]},
            "generationConfig": {"temperature": 0, "thinkingConfig": {"includeThoughts": true}},
            "tools": [{"functionDeclarations": [{"name": "read_file", "parameters": {"type": "object"}}]}],
        })
        .to_string()
    }

    /// Replicas must agree on Gemini bodies too; the second value shows a Gemini body
    /// hashing as an Anthropic or OpenAI body with the same texts does.
    #[test]
    fn gemini_fingerprint_values_are_fixed() {
        let body = r#"{"contents":[{"role":"user","parts":[{"text":"fix the bug"},{"inlineData":{"mimeType":"image/png","data":"iVBORw0KGgo="}},{"text":"in main.rs"}]}],"systemInstruction":{"parts":[{"text":"You are Gemini CLI."},{"text":"Be brief."}]}}"#;
        assert_eq!(fp(body, K).unwrap(), "fp-6b7256d26fd1f287928a1e7a779d0d13");
        let anthropic = r#"{"system":[{"type":"text","text":"You are Gemini CLI."},{"type":"text","text":"Be brief."}],"messages":[{"role":"user","content":[{"type":"text","text":"fix the bug"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},{"type":"text","text":"in main.rs"}]}]}"#;
        assert_eq!(fp(anthropic, K), fp(body, K));
        let same_texts = r#"{"systemInstruction":{"parts":[{"text":"be brief"}]},"contents":[{"parts":[{"text":"hello"}]}]}"#;
        assert_eq!(
            fp(same_texts, K).unwrap(),
            "fp-12df0388c6a2a5a603844641ee7b652e"
        );
    }

    #[test]
    fn gemini_fingerprint_is_stable_across_turns_and_spellings() {
        let key = "systemInstruction";
        let turn1 = gemini(key, "You are Gemini CLI.", &[("user", "fix the bug")]);
        let turn2 = gemini(
            key,
            "You are Gemini CLI.",
            &[
                ("user", "fix the bug"),
                ("model", "done"),
                ("user", "thanks"),
            ],
        );
        let a = fp(&turn1, K).unwrap();
        assert!(a.starts_with("fp-") && a.len() == 35, "{a}");
        assert_eq!(Some(&a), fp(&turn2, K).as_ref());
        // The snake_case spelling the REST API also accepts: the same fingerprint.
        let snake = gemini(
            "system_instruction",
            "You are Gemini CLI.",
            &[("user", "fix the bug")],
        );
        assert_eq!(Some(&a), fp(&snake, K).as_ref());
        // A content without a role is the user's (a single-turn request).
        let no_role = r#"{"systemInstruction":{"parts":[{"text":"You are Gemini CLI."}]},"contents":[{"parts":[{"text":"fix the bug"}]}]}"#;
        assert_eq!(Some(&a), fp(no_role, K).as_ref());
        for role in ["null", r#""""#] {
            let body = no_role.replace(
                r#"{"parts":[{"text":"fix"#,
                &format!(r#"{{"role":{role},"parts":[{{"text":"fix"#),
            );
            assert_eq!(Some(&a), fp(&body, K).as_ref(), "{body}");
        }
        // A model turn first: the first user content still counts.
        let model_first = gemini(
            key,
            "You are Gemini CLI.",
            &[("model", "hello"), ("user", "fix the bug")],
        );
        assert_eq!(Some(&a), fp(&model_first, K).as_ref());
    }

    #[test]
    fn gemini_fingerprint_differs_by_opener_and_system_instruction() {
        let key = "systemInstruction";
        let base = fp(&gemini(key, "S", &[("user", "hello")]), K);
        assert!(base.is_some());
        assert_ne!(base, fp(&gemini(key, "S", &[("user", "hellO")]), K));
        assert_ne!(base, fp(&gemini(key, "T", &[("user", "hello")]), K));
        let no_system = r#"{"contents":[{"role":"user","parts":[{"text":"hello"}]}]}"#;
        assert_ne!(base, fp(no_system, K));
        // A later user turn is not the opener.
        assert_ne!(
            fp(
                &gemini(
                    key,
                    "S",
                    &[("user", "hi"), ("model", "m"), ("user", "hello")]
                ),
                K
            ),
            base
        );
    }

    #[test]
    fn gemini_body_without_a_user_content_has_no_fingerprint() {
        for body in [
            r#"{"systemInstruction":{"parts":[{"text":"S"}]}}"#,
            r#"{"systemInstruction":{"parts":[{"text":"S"}]},"contents":[]}"#,
            r#"{"contents":[{"role":"model","parts":[{"text":"M"}]}]}"#,
            r#"{"contents":[{"role":"function","parts":[{"text":"F"}]}]}"#,
            r#"{"contents":[{"role":"user"}]}"#,
            // Gemini's native shape inside Code Assist's `request` wrapper is not read
            // (Gemini CLI sends a session id there).
            r#"{"request":{"contents":[{"role":"user","parts":[{"text":"U"}]}]}}"#,
        ] {
            assert_eq!(fp(body, K), None, "{body}");
        }
    }

    #[test]
    fn hostile_gemini_shapes_give_no_fingerprint_and_no_panic() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let fp_or_none = |body: &str| {
            let config = ScanConfig {
                max_len: DEFAULT_MAX_SESSION_ID_LEN,
                fingerprint: Some(K),
            };
            scan_body(body.as_bytes(), &config)
                .ok()
                .and_then(|o| o.signals.fingerprint)
                .map(|f| f.as_str().to_owned())
        };
        for body in [
            r#"{"contents":{"role":"user","parts":[{"text":"U"}]}}"#.to_owned(),
            r#"{"contents":"U"}"#.to_owned(),
            r#"{"contents":[{"role":"user","parts":"U"}]}"#.to_owned(),
            r#"{"contents":[{"role":"user","parts":{"text":"U"}}]}"#.to_owned(),
            r#"{"contents":[{"role":7,"parts":[{"text":"U"}]}]}"#.to_owned(),
            r#"{"contents":[[{"role":"user","parts":[{"text":"U"}]}]]}"#.to_owned(),
            r#"{"contents":[null,1,"x",[]],"systemInstruction":"S"}"#.to_owned(),
            format!(r#"{{"contents":{}}}"#, deep(100)),
            format!(r#"{{"contents":[{}]}}"#, deep(lexer::MAX_DEPTH)),
            format!(
                r#"{{"systemInstruction":{{"parts":{}}}}}"#,
                deep(lexer::MAX_DEPTH)
            ),
            // Far deeper than the lexer follows: invalid, found without recursion.
            format!(
                r#"{{"contents":[{{"role":"user","parts":{}"#,
                "[".repeat(1_000_000)
            ),
            format!(r#"{{"contents":{}}}"#, "[{\"parts\":".repeat(100_000)),
        ] {
            assert_eq!(fp_or_none(&body), None, "{}", &body[..body.len().min(80)]);
        }
        // A `parts` array holding no text part is an opener of no text, as an array of
        // content blocks without text is.
        let body = format!(
            r#"{{"contents":[{{"role":"user","parts":{}}}]}}"#,
            deep(lexer::MAX_DEPTH)
        );
        let empty = r#"{"contents":[{"role":"user","parts":[]}]}"#;
        let blocks = r#"{"messages":[{"role":"user","content":[{"type":"image"}]}]}"#;
        assert!(fp_or_none(&body).is_some());
        assert_eq!(fp_or_none(&body), fp(empty, K));
        assert_eq!(fp(empty, K), fp(blocks, K));
        // Nesting inside a part is skipped: the texts around it still count.
        let body = format!(
            r#"{{"contents":[{{"role":"user","parts":[{{"text":{}}},{{"text":"U"}}]}}]}}"#,
            deep(lexer::MAX_DEPTH - 4)
        );
        let plain = r#"{"contents":[{"role":"user","parts":[{"text":"U"}]}]}"#;
        assert_eq!(fp_or_none(&body), fp(plain, K));
    }

    #[test]
    fn no_user_message_no_fingerprint_and_off_by_default() {
        assert_eq!(fp(r#"{"system":"S","messages":[]}"#, K), None);
        let body = br#"{"messages":[{"role":"user","content":"hello"}]}"#;
        assert_eq!(BodySignals::from_json(body).unwrap().fingerprint, None);
    }
}
