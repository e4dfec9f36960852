//! WebSocket passthrough: Codex's Responses WebSocket, Realtime APIs, anything that
//! upgrades a `GET` with `Upgrade: websocket`.
//!
//! The upgrade request is sticky like any other (the sticky layer reads its session
//! headers; the client token is checked and removed; the account's key is sent) and fails
//! over like any other *before* the `101`: an account that answers 429/5xx, cannot be
//! reached or sends no head within `--upstream-timeout` is skipped (and cooled down as for
//! HTTP), the next one is tried. Any other answer (a 426 from an account without
//! WebSockets, a 401) goes back to the client as it is. After the `101` nothing is retried.
//!
//! After the `101` the proxy relays messages both ways with tokio-tungstenite (chosen for
//! being the most used and kept WebSocket implementation for tokio, and for giving whole
//! messages with their frame kinds: the proxy must read text messages, and must pass
//! binary, ping/pong and close frames through unchanged). What it reads:
//!
//! - from the account, `response.created` (learned: a later `previous_response_id` is
//!   hard-pinned to the account, unless the turn's `response.create` said `store: false`)
//!   and `response.completed` (the binding is renewed: a long conversation over one
//!   socket keeps its binding);
//! - an `error` event with status 429 or 5xx, a `response.failed` whose error is a rate
//!   limit or a server error, or a close code 1011–1014 (internal error, restart, try
//!   again later, bad gateway): the account failed inside the socket. The binding is
//!   cleared (compare-and-delete against this account) and a 429 cools the account
//!   down, so the session's next socket moves. The event itself reaches the client
//!   unchanged: the socket is not failed over.
//!
//! Limits: `--ws-idle-timeout` (no message either way for that long: both sides get close
//! 1001), `--ws-max-message` (a larger message or frame closes the socket with 1009 to
//! the side that sent it and 1001 to the other), writes to either side bounded by the
//! idle timeout (a peer that stops reading cannot hold the relay). Each socket counts as
//! a request in flight on its account, and its client connection as open (against
//! `--max-connections`, and in the drain), while it is open; when the proxy drains, open
//! sockets get close 1001 on both sides. `Sec-WebSocket-Extensions` is not
//! forwarded: no permessage-deflate is negotiated, so the proxy reads plain messages
//! (RFC 6455 lets a client go on without the extension; Codex does).
//!
//! HTTP/2 WebSockets (RFC 8441 extended CONNECT) are not offered: the proxy does not
//! enable the extended CONNECT protocol, so clients use HTTP/1.1 for WebSockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Version};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tower_sticky_session::Binding;
use tower_sticky_session::body_session::BodySignals;

use super::ErrorChain;
use super::cooldown::{CoolReason, retry_after};
use super::picker::{InFlight, Picker};
use super::serve::{Busy, ConnActivity};

/// `Sec-WebSocket-Extensions`: not forwarded (see the module docs).
const SEC_WEBSOCKET_EXTENSIONS: HeaderName = HeaderName::from_static("sec-websocket-extensions");

/// WebSocket settings.
#[derive(Clone, Debug)]
pub(crate) struct WsConfig {
    /// No message either way for this long closes the socket.
    pub(crate) idle_timeout: Duration,
    /// Largest message (and frame) relayed.
    pub(crate) max_message: usize,
}

impl Default for WsConfig {
    /// 300 s idle timeout, 16 MiB messages.
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            max_message: 16 * 1024 * 1024,
        }
    }
}

/// Counters of the WebSocket relay, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct WsStats {
    /// Sockets relayed right now.
    pub(crate) open: AtomicI64,
    /// Upgrades accepted by an account (sockets opened).
    pub(crate) upgrades: AtomicU64,
    /// Upgrade attempts that failed on one account and were tried on another.
    pub(crate) failed_over: AtomicU64,
    /// Messages relayed client → account and account → client.
    pub(crate) messages_up: AtomicU64,
    pub(crate) messages_down: AtomicU64,
    /// Payload bytes relayed client → account and account → client.
    pub(crate) bytes_up: AtomicU64,
    pub(crate) bytes_down: AtomicU64,
    /// Failures of an account inside a socket (429/5xx events, overload close codes).
    pub(crate) account_failures: AtomicU64,
    /// Sockets closed by `--ws-idle-timeout`.
    pub(crate) idle_closed: AtomicU64,
}

