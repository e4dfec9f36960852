#!/usr/bin/env bash
# Real clients through the example proxy: the Codex CLI (npm `@openai/codex`, run with
# `codex exec`) over the Responses WebSocket and over HTTP, and the OpenAI Python SDK
# (HTTP with prompt_cache_key / previous_response_id, and its Responses WebSocket mode),
# against mock Responses accounts on loopback (scripts/mock_responses_account.py).
#
# Not part of `cargo test`: it installs the clients from the npm registry and PyPI (into
# $TOOLS, reused by later runs), starts three mock accounts and the proxy on loopback
# ports, runs the clients and prints a summary. Exit code 0 when every check passed.
#
#   scripts/real_clients.sh                   # everything
#   CODEX_VERSION=0.171.0 scripts/real_clients.sh
#   KEEP=1 scripts/real_clients.sh            # leave the logs in $WORK (printed)
#
# Environment: TOOLS (default /tmp/real_clients_tools), WORK (default a new temp dir),
# PORT_BASE (default 18200: accounts on +1..+3, proxy on +80, admin on +90),
# PROXY_BIN (default target/release/examples/proxy, built with `nice` when missing),
# CODEX_VERSION / OPENAI_VERSION (default: latest), RUST_LOG (default: debug for the
# proxy and the library).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${TOOLS:-/tmp/real_clients_tools}
WORK=${WORK:-$(mktemp -d /tmp/real_clients.XXXXXX)}
PORT_BASE=${PORT_BASE:-18200}
PROXY_BIN=${PROXY_BIN:-$ROOT/target/release/examples/proxy}
MODEL=${MODEL:-gpt-5.2}
ACCOUNTS=(a b c)
PROXY_PORT=$((PORT_BASE + 80))
ADMIN_PORT=$((PORT_BASE + 90))
PROXY=http://127.0.0.1:$PROXY_PORT
ADMIN=http://127.0.0.1:$ADMIN_PORT
mkdir -p "$WORK"
PIDS=()

# log, cleanup (trapped at exit), wait_port
# shellcheck source=scripts/real_clients_common.sh
source "$ROOT/scripts/real_clients_common.sh"

# --- clients --------------------------------------------------------------------------
CODEX=$TOOLS/npm/node_modules/.bin/codex
if ! "$CODEX" --version >/dev/null 2>&1; then
    log "installing @openai/codex${CODEX_VERSION:+@$CODEX_VERSION} into $TOOLS/npm"
    npm install --silent --no-audit --no-fund --prefix "$TOOLS/npm" \
        "@openai/codex${CODEX_VERSION:+@$CODEX_VERSION}" >&2
fi
PY=$TOOLS/venv/bin/python
if ! "$PY" -c 'import openai, websockets, aiohttp' 2>/dev/null; then
    log "installing openai, websockets, aiohttp into $TOOLS/venv"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install -q "openai${OPENAI_VERSION:+==$OPENAI_VERSION}" websockets aiohttp >&2
fi
if [[ ! -x "$PROXY_BIN" ]]; then
    log "building the example proxy"
    (cd "$ROOT" && nice -n 10 cargo build --release --example proxy >&2)
fi
CODEX_V=$("$CODEX" --version)
SDK_V=$("$PY" -c 'import openai; print(openai.__version__)')
log "$CODEX_V; openai-python $SDK_V; proxy $PROXY_BIN"

# --- mock accounts and the proxy ------------------------------------------------------
UPSTREAMS=()
i=1
for name in "${ACCOUNTS[@]}"; do
    port=$((PORT_BASE + i))
    "$PY" "$ROOT/scripts/mock_responses_account.py" --name "$name" --port "$port" \
        --log "$WORK/mock-$name.jsonl" >"$WORK/mock-$name.out" 2>&1 &
    PIDS+=($!)
    export "ACCT_KEY_${name^^}=sk-account-$name-$RANDOM$RANDOM"
    UPSTREAMS+=(--upstream "$name=http://127.0.0.1:$port" --upstream-key "$name=ACCT_KEY_${name^^}")
    i=$((i + 1))
