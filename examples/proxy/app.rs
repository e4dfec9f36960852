//! The reusable part of the example proxy: no command line, no demo.
//!
//! - [`Picker`]: chooses the account for a request. The account named by the request's
//!   [`PinnedAuth`] when it is configured, otherwise strict round-robin over the accounts
//!   in configuration order (one shared counter, advanced only by unpinned requests).
//! - [`Proxy`]: a tower `Service` that forwards a request to the picked account over a
//!   pooled hyper-util client and streams the response back frame by frame. It sets
//!   [`ServedBy`] and the `x-served-by` header on every response it produced with an
//!   account, including the 502 it answers when the account fails before its response
//!   headers (so the sticky layer clears the binding).
//! - [`build`]: the whole stack, `StickySessionLayer` around `Proxy`, for a config and a
//!   store (any [`BindingStore`]).
//! - [`serve`]: an HTTP/1 + HTTP/2 accept loop with graceful shutdown.
//!
//! One attempt per request: the proxy never retries on another account, so which account
//! served a request is always the one named in `x-served-by`.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{Layer, Service};
use tower_sticky_session::{
    AuthId, BindingStore, PinnedAuth, Scope, ServedBy, SessionId, Stats, StickySession,
    StickySessionLayer,
};

/// The response header that names the account that served a request.
pub(crate) const X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

type BoxError = Box<dyn StdError + Send + Sync>;

/// One upstream account: a name (what bindings and `x-served-by` refer to) and a base URL.
#[derive(Clone)]
pub(crate) struct Upstream {
    name: AuthId,
    header: HeaderValue,
    scheme: Scheme,
    authority: http::uri::Authority,
    /// The base URL's path without its trailing `/` ("" for the root).
    prefix: String,
}

impl Upstream {
    /// An account `name` served at `url` (`http://` or `https://`, optionally with a path
    /// prefix that is put in front of every proxied path).
    pub(crate) fn new(name: &str, url: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("the account name is empty".into());
        }
        let header = HeaderValue::from_str(name)
            .ok()
            .filter(|_| name.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| format!("account name {name:?} must be visible ASCII without spaces"))?;
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid URL {:?}: {e}", redact_url(url)))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => {
                return Err(format!(
                    "URL {:?} must start with http:// or https://",
                    redact_url(url)
                ));
            }
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("URL {:?} has no host", redact_url(url)))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "URL {:?}: credentials in the URL are not supported",
                redact_url(url)
            ));
        }
        if uri.query().is_some() {
            return Err(format!(
                "URL {:?}: a query string is not supported in an upstream URL",
                redact_url(url)
            ));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            name: AuthId::from(name),
            header,
            scheme,
            authority,
            prefix,
        })
    }

    /// The account's name.
    pub(crate) fn name(&self) -> &AuthId {
        &self.name
    }

    /// The URL a request for `path_and_query` goes to.
    fn target(&self, original: &Uri) -> Result<Uri, http::Error> {
        let pq = original.path_and_query().map_or("/", PathAndQuery::as_str);
        let pq = if self.prefix.is_empty() {
            PathAndQuery::try_from(pq)?
        } else {
            PathAndQuery::try_from(format!("{}{pq}", self.prefix))?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Upstream({}={self})", self.name)
    }
}

/// A URL with any `user:password@` removed, for error messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// What [`build`] needs to know.
#[derive(Clone, Debug)]
pub(crate) struct ProxyConfig {
    /// The accounts, in round-robin order. Names must be unique.
    pub(crate) upstreams: Vec<Upstream>,
    /// Session id headers, in priority order (at least one).
    pub(crate) session_headers: Vec<HeaderName>,
    /// If set, bindings are scoped by this header's value (e.g. provider or model).
    pub(crate) scope_header: Option<HeaderName>,
}

/// How a [`Picker`] chose an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pick {
    /// The request's [`PinnedAuth`] named this configured account.
    Pinned,
    /// The pin named an account that is not configured; round-robin was used.
    StalePin,
    /// No pin; round-robin.
    RoundRobin,
}

impl Pick {
    fn as_str(self) -> &'static str {
        match self {
            Pick::Pinned => "pinned",
            Pick::StalePin => "stale-pin",
            Pick::RoundRobin => "round-robin",
        }
    }
}

/// Chooses the account for each request: the pinned one if configured, else round-robin.
pub(crate) struct Picker {
    upstreams: Box<[Upstream]>,
    next: AtomicUsize,
}