/// Whether the request asks for a WebSocket: HTTP/1.1 `GET` with `Upgrade: websocket`.
pub(crate) fn is_websocket(parts: &Parts) -> bool {
    parts.method == Method::GET
        && parts.version == Version::HTTP_11
        && parts
            .headers
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
}

/// The upstream upgrade request's headers, from the client's after hop-by-hop headers
/// were stripped: the upgrade asked again, no extensions.
pub(crate) fn upstream_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.remove(SEC_WEBSOCKET_EXTENSIONS);
}

/// The client's `101`, from the account's: its headers (e.g. `Sec-WebSocket-Accept`,
/// which answers the key the client sent, forwarded unchanged) with the upgrade restated.
pub(crate) fn client_headers(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(SEC_WEBSOCKET_EXTENSIONS);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// Everything a relay needs besides the two connections.
pub(crate) struct Relay {
    pub(crate) picker: Arc<Picker>,
    /// The account's index in the picker.
    pub(crate) account: usize,
    pub(crate) binding: Option<Binding>,
    pub(crate) cfg: WsConfig,
    /// `--cooldown`, for a 429 event without `retry-after`.
    pub(crate) cooldown: Duration,
    /// The socket counts as a request in flight on its account.
    pub(crate) _in_flight: InFlight,
    /// The client connection: asks the socket to close when it is shut down (drain).
    pub(crate) conn: Option<ConnActivity>,
    /// Keeps the client connection counted as open (`--max-connections`, the drain)
    /// while the socket lives; taken before the `101` was returned.
    pub(crate) _busy: Option<Busy>,
}

/// Relays the upgraded connections once both upgrades complete (the client's completes
/// when hyper has written the `101`). Runs on a task of its own.
pub(crate) fn spawn(client: OnUpgrade, upstream: OnUpgrade, relay: Relay) {
    tokio::spawn(async move {
        // Bounded like every wait: a client that never takes its 101 (hyper cannot write
        // it) must not hold the account's upgraded connection.
        let both = tokio::time::timeout(relay.cfg.idle_timeout, async {
            tokio::join!(client, upstream)
        });
        let Ok(both) = both.await else {
            tracing::info!(
                upstream = %relay.picker.upstreams()[relay.account].name(),
                "websocket: the client's upgrade did not complete within --ws-idle-timeout"
            );
            return;
        };
        let (client, upstream) = match both {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                let e = c.err().or(u.err());
                tracing::info!(
                    upstream = %relay.picker.upstreams()[relay.account].name(),
                    error = %e.as_ref().map_or_else(String::new, |e| ErrorChain(e).to_string()),
                    "websocket: an upgrade did not complete"
                );
                return;
            }
        };
        relay.run(client, upstream).await;
    });
}

/// Which side a message came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Account,
}

/// How a relay ended, for the log.
enum End {
    Closed(Side, Option<u16>),
    Gone(Side),
    Idle,
    /// The client connection is being shut down (the proxy drains).
    Shutdown,
    TooBig(Side),
    Failed(Side, String),
}