done
# A control account outside the proxy: what Codex itself sends on the upgrade.
DIRECT_PORT=$((PORT_BASE + 9))
"$PY" "$ROOT/scripts/mock_responses_account.py" --name direct --port "$DIRECT_PORT" \
    --log "$WORK/mock-direct.jsonl" >"$WORK/mock-direct.out" 2>&1 &
PIDS+=($!)
for ((i = 1; i <= ${#ACCOUNTS[@]}; i++)); do wait_port "127.0.0.1:$((PORT_BASE + i))" 20; done
wait_port "127.0.0.1:$DIRECT_PORT" 20

export PROXY_TOKEN=sk-proxy-client-$RANDOM$RANDOM
RUST_LOG=${RUST_LOG:-info,proxy=debug,tower_sticky_session=debug} "$PROXY_BIN" \
    --listen "127.0.0.1:$PROXY_PORT" --admin "127.0.0.1:$ADMIN_PORT" \
    --client-token PROXY_TOKEN "${UPSTREAMS[@]}" >"$WORK/proxy.log" 2>&1 &
PIDS+=($!)
wait_port "127.0.0.1:$PROXY_PORT" 20
wait_port "127.0.0.1:$ADMIN_PORT" 20

# --- Codex ----------------------------------------------------------------------------
export CODEX_HOME=$WORK/codex-home
mkdir -p "$CODEX_HOME" "$WORK/codex-cwd"
provider() { # supports_websockets [base URL]
    printf 'model_providers.sticky={name="sticky proxy",base_url="%s/v1",wire_api="responses",env_key="PROXY_TOKEN",supports_websockets=%s,request_max_retries=0,stream_max_retries=0}' "${2:-$PROXY}" "$1"
}
codex_run() { # label ws(true/false) args...
    local label=$1 ws=$2 base=$PROXY
    shift 2
    if [[ $label == direct* ]]; then base=http://127.0.0.1:$DIRECT_PORT; fi
    local t0 t1
    t0=$(date +%s.%N)
    set +e
    timeout 120 "$CODEX" exec --json --skip-git-repo-check -C "$WORK/codex-cwd" -m "$MODEL" \
        -c 'model_provider="sticky"' -c "$(provider "$ws" "$base")" "$@" \
        </dev/null >"$WORK/codex-$label.jsonl" 2>"$WORK/codex-$label.err"
    local rc=$?
    set -e
    t1=$(date +%s.%N)
    echo "{\"label\":\"$label\",\"rc\":$rc,\"seconds\":$(awk "BEGIN{printf \"%.3f\", $t1 - $t0}")}" >>"$WORK/codex-runs.jsonl"
}
thread_of() { "$PY" -c 'import json,sys
for l in open(sys.argv[1]):
    e = json.loads(l)
    if e.get("type") == "thread.started": print(e["thread_id"]); break' "$WORK/codex-$1.jsonl"; }
served_of() { "$PY" -c 'import json,sys
for l in open(sys.argv[1]):
    e = json.loads(l)
    if e.get("type") == "item.completed" and e["item"].get("type") == "agent_message":
        print(e["item"]["text"].rsplit(" ", 1)[-1])' "$WORK/codex-$1.jsonl" | tail -1; }

log "codex: control run straight to an account (no proxy)"
codex_run direct-control true "say hi"
log "codex: a new session over the WebSocket"
codex_run ws-1 true "say hi"
TID=$(thread_of ws-1)
log "codex: the same session again (exec resume $TID)"
codex_run ws-2-resume true resume "$TID" "say hi again"
log "codex: a second new session"
codex_run ws-3-fresh true "say hi"
HOME_ACCT=$(served_of ws-1)
if [[ -n "$HOME_ACCT" ]]; then
    idx=0
    for name in "${ACCOUNTS[@]}"; do [[ $name == "$HOME_ACCT" ]] && break; idx=$((idx + 1)); done
    log "codex: account $HOME_ACCT answers the next upgrade with 429; resume the session again"
    curl -fsS -X POST "http://127.0.0.1:$((PORT_BASE + 1 + idx))/mock/fail?status=429&count=1" >/dev/null
    codex_run ws-4-failover true resume "$TID" "still there?"
    log "codex: resume once more (the session's new account should keep it)"
    codex_run ws-5-after-failover true resume "$TID" "and now?"
fi
log "codex: a new session over HTTP (supports_websockets=false), then resumed"
codex_run http-1 false "say hi"
codex_run http-2-resume false resume "$(thread_of http-1)" "say hi again"

# --- OpenAI Python SDK ----------------------------------------------------------------
log "openai-python: HTTP (prompt_cache_key, previous_response_id) and responses.connect()"
set +e
OPENAI_LOG= "$PY" "$ROOT/scripts/sdk_client.py" --base-url "$PROXY/v1" --model "$MODEL" \
    --api-key-env PROXY_TOKEN >"$WORK/sdk.jsonl" 2>"$WORK/sdk.err"
SDK_RC=$?
set -e

curl -fsS "$ADMIN/metrics" >"$WORK/metrics.txt" || true

# --- summary --------------------------------------------------------------------------
PYTHONPATH="$ROOT/scripts" "$PY" - "$WORK" "$CODEX_V" "$SDK_V" "$SDK_RC" "${ACCOUNTS[@]}" <<'EOF'
import json, re, sys
from real_clients_checks import check, finish, jl
work, codex_v, sdk_v, sdk_rc, accounts = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]

events = sorted((e for a in accounts for e in jl(f"{work}/mock-{a}.jsonl")), key=lambda e: e["t"])
direct = jl(f"{work}/mock-direct.jsonl")
runs = {r["label"]: r for r in jl(f"{work}/codex-runs.jsonl")}
print(f"\n{codex_v}; openai-python {sdk_v}\n")
print("Codex runs (label: rc, seconds, served by, notes)")
codex = {}
for label, r in runs.items():
    out = jl(f"{work}/codex-{label}.jsonl")
    served = [e["item"]["text"].rsplit(" ", 1)[-1] for e in out
              if e.get("type") == "item.completed" and e["item"].get("type") == "agent_message"]
    notes = [e.get("message") or e.get("item", {}).get("message") for e in out
             if e.get("type") == "error" or e.get("item", {}).get("type") == "error"]
    notes = [n for n in notes if n and "Model metadata" not in n]
    fallback = any("Falling back from WebSockets" in n for n in notes)
    tid = next((e["thread_id"] for e in out if e.get("type") == "thread.started"), None)
    codex[label] = dict(rc=r["rc"], served=served[-1] if served else None, fallback=fallback,
                        notes=notes, thread=tid)
    print(f"  {label:22} rc={r['rc']} {r['seconds']:.2f}s served_by={codex[label]['served']} "
          f"thread={tid}" + (f" notes={notes}" if notes else ""))

def upgrades_for(thread):
    return [e for e in events if e["kind"] == "ws_upgrade" and e["headers"].get("session-id") == thread]
def posts_for(thread):
    return [e for e in events if e["kind"] == "http" and e.get("method") == "POST"
            and e["headers"].get("session-id") == thread]

print("\nChecks")
for label in ("direct-control", "ws-1", "ws-2-resume", "ws-3-fresh", "ws-4-failover", "ws-5-after-failover",
              "http-1", "http-2-resume"):
    if label in codex:
        c = codex[label]
        check(c["rc"] == 0 and c["served"] is not None, f"codex {label}: turn completed")
        if label.startswith(("ws", "direct")):
            check(not c["fallback"], f"codex {label}: no fallback to HTTP")
ws1 = codex.get("ws-1", {})
if ws1.get("thread"):
    t = ws1["thread"]
    ups = upgrades_for(t)
    posts = posts_for(t)
    check(len(ups) >= 3, f"codex session {t[:8]}: {len(ups)} upgrades reached the accounts "
          f"({[u['account'] for u in ups]})")
    check(not posts, f"codex session {t[:8]}: no HTTP POST /v1/responses ({len(posts)})")
    check(codex["ws-2-resume"]["served"] == ws1["served"],
          f"codex resume landed on the same account ({ws1['served']} -> {codex['ws-2-resume']['served']})")
    if "ws-4-failover" in codex:
        f4, f5 = codex["ws-4-failover"]["served"], codex["ws-5-after-failover"]["served"]
        check(f4 not in (None, ws1["served"]), f"codex upgrade failed over off the 429 account ({ws1['served']} -> {f4})")
        check(f5 == f4, f"codex after failover stays on the new account ({f4} -> {f5})")
    msgs = [e for e in events if e["kind"] == "ws_message" and "body" in e]
    cx = [m for m in msgs if m["body"].get("type") == "response.create" and "client_metadata_keys" in m["body"]]
    print(f"  info Codex response.create messages: {len(cx)}; store values: "
          f"{sorted({str(m['body'].get('store')) for m in cx})}; generate=false warm-ups: "
          f"{sum(1 for m in cx if m['body'].get('generate') is False)}; with previous_response_id: "
          f"{sum(1 for m in cx if m['body'].get('previous_response_id'))}")
    try:
        resets = sum("Connection reset without closing handshake" in l for l in open(f"{work}/proxy.log"))
        print(f"  info proxy log lines 'relay failed ... reset without closing handshake': {resets}")
    except FileNotFoundError:
        pass
    dup = [e for e in direct if e["kind"] == "ws_upgrade"]
    if dup:
        h = dict(dup[0]["headers"])
        print("\nCodex's own upgrade request (control run, straight to an account):")
        for k in sorted(h):
            v = h[k] if len(h[k]) < 160 else h[k][:157] + "..."
            print(f"    {k}: {v}")
        if ups:
            p = ups[0]["headers"]
            changed = {k: (h.get(k), p.get(k)) for k in sorted(set(h) | set(p))
                       if k not in ("sec-websocket-key", "x-codex-turn-metadata", "session-id",
                                    "thread-id", "x-client-request-id", "x-codex-window-id")
                       and h.get(k) != p.get(k)}
            print("  what the proxy changed on the way to the account (control -> proxied):")
            for k, (a, b) in changed.items():
                print(f"    {k}: {a!r} -> {b!r}")
    dmsg = [e for e in direct if e["kind"] == "ws_message"]
    check(bool(dup) and not [e for e in direct if e["kind"] == "http" and e.get("method") == "POST"],
          f"codex control run (no proxy): WebSocket used ({len(dup)} upgrade, {len(dmsg)} messages)")
hc = codex.get("http-1", {})
if hc.get("thread"):
    hp = posts_for(hc["thread"])
    check(len(hp) >= 2 and len({p["account"] for p in hp}) == 1,
          f"codex over HTTP: {len(hp)} POSTs, all on one account ({sorted({p['account'] for p in hp})})")
    check(not upgrades_for(hc["thread"]), "codex over HTTP: no upgrade attempted")

print("\nOpenAI Python SDK")
sdk = jl(f"{work}/sdk.jsonl")
for r in sdk:
    if "check" in r:
        print(f"  {'ok  ' if r['ok'] else 'FAIL'} {json.dumps(r)[:220]}")
check(sdk_rc == 0 and sdk, f"openai-python checks (exit {sdk_rc})")

print("\nProxy metrics (/metrics)")
try:
    for line in open(f"{work}/metrics.txt"):
        if re.match(r"(sticky_proxy_ws_|sticky_proxy_retries|sticky_session_(upgrades|hits|misses|commits|cleared|hard_pins|response_ids|requests))", line):
            print("  " + line.rstrip())
except FileNotFoundError:
    print("  (no metrics)")
finish()
EOF
