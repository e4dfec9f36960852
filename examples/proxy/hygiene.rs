//! Requests the proxy refuses before anything else runs (no token check, no session
//! lookup, nothing forwarded):
//!
//! - `CONNECT` (405): the proxy forwards requests to its accounts, it opens no tunnels;
//! - `TRACE` (405): an upstream that echoes the request would hand the account's key
//!   (added by the proxy) back to the client;
//! - a request target that is not a path (`OPTIONS *`, the asterisk form; 400): it is
//!   about the proxy, not an account;
//! - a path with a dot-segment (`.` or `..`, also percent-encoded as `%2e`, or hidden
//!   behind an encoded `/` or `\` inside a segment; 400). Refused rather than normalised:
//!   the account's path prefix is put in front of every path, and `/../admin` would
//!   climb out of it with the account's key. No API client sends one.
//!
//! A WebSocket upgrade is a `GET`: untouched here.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode, Uri};
use http_body_util::Full;

use super::auth::{percent_decode, plain};

/// The answer to a request the proxy refuses, or `None` for one it may forward.
pub(crate) fn refuse(method: &Method, uri: &Uri) -> Option<Response<Full<Bytes>>> {
    if method == Method::CONNECT || method == Method::TRACE {
        tracing::info!(method = %method, "405: method not proxied");
        let mut res = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("405 method not allowed: {method} is not proxied\n"),
        );
        res.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        return Some(res);
    }
    let path = uri.path();
    if !path.starts_with('/') {
        tracing::info!(method = %method, "400: request target is not a path");
        return Some(plain(
            StatusCode::BAD_REQUEST,
            "400 bad request: the request target must be a path (no asterisk form)\n",
        ));
    }
    if has_dot_segment(path) {
        tracing::info!(method = %method, "400: dot-segment in the path");
        return Some(plain(
            StatusCode::BAD_REQUEST,
            "400 bad request: the path has a '.' or '..' segment\n",
        ));
    }
    None
}

/// Whether a segment of `path`, percent-decoded and split at any `/` or `\` the decoding
/// reveals, is `.` or `..`.
fn has_dot_segment(path: &str) -> bool {
    // A dot-segment needs a `.`, plain or percent-encoded: most paths have neither.
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return false;
    }
    path.split('/').any(|segment| {
        percent_decode(segment.as_bytes())
            .split(|&b| b == b'/' || b == b'\\')
            .any(|part| part == b"." || part == b"..")
    })
}
