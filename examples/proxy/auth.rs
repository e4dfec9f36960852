//! Client authentication: `--client-token` for proxied requests, `--admin-token` for the
//! admin listener.
//!
//! A client presents its token in one of the places clients put an API key:
//! `authorization: Bearer TOKEN`, `x-api-key: TOKEN`, `x-goog-api-key: TOKEN` or the
//! `key` query parameter (`?key=TOKEN`, Gemini CLI in API-key mode). Without a valid
//! token a request is answered 401 and nothing is forwarded (the sticky layer does not
//! even look the session up: [`ClientAuth`] sits outside it). Whatever carried a valid
//! token is removed before forwarding (the `key` parameter is cut out of the query,
//! the other parameters' bytes left as they were), so no token reaches an account.
//!
//! A request that carries one of those credentials twice (two `authorization` headers,
//! two `key` parameters, …) is ambiguous — which one an upstream reads is its own
//! business — and gets 400, with or without `--client-token`.
//!
//! **Tenants.** Each token belongs to a tenant (`--client-token TENANT=ENV_VAR`; the old
//! `--client-token ENV_VAR` is the tenant `default`; one tenant may have several tokens,
//! e.g. during a rotation). [`ClientAuth`] puts the request's [`Tenant`] into its
//! extensions, and with two tenants or more the sticky layer's scope starts with it
//! ([`tenant_scope`]): one tenant can neither find, move nor unbind another's bindings or
//! learned response ids, even under the same session id. A request presenting tokens of
//! two tenants gets 400.
//!
//! Before any of that, [`hygiene`](super::hygiene) refuses requests the proxy never
//! forwards (CONNECT, TRACE, asterisk-form, dot-segments).

use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use tower::Service;
use tower_sticky_session::Scope;

use super::hygiene;
use super::keys::Secret;

/// `x-api-key`, another header a client token may arrive in.
pub(crate) const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// `x-goog-api-key`, Gemini's API-key header.
pub(crate) const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// Whether `presented` equals `secret`, in time that depends only on `presented`'s length.
///
/// Hand-written rather than a dependency: it is a dozen lines. Every byte of
/// `presented` is compared (against the secret's byte at that position, or 0 past its
/// end) and the differences are OR-ed together with the length difference, so the loop
/// never exits early and its duration reveals nothing about the secret's content.
/// `black_box` keeps the optimiser from turning the fold back into an early exit.
pub(crate) fn ct_eq(presented: &[u8], secret: &[u8]) -> bool {
    let mut diff = (presented.len() ^ secret.len()) as u64;
    for (i, &p) in presented.iter().enumerate() {
        let s = secret.get(i).copied().unwrap_or(0);
        diff |= u64::from(std::hint::black_box(p ^ s));
    }
    std::hint::black_box(diff) == 0
}

/// The `Bearer` credential of an `authorization` value.
fn bearer(v: &HeaderValue) -> Option<&[u8]> {
    let v = v.as_bytes();
    (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| v[7..].trim_ascii())
}

/// The token a request presents in a header: the `Bearer` credential of `authorization`,
/// `x-api-key` or `x-goog-api-key`.
fn presented(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(bearer);
    let keys = [X_API_KEY, X_GOOG_API_KEY]
        .into_iter()
        .flat_map(move |name| {
            headers
                .get_all(name)
                .into_iter()
                .map(|v| v.as_bytes().trim_ascii())
        });
    bearer.chain(keys)
}

/// Whether `headers` present `token` (in any of the headers; the admin listener's check).
pub(crate) fn authorized(headers: &HeaderMap, token: &Secret) -> bool {
    // Every candidate is compared (no early exit across headers either).
    presented(headers).fold(false, |ok, p| ct_eq(p, token.expose()) | ok)
}

/// 401 with a short message and a `www-authenticate` challenge.
pub(crate) fn unauthorized() -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(
        b"401 unauthorized: send authorization: Bearer TOKEN or x-api-key: TOKEN\n",
    )));
    *res.status_mut() = StatusCode::UNAUTHORIZED;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