impl Picker {
    /// A picker over `upstreams` (non-empty), in this order.
    pub(crate) fn new(upstreams: Vec<Upstream>) -> Self {
        assert!(!upstreams.is_empty(), "at least one upstream is required");
        Self {
            upstreams: upstreams.into(),
            next: AtomicUsize::new(0),
        }
    }

    /// The account for a request pinned to `pinned` (if any), and how it was chosen.
    ///
    /// A pin is a strong hint, never a reason to fail: a pin to an account that is not
    /// configured (e.g. removed since the binding was made) falls back to round-robin.
    /// Pinned requests do not advance the round-robin counter.
    pub(crate) fn pick(&self, pinned: Option<&PinnedAuth>) -> (&Upstream, Pick) {
        let mut how = Pick::RoundRobin;
        if let Some(PinnedAuth(auth)) = pinned {
            if let Some(up) = self.upstreams.iter().find(|u| &u.name == auth) {
                return (up, Pick::Pinned);
            }
            how = Pick::StalePin;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.upstreams.len();
        (&self.upstreams[i], how)
    }
}

/// The pooled upstream client: HTTP/1.1 and (over TLS, by ALPN) HTTP/2.
type UpstreamClient<B> = Client<HttpsConnector<HttpConnector>, B>;

fn client<B>() -> Result<UpstreamClient<B>, BoxError>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        // An explicit provider: independent of which rustls crypto features other
        // crates in the build enable.
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}

/// The forwarder: picks an account, sends the request there once, streams the answer back.
pub(crate) struct Proxy<B> {
    picker: Arc<Picker>,
    client: UpstreamClient<B>,
}

impl<B> Clone for Proxy<B> {
    fn clone(&self) -> Self {
        Self {
            picker: self.picker.clone(),
            client: self.client.clone(),
        }
    }
}

impl<B> Proxy<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A forwarder over `picker`'s accounts.
    pub(crate) fn new(picker: Arc<Picker>) -> Result<Self, BoxError> {
        Ok(Self {
            picker,
            client: client()?,
        })
    }
}

impl<B> Service<Request<B>> for Proxy<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pooled client queues internally; there is nothing to wait for here.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (up, how) = self.picker.pick(req.extensions().get::<PinnedAuth>());
        let up = up.clone();
        let client = self.client.clone();
        Box::pin(async move { Ok(forward(client, up, how, req).await) })
    }
}

async fn forward<B>(
    client: UpstreamClient<B>,
    up: Upstream,
    how: Pick,
    req: Request<B>,
) -> Response<ProxyBody>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    // For the log (cheap clones: the URI shares its bytes). Only the path is logged, not
    // the query, which may carry keys; the session id only redacted.
    let method = parts.method.clone();
    let uri = parts.uri.clone();
    let path = uri.path();
    let session = parts.extensions.remove::<SessionId>();
    let session = LogSession(session.as_ref());

    let target = match up.target(&parts.uri) {
        Ok(uri) => uri,
        Err(e) => {
            tracing::warn!(upstream = %up.name, error = %e, "cannot build the upstream URL");
            return bad_gateway(&up, "cannot build the upstream URL");
        }
    };
    strip_hop_by_hop(&mut parts.headers);
    // The client sets Host from the target URL: upstreams route on their own name.
    parts.headers.remove(header::HOST);
    parts.uri = target;
    parts.version = Version::HTTP_11;
    // Nothing of this process's request extensions is for the upstream.
    parts.extensions = http::Extensions::new();
    let upstream_req = Request::from_parts(parts, body);

    match client.request(upstream_req).await {
        Ok(res) => {
            let (mut parts, body) = res.into_parts();
            tracing::info!(
                %method, path, %session, upstream = %up.name, pick = how.as_str(),
                status = parts.status.as_u16(), "proxied"
            );
            strip_hop_by_hop(&mut parts.headers);
            parts.headers.insert(X_SERVED_BY, up.header.clone());
            parts.extensions = http::Extensions::new();
            parts.extensions.insert(ServedBy(up.name.clone()));
            Response::from_parts(
                parts,
                ProxyBody::Upstream {
                    body,
                    upstream: up.name,
                    failed: None,
                },
            )
        }
        Err(e) => {
            tracing::warn!(
                %method, path, %session, upstream = %up.name, pick = how.as_str(),
                error = %ErrorChain(&e), "upstream failed before its response headers"
            );
            bad_gateway(&up, "the upstream failed before sending a response")
        }
    }
}

