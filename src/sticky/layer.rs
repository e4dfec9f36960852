//! [`StickySessionLayer`]: configuration and the [`Layer`] impl.

use std::sync::Arc;

use http::request::Parts;
use http::{HeaderName, HeaderValue};
use tower_layer::Layer;

use super::service::StickySession;
use crate::classify::{ClassifyResponse, StatusClassifier};
use crate::core::{Core, Shared};
use crate::extract::{
    DEFAULT_MAX_SESSION_ID_LEN, DEFAULT_SESSION_HEADER, KNOWN_CLIENT_HEADERS, Source,
};
use crate::stats::Stats;
use crate::store::{BindingStore, MemoryStore};
use crate::types::Scope;

/// Applies sticky session routing to a service; see the [crate docs](crate).
///
/// Services made by one layer (and by its clones) share the store and the [`Stats`].
///
/// ```
/// use http::HeaderName;
/// use tower_sticky_session::{store::MemoryStore, Scope, StickySessionLayer};
///
/// let layer = StickySessionLayer::with_store(MemoryStore::new())
///     // Priority order: the first header present with a valid id wins.
///     .headers([
///         HeaderName::from_static("sticky-session-id"),
///         HeaderName::from_static("x-session-id"),
///     ])
///     // Bind per provider: the same session talking to two providers is two bindings.
///     .scope_fn(|parts| parts.headers.get("x-provider").map(Scope::from))
///     .max_session_id_len(128);
/// # let _ = layer;
/// ```
#[must_use]
pub struct StickySessionLayer<St = MemoryStore, C = StatusClassifier> {
    shared: Shared<St, C>,
}

impl<St, C: Clone> Clone for StickySessionLayer<St, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl StickySessionLayer {
    /// A layer with an in-memory [`MemoryStore`](crate::store::MemoryStore) (100 000 bindings, 1 hour TTL), the
    /// [`sticky-session-id`](crate::DEFAULT_SESSION_HEADER) header and the default
    /// [`StatusClassifier`].
    pub fn new() -> Self {
        Self::with_store(MemoryStore::new())
    }
}

impl<S> StickySession<S> {
    /// The default layer, [`StickySessionLayer::new`].
    pub fn layer() -> StickySessionLayer {
        StickySessionLayer::new()
    }
}

impl Default for StickySessionLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<St: BindingStore> StickySessionLayer<St> {
    /// A layer that keeps its bindings in `store`.
    pub fn with_store(store: St) -> Self {
        let stats = Stats::default();
        Self {
            shared: Shared {
                core: Arc::new(Core::new(store, stats)),
                classifier: StatusClassifier::new(),
                source: Source::Headers(Arc::from([DEFAULT_SESSION_HEADER])),
                scope: None,
                max_len: DEFAULT_MAX_SESSION_ID_LEN,
                strict: false,
                report_decision: false,
                learn: false,
                blame_unserved: true,
            },
        }
    }
}

impl<St: BindingStore, C> StickySessionLayer<St, C> {
    /// Reads the session id from one header.
    pub fn header(self, name: HeaderName) -> Self {
        self.headers([name])
    }

