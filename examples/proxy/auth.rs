//! Client authentication: `--client-token` for proxied requests, `--admin-token` for the
//! admin listener.
//!
//! A request is authenticated when it carries `authorization: Bearer TOKEN` or
//! `x-api-key: TOKEN`. Otherwise it is answered 401 and nothing is forwarded (the sticky
//! layer does not even look the session up: [`ClientAuth`] sits outside it).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use tower::Service;

use super::keys::Secret;

/// `x-api-key`, the other header a client token may arrive in.
pub(crate) const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

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

/// The token a request presents: the `Bearer` credential of `authorization`, or
/// `x-api-key`. The header that carried it is returned too.
fn presented(headers: &HeaderMap) -> impl Iterator<Item = (&'static str, &[u8])> {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| {
            let v = v.as_bytes();
            (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
                .then(|| ("authorization", v[7..].trim_ascii()))
        });
    let api_key = headers
        .get_all(X_API_KEY)
        .iter()
        .map(|v| ("x-api-key", v.as_bytes().trim_ascii()));
    bearer.chain(api_key)
}

/// Whether `headers` present `token` (in either header).
pub(crate) fn authorized(headers: &HeaderMap, token: &Secret) -> bool {
    // Every candidate is compared (no early exit across headers either).
    presented(headers).fold(false, |ok, (_, p)| ct_eq(p, token.expose()) | ok)
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

/// Answers 401 to requests without the client token; passes the others on with the
/// token's headers removed (the proxy's token is not the accounts' business).
#[derive(Clone)]
pub(crate) struct ClientAuth<S> {
    inner: S,
    token: Option<Arc<Secret>>,
}

impl<S> ClientAuth<S> {
    /// `inner` behind `token` (no token: everything passes, nothing is removed).
    pub(crate) fn new(inner: S, token: Option<Secret>) -> Self {
        Self {
            inner,
            token: token.map(Arc::new),
        }
    }
}

type AuthFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, RB> Service<Request<B>> for ClientAuth<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<Either<RB, Full<Bytes>>>;
    type Error = S::Error;
    type Future = AuthFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(token) = &self.token {
            if !authorized(req.headers(), token) {
                tracing::debug!(path = req.uri().path(), "401: no valid client token");
                return Box::pin(std::future::ready(Ok(unauthorized().map(Either::Right))));
            }
            // The client's token is for the proxy: remove it before any account sees it.
            let h = req.headers_mut();
            let bearer_is_token = h.get(header::AUTHORIZATION).is_some_and(|v| {
                let v = v.as_bytes();
                v.len() > 7 && ct_eq(v[7..].trim_ascii(), token.expose())
            });
            if bearer_is_token {
                h.remove(header::AUTHORIZATION);
            }
            let api_key_is_token = h
                .get(X_API_KEY)
                .is_some_and(|v| ct_eq(v.as_bytes().trim_ascii(), token.expose()));
            if api_key_is_token {
                h.remove(X_API_KEY);
            }
        }
        let fut = self.inner.call(req);
        Box::pin(async move { Ok(fut.await?.map(Either::Left)) })
    }
}
