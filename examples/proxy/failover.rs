//! Transparent failover: the service inside the sticky layer that tries accounts until
//! one serves.
//!
//! For each request it asks the [`Picker`] for the accounts to try (the pin first, unless
//! it is cooling down or overloaded; then accounts not yet tried), and tries them in
//! order, at most `--attempts`. An attempt fails when its account
//!
//! - answers 429 (the account then cools down for its `retry-after`, or `--cooldown`)
//!   or 5xx;
//! - cannot be reached (it cools down too), or breaks before its response head;
//! - sends no response head within `--upstream-timeout`;
//! - answers a 2xx whose body ends or fails before its first data chunk, or sends no
//!   first chunk within `--upstream-timeout` of its head.
//!
//! The first data chunk is read here, before the response is returned: no byte reaches
//! the client before the attempt has succeeded, and none is ever retried after. A
//! request body is kept for replay when it fits in `--max-body-buffer`; a larger one is
//! streamed through and gets one attempt. A hard pin (a learned response id, which
//! only its account can resolve) gets one attempt too.
//!
//! The response carries [`ServedBy`] of the account that finally answered, so the sticky
//! layer binds the session there, or (when every attempt failed) counts the failure as
//! that account's. A failed pinned account that is not the final one is unbound here,
//! by compare-and-delete on the same store. When every attempt failed the client gets
//! the last account's answer (429/5xx), or 502 (unreachable, broken, empty) or 504
//! (timed out) from the proxy, naming the account in `x-served-by`.
//!
//! A client whose request body is malformed (e.g. broken chunked encoding) gets 400 and
//! no `ServedBy`: the failure is the client's, no binding is touched; 408 when the body
//! did not arrive within `--body-timeout`. A body refused by `--max-buffered-total` is
//! streamed through (one attempt). A local resource error on the upstream request
//! (descriptors, buffers, memory: see `resources.rs`) is 503 and nobody's account's.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::Service;
use tower_sticky_session::{
    AuthId, Binding, BindingKey, HardPin, PinnedAuth, ServedBy, SessionId, SessionSource,
    store::BindingStore,
};

use super::broken::BrokenStreams;
use super::budget::Buffering;
use super::cooldown::{CoolReason, retry_after};
use super::handoff::Handoff;
use super::logfmt;
use super::picker::{InFlight, Picker, Plan};
use super::pool::{Pool, Transport};
use super::resources::{local_resource_error, local_unavailable};
use super::serve::{self, ConnActivity};
use super::timeouts::{BodyDeadline, First, ProxyBody, first_data};
use super::ws::{self, WsConfig};
use super::{BoxError, ErrorChain, LogSession, Upstream, X_SERVED_BY, strip_hop_by_hop};

/// Whether the request must be served by its pinned account or not at all: the sticky
/// layer puts [`HardPin`] next to [`PinnedAuth`] when the pin comes from a learned
/// `previous_response_id`, which only that account can resolve.
fn hard_pinned(ext: &http::Extensions) -> bool {
    ext.get::<HardPin>().is_some()
}

/// Failover settings (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct FailoverConfig {
    /// Most accounts tried per request (capped at the number of accounts).
    pub(crate) attempts: usize,
    /// Cooldown after a 429 without a readable `retry-after`, or an unreachable account.
    pub(crate) cooldown: Duration,
    /// Time to the response head, then again to the first data chunk.
    pub(crate) upstream_timeout: Duration,
    /// Longest silence inside a response body.
    pub(crate) idle_timeout: Duration,
    /// Largest request body kept for replay.
    pub(crate) max_body_buffer: usize,
    /// Streams broken after their first byte in a row that unbind an account's sessions
    /// and cool it down (`--max-broken-streams`; 0: off; see `broken.rs`).
    pub(crate) max_broken_streams: usize,
    /// WebSocket relay limits.
    pub(crate) ws: WsConfig,
    /// Accept workers (`--workers`): each gets its own pool of upstream connections, so
    /// that a request and the connection it rides are driven by the same thread.
    pub(crate) workers: usize,
}

/// The pooled upstream client: HTTP/1.1 and (over TLS, by ALPN) HTTP/2.
type UpstreamClient<B> = Client<HttpsConnector<HttpConnector>, UpBody<B>>;