    /// Reads the session id from the first of these headers that is present with a valid
    /// value (priority order). Use it to accept aliases, e.g. a client's own header name.
    ///
    /// # Panics
    ///
    /// If `names` is empty.
    pub fn headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        let names: Arc<[HeaderName]> = names.into_iter().collect();
        assert!(
            !names.is_empty(),
            "at least one session header name is required"
        );
        self.shared.source = Source::Headers(names);
        self
    }

    /// Reads the session id from the headers real clients send, in the priority order of
    /// [`KNOWN_CLIENT_HEADERS`] (Claude Code, Codex, OpenCode, Kilo Code, LiteLLM, and this
    /// crate's own `sticky-session-id` first). The same as
    /// `.headers(KNOWN_CLIENT_HEADERS)`.
    ///
    /// ```
    /// use tower_sticky_session::{body_session::SessionFromBodyLayer, StickySessionLayer};
    /// use tower::ServiceBuilder;
    ///
    /// // Headers of known clients first, then session fields of JSON bodies
    /// // (`SessionFromBodyLayer` reads the same header list by default).
    /// let stack = ServiceBuilder::new()
    ///     .layer(SessionFromBodyLayer::new())
    ///     .layer(StickySessionLayer::new().known_client_headers());
    /// # let _ = stack;
    /// ```
    pub fn known_client_headers(self) -> Self {
        self.headers(KNOWN_CLIENT_HEADERS)
    }

    /// Learns which account created which Responses API response, and pins a request that
    /// continues one (`previous_response_id`) to that account. Off by default.
    ///
    /// A response id (`resp_…`) only resolves on the account that created it: any other
    /// account answers "not found". With learning on:
    ///
    /// - **Learning.** On a success whose inner service reported [`ServedBy`](crate::ServedBy)`(A)`
    ///   (whether or not the request had a session), the response body's first data
    ///   frame is scanned for the id ([`find_response_id`](crate::body_session::find_response_id):
    ///   the top-level `"id"` of a JSON body, or `response.id` of a first SSE event
    ///   `response.created`). The scan borrows the frame: the stream is neither delayed
    ///   nor copied. Only when the first frame ends before the id does the layer keep a
    ///   copy of the body's first bytes, at most 8 KiB, and scan again as frames arrive;
    ///   past 8 KiB it gives up (nothing learned). When found, `resp_… → A` is committed
    ///   to the layer's store *before* the frame that completed the id is handed on
    ///   (so a client that has the id finds the binding), under the request's scope,
    ///   with the store's TTL, in a key namespace of its own
    ///   ([`BindingKey::response_id`](crate::BindingKey::response_id)): a client's
    ///   session id equal to a learned `resp_…` string is a different key.
    /// - **Compressed answers.** With the `learn-compressed` crate feature, an answer
    ///   with `Content-Encoding: gzip`, `deflate` (zlib-wrapped, or raw), `br` or `zstd`
    ///   is learned from too: copies of its first frames go through a stream decoder,
    ///   which stops at 8 KiB of decoded text (the same bound; a decompression bomb costs
    ///   at most the decoder's own window, for `br` up to 16 MiB and for `zstd` 8 MiB,
    ///   larger ones refused), after 64 KiB of compressed input, or at the first invalid
    ///   byte. The client still gets the compressed bytes untouched, and a first event
    ///   split across frames is learned before the frame that completes it is handed on.
    ///   Several codings (`gzip, br`), an unknown one, or any coding without the feature:
    ///   nothing learned, counted in
    ///   [`StatsSnapshot::response_ids_undecodable`](crate::StatsSnapshot::response_ids_undecodable).
    ///   A compression layer of your own (tower-http's `CompressionLayer`) goes *outside*
    ///   this one, which then sees the upstream's answer, never that layer's output.
    /// - **`store: false`.** A request whose body says `"store": false`
    ///   ([`BodySignals::store`](crate::body_session::BodySignals::store)) asks for a response that
    ///   cannot be continued: its id is not learned (it would only fill the store), and
    ///   the success is counted in
    ///   [`StatsSnapshot::response_ids_not_stored`](crate::StatsSnapshot::response_ids_not_stored).
    ///   The request itself is still pinned by its own `previous_response_id`.
    /// - **Pinning.** A request whose [`BodySignals`](crate::body_session::BodySignals) (put there by
    ///   [`SessionFromBodyLayer`](crate::body_session::SessionFromBodyLayer) in front of this layer)
    ///   carry a `previous_response_id` that was learned is pinned to its account with
    ///   [`PinnedAuth`](crate::PinnedAuth) *and* [`HardPin`](crate::HardPin), ahead of any
    ///   session header or body field: the inner service must not serve it with another
    ///   account. An explicit `PinnedAuth` set before this layer still wins. An unknown
    ///   id falls back to the usual sources (headers, body field, fingerprint).
    /// - **Failures never clear a learned id.** Only the creating account can resolve the
    ///   chain, so moving the binding cannot help; it expires by the store's TTL (for
    ///   [`MemoryStore`](crate::store::MemoryStore), between 15/16 of the TTL and the TTL after it was learned). A
    ///   failure clears the *session's* binding as usual.
    /// - **What a hard-pinned request commits.** Its own session (header, body field,
    ///   fingerprint), if it has one, exactly as any pinned request: committed to
    ///   `ServedBy` on success, compare-and-delete on failure. Without a session of its
    ///   own it commits nothing (its [`SessionSource`](crate::SessionSource) is
    ///   `ResponseId` and its `SessionId` is the response id); the response it gets
    ///   teaches the next id of the chain.
    ///
    /// Each learned id is one binding in the store: size the store for sessions *and*
    /// responses created within one TTL. With [`MemoryStore`](crate::store::MemoryStore) a learned id starts in the
    /// probation segment (one success) and is promoted only if a later response carries
    /// the same id, which does not happen: a flood of one-off session ids can evict
    /// learned ids, never proven sessions.
    ///
    /// ```
    /// use tower_sticky_session::StickySessionLayer;
    ///
    /// let layer = StickySessionLayer::new().known_client_headers().learn_response_ids(true);
    /// # let _ = layer;
    /// ```
    pub fn learn_response_ids(mut self, on: bool) -> Self {
        self.shared.learn = on;
        self
    }

    /// Keys bindings by the request's model, so a session that switches models keeps one
    /// account per model (deployments per model, or accounts that serve only some).
    ///
    /// The model is the JSON body's top-level `model`
    /// ([`BodySignals::model`](crate::body_session::BodySignals::model), read by
    /// [`SessionFromBodyLayer`](crate::body_session::SessionFromBodyLayer) in front of this layer), else
    /// the path's `models/{model}` segment (Gemini's `/v1beta/models/gemini-2.5-pro:generateContent`),
    /// else none (one scope for requests that name no model). Replaces any scope function
    /// set before; to combine the model with a tenant or provider, write a
    /// [`scope_fn`](Self::scope_fn) that reads `BodySignals::model` from the parts'
    /// extensions.
    ///
    /// ```
    /// use tower_sticky_session::{body_session::SessionFromBodyLayer, StickySessionLayer};
    /// use tower::ServiceBuilder;
    ///
    /// let stack = ServiceBuilder::new()
    ///     .layer(SessionFromBodyLayer::new())
    ///     .layer(StickySessionLayer::new().known_client_headers().scope_by_model());
    /// # let _ = stack;
    /// ```
    pub fn scope_by_model(self) -> Self {
        self.scope_fn(model_scope)
    }

    /// Whether a failure that names no account clears the pinned account's binding.
    ///
    /// On (the default), a failure response without [`ServedBy`](crate::ServedBy) is
    /// taken as the pinned account's, and so is an inner service error: the inner service
    /// is assumed to be the account picker, and whatever fails there fails the pinned
    /// account. Off, only a failure that carries `ServedBy` clears (compare-and-delete
    /// against that account); a failure without it, and an inner error, leave every
    /// binding alone.
    ///
    /// Turn it off when the layer wraps more than the account picker — a whole `Router`
    /// whose own concurrency limit, rate limit or authentication answers 429/503/5xx
    /// before any account was asked. Such refusals are the gateway's, not an account's,
    /// and must not move the session. Then every response produced with an account must
    /// carry `ServedBy` (or be reported with [`context::report_served`](crate::context::report_served)).
    ///
    /// ```
    /// use tower_sticky_session::StickySessionLayer;
    ///
    /// // In front of a whole gateway: its own 429s are nobody's account's.
    /// let layer = StickySessionLayer::new().blame_unserved_failures(false);
    /// # let _ = layer;
    /// ```
    pub fn blame_unserved_failures(mut self, on: bool) -> Self {
        self.shared.blame_unserved = on;
        self
    }

    /// Reads the session id with a function over the request parts (a cookie, a query
    /// parameter, a path segment…). Its result is validated like a header value.
    ///
    /// ```
    /// use http::HeaderValue;
    /// use tower_sticky_session::StickySessionLayer;
    ///
    /// // `?session=...` in the query string.
    /// let layer = StickySessionLayer::new().session_fn(|parts| {
    ///     let query = parts.uri.query()?;
    ///     let value = query.split('&').find_map(|kv| kv.strip_prefix("session="))?;
    ///     HeaderValue::from_str(value).ok()
    /// });
    /// # let _ = layer;
    /// ```
    pub fn session_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<HeaderValue> + Send + Sync + 'static,
    {
        self.shared.source = Source::Fn(Arc::new(f));
        self
    }

    /// Partitions bindings by a scope computed from the request parts (provider, model,
    /// tenant). `None` is the unscoped partition. Default: no scope.
    pub fn scope_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<Scope> + Send + Sync + 'static,
    {
        self.shared.scope = Some(Arc::new(f));
        self
    }

    /// The longest accepted session id, in bytes (default 256).
    pub fn max_session_id_len(mut self, max: usize) -> Self {
        self.shared.max_len = max;
        self
    }

    /// Strict mode: answer a request whose session id is present but invalid with
    /// `400 Bad Request` and a plain-text reason, instead of serving it unsticky.
    /// Off by default.
    pub fn reject_invalid(mut self, reject: bool) -> Self {
        self.shared.strict = reject;
        self
    }

    /// Adds the response header [`sticky-session`](crate::DECISION_HEADER) with the
    /// layer's [`Decision`](crate::Decision) for the request (`hit`, `miss`, `pinned`,
    /// `invalid`, `none`), for clients and operators debugging routing. Off by default:
    /// it tells clients whether their session id is known.
    pub fn report_decision(mut self, on: bool) -> Self {
        self.shared.report_decision = on;
        self
    }

    /// Uses another classifier to decide which responses commit, clear or keep.
    pub fn classifier<C2: ClassifyResponse>(self, classifier: C2) -> StickySessionLayer<St, C2> {
        let s = self.shared;
        StickySessionLayer {
            shared: Shared {
                core: s.core,
                classifier,
                source: s.source,
                scope: s.scope,
                max_len: s.max_len,
                strict: s.strict,
                report_decision: s.report_decision,
                learn: s.learn,
                blame_unserved: s.blame_unserved,
            },
        }
    }

    /// A handle to the counters of this layer and every service it makes.
    pub fn stats(&self) -> Stats {
        self.shared.core.stats.clone()
    }

    /// The layer's store.
    pub fn store(&self) -> &St {
        &self.shared.core.store
    }
}

