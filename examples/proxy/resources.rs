//! Limits the proxy hits on its own side, never blamed on an account.
//!
//! - **File descriptors.** At start-up the soft `RLIMIT_NOFILE` is raised to the hard
//!   limit ([`raise_nofile`], with the `rlimit` crate: a safe wrapper, as `unsafe` is
//!   forbidden in this package), and `--max-connections` is lowered, if it must, to what
//!   fits ([`fit_connections`]): [`RESERVED_FDS`] for the process itself and the admin
//!   listener's connections, then [`FDS_PER_CONNECTION`] per client connection (its
//!   socket and the upstream connection of its request).
//! - **Local resource errors on the upstream connect** (EMFILE, ENFILE, ENOBUFS, ENOMEM:
//!   [`local_resource_error`] walks the error's sources for the `io::Error`) are the
//!   proxy's own: the request gets 503 with `retry-after: 1` ([`local_unavailable`]),
//!   no `ServedBy`, no other account is tried, no account cools down, and the sticky
//!   layer leaves the binding alone ([`ProxyClassifier`] reads the answer's
//!   `proxy-status` as neutral).

use std::error::Error as StdError;
use std::io;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tower_sticky_session::{ClassifyResponse, ResponseClass, StatusClassifier};

use super::timeouts::ProxyBody;

/// Descriptors kept for the process itself (standard streams, listeners, the runtime's
/// epoll and wake-up descriptors, DNS lookups, log files) and for the admin listener's
/// connections.
pub(crate) const RESERVED_FDS: u64 = 64 + ADMIN_MAX_CONNECTIONS as u64;

/// Descriptors one client connection may need: its socket and its request's upstream
/// connection.
pub(crate) const FDS_PER_CONNECTION: u64 = 2;

/// Most connections the admin listener holds open at once.
pub(crate) const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force.
pub(crate) fn raise_nofile() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// `requested` client connections, lowered to what `nofile` descriptors can serve; `Err`
/// when not even one fits.
pub(crate) fn fit_connections(nofile: u64, requested: usize) -> Result<usize, String> {
    let fit = nofile.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION;
    if fit == 0 {
        return Err(format!(
            "the descriptor limit ({nofile}, RLIMIT_NOFILE) leaves no room for a client \
             connection: {RESERVED_FDS} are kept for the process and the admin listener, \
             {FDS_PER_CONNECTION} needed per connection"
        ));
    }
    Ok(usize::try_from(fit).unwrap_or(usize::MAX).min(requested))
}

/// The OS error codes that mean the proxy itself ran out of something.
const LOCAL_CODES: [i32; 4] = [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM];

/// The `io::Error` in `e`'s source chain that says the proxy ran out of descriptors,
/// buffers or memory, if there is one.
pub(crate) fn local_resource_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io.raw_os_error().is_some_and(|c| LOCAL_CODES.contains(&c))
        {
            return Some(io);
        }
        next = e.source();
    }
    None
}

/// `proxy-status` (RFC 9209) on an answer of the proxy's own about its own resources.
const PROXY_STATUS: HeaderName = HeaderName::from_static("proxy-status");
const LOCAL_STATUS: &str =
    "tower-sticky-session; error=proxy_internal_error; details=\"local resources\"";

/// 503 for a request the proxy could not forward for want of its own resources.
pub(crate) fn local_unavailable() -> Response<ProxyBody> {
    let mut res = Response::new(ProxyBody::message(
        "503 service unavailable: the proxy is out of local resources; retry shortly\n",
    ));
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    h.insert(PROXY_STATUS, HeaderValue::from_static(LOCAL_STATUS));
    res
}

/// The sticky layer's classifier in the proxy: the default (429 and 5xx fail), except
/// that an answer of the proxy's own about its own resources ([`local_unavailable`]) is
/// neutral: it says nothing about the account, so no binding is cleared.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProxyClassifier(StatusClassifier);

impl ClassifyResponse for ProxyClassifier {
    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> ResponseClass {
        if status == StatusCode::SERVICE_UNAVAILABLE
            && headers
                .get(PROXY_STATUS)
                .is_some_and(|v| v.as_bytes() == LOCAL_STATUS.as_bytes())
        {
            return ResponseClass::Neutral;
        }
        self.0.classify(status, headers)
    }
}
