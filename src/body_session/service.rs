//! The service.

use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, header};
use http_body::Body;
use tower_service::Service;

use super::body::BufferedBody;
use super::future::ResponseFuture;
use super::layer::Config;
use super::stats::Skip;
use crate::extract::Found;

/// The middleware made by [`SessionFromBodyLayer`](super::SessionFromBodyLayer).
///
/// `poll_ready` is delegated. A request whose body is read moves the inner service that
/// was polled ready into its [`ResponseFuture`] and leaves a clone in its place (the
/// body is read before the inner service is called), hence `S: Clone`. The request body
/// must be `Unpin` (hyper's `Incoming`, axum's `Body` and http-body-util's bodies are;
/// wrap others in `Pin<Box<_>>`).
#[derive(Clone, Debug)]
pub struct SessionFromBody<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> SessionFromBody<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("max_buffer", &self.max_buffer)
            .finish_non_exhaustive()
    }
}

/// `application/json`, any `…/…+json`, parameters and case ignored.
fn is_json(content_type: &[u8]) -> bool {
    let essence = content_type
        .split(|&c| c == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() > 5
            && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json")
            && essence.contains(&b'/'))
}

/// Why the body is passed on unread (`Err`), or `Ok` with the request's
/// `Content-Length`, if any, to read it.
fn skip<B: Body>(
    config: &Config,
    parts: &http::request::Parts,
    body: &B,
) -> Result<Option<u64>, Skip> {
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if body.is_end_stream() || length == Some(0) {
        return Err(Skip::Empty);
    }
    if parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err(Skip::NotJson);
    }
    if parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| !is_json(v.as_bytes()))
    {
        return Err(Skip::NotJson);
    }
    if !config.response_id_with_header
        && matches!(
            config.headers.extract(parts, config.scan.max_len),
            Found::Valid(_)
        )
    {
        return Err(Skip::HeaderSession);
    }
    let max = config.max_buffer as u64;
    if length.is_some_and(|l| l > max) || body.size_hint().lower() > max {
        return Err(Skip::TooLarge);
    }
    Ok(length)
}

impl<S, B> Service<Request<B>> for SessionFromBody<S>
where
    S: Service<Request<BufferedBody<B>>> + Clone,
    B: Body + Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        match skip(&self.config, &parts, &body) {
            Err(why) => {
                self.config.stats.skipped(why);
                tracing::trace!(reason = ?why, "request body not read for a session id");
                let req = Request::from_parts(parts, BufferedBody::new(body));
                ResponseFuture::called(self.inner.call(req))
            }
            Ok(length) => {
                // The body must be read before the inner service is called: the service
                // that was polled ready goes into the future.
                let clone = self.inner.clone();
                let inner = mem::replace(&mut self.inner, clone);
                ResponseFuture::reading(parts, body, length, inner, self.config.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_content_types_are_recognised_with_parameters_and_any_case() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.api+json",
            " application/json ;x=y",
        ] {
            assert!(is_json(ct.as_bytes()), "{ct}");
        }
        for ct in [
            "text/plain",
            "application/jsonx",
            "multipart/form-data",
            "+json",
            "",
        ] {
            assert!(!is_json(ct.as_bytes()), "{ct}");
        }
    }
}
