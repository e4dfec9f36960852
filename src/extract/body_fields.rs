//! The session ids real clients put in their JSON request bodies: which fields, in which
//! order, and how a client's value is read (see [`BODY_FIELDS`]). The header names the
//! same clients send are in `clients.rs`; the scan that reads these fields is
//! `crate::body_session::scan`.

use std::borrow::Cow;

use crate::body_session::scan::lexer::Cursor;

/// The body fields a session id is read from, in priority order: the values
/// [`BodySession::field`](crate::body_session::BodySession::field) takes, and the labels
/// of [`BodySessionStatsSnapshot::found`](crate::body_session::BodySessionStatsSnapshot::found).
///
/// | field | sent by |
/// |---|---|
/// | `conversation` | OpenAI SDK apps, Responses API (`"conversation": "conv_…"`) |
/// | `conversation.id` | the same, object form (`"conversation": {"id": "conv_…"}`) |
/// | `metadata.user_id` | Claude Code: only its session part, see below |
/// | `prompt_cache_key` | Codex CLI (the session id), OpenCode and Kilo Code with OpenAI providers, OpenAI SDK apps |
/// | `session_id` | clients and gateways that put it at the top level |
/// | `sessionId` | the same, camel case |
/// | `litellm_session_id` | Cline and other clients going through LiteLLM |
/// | `metadata.session_id` | LiteLLM's metadata form |
/// | `request.session_id` | Gemini CLI (Code Assist API) |
/// | `user_prompt_id` | Gemini CLI: the part before `########` (`<session>########<n>`) |
///
/// Claude Code's `metadata.user_id` is read in both of its forms,
/// `user_<hash>_account_<uuid>_session_<uuid>` and a JSON *string* holding
/// `{"device_id":…,"account_uuid":…,"session_id":"<uuid>"}`; the session is the
/// `session_id` part. A `user_id` without a session part identifies a user, not a
/// session, and is ignored (pinning every session of a user to one account defeats
/// spreading them).
///
/// The session headers the same clients send:
/// [`KNOWN_CLIENT_HEADERS`](crate::KNOWN_CLIENT_HEADERS).
pub const BODY_FIELDS: [&str; 10] = [
    "conversation",
    "conversation.id",
    "metadata.user_id",
    "prompt_cache_key",
    "session_id",
    "sessionId",
    "litellm_session_id",
    "metadata.session_id",
    "request.session_id",
    "user_prompt_id",
];

// Each field's position in `BODY_FIELDS` (the index of its candidate in the scan).
pub(crate) const CONVERSATION: usize = 0;
pub(crate) const CONVERSATION_ID: usize = 1;
pub(crate) const METADATA_USER_ID: usize = 2;
pub(crate) const PROMPT_CACHE_KEY: usize = 3;
pub(crate) const SESSION_ID: usize = 4;
pub(crate) const SESSION_ID_CAMEL: usize = 5;
pub(crate) const LITELLM_SESSION_ID: usize = 6;
pub(crate) const METADATA_SESSION_ID: usize = 7;
pub(crate) const REQUEST_SESSION_ID: usize = 8;
pub(crate) const USER_PROMPT_ID: usize = 9;

/// The separator between Gemini CLI's session id and its prompt counter in `user_prompt_id`.
const PROMPT_ID_SEPARATOR: &[u8] = b"########";

/// The session part of a Claude Code `metadata.user_id`: either
/// `user_<hash>_account_<uuid>_session_<uuid>` or a JSON string holding an object with a
/// `session_id` member. A user id without a session part is not a session.
pub(crate) fn claude_session(user_id: &[u8]) -> Option<Cow<'static, [u8]>> {
    let trimmed = user_id.trim_ascii_start();
    if trimmed.first() == Some(&b'{') {
        let mut c = Cursor::new(trimmed);
        let s = c.last_string(b"session_id").ok()??;
        return s.unescaped().map(|v| Cow::Owned(v.into_owned()));
    }
    let at = memchr::memmem::rfind(user_id, b"_session_")?;
    Some(Cow::Owned(user_id[at + b"_session_".len()..].to_vec()))
}

