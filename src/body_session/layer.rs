//! The layer and its configuration.

use std::sync::Arc;

use http::HeaderName;
use tower_layer::Layer;

use super::fingerprint::{DEFAULT_FINGERPRINT_KEY, FingerprintKey};
use super::service::SessionFromBody;
use super::signals::ScanConfig;
use super::stats::BodySessionStats;
use crate::extract::{KNOWN_CLIENT_HEADERS, Source};

/// The default [`max_buffer`](SessionFromBodyLayer::max_buffer): 16 MiB.
pub const DEFAULT_MAX_BUFFER: usize = 16 * 1024 * 1024;

/// What every service made by one layer reads.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) headers: Source,
    pub(crate) max_buffer: usize,
    pub(crate) scan: ScanConfig,
    pub(crate) response_id_with_header: bool,
    pub(crate) stats: BodySessionStats,
}

/// Reads the session id from JSON request bodies, for
/// [`StickySessionLayer`](crate::StickySessionLayer) behind it. See the
/// [module docs](super) for what it reads and when.
#[derive(Clone)]
pub struct SessionFromBodyLayer {
    config: Arc<Config>,
}

impl Default for SessionFromBodyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SessionFromBodyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionFromBodyLayer")
            .field("max_buffer", &self.config.max_buffer)
            .field("fingerprint", &self.config.scan.fingerprint.is_some())
            .field(
                "response_id_with_header",
                &self.config.response_id_with_header,
            )
            .finish_non_exhaustive()
    }
}

impl SessionFromBodyLayer {
    /// The defaults: skip the body when a [`KNOWN_CLIENT_HEADERS`] header holds a valid
    /// session id (unless it may hold a `previous_response_id`, see
    /// [`response_id_with_header`](Self::response_id_with_header)), buffer at most
    /// [`DEFAULT_MAX_BUFFER`] bytes, no fingerprint, ids of at most 256 bytes.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                headers: Source::Headers(Arc::from(KNOWN_CLIENT_HEADERS)),
                max_buffer: DEFAULT_MAX_BUFFER,
                scan: ScanConfig::default(),
                response_id_with_header: true,
                stats: BodySessionStats::default(),
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The session headers that make reading the body unnecessary, in any order: a
    /// request with a valid value in one of them is passed on unread. Use the same list
    /// as the sticky layer behind. An empty list reads every JSON body.
    pub fn headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.config().headers = Source::Headers(names.into_iter().collect());
        self
    }

    /// The largest body that is buffered, in bytes (default 16 MiB). A body with a larger
    /// `Content-Length` is passed on unread; a body without one that grows past it is
    /// passed on as it is, its buffered prefix first, then the rest as it streams in.
    /// Memory held per request stays below this limit (and below twice the bytes
    /// received, whatever the `Content-Length` claims).
    pub fn max_buffer(mut self, bytes: usize) -> Self {
        self.config().max_buffer = bytes;
        self
    }

    /// Computes a conversation fingerprint (default: off) into
    /// [`BodySignals::fingerprint`](super::BodySignals::fingerprint).
    ///
    /// The fingerprint is a keyed hash of the system prompt (`system`, else Gemini's
    /// `systemInstruction`/`system_instruction`, else `instructions`, else the first
    /// `messages`/`input` item with role `system` or `developer`) and the first user
    /// message (the first `messages`/`input` item with role `user`, or a string `input`,
    /// else the first Gemini `contents` item with role `user` or no role); of their text
    /// only (strings, and the `text` of content blocks or Gemini parts), so markers
    /// clients move between turns (such as `cache_control`) do not change it. Bodies
    /// without a user message get none. Top-level fields only: Gemini Code Assist's
    /// `request.contents` are not read (Gemini CLI sends a session id there).
    ///
    /// **Risk:** two conversations that open with the same system prompt and the same
    /// first message — a common "hi", a scripted benchmark, the same tool run by many
    /// users — get the same fingerprint and so share an account. It is a last resort
    /// for clients that send nothing else; scope bindings (per tenant or API key) to
    /// keep different users apart.
    pub fn fingerprint(mut self, on: bool) -> Self {
        let key = self
            .config
            .scan
            .fingerprint
            .unwrap_or(DEFAULT_FINGERPRINT_KEY);
        self.config().scan.fingerprint = on.then_some(key);
        self
    }

    /// Turns the fingerprint on with a secret 16-byte key. Without one, a public key is
    /// used and anyone can compute the fingerprint of a conversation opener. Replicas
    /// that share a store must use the same key.
    pub fn fingerprint_key(mut self, key: [u8; 16]) -> Self {
        self.config().scan.fingerprint = Some(key as FingerprintKey);
        self
    }

    /// Whether to read the body for its `previous_response_id` even when a session
    /// header is present (default: **on**).
    ///
    /// A `previous_response_id` resolves only on the account that created the response,
    /// and a learned one must beat a session header; with this off, a request that
    /// carries both a header and a `previous_response_id` is pinned by the header alone,
    /// and after a failover may be sent to an account that answers "not found". Turn it
    /// off to never read the body of a request whose session is in a header (no
    /// buffering, no added latency for those clients) when your header-sending clients do
    /// not chain responses (Codex, Claude Code and OpenCode send their whole history
    /// instead of a `previous_response_id`).
    pub fn response_id_with_header(mut self, on: bool) -> Self {
        self.config().response_id_with_header = on;
        self
    }

    /// The longest accepted session id, in bytes (default 256); use the sticky layer's.
    pub fn max_session_id_len(mut self, len: usize) -> Self {
        self.config().scan.max_len = len;
        self
    }

    /// The counters shared by every service this layer makes.
    pub fn stats(&self) -> &BodySessionStats {
        &self.config.stats
    }
}

impl<S> Layer<S> for SessionFromBodyLayer {
    type Service = SessionFromBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionFromBody::new(inner, self.config.clone())
    }
}