/// The client for WebSocket upgrades (a bodyless `GET`).
type WsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Read buffer per upstream connection: bounds what an upstream can push ahead of a
/// client that stops reading (hyper's default is about 400 KiB).
pub(crate) const UPSTREAM_BUF: usize = 64 * 1024;

/// Plain TCP to an account: no Nagle, a 10 s connect timeout.
fn http_connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http
}

/// The connector both upstream clients use: plain TCP (no Nagle, a 10 s connect timeout)
/// or TLS with the web's roots; HTTP/2 by ALPN when `http2`.
fn connector(http2: bool) -> Result<HttpsConnector<HttpConnector>, BoxError> {
    let http = http_connector();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        // An explicit provider: independent of which rustls crypto features other
        // crates in the build enable.
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))?
        .https_or_http()
        .enable_http1();
    Ok(if http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.wrap_connector(http)
    })
}

fn client<B>() -> Result<UpstreamClient<B>, BoxError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http1_max_buf_size(UPSTREAM_BUF)
        .http2_initial_stream_window_size(UPSTREAM_BUF as u32)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .build(connector(true)?))
}

/// The client for WebSocket upgrades: HTTP/1.1 only (an upgrade cannot ride an HTTP/2
/// connection), no idle connections kept.
fn ws_client() -> Result<WsClient, BoxError> {
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .timer(TokioTimer::new())
        .http1_max_buf_size(UPSTREAM_BUF)
        .build(connector(false)?))
}

/// The failover service (see the module docs). Cheap to clone.
pub(crate) struct Failover<St, B> {
    shared: Arc<Shared<St, B>>,
}

impl<St, B> Clone for Failover<St, B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<St, B> {
    picker: Arc<Picker>,
    /// One pool of connections to the plain-`http://` accounts per accept worker (see
    /// [`serve::worker`]): a connection is driven by the runtime that opened it, so each
    /// worker keeps its own.
    pools: Box<[Arc<Pool<UpBody<B>>>]>,
    /// The same per worker for `https://` accounts: hyper-util's pooled client (TLS, and
    /// HTTP/2 by ALPN).
    clients: Box<[UpstreamClient<B>]>,
    /// WebSocket upgrades: HTTP/1.1 only (an upgrade cannot ride an HTTP/2 connection),
    /// never pooled (an upgraded connection is the socket's own).
    ws_client: WsClient,
    /// The sticky layer's store, to unbind a failed pinned account.
    store: St,
    /// Streams each account broke after their first byte (`--max-broken-streams`).
    broken: Arc<BrokenStreams>,
    cfg: FailoverConfig,
}

impl<St, B> Failover<St, B>
where
    St: BindingStore,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Failover over `picker`'s accounts; `store` is the sticky layer's; `broken` counts
    /// the streams each account breaks after their first byte.
    pub(crate) fn new(
        picker: Arc<Picker>,
        store: St,
        broken: Arc<BrokenStreams>,
        cfg: FailoverConfig,
    ) -> Result<Self, BoxError> {
        Ok(Self {
            shared: Arc::new(Shared {
                pools: (0..cfg.workers.max(1))
                    .map(|_| Arc::new(Pool::new(picker.upstreams().len(), http_connector())))
                    .collect(),
                picker,
                clients: (0..cfg.workers.max(1))
                    .map(|_| client())
                    .collect::<Result<_, _>>()?,
                ws_client: ws_client()?,
                store,
                broken,
                cfg,
            }),
        })
    }
}

impl<St, B> Service<Request<B>> for Failover<St, B>
where
    St: BindingStore,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pooled client queues internally; there is nothing to wait for here.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        Box::pin(self.shared.clone().handle(req).map(Ok))
    }
}