impl Relay {
    async fn run(self, client: Upgraded, upstream: Upgraded) {
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.cfg.max_message))
            .max_frame_size(Some(self.cfg.max_message));
        let mut client =
            WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, Some(config))
                .await;
        let mut account =
            WebSocketStream::from_raw_socket(TokioIo::new(upstream), Role::Client, Some(config))
                .await;
        let name = self.picker.upstreams()[self.account].name().clone();
        let stats = &self.picker.ws;
        stats.upgrades.fetch_add(1, Relaxed);
        stats.open.fetch_add(1, Relaxed);
        let _open = OpenGuard(stats);
        // The latest `response.create` of the client said `store: false`: its response
        // cannot be continued, its id is not learned.
        let mut not_stored = false;
        let idle = self.cfg.idle_timeout;
        let conn = self.conn.clone();
        let closing = async move {
            match &conn {
                Some(c) => c.closing().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(closing);
        let end = loop {
            let (side, msg) = tokio::select! {
                m = client.next() => (Side::Client, m),
                m = account.next() => (Side::Account, m),
                () = tokio::time::sleep(idle) => break End::Idle,
                () = &mut closing => break End::Shutdown,
            };
            let msg = match msg {
                None => break End::Gone(side),
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    use tokio_tungstenite::tungstenite::Error as WsError;
                    match e {
                        WsError::Capacity(_) => break End::TooBig(side),
                        // A peer that leaves without a close handshake (`codex exec` does) has
                        // simply gone.
                        WsError::ConnectionClosed
                        | WsError::AlreadyClosed
                        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                            break End::Gone(side);
                        }
                        e => break End::Failed(side, e.to_string()),
                    }
                }
            };
            let len = msg.len() as u64;
            match side {
                Side::Client => {
                    stats.messages_up.fetch_add(1, Relaxed);
                    stats.bytes_up.fetch_add(len, Relaxed);
                    if let Message::Text(text) = &msg
                        && let Some(store) = response_create_store(text.as_bytes())
                    {
                        not_stored = !store;
                    }
                }
                Side::Account => {
                    stats.messages_down.fetch_add(1, Relaxed);
                    stats.bytes_down.fetch_add(len, Relaxed);
                    match &msg {
                        Message::Text(text) => self.event(text.as_bytes(), not_stored).await,
                        Message::Close(Some(frame)) if overload(frame.code) => {
                            self.account_failed(None).await;
                        }
                        _ => {}
                    }
                }
            }
            let close = match &msg {
                Message::Close(frame) => Some(frame.as_ref().map(|f| u16::from(f.code))),
                _ => None,
            };
            let to = match side {
                Side::Client => &mut account,
                Side::Account => &mut client,
            };
            match tokio::time::timeout(idle, to.send(msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break End::Gone(other(side)),
                Err(_) => break End::Failed(other(side), "write timed out".into()),
            }
            if let Some(code) = close {
                break End::Closed(side, code);
            }
        };
        let (to_client, to_account) = match &end {
            End::Idle => {
                stats.idle_closed.fetch_add(1, Relaxed);
                (away("idle timeout"), away("idle timeout"))
            }
            End::Shutdown => (away("proxy shutting down"), away("proxy shutting down")),
            End::TooBig(Side::Client) => (too_big(), away("peer closed")),
            End::TooBig(Side::Account) => (away("peer closed"), too_big()),
            // The close was relayed; each side's close handshake is answered by
            // tungstenite as it reads.
            End::Closed(..) => (None, None),
            End::Gone(_) | End::Failed(..) => (away("peer closed"), away("peer closed")),
        };
        let bye = Duration::from_secs(1).min(idle);
        let _ = tokio::time::timeout(bye, async {
            let _ = tokio::join!(client.close(to_client), account.close(to_account));
        })
        .await;
        match end {
            End::Closed(side, code) => {
                tracing::debug!(upstream = %name, by = side.as_str(), code, "websocket closed")
            }
            End::Gone(side) => {
                tracing::debug!(upstream = %name, by = side.as_str(), "websocket connection ended")
            }
            End::Idle => {
                tracing::info!(upstream = %name, idle_timeout = ?idle, "websocket closed: idle")
            }
            End::Shutdown => {
                tracing::debug!(upstream = %name, "websocket closed: the proxy is shutting down")
            }
            End::TooBig(side) => tracing::info!(
                upstream = %name, by = side.as_str(), max = self.cfg.max_message,
                "websocket closed: message over --ws-max-message"
            ),
            End::Failed(side, e) => tracing::info!(
                upstream = %name, side = side.as_str(), error = %e,
                "websocket closed: relay failed"
            ),
        }
    }

    /// Reads one text message of the account's.
    async fn event(&self, text: &[u8], not_stored: bool) {
        let Some(kind) = event_type(text) else {
            return;
        };
        match (kind, &self.binding) {
            ("response.created", Some(binding)) if !not_stored => {
                if let Some(id) = created_id(text)
                    && let Err(e) = binding.learn_response_id(&id).await
                {
                    tracing::debug!(error = %e, "websocket: could not learn a response id");
                }
            }
            ("response.completed", Some(binding)) => {
                if let Err(e) = binding.renew().await {
                    tracing::debug!(error = %e, "websocket: could not renew the binding");
                }
            }
            ("error" | "response.failed", _) => {
                if let Some(cool) = self.failure(text, kind) {
                    self.account_failed(cool).await;
                }
            }
            _ => {}
        }
    }

    /// Whether an `error` / `response.failed` event is the account's failure: `Some(cool)`
    /// when it is, `cool` the cooldown it asks for (a rate limit) or `None`.
    fn failure(&self, text: &[u8], kind: &str) -> Option<Option<Duration>> {
        let v: serde_json::Value = serde_json::from_slice(text).ok()?;
        if kind == "error" {
            let status = v
                .get("status")
                .or_else(|| v.get("status_code"))
                .and_then(serde_json::Value::as_u64)?;
            return match status {
                429 => {
                    let headers = json_headers(v.get("headers"));
                    let d = retry_after(&headers, SystemTime::now()).unwrap_or(self.cooldown);
                    Some(Some(d))
                }
                500..=599 => Some(None),
                _ => None,
            };
        }
        let code = v
            .pointer("/response/error/code")
            .and_then(serde_json::Value::as_str)?;
        match code {
            "rate_limit_exceeded" => Some(Some(self.cooldown)),
            "server_error" | "overloaded" | "service_unavailable" => Some(None),
            _ => None,
        }
    }

    /// The account failed inside the socket: unbind, cool down.
    async fn account_failed(&self, cool: Option<Duration>) {
        self.picker.ws.account_failures.fetch_add(1, Relaxed);
        let name = self.picker.upstreams()[self.account].name();
        if let Some(d) = cool {
            self.picker
                .cool(self.account, d, CoolReason::FailedInSocket);
        }
        tracing::info!(upstream = %name, cooldown = ?cool, "websocket: the account failed inside the socket; unbinding its session");
        if let Some(binding) = &self.binding
            && let Err(e) = binding.clear().await
        {
            tracing::debug!(error = %e, "websocket: could not clear the binding");
        }
    }
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Account => "account",
        }
    }
}

