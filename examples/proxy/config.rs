//! `--config FILE`: everything the command line holds, in one TOML file.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! admin = "127.0.0.1:9090"
//! admin_token_env = "ADMIN_TOKEN"      # secrets only by environment-variable name
//! key_header = "x-api-key"             # default: authorization: Bearer KEY
//! session_headers = ["x-session"]      # default: the known clients' headers
//! scope_header = "x-model"
//! ttl = 3600                           # seconds; every duration takes decimals
//! cooldown = 10
//!
//! [[account]]                          # round-robin in file order
//! name = "acct-1"
//! url = "https://api.openai.com"
//! key_env = "OPENAI_KEY_1"
//!
//! [[client_token]]
//! tenant = "team-a"                    # optional; default "default"
//! env = "TEAM_A_TOKEN"
//! ```
//!
//! Every flag has a key of the same name with `_` for `-` (`max-sessions` →
//! `max_sessions`), except the lists: `[[account]]` (`--upstream` and its
//! `--upstream-key`), `[[client_token]]` (`--client-token`), `session_headers`
//! (`--session-header`), and the switch `body_session = false` (`--no-body-session`).
//! Secrets are named, never written: `key_env`, `env`, `admin_token_env`, `redis_env`
//! hold variable names, and a `redis` URL with credentials in it is refused.
//!
//! A flag given on the command line wins over the file's key; a list flag replaces the
//! file's list (`--upstream` replaces every `[[account]]`, `--client-token` or
//! `--client-tokens-file` every `[[client_token]]`), except `--upstream-key`, which sets
//! one account's key on top of the file's.
//!
//! An unknown key, a value of the wrong type or out of range, a secret where a name
//! belongs: the proxy does not start (exit 2) and says `FILE:LINE:COLUMN: reason`,
//! never quoting a value that may be a secret.
//!
//! The file (with the command line over it) is read again on SIGHUP and on the admin's
//! `POST /reload` (`reload.rs`); a bad file then keeps the running configuration.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Deserialize;
use toml::Spanned;

use crate::app::Upstream;
use crate::app::keys::KeySpec;
use crate::{Cli, TokenSpec};

/// The file as written. Every key optional; unknown keys refused.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    listen: Option<Spanned<String>>,
    admin: Option<Spanned<String>>,
    admin_token_env: Option<Spanned<String>>,
    key_header: Option<Spanned<String>>,
    session_headers: Option<Spanned<Vec<String>>>,
    scope_header: Option<Spanned<String>>,
    ttl: Option<Spanned<u64>>,
    max_sessions: Option<Spanned<u64>>,
    attempts: Option<Spanned<u64>>,
    cooldown: Option<Spanned<f64>>,
    max_broken_streams: Option<Spanned<u64>>,
    upstream_timeout: Option<Spanned<f64>>,
    idle_timeout: Option<Spanned<f64>>,
    header_timeout: Option<Spanned<f64>>,
    conn_idle_timeout: Option<Spanned<f64>>,
    body_timeout: Option<Spanned<f64>>,
    max_connections: Option<Spanned<u64>>,
    max_streams: Option<Spanned<u64>>,
    workers: Option<Spanned<u64>>,
    max_load_factor: Option<Spanned<f64>>,
    max_body_buffer: Option<Spanned<u64>>,
    ws_idle_timeout: Option<Spanned<f64>>,
    ws_max_message: Option<Spanned<u64>>,
    max_buffered_total: Option<Spanned<u64>>,
    body_session: Option<Spanned<bool>>,
    fingerprint: Option<Spanned<bool>>,
    grace: Option<Spanned<f64>>,
    redis: Option<Spanned<String>>,
    redis_env: Option<Spanned<String>>,
    redis_near_cache: Option<Spanned<u64>>,
    redis_near_ttl: Option<Spanned<f64>>,
    #[serde(default)]
    account: Vec<Spanned<AccountEntry>>,
    #[serde(default)]
    client_token: Vec<Spanned<TokenEntry>>,
}

/// `[[account]]`: one upstream account.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountEntry {
    name: Spanned<String>,
    url: Spanned<String>,
    key_env: Option<Spanned<String>>,
}

/// `[[client_token]]`: one client token, by the variable that holds it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    tenant: Option<Spanned<String>>,
    env: Spanned<String>,
}

/// A file read and checked: the text (for line numbers) and its keys.
pub(crate) struct Loaded {
    path: String,
    text: String,
    file: FileConfig,
}