/// How one attempt ended.
enum Attempt {
    /// The account served: hand this to the client.
    Served(Response<ProxyBody>),
    /// The account failed: this is the client's answer if no attempt is left.
    Failed(Response<ProxyBody>, &'static str),
    /// The client's request body failed: 400 (408 past `--body-timeout`), nobody's
    /// binding is touched.
    ClientBody,
    /// The proxy ran out of its own resources: 503, no account blamed or tried.
    Local,
}

impl<St, B> Shared<St, B>
where
    St: BindingStore,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Failover for one request: each account of the plan in turn, the access line.
    ///
    /// Not an `async fn` (see [`Pool::send`]): what is taken out of the request here is
    /// held once by the returned future, which every request boxes.
    fn handle(self: Arc<Self>, req: Request<B>) -> impl Future<Output = Response<ProxyBody>> {
        let (mut parts, body) = req.into_parts();
        let session = parts.extensions.remove::<SessionId>();
        let source = parts.extensions.remove::<SessionSource>();
        let key = parts.extensions.remove::<BindingKey>();
        let pinned = parts.extensions.remove::<PinnedAuth>().map(|p| p.0);
        let hard = pinned.is_some() && hard_pinned(&parts.extensions);
        let upgrade = if ws::is_websocket(&parts) {
            parts.extensions.remove::<OnUpgrade>()
        } else {
            None
        };
        let binding = parts.extensions.remove::<Binding>();
        // `buffering` is held until the response is returned: the replay buffer's place
        // in the budget.
        let Handoff {
            conn,
            deadline,
            buffering,
        } = Handoff::take(&mut parts.extensions);
        // Nothing of this process's request extensions is for the upstream.
        parts.extensions = http::Extensions::new();
        async move {
            // Here, not above: the plan moves the round-robin cursor, which a future
            // dropped before it is polled must not do.
            let plan = self.picker.plan(pinned.as_ref(), hard, self.cfg.attempts);
            let source = LogSource(source.as_ref());
            if let Some(upgrade) = upgrade {
                let ctx = WsRequest {
                    upgrade,
                    binding,
                    conn,
                    session: session.as_ref(),
                    key: key.as_ref(),
                    pinned: pinned.as_ref(),
                };
                // Boxed: an upgrade is rare beside plain requests, and its future would
                // otherwise add to the size of every request's.
                return Box::pin(self.websocket(parts, plan, ctx)).await;
            }

            // Set when a streamed body fails on the client's side; a replayed body cannot.
            let mut client_failed = None;
            let mut streamed = None;
            // In a block of its own, so that the future does not keep `buffered` (the
            // body itself, when streamed) across the attempts' waits.
            let replay = {
                let buffered = if body.is_end_stream() {
                    Ok(Buffered::Complete(Bytes::new(), None))
                } else if matches!(buffering, Some(Buffering::Refused)) {
                    // --max-buffered-total is spent: streamed through, one attempt.
                    Ok(Buffered::Partial(VecDeque::new(), body))
                } else {
                    buffer(body, self.cfg.max_body_buffer, &parts.headers)
                        .await
                        .map_err(Into::<BoxError>::into)
                };
                match buffered {
                    Ok(Buffered::Complete(data, trailers)) => {
                        if let Some(Buffering::Granted(grant)) = &buffering {
                            grant.shrink_to(data.len());
                        }
                        Some((data, trailers))
                    }
                    Ok(Buffered::Partial(prefix, rest)) => {
                        streamed = Some(UpBody::Chain(Box::new(Chain {
                            prefix,
                            rest,
                            client_failed: client_failed
                                .insert(Arc::new(AtomicBool::new(false)))
                                .clone(),
                        })));
                        None
                    }
                    Err(e) => {
                        let res = client_body_failed(deadline.as_ref());
                        tracing::info!(
                            method = %parts.method, path = parts.uri.path(),
                            session = %LogSession(session.as_ref()), error = %ErrorChain(&*e),
                            status = res.status().as_u16(),
                            "the client's request body is malformed, broke off or came too slowly"
                        );
                        return res;
                    }
                }
            };
            strip_hop_by_hop(&mut parts.headers);
            // The client sets Host from the target URL: upstreams route on their own name.
            parts.headers.remove(header::HOST);
            parts.version = Version::HTTP_11;

            let tries = if replay.is_some() {
                &plan.order[..]
            } else {
                &plan.order[..1]
            };
            let mut pinned_failed = false;
            // The last attempt's answer and the index of its account.
            let mut answer = None;
            // The attempt (from 0) whose account answered last, for the log's `pick`.
            let mut answered = 0;
            for (k, &i) in tries.iter().enumerate() {
                let up = &self.picker.upstreams()[i];
                let body = match &replay {
                    Some((data, trailers)) => UpBody::Full {
                        data: (!data.is_empty()).then(|| data.clone()),
                        trailers: trailers.clone(),
                    },
                    None => streamed.take().expect("a streamed body gets one attempt"),
                };
                match self
                    .attempt(i, up, &parts, body, client_failed.as_deref(), key.as_ref())
                    .await
                {
                    Attempt::Served(res) => {
                        answer = Some((res, i));
                        answered = k;
                        break;
                    }
                    Attempt::ClientBody => {
                        let res = client_body_failed(deadline.as_ref());
                        tracing::info!(
                            method = %parts.method, path = parts.uri.path(),
                            session = %LogSession(session.as_ref()), upstream = %up.name(),
                            status = res.status().as_u16(),
                            "the client's request body broke off or came too slowly while it was forwarded"
                        );
                        return res;
                    }
                    Attempt::Local => {
                        tracing::warn!(
                            method = %parts.method, path = parts.uri.path(),
                            session = %LogSession(session.as_ref()), upstream = %up.name(),
                            "503: the proxy is out of local resources (descriptors, buffers, memory); no account blamed"
                        );
                        return local_unavailable();
                    }
                    Attempt::Failed(res, why) => {
                        pinned_failed |= pinned.as_ref() == Some(up.name());
                        let last = k + 1 == tries.len();
                        if !last {
                            self.picker.count_retry();
                        }
                        tracing::info!(
                            method = %parts.method, path = parts.uri.path(),
                            session = %LogSession(session.as_ref()), upstream = %up.name(),
                            pick = plan.how.label(k), attempt = k + 1, status = res.status().as_u16(),
                            why, last, "attempt failed"
                        );
                        answer = Some((res, i));
                        answered = k;
                    }
                }
            }
            let (res, served_by) = answer.expect("at least one attempt");
            let final_name = self.picker.upstreams()[served_by].name();
            if pinned_failed {
                self.unbind_failed_pin(key.as_ref(), pinned.as_ref(), Some(final_name))
                    .await;
            }
            let (method, path, session) = (
                &parts.method,
                parts.uri.path(),
                LogSession(session.as_ref()),
            );
            let (pick, status) = (plan.how.label(answered), res.status().as_u16());
            // The access line: straight to the log writer when it can be (logfmt::direct),
            // else the same event through `tracing`. Asked as the event with its fields, so
            // that `RUST_LOG` directives on field names decide as they do for the event.
            if tracing::event_enabled!(
                tracing::Level::INFO,
                message,
                method,
                path,
                session,
                source,
                upstream,
                pick,
                status
            ) && !logfmt::direct(module_path!(), "proxied", |l| {
                l.display_str("method", method.as_str());
                l.str("path", path);
                l.display("session", session);
                l.display("source", &source);
                l.display_str("upstream", final_name.as_str());
                l.str("pick", pick);
                l.u64("status", status.into());
            }) {
                tracing::info!(
                    method = %method, path, %session, %source, upstream = %final_name, pick, status,
                    "proxied"
                );
            }
            res
        }
    }

