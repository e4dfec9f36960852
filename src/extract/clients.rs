//! The session headers real clients send.

use http::HeaderName;

/// The session headers of known clients, in priority order (the first present with a
/// valid value wins).
///
/// Configure the sticky layer with it, and keep it as the header list of
/// [`SessionFromBodyLayer`](crate::body_session::SessionFromBodyLayer) (its default), so
/// that a request whose client sent one of these headers never has its body read.
///
/// | header | sent by | value |
/// |---|---|---|
/// | `sticky-session-id` | this crate's own default ([`DEFAULT_SESSION_HEADER`](crate::DEFAULT_SESSION_HEADER)); no client sends it by itself | any |
/// | `x-claude-code-session-id` | Claude Code ≥ 2.1.86 | UUID of the session (stable across the session's requests) |
/// | `session-id` | Codex CLI, current | the session id (a UUID; Codex may send its `prompt_cache_key` here, which is the same id for a root session) |
/// | `session_id` | Codex CLI, older releases | the conversation id (UUID) |
/// | `x-session-affinity` | OpenCode (non-OpenCode-hosted providers) | OpenCode session id (`ses_…`) |
/// | `x-session-id` | OpenCode (same requests, same value) | OpenCode session id |
/// | `x-opencode-session` | OpenCode talking to its own hosted providers | OpenCode session id |
/// | `x-kilo-session` | Kilo Code (an OpenCode fork) talking to Kilo's gateway | Kilo session id |
/// | `x-litellm-session-id` | LiteLLM's session header (clients that tag requests for LiteLLM) | any |
/// | `thread-id` | Codex CLI, current (next to `session-id`) | the thread id (UUID) |
/// | `conversation_id` | Codex CLI, older releases (next to `session_id`) | the conversation id (UUID) |
///
/// What was checked against the clients' public sources: Codex's
/// `codex-rs/codex-api/src/requests/headers.rs` (`build_session_headers` sends `session-id`
/// and `thread-id`; the older `build_conversation_headers` sent `session_id`), OpenCode's
/// `packages/opencode/src/session/llm/request.ts` (`x-session-affinity` and `X-Session-Id`
/// with the session id, or `x-opencode-session` for OpenCode-hosted providers, and
/// `x-parent-session-id` for subagents), Kilo Code's fork of the same file
/// (`x-kilo-session`), LiteLLM's proxy docs (`x-litellm-session-id`). Claude Code is not
/// open source: `x-claude-code-session-id` is what gateways that serve it read; it is new
/// on every *session*, while `x-client-request-id` is new on every *request*.
///
/// Deliberately absent (a proxy may add them itself, knowing what they mean):
/// `x-client-request-id`, `x-request-id` and `idempotency-key` (new on every request),
/// `x-parent-session-id` (subagents would pile onto their parent's account),
/// `x-codex-turn-state` and `x-codex-window-id` (not a session), and per-*user* values
/// (`user`, `safety_identifier`, an Anthropic `metadata.user_id` without a session part):
/// pinning every session of a user to one account defeats spreading them.
///
/// `session-id` and `thread-id` are generic names; a proxy in front of software that
/// uses them for something else should build its own list.
///
/// The JSON body fields the same clients put a session id in (for clients that send no
/// session header):
/// [`BODY_FIELDS`](crate::body_session::BODY_FIELDS).
///
/// ```
/// use tower_sticky_session::KNOWN_CLIENT_HEADERS;
///
/// assert_eq!(KNOWN_CLIENT_HEADERS[0], "sticky-session-id");
/// assert!(KNOWN_CLIENT_HEADERS.iter().any(|h| h == "x-claude-code-session-id"));
/// ```
pub const KNOWN_CLIENT_HEADERS: [HeaderName; 11] = [
    HeaderName::from_static("sticky-session-id"),
    HeaderName::from_static("x-claude-code-session-id"),
    HeaderName::from_static("session-id"),
    // Underscores are valid token characters (RFC 9110); `from_static` accepts them.
    HeaderName::from_static("session_id"),
    HeaderName::from_static("x-session-affinity"),
    HeaderName::from_static("x-session-id"),
    HeaderName::from_static("x-opencode-session"),
    HeaderName::from_static("x-kilo-session"),
    HeaderName::from_static("x-litellm-session-id"),
    HeaderName::from_static("thread-id"),
    HeaderName::from_static("conversation_id"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_headers_are_in_the_documented_priority_order() {
        let known = KNOWN_CLIENT_HEADERS;
        let names: Vec<&str> = known.iter().map(|h| h.as_str()).collect();
        assert_eq!(
            names,
            [
                "sticky-session-id",
                "x-claude-code-session-id",
                "session-id",
                "session_id",
                "x-session-affinity",
                "x-session-id",
                "x-opencode-session",
                "x-kilo-session",
                "x-litellm-session-id",
                "thread-id",
                "conversation_id",
            ]
        );
    }

    #[test]
    fn underscore_headers_round_trip_through_a_request() {
        let req = http::Request::builder()
            .header("session_id", "a")
            .header("conversation_id", "b")
            .body(())
            .unwrap();
        assert_eq!(req.headers()[&KNOWN_CLIENT_HEADERS[3]], "a");
        assert_eq!(req.headers()[&KNOWN_CLIENT_HEADERS[10]], "b");
    }

    #[test]
    fn excluded_per_request_headers_are_not_known_session_headers() {
        for h in [
            "x-client-request-id",
            "x-request-id",
            "idempotency-key",
            "x-parent-session-id",
            "x-codex-turn-state",
            "x-codex-window-id",
        ] {
            assert!(!KNOWN_CLIENT_HEADERS.iter().any(|k| k == h), "{h}");
        }
    }
}