/// A plain-text answer of the proxy's own.
pub(crate) fn plain(status: StatusCode, msg: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(msg.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// A tenant: the clients that present one of its tokens. Request extension set by
/// [`ClientAuth`] once the token is checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Tenant(Arc<str>);

impl Tenant {
    /// The tenant of the old `--client-token ENV_VAR` form.
    pub(crate) const DEFAULT: &'static str = "default";

    /// A tenant name: 1 to 64 of ASCII letters, digits, `-`, `_` and `.` (so that it
    /// reads well in a scope, and never contains the scope's `/` separator).
    pub(crate) fn new(name: &str) -> Result<Self, String> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(Self(name.into()))
        } else {
            Err(format!(
                "tenant name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
            ))
        }
    }

    /// The tenant's name.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// One client token and the tenant it belongs to.
#[derive(Clone, Debug)]
pub(crate) struct ClientToken {
    /// Whose token it is.
    pub(crate) tenant: Tenant,
    /// The token.
    pub(crate) token: Secret,
}

/// Checks a set of client tokens for start-up: two tenants sharing one token would make
/// a request's tenant ambiguous. The error names the tenants, never the token.
pub(crate) fn check_tokens(tokens: &[ClientToken]) -> Result<(), String> {
    for (i, a) in tokens.iter().enumerate() {
        for b in &tokens[..i] {
            if a.tenant != b.tenant && ct_eq(a.token.expose(), b.token.expose()) {
                return Err(format!(
                    "tenants {:?} and {:?} have the same client token",
                    b.tenant.as_str(),
                    a.tenant.as_str()
                ));
            }
        }
    }
    Ok(())
}

/// How many different tenants `tokens` name.
pub(crate) fn tenant_count(tokens: &[ClientToken]) -> usize {
    tokens
        .iter()
        .enumerate()
        .filter(|(i, t)| !tokens[..*i].iter().any(|o| o.tenant == t.tenant))
        .count()
}

/// The sticky layer's scope for a request of `tenant` whose `--scope-header` value is
/// `value`: `TENANT`, or `TENANT/VALUE` (as the admin listener's `scope=` names it).
/// A tenant name never holds a `/`, so no two (tenant, value) pairs share a scope.
pub(crate) fn tenant_scope(tenant: Option<&Tenant>, value: Option<&HeaderValue>) -> Option<Scope> {
    match (tenant, value) {
        (None, value) => value.map(Scope::from),
        (Some(t), None) => Some(Scope::new(Bytes::copy_from_slice(t.as_str().as_bytes()))),
        (Some(t), Some(v)) => {
            let mut s = Vec::with_capacity(t.as_str().len() + 1 + v.len());
            s.extend_from_slice(t.as_str().as_bytes());
            s.push(b'/');
            s.extend_from_slice(v.as_bytes());
            Some(Scope::new(s))
        }
    }
}

/// Where a credential was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Authorization,
    XApiKey,
    XGoogApiKey,
    KeyParam,
}

impl Place {
    const ALL: [Place; 4] = [
        Place::Authorization,
        Place::XApiKey,
        Place::XGoogApiKey,
        Place::KeyParam,
    ];

    fn describe(self) -> &'static str {
        match self {
            Place::Authorization => "`authorization` header",
            Place::XApiKey => "`x-api-key` header",
            Place::XGoogApiKey => "`x-goog-api-key` header",
            Place::KeyParam => "`key` query parameter",
        }
    }
}

/// The credentials a request carries, at most one per [`Place`] (index = place).
#[derive(Default)]
struct Credentials<'a> {
    /// The candidate token in each place (an `authorization` that is not `Bearer` is
    /// not a candidate).
    found: [Option<Cow<'a, [u8]>>; 4],
    /// The index of the `key` parameter among the query's `&`-separated parts.
    key_param: Option<usize>,
}

/// Reads a request's credentials; `Err` names a place that holds more than one.
fn credentials<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Result<Credentials<'a>, Place> {
    let mut c = Credentials::default();
    let one = |name: HeaderName, place: Place| {
        let mut all = headers.get_all(name).iter();
        let first = all.next();
        if all.next().is_some() {
            Err(place)
        } else {
            Ok(first)
        }
    };
    if let Some(v) = one(header::AUTHORIZATION, Place::Authorization)? {
        c.found[0] = bearer(v).map(Cow::Borrowed);
    }
    if let Some(v) = one(X_API_KEY, Place::XApiKey)? {
        c.found[1] = Some(Cow::Borrowed(v.as_bytes().trim_ascii()));
    }
    if let Some(v) = one(X_GOOG_API_KEY, Place::XGoogApiKey)? {
        c.found[2] = Some(Cow::Borrowed(v.as_bytes().trim_ascii()));
    }
    if let Some(query) = uri.query() {
        for (i, part) in query.split('&').enumerate() {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            if percent_decode(name.as_bytes()).as_ref() != b"key" {
                continue;
            }
            if c.key_param.is_some() {
                return Err(Place::KeyParam);
            }
            c.key_param = Some(i);
            c.found[3] = Some(percent_decode(value.as_bytes()));
        }
    }
    Ok(c)
}

/// `s` with `%XX` escapes decoded (anything else, `+` included, as it is).
pub(crate) fn percent_decode(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.contains(&b'%') {
        return Cow::Borrowed(s);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && let (Some(h), Some(l)) = (
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Cow::Owned(out)
}

/// `uri` without the `&`-separated part `index` of its query (and without the `?` when
/// that was the only part); every other byte as it was.
fn without_query_part(uri: &Uri, index: usize) -> Result<Uri, http::Error> {
    let query = uri.query().unwrap_or("");
    let rest: Vec<&str> = query
        .split('&')
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, p)| p)
        .collect();
    let pq = if rest.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), rest.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq)?);
    Ok(Uri::from_parts(parts)?)
}

/// Answers 401 to requests without a client token; passes the others on with the token
/// removed (the proxy's token is not the accounts' business) and their [`Tenant`] in the
/// extensions. Refuses ambiguous credentials and what [`hygiene`] refuses.
#[derive(Clone)]
pub(crate) struct ClientAuth<S> {
    inner: S,
    tokens: Arc<[ClientToken]>,
}