/// Reads and parses `path`. Errors are `FILE:LINE:COLUMN: reason`.
pub(crate) fn load(path: &Path) -> Result<Loaded, String> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let file = match toml::from_str::<FileConfig>(&text) {
        Ok(f) => f,
        Err(e) => {
            // toml's own Display quotes the offending line, which may hold a secret:
            // only its position and (scrubbed) message are shown.
            let at = e.span().map_or_else(String::new, |s| position(&text, s));
            return Err(format!("{shown}{at}: {}", explain(e.message())));
        }
    };
    Ok(Loaded {
        path: shown,
        text,
        file,
    })
}

/// `:LINE:COLUMN` of byte offset `span.start` in `text` (both 1-based).
fn position(text: &str, span: Range<usize>) -> String {
    let start = span.start.min(text.len());
    let before = &text.as_bytes()[..start];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = start
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    format!(":{line}:{col}")
}

/// A parse error's message with every quoted string value removed (serde quotes a
/// rejected string value; a field name is in backticks and kept), and a hint when the
/// unknown key is where someone tried to write a secret.
fn explain(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg.trim();
    while let Some(i) = rest.find('"') {
        out.push_str(&rest[..i]);
        match rest[i + 1..].find('"') {
            Some(j) => {
                out.push_str("(value not shown)");
                rest = &rest[i + 1 + j + 1..];
            }
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    for secret in ["key", "api_key", "token", "password", "secret"] {
        if out.starts_with(&format!("unknown field `{secret}`")) {
            out.push_str(
                "; secrets are never written in the file: name the environment variable that \
                 holds one (key_env = \"VAR\", env = \"VAR\")",
            );
        }
    }
    out
}

/// Whether the command line set argument `id` (clap's id: the `Cli` field's name).
fn given(m: &ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(ValueSource::CommandLine)
}

impl Loaded {
    /// `FILE:LINE:COLUMN: what` for the value at `span`.
    fn err(&self, span: Range<usize>, what: impl std::fmt::Display) -> String {
        format!("{}{}: {what}", self.path, position(&self.text, span))
    }

    /// A string value through the flag's own parser, its error placed at the value.
    fn parsed<T>(
        &self,
        v: &Spanned<String>,
        key: &str,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<T, String> {
        parse(v.get_ref()).map_err(|e| self.err(v.span(), format!("{key}: {e}")))
    }

    /// A count within `range`.
    fn count(
        &self,
        v: &Spanned<u64>,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, String> {
        let n = *v.get_ref();
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(self.err(
                v.span(),
                format!(
                    "{key}: {n} is out of range ({} to {})",
                    range.start(),
                    range.end()
                ),
            ))
        }
    }

    /// Seconds, as `--cooldown` and `--grace` (0 allowed) or, `positive`, as the timeouts.
    fn secs(&self, v: &Spanned<f64>, key: &str, positive: bool) -> Result<Duration, String> {
        let text = v.get_ref().to_string();
        let parse = if positive {
            crate::parse_positive_secs
        } else {
            crate::parse_secs
        };
        parse(&text).map_err(|e| self.err(v.span(), format!("{key}: {e}")))
    }

    /// An environment variable's name. A value that looks like a secret is refused
    /// without being echoed.
    fn env_name(&self, v: &Spanned<String>, key: &str) -> Result<String, String> {
        let name = v.get_ref();
        let refuse = |why: &str| Err(self.err(v.span(), format!("{key}: {why} (value not shown)")));
        if crate::parse_env_var(name).is_err() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return refuse(
                "must be the name of an environment variable (letters, digits, _), not a secret",
            );
        }
        if looks_like_secret(name) {
            return refuse(
                "looks like a key or token itself, not the name of the environment variable \
                 holding it",
            );
        }
        Ok(name.clone())
    }

    /// Writes the file's values into `cli` wherever the command line did not set them.
    pub(crate) fn apply(&self, cli: &mut Cli, m: &ArgMatches) -> Result<(), String> {
        let f = &self.file;
        macro_rules! set {
            ($field:ident, $value:expr) => {
                if !given(m, stringify!($field)) {
                    cli.$field = $value;
                }
            };
        }
        if let Some(v) = &f.listen {
            set!(listen, self.parsed(v, "listen", crate::parse_addr)?);
        }
        if let Some(v) = &f.admin {
            set!(admin, Some(self.parsed(v, "admin", crate::parse_addr)?));
        }
        if let Some(v) = &f.admin_token_env {
            set!(admin_token, Some(self.env_name(v, "admin_token_env")?));
        }
        if let Some(v) = &f.key_header {
            set!(
                key_header,
                Some(self.parsed(v, "key_header", crate::parse_header_name)?)
            );
        }
        if let Some(v) = &f.session_headers {
            let mut headers = Vec::new();
            for h in v.get_ref() {
                headers.push(
                    crate::parse_header_name(h)
                        .map_err(|e| self.err(v.span(), format!("session_headers: {e}")))?,
                );
            }
            if headers.is_empty() {
                return Err(self.err(v.span(), "session_headers: at least one header"));
            }
            set!(session_headers, headers);
        }
        if let Some(v) = &f.scope_header {
            set!(
                scope_header,
                Some(self.parsed(v, "scope_header", crate::parse_header_name)?)
            );
        }
        if let Some(v) = &f.ttl {
            set!(ttl, self.count(v, "ttl", 1..=crate::MAX_SECS)?);
        }
        if let Some(v) = &f.max_sessions {
            set!(
                max_sessions,
                self.count(v, "max_sessions", 1..=crate::MAX_COUNT)?
            );
        }
        if let Some(v) = &f.attempts {
            set!(attempts, self.count(v, "attempts", 1..=u64::MAX)?);
        }
        if let Some(v) = &f.cooldown {
            set!(cooldown, self.secs(v, "cooldown", false)?);
        }
        if let Some(v) = &f.max_broken_streams {
            let max = crate::app::broken::MAX_BROKEN_STREAMS as u64;
            set!(
                max_broken_streams,
                self.count(v, "max_broken_streams", 0..=max)?
            );
        }
        for (v, key, field) in [
            (
                &f.upstream_timeout,
                "upstream_timeout",
                &mut cli.upstream_timeout,
            ),
            (&f.idle_timeout, "idle_timeout", &mut cli.idle_timeout),
            (&f.header_timeout, "header_timeout", &mut cli.header_timeout),
            (
                &f.conn_idle_timeout,
                "conn_idle_timeout",
                &mut cli.conn_idle_timeout,
            ),
            (&f.body_timeout, "body_timeout", &mut cli.body_timeout),
            (
                &f.ws_idle_timeout,
                "ws_idle_timeout",
                &mut cli.ws_idle_timeout,
            ),
            (&f.redis_near_ttl, "redis_near_ttl", &mut cli.redis_near_ttl),
        ] {
            if let Some(v) = v
                && !given(m, key)
            {
                *field = self.secs(v, key, true)?;
            }
        }
        if let Some(v) = &f.max_connections {
            set!(
                max_connections,
                self.count(v, "max_connections", 1..=crate::MAX_COUNT)?
            );
        }
        if let Some(v) = &f.max_streams {
            let n = self.count(v, "max_streams", 1..=u64::from(u32::MAX))?;
            set!(max_streams, u32::try_from(n).expect("in range"));
        }
        if let Some(v) = &f.workers {
            set!(
                workers,
                Some(self.count(v, "workers", 1..=crate::MAX_WORKERS)?)
            );
        }
        if let Some(v) = &f.max_load_factor {
            let text = v.get_ref().to_string();
            let factor = crate::parse_factor(&text)
                .map_err(|e| self.err(v.span(), format!("max_load_factor: {e}")))?;
            set!(max_load_factor, Some(factor));
        }
        if let Some(v) = &f.max_body_buffer {
            let n = self.count(v, "max_body_buffer", 0..=crate::MAX_BODY_BUFFER as u64)?;
            set!(max_body_buffer, usize::try_from(n).expect("in range"));
        }
        if let Some(v) = &f.ws_max_message {
            set!(
                ws_max_message,
                self.count(v, "ws_max_message", 1..=1 << 32)?
            );
        }
        if let Some(v) = &f.max_buffered_total {
            let n = self.count(v, "max_buffered_total", 0..=usize::MAX as u64)?;
            set!(max_buffered_total, usize::try_from(n).expect("in range"));
        }
        if let Some(v) = &f.body_session
            && !given(m, "no_body_session")
        {
            cli.no_body_session = !*v.get_ref();
        }
        if let Some(v) = &f.fingerprint {
            set!(fingerprint, *v.get_ref());
        }
        if let Some(v) = &f.grace {
            set!(grace, self.secs(v, "grace", false)?);
        }
        if let Some(v) = &f.redis {
            if v.get_ref().contains('@') {
                return Err(self.err(
                    v.span(),
                    "redis: a URL with credentials is a secret: put it in an environment \
                     variable and name it with redis_env (value not shown)",
                ));
            }
            if !given(m, "redis") && !given(m, "redis_env") {
                cli.redis = Some(v.get_ref().clone());
            }
        }
        if let Some(v) = &f.redis_env {
            let name = self.env_name(v, "redis_env")?;
            if f.redis.is_some() {
                return Err(self.err(v.span(), "redis_env: not with redis (one or the other)"));
            }
            if !given(m, "redis") && !given(m, "redis_env") {
                cli.redis_env = Some(name);
            }
        }
        if let Some(v) = &f.redis_near_cache {
            set!(
                redis_near_cache,
                self.count(v, "redis_near_cache", 0..=crate::MAX_COUNT)?
            );
        }
        self.apply_accounts(cli, m)?;
        self.apply_tokens(cli, m)
    }

    /// `[[account]]` unless `--upstream` was given; `--upstream-key` after the file's keys
    /// (for one account, the last key wins).
    fn apply_accounts(&self, cli: &mut Cli, m: &ArgMatches) -> Result<(), String> {
        let mut ups = Vec::new();
        let mut keys = Vec::new();
        for entry in &self.file.account {
            let a = entry.get_ref();
            let name = a.name.get_ref();
            if looks_like_secret(name) {
                return Err(self.err(
                    a.name.span(),
                    "account name: looks like a key itself (value not shown); keys go in an \
                     environment variable named by key_env",
                ));
            }
            let up = Upstream::new(name, a.url.get_ref())
                .map_err(|e| self.err(a.url.span(), format!("account {name:?}: {e}")))?;
            if ups.iter().any(|u: &Upstream| u.name() == up.name()) {
                return Err(self.err(
                    a.name.span(),
                    format!("account name {name:?} is used twice"),
                ));
            }
            ups.push(up);
            if let Some(var) = &a.key_env {
                keys.push(KeySpec {
                    account: name.clone(),
                    var: self.env_name(var, "key_env")?,
                });
            }
        }
        if given(m, "upstreams") || ups.is_empty() {
            return Ok(());
        }
        cli.upstreams = ups;
        keys.append(&mut cli.upstream_keys);
        cli.upstream_keys = keys;
        Ok(())
    }

    /// `[[client_token]]` unless `--client-token` or `--client-tokens-file` was given.
    fn apply_tokens(&self, cli: &mut Cli, m: &ArgMatches) -> Result<(), String> {
        let mut specs = Vec::new();
        for entry in &self.file.client_token {
            let t = entry.get_ref();
            let tenant = match &t.tenant {
                Some(v) => {
                    crate::app::auth::Tenant::new(v.get_ref()).map_err(|_| {
                        self.err(
                            v.span(),
                            "tenant: 1 to 64 letters, digits, '-', '_' or '.' (value not shown)",
                        )
                    })?;
                    v.get_ref().clone()
                }
                None => crate::app::auth::Tenant::DEFAULT.to_owned(),
            };
            specs.push(TokenSpec {
                tenant,
                var: self.env_name(&t.env, "env")?,
            });
        }
        if !given(m, "client_tokens") && !given(m, "client_tokens_file") && !specs.is_empty() {
            cli.client_tokens = specs;
        }
        Ok(())
    }
}

/// Whether a value meant to be a name (of a variable, of an account) looks like a
/// credential pasted in its place: a well-known key prefix, or a long run of mixed-case
/// letters and digits (a variable name is usually `UPPER_CASE`).
pub(crate) fn looks_like_secret(s: &str) -> bool {
    const PREFIXES: [&str; 9] = [
        "sk-", "sk_", "pk_", "rk_", "ghp_", "gho_", "xox", "AKIA", "AIza",
    ];
    if PREFIXES.iter().any(|p| s.starts_with(p)) {
        return true;
    }
    let lower = s.bytes().any(|b| b.is_ascii_lowercase());
    let upper = s.bytes().any(|b| b.is_ascii_uppercase());
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    s.len() >= 24 && lower && upper && digits >= 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(position(text, 0..1), ":1:1");
        assert_eq!(position(text, 6..8), ":2:1");
        assert_eq!(position(text, 11..12), ":2:6");
    }

    #[test]
    fn explain_drops_quoted_values_and_keeps_field_names() {
        let m = explain("invalid type: string \"sk-abc\", expected u64");
        assert!(!m.contains("sk-abc"), "{m}");
        let m = explain("unknown field `key`, expected one of `name`, `url`");
        assert!(m.contains("`key`") && m.contains("never written"), "{m}");
    }

    #[test]
    fn secret_looking_names_are_recognised() {
        assert!(looks_like_secret("sk-proj-abc"));
        assert!(looks_like_secret("Ab3dEf9hIjK1mNoPqRsTuVwXyZ"));
        assert!(!looks_like_secret("OPENAI_KEY_1"));
        assert!(!looks_like_secret("acct-1"));
    }
}
