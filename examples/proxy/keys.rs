//! Secrets: account keys read from the environment, and redaction of URLs.
//!
//! A key is read once at start-up from the environment variable the operator named
//! (`--upstream-key NAME=ENV_VAR`), turned into the header value the account gets, and
//! marked sensitive. It is never formatted: [`Secret`]'s `Debug` prints `***`, errors
//! name the variable, never its value, and the header value is flagged sensitive so
//! that `http`'s `Debug` (and h2's HPACK) treat it as such.

use std::fmt;

use http::header::{self, HeaderName, HeaderValue};

/// A secret read from the environment. `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct Secret(Box<[u8]>);

impl Secret {
    /// The secret's bytes (compare with [`crate::app::auth::ct_eq`], never `==`).
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `--upstream-key NAME=ENV_VAR`: the account and the variable that holds its key.
#[derive(Clone, Debug)]
pub(crate) struct KeySpec {
    /// The account's name (as in `--upstream NAME=URL`).
    pub(crate) account: String,
    /// The environment variable holding the key.
    pub(crate) var: String,
}

/// Parses `NAME=ENV_VAR`. The text holds no secret (a variable name), so it may be echoed.
pub(crate) fn parse_key_spec(s: &str) -> Result<KeySpec, String> {
    let (account, var) = s
        .split_once('=')
        .ok_or_else(|| "expected NAME=ENV_VAR, e.g. acct-1=OPENAI_KEY_1".to_owned())?;
    if account.is_empty() || var.is_empty() {
        return Err("expected NAME=ENV_VAR, e.g. acct-1=OPENAI_KEY_1".to_owned());
    }
    if !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        // Someone pasted the key itself instead of a variable name: do not echo it.
        return Err(
            "ENV_VAR must be the name of an environment variable (letters, digits, _), \
             not the key itself"
                .to_owned(),
        );
    }
    Ok(KeySpec {
        account: account.to_owned(),
        var: var.to_owned(),
    })
}

/// Reads the secret held by environment variable `var`. Missing, empty, not UTF-8 or
/// not usable in a header: an error that names the variable, never the value.
pub(crate) fn read_secret(var: &str) -> Result<Secret, String> {
    let value = match std::env::var(var) {
        Ok(v) => v,
        Err(std::env::VarError::NotPresent) => {
            return Err(format!("environment variable {var} is not set"));
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(format!("environment variable {var} is not valid UTF-8"));
        }
    };
    if value.is_empty() {
        return Err(format!("environment variable {var} is empty"));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "environment variable {var} holds whitespace or control characters \
             (a trailing newline?); a key is visible ASCII"
        ));
    }
    Ok(Secret(value.into_bytes().into()))
}

/// The header an account's key travels in: `authorization: Bearer KEY`, or with
/// `key_header` (e.g. `x-api-key`) `HEADER: KEY`. The value is marked sensitive.
pub(crate) fn key_header(
    key_header: Option<&HeaderName>,
    key: &Secret,
) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = match key_header {
        None => {
            let mut v = Vec::with_capacity(7 + key.expose().len());
            v.extend_from_slice(b"Bearer ");
            v.extend_from_slice(key.expose());
            (header::AUTHORIZATION, HeaderValue::from_bytes(&v))
        }
        Some(h) => (h.clone(), HeaderValue::from_bytes(key.expose())),
    };
    let mut value = value.map_err(|_| "the key is not a valid header value".to_owned())?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// `url` with any `user:password@` replaced by `***@` and any query string or fragment
/// by `?***`, for messages. Works on text that does not parse as a URL too.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    // The authority ends at the first '/', '?' or '#'; userinfo is up to its last '@'.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str("***@");
            out.push_str(&authority[at + 1..]);
        }
        None => out.push_str(authority),
    }
    match tail.find(['?', '#']) {
        Some(q) => {
            out.push_str(&tail[..q]);
            out.push_str("?***");
        }
        None => out.push_str(tail),
    }
    out
}

/// `text` with every URL-looking word (containing `://`) passed through [`redact_url`]:
/// for messages that may quote command-line arguments (clap's errors).
pub(crate) fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // The word around "://": back to the previous separator, on to the next one.
        let start = rest[..i]
            .rfind(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '=' | '`'))
            .map_or(0, |s| s + 1);
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '`'))
            .map_or(rest.len(), |e| i + e);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}