    /// A WebSocket upgrade: each account of the plan in turn until one answers `101`
    /// (see [`ws`]); then the relay runs on a task of its own.
    async fn websocket(
        &self,
        mut parts: Parts,
        plan: Plan,
        ws: WsRequest<'_>,
    ) -> Response<ProxyBody> {
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        ws::upstream_headers(&mut parts.headers);
        let session = LogSession(ws.session);
        let mut pinned_failed = false;
        let mut answer = None;
        let mut upgrade = Some(ws.upgrade);
        for (k, &i) in plan.order.iter().enumerate() {
            let up = &self.picker.upstreams()[i];
            let last = k + 1 == plan.order.len();
            let (res, why) = match self.ws_attempt(i, up, &parts).await {
                WsAttempt::Upgraded(mut res, in_flight) => {
                    let account = hyper::upgrade::on(&mut res);
                    let (mut head, _) = res.into_parts();
                    ws::client_headers(&mut head.headers);
                    let relay = ws::Relay {
                        picker: self.picker.clone(),
                        account: i,
                        binding: ws.binding.clone(),
                        cfg: self.cfg.ws.clone(),
                        cooldown: self.cfg.cooldown,
                        _in_flight: in_flight,
                        _busy: ws.conn.as_ref().map(ConnActivity::busy),
                        conn: ws.conn.clone(),
                    };
                    let client = upgrade.take().expect("one upgrade per request");
                    ws::spawn(client, account, relay);
                    tracing::info!(
                        path = parts.uri.path(), %session, upstream = %up.name(),
                        pick = plan.how.label(k), attempt = k + 1, "websocket upgraded"
                    );
                    answer = Some(served(up, head, ProxyBody::message(Bytes::new())));
                    break;
                }
                WsAttempt::Answered(res) => {
                    // Not an upgrade, not a failure (e.g. 426 from an account without
                    // WebSockets, 401): the client gets it as it is.
                    tracing::info!(
                        path = parts.uri.path(), %session, upstream = %up.name(),
                        status = res.status().as_u16(), "websocket upgrade refused by the account"
                    );
                    answer = Some(res);
                    break;
                }
                WsAttempt::Failed(res, why) => (res, why),
                WsAttempt::Local => {
                    tracing::warn!(
                        path = parts.uri.path(), %session, upstream = %up.name(),
                        "503: the proxy is out of local resources; no account blamed"
                    );
                    return local_unavailable();
                }
            };
            pinned_failed |= ws.pinned == Some(up.name());
            if !last {
                self.picker.count_retry();
                self.picker.ws.failed_over.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(
                path = parts.uri.path(), %session, upstream = %up.name(),
                attempt = k + 1, status = res.status().as_u16(), why, last,
                "websocket upgrade attempt failed"
            );
            answer = Some(res);
        }
        let res = answer.expect("at least one attempt");
        let final_name = res.extensions().get::<ServedBy>().map(|s| s.0.clone());
        if pinned_failed {
            self.unbind_failed_pin(ws.key, ws.pinned, final_name.as_ref())
                .await;
        }
        res
    }

    /// One upgrade attempt on account `i`.
    async fn ws_attempt(&self, i: usize, up: &Upstream, parts: &Parts) -> WsAttempt {
        let body = Empty::<Bytes>::new();
        let (res, in_flight) = match self
            .send(Via::Client(&self.ws_client), i, up, parts, body)
            .await
        {
            Ok(sent) => sent,
            Err(Early::Failed(res, why)) => return WsAttempt::Failed(res, why),
            Err(Early::Transport(e)) => {
                return match self.failed_before_head(i, up, &e) {
                    Some((res, why)) => WsAttempt::Failed(res, why),
                    None => WsAttempt::Local,
                };
            }
        };
        let status = res.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return WsAttempt::Upgraded(res, in_flight);
        }
        let (mut head, body) = res.into_parts();
        strip_hop_by_hop(&mut head.headers);
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.rate_limited(i, up, &head.headers);
        }
        let body = ProxyBody::upstream(
            None,
            body,
            self.cfg.idle_timeout,
            up.name().clone(),
            Some(in_flight),
        );
        let res = served(up, head, body);
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            WsAttempt::Failed(res, "failure status")
        } else {
            WsAttempt::Answered(res)
        }
    }

    /// Sends the request `parts` describes, with `body` and account `i`'s key, through
    /// `client`, and waits for the response head under `--upstream-timeout`. The request
    /// counts as in flight on the account from here on.
    async fn send<Bd>(
        &self,
        via: Via<'_, Bd>,
        i: usize,
        up: &Upstream,
        parts: &Parts,
        body: Bd,
    ) -> Result<(Response<Incoming>, InFlight), Early>
    where
        Bd: Body + Send + Unpin + 'static,
        Bd::Data: Send,
        Bd::Error: Into<BoxError>,
    {
        let target = match via {
            Via::Pool(_) => up.origin_target(&parts.uri),
            Via::Client(_) => up.target(&parts.uri),
        };
        let Ok(target) = target else {
            let res = proxy_error(up, StatusCode::BAD_GATEWAY, "cannot build the upstream URL");
            return Err(Early::Failed(res, "bad URL"));
        };
        // The request is built in this block, so that only the future it moves into
        // keeps it across the wait (a local of this function would keep a second copy).
        let sent = {
            let mut req = Request::new(body);
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = target;
            *req.version_mut() = parts.version;
            *req.headers_mut() = parts.headers.clone();
            if let Via::Pool(_) = via {
                // hyper-util's client sets it from the URL; a connection of our own does
                // not.
                req.headers_mut().insert(header::HOST, up.host().clone());
            }
            up.apply_key(req.headers_mut());
            async move {
                match via {
                    Via::Client(client) => client
                        .request(req)
                        .await
                        .map(|res| (res, None))
                        .map_err(Transport::from),
                    Via::Pool(pool) => pool
                        .send(i, up.origin(), req)
                        .await
                        .map(|(res, lease)| (res, Some(lease))),
                }
            }
        };
        let in_flight = self.picker.start(i);
        match tokio::time::timeout(self.cfg.upstream_timeout, sent).await {
            Ok(Ok((res, lease))) => Ok((res, in_flight.holding(lease))),
            Ok(Err(e)) => Err(Early::Transport(e)),
            Err(_) => {
                let res = proxy_error(
                    up,
                    StatusCode::GATEWAY_TIMEOUT,
                    "no response head within --upstream-timeout",
                );
                Err(Early::Failed(res, "timeout before the response head"))
            }
        }
    }

    /// Account `i` answered 429: it cools down for its `retry-after`, else `--cooldown`.
    fn rate_limited(&self, i: usize, up: &Upstream, headers: &HeaderMap) {
        let d = retry_after(headers, SystemTime::now()).unwrap_or(self.cfg.cooldown);
        self.picker.cool(i, d, CoolReason::RateLimited);
        tracing::debug!(upstream = %up.name(), cooldown = ?d, "429: account cooling down");
    }

    /// The layer judges only the final account: a pinned account that failed before it
    /// is unbound here (compare-and-delete), unless it is the final one.
    async fn unbind_failed_pin(
        &self,
        key: Option<&BindingKey>,
        pin: Option<&AuthId>,
        last: Option<&AuthId>,
    ) {
        if let (Some(key), Some(pin)) = (key, pin)
            && last != Some(pin)
            && let Err(e) = self.store.clear_if(key, pin).await
        {
            tracing::debug!(error = %e, "could not unbind the failed pinned account");
        }
    }

    /// An upstream request that failed before its response head: the account's failure
    /// (its answer and why; an unreachable account cools down), or `None` when the proxy
    /// ran out of its own resources (descriptors, buffers, memory), which is no account's.
    fn failed_before_head(
        &self,
        i: usize,
        up: &Upstream,
        e: &Transport,
    ) -> Option<(Response<ProxyBody>, &'static str)> {
        if let Some(io) = local_resource_error(e.error()) {
            tracing::warn!(upstream = %up.name(), error = %io, "local resource error on the upstream request");
            return None;
        }
        let why = if e.is_connect() {
            self.picker
                .cool(i, self.cfg.cooldown, CoolReason::Unreachable);
            "unreachable"
        } else {
            "failed before its response head"
        };
        tracing::debug!(upstream = %up.name(), error = %ErrorChain(e.error()), why, "upstream request failed");
        let res = proxy_error(
            up,
            StatusCode::BAD_GATEWAY,
            "the upstream failed before sending a response",
        );
        Some((res, why))
    }

    async fn attempt(
        &self,
        i: usize,
        up: &Upstream,
        parts: &Parts,
        body: UpBody<B>,
        client_failed: Option<&AtomicBool>,
        key: Option<&BindingKey>,
    ) -> Attempt {
        let worker = serve::worker();
        let via = if up.is_plain_http() {
            Via::Pool(&self.pools[worker % self.pools.len()])
        } else {
            Via::Client(&self.clients[worker % self.clients.len()])
        };
        let (res, in_flight) = match self.send(via, i, up, parts, body).await {
            Ok(sent) => sent,
            Err(Early::Failed(res, why)) => return Attempt::Failed(res, why),
            Err(Early::Transport(e)) => {
                if client_failed.is_some_and(|f| f.load(Ordering::Relaxed)) {
                    return Attempt::ClientBody;
                }
                return match self.failed_before_head(i, up, &e) {
                    Some((res, why)) => Attempt::Failed(res, why),
                    None => Attempt::Local,
                };
            }
        };
        let timeout = self.cfg.upstream_timeout;
        let (mut head, mut body) = res.into_parts();
        strip_hop_by_hop(&mut head.headers);
        let status = head.status;
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.rate_limited(i, up, &head.headers);
        }
        let idle = self.cfg.idle_timeout;
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let body = ProxyBody::upstream(None, body, idle, up.name().clone(), Some(in_flight));
            return Attempt::Failed(served(up, head, body), "failure status");
        }
        let known_empty = parts.method == Method::HEAD
            || !status.is_success()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::RESET_CONTENT
            || body.is_end_stream();
        if known_empty {
            let body = ProxyBody::upstream(None, body, idle, up.name().clone(), Some(in_flight));
            return Attempt::Served(served(up, head, body));
        }
        match tokio::time::timeout(timeout, first_data(&mut body)).await {
            Ok(First::Data(first)) => {
                let mut body = ProxyBody::upstream(
                    Some(first),
                    body,
                    idle,
                    up.name().clone(),
                    Some(in_flight),
                )
                .watched(self.broken.watch(i, key.cloned()));
                // What came with the first chunk goes out with the head, in one write.
                body.gather_ready().await;
                Attempt::Served(served(up, head, body))
            }
            Ok(First::Empty) => Attempt::Failed(
                proxy_error(
                    up,
                    StatusCode::BAD_GATEWAY,
                    "the upstream's response ended before its first data chunk",
                ),
                "empty response",
            ),
            Ok(First::Failed(e)) => {
                tracing::debug!(upstream = %up.name(), error = %ErrorChain(&e), "upstream body failed before its first chunk");
                Attempt::Failed(
                    proxy_error(
                        up,
                        StatusCode::BAD_GATEWAY,
                        "the upstream's response broke before its first data chunk",
                    ),
                    "broke before the first chunk",
                )
            }
            Err(_) => Attempt::Failed(
                proxy_error(
                    up,
                    StatusCode::GATEWAY_TIMEOUT,
                    "no first data chunk within --upstream-timeout",
                ),
                "timeout before the first chunk",
            ),
        }
    }
}

