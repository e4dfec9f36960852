//! The conversation fingerprint: which parts of a request body it reads, and how they are
//! hashed.
//!
//! A last-resort session for a body with no session id anywhere (see
//! [`SessionFromBodyLayer::fingerprint`](super::SessionFromBodyLayer::fingerprint)): a
//! keyed hash of the system prompt's text and the first user message's text, which stay
//! the same from turn to turn of one conversation. The request scan collects the two
//! values as raw JSON ([`opening_messages`] walks the `messages` / `input` array for
//! them); [`hash_text`] feeds their text into the hash.

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
    use crate::body_session::scan::scan;
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
        // Not asked for: not collected.
        let s = scan(anthropic, false).unwrap();
        assert!(s.system.is_none() && s.first_user.is_none());
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

    #[test]
    fn no_user_message_no_fingerprint_and_off_by_default() {
        assert_eq!(fp(r#"{"system":"S","messages":[]}"#, K), None);
        let body = br#"{"messages":[{"role":"user","content":"hello"}]}"#;
        assert_eq!(BodySignals::from_json(body).unwrap().fingerprint, None);
    }
}