impl<S, St, C> Layer<S> for StickySessionLayer<St, C>
where
    St: BindingStore,
    C: ClassifyResponse + Clone,
{
    type Service = StickySession<S, St, C>;

    fn layer(&self, inner: S) -> Self::Service {
        StickySession::from_shared(inner, Arc::new(self.shared.clone()))
    }
}

impl<St, C> std::fmt::Debug for StickySessionLayer<St, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.shared.source {
            Source::Headers(names) => format!("headers {names:?}"),
            Source::Fn(_) => "function".to_owned(),
        };
        f.debug_struct("StickySessionLayer")
            .field("source", &source)
            .field("scoped", &self.shared.scope.is_some())
            .field("max_len", &self.shared.max_len)
            .field("strict", &self.shared.strict)
            .field("learn_response_ids", &self.shared.learn)
            .finish_non_exhaustive()
    }
}

/// The scope [`StickySessionLayer::scope_by_model`] uses: the body's `model`, else the
/// path's `models/{model}` segment.
fn model_scope(parts: &Parts) -> Option<Scope> {
    if let Some(model) = parts
        .extensions
        .get::<crate::body_session::BodySignals>()
        .and_then(|s| s.model.clone())
    {
        return Some(model);
    }
    let path = parts.uri.path();
    let at = path.find("/models/")? + "/models/".len();
    let rest = &path[at..];
    let end = rest.find([':', '/']).unwrap_or(rest.len());
    let model = &rest[..end];
    (!model.is_empty() && model.len() <= crate::extract::DEFAULT_MAX_SESSION_ID_LEN)
        .then(|| Scope::new(bytes::Bytes::copy_from_slice(model.as_bytes())))
}