/// What [`Shared::websocket`] needs of the request besides its head.
struct WsRequest<'a> {
    upgrade: OnUpgrade,
    binding: Option<Binding>,
    conn: Option<ConnActivity>,
    session: Option<&'a SessionId>,
    key: Option<&'a BindingKey>,
    pinned: Option<&'a AuthId>,
}

/// An attempt that ended before the account's response head.
enum Early {
    /// The proxy's answer (bad URL, timeout) and why.
    Failed(Response<ProxyBody>, &'static str),
    /// The upstream client failed: whose failure it is is decided by the caller.
    Transport(Transport),
}

/// How a request reaches its account: a connection of the worker's [`Pool`]
/// (`http://`), or hyper-util's client (`https://`, and WebSocket upgrades).
enum Via<'a, Bd> {
    Pool(&'a Arc<Pool<Bd>>),
    Client(&'a Client<HttpsConnector<HttpConnector>, Bd>),
}

impl<Bd> Clone for Via<'_, Bd> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Bd> Copy for Via<'_, Bd> {}

/// How one upgrade attempt ended.
enum WsAttempt {
    /// `101`: the account's response (its upgrade to take) and the in-flight count.
    Upgraded(Response<Incoming>, InFlight),
    /// Neither an upgrade nor a failure: the client's answer.
    Answered(Response<ProxyBody>),
    /// 429/5xx, unreachable, timed out: the next account is tried.
    Failed(Response<ProxyBody>, &'static str),
    /// The proxy ran out of its own resources: 503, no account blamed, no other tried.
    Local,
}

/// The upstream's response, named for the sticky layer and the client.
fn served(up: &Upstream, mut head: http::response::Parts, body: ProxyBody) -> Response<ProxyBody> {
    head.headers.insert(X_SERVED_BY, up.header().clone());
    head.extensions = http::Extensions::new();
    head.extensions.insert(ServedBy(up.name().clone()));
    Response::from_parts(head, body)
}

/// An answer of the proxy's own that still names the account, so the sticky layer counts
/// the failure as that account's.
fn proxy_error(up: &Upstream, status: StatusCode, why: &str) -> Response<ProxyBody> {
    let msg = format!("{status}: account {}: {why}\n", up.name());
    let mut res = Response::new(ProxyBody::message(msg));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(X_SERVED_BY, up.header().clone());
    res.extensions_mut().insert(ServedBy(up.name().clone()));
    res
}

/// 408 for a client request body past its `--body-timeout`, else 400.
fn client_body_failed(deadline: Option<&BodyDeadline>) -> Response<ProxyBody> {
    match deadline {
        Some(d) if d.expired() => d.response(),
        _ => bad_request(),
    }
}

/// 400 for a broken client request body: no `ServedBy`, no account to blame.
fn bad_request() -> Response<ProxyBody> {
    let mut res = Response::new(ProxyBody::message(
        "400 bad request: the request body is malformed or incomplete\n",
    ));
    *res.status_mut() = StatusCode::BAD_REQUEST;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// A request body read for replay: complete, or (over the limit) what was read so far and
/// the rest of the stream.
enum Buffered<B> {
    Complete(Bytes, Option<Box<HeaderMap>>),
    Partial(VecDeque<Bytes>, B),
}

/// Reads `body` while it fits in `limit` bytes.
async fn buffer<B>(mut body: B, limit: usize, headers: &HeaderMap) -> Result<Buffered<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Ok(Buffered::Partial(VecDeque::new(), body));
    }
    let mut chunks = Chunks::default();
    let mut len = 0usize;
    loop {
        match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    len += data.len();
                    chunks.push(data);
                    if len > limit {
                        return Ok(Buffered::Partial(chunks.into_deque(), body));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Ok(Buffered::Complete(
                            chunks.concat(len),
                            Some(Box::new(trailers)),
                        ));
                    }
                }
            },
        }
    }
    Ok(Buffered::Complete(chunks.concat(len), None))
}

