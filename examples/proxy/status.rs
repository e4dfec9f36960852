//! The admin listener's live status page: `GET /` (HTML) and `GET /status.json`.
//!
//! One page, rendered on the server from the same counters `/metrics` exports (so the
//! numbers agree), with a small inline script that re-reads `/status.json` every 2 s
//! and updates the page in place. No build step, no external asset, no cookie: the
//! page works with scripts off (it is then as fresh as its last load), and every value
//! is inserted as text (an account name can never inject markup).
//!
//! Shown: per account its state (serving, or cooling down until when and why: a 429,
//! an unreachable account, a run of broken streams or a failure inside a WebSocket),
//! requests in flight, streams broken after their first byte and the times
//! that cooled it down; bindings held (in total: the stores count only that cheaply);
//! the sticky layer's lookups, hits and hit ratio, sessions by source, failovers
//! (retries), WebSocket upgrades and open sockets.
//!
//! The admin token rule applies: with `--admin-token`, both need the token.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tower_sticky_session::StatsSnapshot;

use super::ProxyMetrics;

/// The status as JSON: what the page shows. `bindings`: the store's count (`null` when
/// it cannot count).
pub(crate) fn snapshot(snap: &StatsSnapshot, bindings: Option<u64>, proxy: &ProxyMetrics) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let now = SystemTime::now();
    let broken = proxy
        .broken
        .as_ref()
        .map(|b| b.snapshot())
        .unwrap_or_default();
    let accounts: Vec<Value> = proxy.picker.as_ref().map_or_else(Vec::new, |p| {
        p.upstreams()
            .iter()
            .enumerate()
            .map(|(i, up)| {
                let name = up.name().as_str();
                let remaining = p.cooldowns.remaining(i);
                let (broken_streams, broken_cooldowns) = broken
                    .iter()
                    .find(|(n, _, _)| n == name)
                    .map_or((0, 0), |(_, b, t)| (*b, *t));
                json!({
                    "name": name,
                    "state": if remaining.is_some() { "cooling" } else { "serving" },
                    "cooling_for_ms": remaining.map(|d| d.as_millis() as u64),
                    "cooling_until": remaining.map(|d| unix_ms(now + d)),
                    "cooling_why": p.cooldowns.reason(i).map(|r| r.as_str()),
                    "in_flight": p.in_flight(i) as u64,
                    "broken_streams": broken_streams,
                    "broken_stream_cooldowns": broken_cooldowns,
                })
            })
            .collect()
    });
    let sources: serde_json::Map<String, Value> = snap
        .sessions_by_source()
        .map(|(s, n)| (s.as_str().to_owned(), json!(n)))
        .collect();
    let hit_ratio = (snap.lookups > 0).then(|| snap.hits as f64 / snap.lookups as f64);
    json!({
        "generated_at": unix_ms(now),
        "config": proxy.loaded.map(|(generation, at)| json!({
            "generation": generation,
            "loaded_at": unix_ms(at),
        })),
        "accounts": accounts,
        "bindings": bindings,
        "requests": snap.requests,
        "no_session": snap.no_session,
        "lookups": snap.lookups,
        "hits": snap.hits,
        "misses": snap.misses,
        "hit_ratio": hit_ratio,
        "commits": snap.commits,
        "cleared": snap.cleared,
        "store_errors": snap.store_errors,
        "sources": sources,
        "hard_pins": snap.hard_pins,
        "retries": proxy.picker.as_ref().map(|p| p.retries()),
        "ws": proxy.picker.as_ref().map(|p| json!({
            "upgrades": p.ws.upgrades.load(Relaxed),
            "open": p.ws.open.load(Relaxed),
            "failed_over": p.ws.failed_over.load(Relaxed),
            "account_failures": p.ws.account_failures.load(Relaxed),
            "idle_closed": p.ws.idle_closed.load(Relaxed),
        })),
    })
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// `s` escaped for HTML text and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as the page shows it (`–` for null).
fn shown(v: &Value) -> String {
    match v {
        Value::Null => "–".to_owned(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// The page for `status` (a [`snapshot`]). The script redraws the same elements from
/// `/status.json`: the server's and the script's rendering share the element ids.
pub(crate) fn page(status: &Value) -> String {
    let mut rows = String::new();
    for a in status["accounts"].as_array().into_iter().flatten() {
        let _ = write!(
            rows,
            "<tr class=\"{}\"><td>{}</td><td class=\"state\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&shown(&a["state"])),
            esc(&shown(&a["name"])),
            esc(&state_text(a)),
            shown(&a["in_flight"]),
            shown(&a["broken_streams"]),
            shown(&a["broken_stream_cooldowns"]),
        );
    }
    let mut sources = String::new();
    for (k, v) in status["sources"].as_object().into_iter().flatten() {
        let _ = write!(sources, "<tr><td>{}</td><td>{}</td></tr>", esc(k), shown(v));
    }
    let ratio = status["hit_ratio"]
        .as_f64()
        .map_or("–".to_owned(), |r| format!("{:.1} %", r * 100.0));
    let summary = [
        ("bindings", shown(&status["bindings"])),
        ("requests", shown(&status["requests"])),
        ("lookups", shown(&status["lookups"])),
        ("hits", shown(&status["hits"])),
        ("hit_ratio", ratio),
        ("no_session", shown(&status["no_session"])),
        ("retries", shown(&status["retries"])),
        ("ws_upgrades", shown(&status["ws"]["upgrades"])),
        ("ws_open", shown(&status["ws"]["open"])),
    ];
    let mut facts = String::new();
    for (id, v) in summary {
        let _ = write!(
            facts,
            "<div class=\"fact\"><span class=\"label\">{}</span><span class=\"value\" id=\"{id}\">{}</span></div>",
            id.replace('_', " "),
            esc(&v)
        );
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sticky proxy status</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }}
h1 {{ font-size: 1.3em; margin: 0 0 .2em; }} h2 {{ font-size: 1.05em; margin: 1.2em 0 .4em; }}
#updated, #config {{ color: #666; font-size: .9em; }}
.facts {{ display: flex; flex-wrap: wrap; gap: .6em; }}
.fact {{ background: #fff; border: 1px solid #ddd; border-radius: 4px; padding: .4em .8em; min-width: 7em; }}
.label {{ display: block; color: #666; font-size: .8em; }} .value {{ font-size: 1.3em; font-variant-numeric: tabular-nums; }}
table {{ border-collapse: collapse; background: #fff; }}
td, th {{ border: 1px solid #ddd; padding: .3em .7em; text-align: left; font-variant-numeric: tabular-nums; }}
th {{ background: #f0f0f0; }}
tr.cooling td.state {{ color: #a40; font-weight: bold; }} td.state {{ color: #070; }}
</style></head>
<body>
<h1>tower-sticky-session proxy</h1>
<div id="updated">as of {generated} (refreshes every 2 s)</div>
<div id="config">{config}</div>
<h2>Overview</h2>
<div class="facts">{facts}</div>
<h2>Accounts</h2>
<table><thead><tr><th>account</th><th>state</th><th>in flight</th><th>broken streams</th><th>broken-stream cooldowns</th></tr></thead>
<tbody id="accounts">{rows}</tbody></table>
<h2>Sessions by source</h2>
<table><tbody id="sources">{sources}</tbody></table>
<p><a href="/metrics">/metrics</a> · <a href="/status.json">/status.json</a></p>
<script>
"use strict";
function txt(v) {{ return v === null || v === undefined ? "\u2013" : String(v); }}
function when(ms) {{ return new Date(ms).toLocaleTimeString(); }}
function stateText(a) {{
  return a.state === "cooling"
    ? "cooling down until " + when(a.cooling_until) + " (" + txt(a.cooling_why) + ")"
    : "serving";
}}
function configText(c) {{
  return c ? "configuration generation " + c.generation + ", loaded at " + when(c.loaded_at) + "; counters count from then" : "";
}}
function row(cells, cls) {{
  var tr = document.createElement("tr");
  if (cls) tr.className = cls;
  cells.forEach(function (c, i) {{
    var td = document.createElement("td");
    td.textContent = txt(c);
    if (i === 1 && cls !== undefined) td.className = "state";
    tr.appendChild(td);
  }});
  return tr;
}}
function draw(s) {{
  var set = function (id, v) {{ document.getElementById(id).textContent = txt(v); }};
  set("bindings", s.bindings); set("requests", s.requests); set("lookups", s.lookups);
  set("hits", s.hits); set("no_session", s.no_session); set("retries", s.retries);
  set("hit_ratio", s.hit_ratio === null ? null : (s.hit_ratio * 100).toFixed(1) + " %");
  set("ws_upgrades", s.ws && s.ws.upgrades); set("ws_open", s.ws && s.ws.open);
  var acc = document.getElementById("accounts");
  acc.replaceChildren.apply(acc, s.accounts.map(function (a) {{
    return row([a.name, stateText(a), a.in_flight, a.broken_streams, a.broken_stream_cooldowns], a.state);
  }}));
  var src = document.getElementById("sources");
  src.replaceChildren.apply(src, Object.keys(s.sources).map(function (k) {{ return row([k, s.sources[k]]); }}));
  var up = document.getElementById("updated");
  up.textContent = "as of " + when(s.generated_at) + " (refreshes every 2 s)";
  up.dataset.refreshed = String(s.generated_at);
  document.getElementById("config").textContent = configText(s.config);
}}
function refresh() {{
  fetch("status.json", {{ cache: "no-store" }})
    .then(function (r) {{ if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); }})
    .then(draw)
    .catch(function (e) {{ document.getElementById("updated").textContent = "refresh failed: " + e.message; }});
}}
refresh();
setInterval(refresh, 2000);
</script>
</body></html>
"#,
        generated = esc(&format_utc(status["generated_at"].as_u64().unwrap_or(0))),
        config = esc(&config_text(&status["config"])),
    )
}

/// The configuration line, as the script writes it.
fn config_text(c: &Value) -> String {
    match (c["generation"].as_u64(), c["loaded_at"].as_u64()) {
        (Some(generation), Some(at)) => format!(
            "configuration generation {generation}, loaded at {}; counters count from then",
            format_utc(at)
        ),
        _ => String::new(),
    }
}

/// An account's state in words, as the script writes it (the server's deadline in UTC).
fn state_text(a: &Value) -> String {
    match a["cooling_until"].as_u64() {
        Some(ms) if a["state"] == "cooling" => format!(
            "cooling down until {} ({})",
            format_utc(ms),
            a["cooling_why"].as_str().unwrap_or("\u{2013}")
        ),
        _ => "serving".to_owned(),
    }
}

/// `HH:MM:SS UTC` of a Unix time in milliseconds.
fn format_utc(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02} UTC",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_are_escaped_in_the_page() {
        let status = json!({
            "generated_at": 0,
            "accounts": [{"name": "<b>x</b>", "state": "serving", "in_flight": 0}],
            "sources": {},
        });
        let html = page(&status);
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;"));
        assert!(!html.contains("<b>x</b>"));
    }
}