fn other(side: Side) -> Side {
    match side {
        Side::Client => Side::Account,
        Side::Account => Side::Client,
    }
}

/// Decrements the open-socket gauge when the relay ends, however it ends.
struct OpenGuard<'a>(&'a WsStats);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

fn away(reason: &'static str) -> Option<CloseFrame> {
    Some(CloseFrame {
        code: CloseCode::Away,
        reason: reason.into(),
    })
}

fn too_big() -> Option<CloseFrame> {
    Some(CloseFrame {
        code: CloseCode::Size,
        reason: "message too big".into(),
    })
}

/// Close codes that say the account (not the client) failed: 1011 internal error, 1012
/// service restart, 1013 try again later, 1014 bad gateway.
fn overload(code: CloseCode) -> bool {
    matches!(u16::from(code), 1011..=1014)
}

/// The `"type"` of an event, read from its first bytes (events put it first; a message
/// that does not is parsed in full only if its type matters).
fn event_type(text: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"type\"";
    let head = &text[..text.len().min(256)];
    let at = memchr::memmem::find(head, KEY)? + KEY.len();
    let rest = &text[at..];
    let rest = rest
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    let rest = rest.strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', rest)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// A `response.created` event's `response.id`.
fn created_id(text: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(text).ok()?;
    Some(v.pointer("/response/id")?.as_str()?.to_owned())
}

/// A client's `response.create`: its `store` field (`true` when absent). Read with the
/// crate's body scanner (the same one HTTP bodies go through), not a DOM: a turn's
/// message carries its whole input.
fn response_create_store(text: &[u8]) -> Option<bool> {
    if event_type(text)? != "response.create" {
        return None;
    }
    let signals = BodySignals::from_json(text).ok()?;
    Some(signals.store != Some(false))
}

/// The `headers` object some error events carry, as a header map.
fn json_headers(v: Option<&serde_json::Value>) -> HeaderMap {
    let mut out = HeaderMap::new();
    let Some(obj) = v.and_then(serde_json::Value::as_object) else {
        return out;
    };
    for (k, v) in obj {
        let value = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => continue,
        };
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            out.insert(k, v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_are_read_from_the_first_bytes() {
        assert_eq!(
            event_type(br#"{"type":"response.created","response":{"id":"resp_1"}}"#),
            Some("response.created")
        );
        assert_eq!(
            event_type(br#"{ "type" : "error", "status": 429}"#),
            Some("error")
        );
        assert_eq!(event_type(br#"{"delta":"x"}"#), None);
    }

    #[test]
    fn store_false_is_read_from_response_create_only() {
        assert_eq!(
            response_create_store(br#"{"type":"response.create","store":false,"input":[]}"#),
            Some(false)
        );
        assert_eq!(
            response_create_store(br#"{"type":"response.create","input":[]}"#),
            Some(true)
        );
        assert_eq!(
            response_create_store(br#"{"type":"other","store":false}"#),
            None
        );
    }
}