/// The session part of a Gemini CLI `user_prompt_id` (`<session>########<n>`): what comes
/// before the separator. A prompt id without one is not a session.
pub(crate) fn gemini_session(prompt_id: &[u8]) -> Option<&[u8]> {
    let at = memchr::memmem::find(prompt_id, PROMPT_ID_SEPARATOR)?;
    Some(&prompt_id[..at])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body_session::scan::tests::session;

    #[test]
    fn each_index_names_its_field() {
        let names = [
            (CONVERSATION, "conversation"),
            (CONVERSATION_ID, "conversation.id"),
            (METADATA_USER_ID, "metadata.user_id"),
            (PROMPT_CACHE_KEY, "prompt_cache_key"),
            (SESSION_ID, "session_id"),
            (SESSION_ID_CAMEL, "sessionId"),
            (LITELLM_SESSION_ID, "litellm_session_id"),
            (METADATA_SESSION_ID, "metadata.session_id"),
            (REQUEST_SESSION_ID, "request.session_id"),
            (USER_PROMPT_ID, "user_prompt_id"),
        ];
        for (i, name) in names {
            assert_eq!(BODY_FIELDS[i], name);
        }
    }

    #[test]
    fn each_field_is_read_on_its_own() {
        let cases = [
            (r#"{"conversation":"conv_1"}"#, "conversation", "conv_1"),
            (
                r#"{"conversation":{"id":"conv_2"}}"#,
                "conversation.id",
                "conv_2",
            ),
            (
                r#"{"metadata":{"user_id":"user_ab12_account_c3d4_session_5e6f"}}"#,
                "metadata.user_id",
                "5e6f",
            ),
            (r#"{"prompt_cache_key":"pck"}"#, "prompt_cache_key", "pck"),
            (r#"{"session_id":"sid"}"#, "session_id", "sid"),
            (r#"{"sessionId":"camel"}"#, "sessionId", "camel"),
            (
                r#"{"litellm_session_id":"lls"}"#,
                "litellm_session_id",
                "lls",
            ),
            (
                r#"{"metadata":{"session_id":"msid"}}"#,
                "metadata.session_id",
                "msid",
            ),
            (
                r#"{"request":{"session_id":"rsid"}}"#,
                "request.session_id",
                "rsid",
            ),
            (
                "{\"user_prompt_id\":\"g-sess########7\"}",
                "user_prompt_id",
                "g-sess",
            ),
        ];
        for (body, field, id) in cases {
            assert_eq!(session(body), Some((field, id.to_string())), "{body}");
        }
    }

    #[test]
    fn claude_user_id_json_string_form_gives_its_session_id() {
        let inner = r#"{"device_id":"d1","account_uuid":"a2","session_id":"4f6e-uuid"}"#;
        let body = serde_json::json!({"metadata": {"user_id": inner}}).to_string();
        assert!(
            body.contains(r#"\"session_id\""#),
            "the inner JSON is escaped: {body}"
        );
        assert_eq!(
            session(&body),
            Some(("metadata.user_id", "4f6e-uuid".into()))
        );
    }

    #[test]
    fn claude_user_id_without_session_part_is_not_a_session() {
        for user_id in [
            "user_4b1d7c",
            "user_4b1d_account_9e0c",
            r#"{"device_id":"d1","account_uuid":"a2"}"#,
            r#"{"device_id":"d1","session_id":null}"#,
        ] {
            let body = serde_json::json!({"metadata": {"user_id": user_id}}).to_string();
            assert_eq!(session(&body), None, "{user_id}");
            // ... and does not hide a lower-priority field.
            let body = serde_json::json!({"metadata": {"user_id": user_id}, "session_id": "s"})
                .to_string();
            assert_eq!(
                session(&body),
                Some(("session_id", "s".into())),
                "{user_id}"
            );
        }
        // An empty session part is invalid, and falls through too.
        let body = r#"{"metadata":{"user_id":"user_a_account_b_session_"},"session_id":"s"}"#;
        assert_eq!(session(body), Some(("session_id", "s".into())));
    }

    #[test]
    fn user_prompt_id_without_separator_is_not_a_session() {
        assert_eq!(session(r#"{"user_prompt_id":"abc#1"}"#), None);
        assert_eq!(session("{\"user_prompt_id\":\"########1\"}"), None);
    }
}