impl<S> ClientAuth<S> {
    /// `inner` behind `tokens` (none: every request passes, nothing is removed).
    pub(crate) fn new(inner: S, tokens: Vec<ClientToken>) -> Self {
        Self {
            inner,
            tokens: tokens.into(),
        }
    }
}

/// What the token check decided.
enum Verdict {
    /// Authenticated: the tenant, and which places held one of its tokens.
    Tenant(Tenant, [bool; 4]),
    /// No valid token.
    Unauthorized,
    /// Valid tokens of two tenants.
    TwoTenants,
}

/// Compares every credential with every token (no early exit: the time taken depends on
/// how many credentials and tokens there are and on the credentials' lengths, not on any
/// token's content).
fn verdict(c: &Credentials<'_>, tokens: &[ClientToken]) -> Verdict {
    let mut tenant: Option<&Tenant> = None;
    let mut two = false;
    let mut carried = [false; 4];
    for (place, found) in c.found.iter().enumerate() {
        let Some(p) = found else { continue };
        for t in tokens {
            if ct_eq(p, t.token.expose()) {
                carried[place] = true;
                match tenant {
                    Some(seen) if *seen != t.tenant => two = true,
                    _ => tenant = Some(&t.tenant),
                }
            }
        }
    }
    match tenant {
        _ if two => Verdict::TwoTenants,
        Some(t) => Verdict::Tenant(t.clone(), carried),
        None => Verdict::Unauthorized,
    }
}

pin_project_lite::pin_project! {
    /// [`ClientAuth`]'s response future: the inner service's, or its own answer (400, 401,
    /// or a request refused by [`hygiene`]). Not boxed: it lives inline in the request's
    /// future (hyper keeps that in one slot per HTTP/1 connection, and in the stream's
    /// task for HTTP/2), instead of one allocation per request and a copy of the inner
    /// future into it.
    #[project = AuthFutureProj]
    pub(crate) enum AuthFuture<F, RB> {
        /// The request went on to the inner service.
        Inner { #[pin] inner: F, _body: PhantomData<fn() -> RB> },
        /// The proxy answers it itself (taken when polled).
        Answer { res: Option<Response<Full<Bytes>>> },
    }
}

impl<F, RB, E> Future for AuthFuture<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<Either<RB, Full<Bytes>>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthFutureProj::Inner { inner, .. } => inner
                .poll(cx)
                .map(|res| res.map(|res| res.map(Either::Left))),
            AuthFutureProj::Answer { res } => Poll::Ready(Ok(res
                .take()
                .expect("AuthFuture polled after completion")
                .map(Either::Right))),
        }
    }
}

impl<F, RB> AuthFuture<F, RB> {
    fn inner(inner: F) -> Self {
        Self::Inner {
            inner,
            _body: PhantomData,
        }
    }
}

impl<S, B, RB> Service<Request<B>> for ClientAuth<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<Either<RB, Full<Bytes>>>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let answer =
            |res: Response<Full<Bytes>>| -> Self::Future { AuthFuture::Answer { res: Some(res) } };
        if let Some(res) = hygiene::refuse(req.method(), req.uri()) {
            return answer(res);
        }
        let (tenant, carried, key_param) = match credentials(req.headers(), req.uri()) {
            Err(place) => {
                tracing::info!(
                    path = req.uri().path(),
                    place = place.describe(),
                    "400: credential sent twice"
                );
                return answer(plain(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "400 bad request: more than one {}; send one credential\n",
                        place.describe()
                    ),
                ));
            }
            Ok(_) if self.tokens.is_empty() => return AuthFuture::inner(self.inner.call(req)),
            Ok(c) => match verdict(&c, &self.tokens) {
                Verdict::Unauthorized => {
                    tracing::debug!(path = req.uri().path(), "401: no valid client token");
                    return answer(unauthorized());
                }
                Verdict::TwoTenants => {
                    tracing::info!(path = req.uri().path(), "400: client tokens of two tenants");
                    return answer(plain(
                        StatusCode::BAD_REQUEST,
                        "400 bad request: the request carries client tokens of two tenants\n",
                    ));
                }
                Verdict::Tenant(t, carried) => (t, carried, c.key_param),
            },
        };
        // The client's token is for the proxy: remove it before any account sees it.
        for (place, carried) in Place::ALL.into_iter().zip(carried) {
            if !carried {
                continue;
            }
            match place {
                Place::Authorization => drop(req.headers_mut().remove(header::AUTHORIZATION)),
                Place::XApiKey => drop(req.headers_mut().remove(X_API_KEY)),
                Place::XGoogApiKey => drop(req.headers_mut().remove(X_GOOG_API_KEY)),
                Place::KeyParam => {
                    let index = key_param.expect("a key parameter was found");
                    match without_query_part(req.uri(), index) {
                        Ok(uri) => *req.uri_mut() = uri,
                        Err(_) => {
                            return answer(plain(
                                StatusCode::BAD_REQUEST,
                                "400 bad request: invalid request target\n",
                            ));
                        }
                    }
                }
            }
        }
        req.extensions_mut().insert(tenant);
        AuthFuture::inner(self.inner.call(req))
    }
}
