//! Session ids from JSON request bodies.
//!
//! Many clients never send a session header but put a session id in the JSON body:
//! Codex's and OpenAI SDK apps' `prompt_cache_key`, Claude Code's `metadata.user_id`,
//! Gemini CLI's `request.session_id`, LiteLLM's `litellm_session_id`, the Responses API's
//! `conversation` and `previous_response_id`. [`BodySignals::from_json`] reads them from
//! a complete body without building a DOM; [`find_response_id`] finds the `resp_…` id in
//! the first bytes of a response.

mod scan;
mod signals;

pub use self::scan::{ResponseIdScan, find_response_id};
pub use self::signals::{BODY_FIELDS, BodySession, BodySignals, InvalidJson};