/// The chunks of a body read so far. The first is kept apart: a body that arrives as one
/// chunk (most do, and the JSON reader hands on the body it buffered as one) is read
/// without an allocation, and replayed without a copy.
///
/// Not [`Gathered`](super::gathered::Gathered), the response side's twin (which copies
/// each chunk into a growing buffer): a body of several MiB would be copied again at each
/// growth and could hold up to twice its size, past its grant in `--max-buffered-total`.
/// Here the chunks are kept as they came and copied once, into a buffer of their exact
/// length.
#[derive(Default)]
struct Chunks {
    first: Option<Bytes>,
    more: VecDeque<Bytes>,
}

impl Chunks {
    fn push(&mut self, data: Bytes) {
        if self.first.is_none() {
            self.first = Some(data);
        } else {
            self.more.push_back(data);
        }
    }

    /// All of them, in order.
    fn into_deque(self) -> VecDeque<Bytes> {
        let mut all = self.more;
        if let Some(first) = self.first {
            all.push_front(first);
        }
        all
    }

    /// All of them as one buffer of `len` bytes (the first itself when it is the only one).
    fn concat(self, len: usize) -> Bytes {
        if self.more.is_empty() {
            return self.first.unwrap_or_default();
        }
        let mut all = BytesMut::with_capacity(len);
        for c in self.first.iter().chain(&self.more) {
            all.extend_from_slice(c);
        }
        all.freeze()
    }
}