/// 502 that still names the account, so the sticky layer clears a binding to it.
fn bad_gateway(up: &Upstream, why: &str) -> Response<ProxyBody> {
    let msg = format!("502 bad gateway: account {}: {why}\n", up.name);
    let mut res = Response::new(ProxyBody::Message {
        msg: Some(Bytes::from(msg)),
    });
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(X_SERVED_BY, up.header.clone());
    res.extensions_mut().insert(ServedBy(up.name.clone()));
    res
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1, including those the `Connection`
/// header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// A request's session id for the log: redacted, or `-` without one.
#[derive(Clone, Copy)]
struct LogSession<'a>(Option<&'a SessionId>);

impl fmt::Display for LogSession<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => fmt::Display::fmt(&id.redacted(), f),
            None => f.write_str("-"),
        }
    }
}

/// An error and its sources, on one line.
struct ErrorChain<'a>(&'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// The proxy's response body: the upstream's body, frame by frame as it arrives, or a
/// short message of the proxy's own.
///
/// An upstream body that fails (e.g. the upstream closed the connection mid-stream) yields
/// the error, so hyper aborts the response to the client instead of ending it cleanly.
pub(crate) enum ProxyBody {
    /// Streamed from the account.
    Upstream {
        /// The upstream response body.
        body: Incoming,
        /// The account, for the log.
        upstream: AuthId,
        /// The upstream body's error, held back for one poll (see `poll_frame`).
        failed: Option<hyper::Error>,
    },
    /// A message of the proxy's own (e.g. a 502).
    Message {
        /// The message, until it is sent.
        msg: Option<Bytes>,
    },
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream {
                body,
                upstream,
                failed,
            } => {
                if let Some(e) = failed.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                match std::task::ready!(Pin::new(body).poll_frame(cx)) {
                    Some(Err(e)) => {
                        tracing::warn!(
                            upstream = %upstream, error = %ErrorChain(&e),
                            "upstream response body failed; aborting the client's response"
                        );
                        // hyper's HTTP/1 server discards what it has buffered but not yet
                        // written when a body fails. Yield once (and ask to be polled again
                        // at once) so it flushes the head and the chunks already received:
                        // the client then sees exactly where the upstream broke.
                        *failed = Some(e);
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    frame => Poll::Ready(frame),
                }
            }
            ProxyBody::Message { msg } => Poll::Ready(msg.take().map(|m| Ok(Frame::data(m)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, failed, .. } => failed.is_none() && body.is_end_stream(),
            ProxyBody::Message { msg } => msg.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Message { msg } => {
                SizeHint::with_exact(msg.as_ref().map_or(0, |m| m.len() as u64))
            }
        }
    }
}

/// The whole proxy service: the sticky-session layer around the forwarder.
pub(crate) type ProxyService<St> = StickySession<Proxy<Incoming>, St>;

/// The built proxy: its service and the sticky layer's counters.
pub(crate) struct App<St: BindingStore> {
    /// Serve it with [`serve`] (it is `Clone`; each connection gets a clone).
    pub(crate) service: ProxyService<St>,
    /// The sticky layer's counters.
    pub(crate) stats: Stats,
}

/// Builds the proxy for `cfg` with its bindings in `store`.
pub(crate) fn build<St: BindingStore>(cfg: &ProxyConfig, store: St) -> Result<App<St>, BoxError> {
    if cfg.upstreams.is_empty() {
        return Err("at least one upstream is required".into());
    }
    for (i, up) in cfg.upstreams.iter().enumerate() {
        if cfg.upstreams[..i].iter().any(|u| u.name == up.name) {
            return Err(format!("account name {:?} is used twice", up.name.as_str()).into());
        }
    }
    if cfg.session_headers.is_empty() {
        return Err("at least one session header is required".into());
    }
    let mut layer = StickySessionLayer::with_store(store).headers(cfg.session_headers.clone());
    if let Some(name) = cfg.scope_header.clone() {
        layer = layer.scope_fn(move |parts| parts.headers.get(&name).map(Scope::from));
    }
    let proxy = Proxy::new(Arc::new(Picker::new(cfg.upstreams.clone())))?;
    Ok(App {
        stats: layer.stats(),
        service: layer.layer(proxy),
    })
}

/// Serves `service` on `listener` (HTTP/1.1 and HTTP/2) until `shutdown` resolves, then
/// stops accepting and waits up to `grace` for the open connections to finish their
/// requests.
pub(crate) async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Drop clients that never finish sending their request head.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let svc = TowerToHyperService::new(service.clone());
                    let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %ErrorChain(&*e), "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for open requests to finish");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "grace period over; dropping the remaining connections");
        }
    }
}