/// The request body sent upstream: the buffered bytes (cloned for each attempt, no copy)
/// or, for a body over the limit, what was read and then the rest of the client's stream.
///
/// Small (six words): a request is moved through several futures on its way to the
/// account's connection, so the rare parts (trailers, a streamed body) are boxed.
pub(crate) enum UpBody<B> {
    /// Kept for replay.
    Full {
        data: Option<Bytes>,
        trailers: Option<Box<HeaderMap>>,
    },
    /// Streamed through (one attempt).
    Chain(Box<Chain<B>>),
}

/// A body streamed through: what was read, then the rest of the client's stream.
pub(crate) struct Chain<B> {
    prefix: VecDeque<Bytes>,
    rest: B,
    /// Set when the client's body fails, to tell that from an upstream failure.
    client_failed: Arc<AtomicBool>,
}

impl<B> Body for UpBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::Full { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t))))
            }
            UpBody::Chain(chain) => {
                let Chain {
                    prefix,
                    rest,
                    client_failed,
                } = &mut **chain;
                if let Some(d) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                match Pin::new(rest).poll_frame(cx) {
                    Poll::Ready(Some(Err(e))) => {
                        client_failed.store(true, Ordering::Relaxed);
                        Poll::Ready(Some(Err(e.into())))
                    }
                    other => other.map(|f| f.map(|r| r.map_err(Into::into))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Full { data, trailers } => data.is_none() && trailers.is_none(),
            UpBody::Chain(chain) => chain.prefix.is_empty() && chain.rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            UpBody::Chain(chain) => {
                let pre: u64 = chain.prefix.iter().map(|b| b.len() as u64).sum();
                let inner = chain.rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + pre);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + pre);
                }
                hint
            }
        }
    }
}

/// Where a request's session id came from, for the log (`-` without one).
struct LogSource<'a>(Option<&'a SessionSource>);

impl std::fmt::Display for LogSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(s) => std::fmt::Display::fmt(s, f),
            None => f.write_str("-"),
        }
    }
}
