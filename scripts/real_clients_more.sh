#!/usr/bin/env bash
# More real clients through the example proxy: Claude Code (npm `@anthropic-ai/claude-code`,
# `claude -p`), Gemini CLI (npm `@google/gemini-cli`, `gemini -p`, with an API key and in
# its Code Assist mode) and OpenCode (npm `opencode-ai`, `opencode run`), each run twice in
# one session and more, against mock accounts on loopback (scripts/mock_llm_account.py,
# which speaks Anthropic Messages, Gemini, Gemini Code Assist and OpenAI chat completions).
#
# Not part of `cargo test`: it installs the clients from the npm registry (into $TOOLS,
# reused by later runs), starts three mock accounts, a control account and, per client,
# the proxy on loopback ports, runs the clients and prints a summary. Exit code 0 when
# every check passed. All keys are dummies made up here; none is printed.
#
#   scripts/real_clients_more.sh                  # every client
#   CLIENTS="claude opencode" scripts/real_clients_more.sh
#   KEEP=1 scripts/real_clients_more.sh           # leave the logs in $WORK (printed)
#
# Environment: TOOLS (default /tmp/real_clients_tools), WORK (default a new temp dir),
# PORT_BASE (default 18400: accounts on +1..+3, the control account on +9, proxy on +80,
# admin on +90), PROXY_BIN (default target/release/examples/proxy, built with `nice` when
# missing), CLIENTS (default "claude gemini opencode"), CLAUDE_VERSION / GEMINI_VERSION /
# OPENCODE_VERSION (default: latest), RUST_LOG (default: debug for the proxy and the
# library).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${TOOLS:-/tmp/real_clients_tools}
WORK=${WORK:-$(mktemp -d /tmp/real_clients_more.XXXXXX)}
PORT_BASE=${PORT_BASE:-18400}
PROXY_BIN=${PROXY_BIN:-$ROOT/target/release/examples/proxy}
CLIENTS=${CLIENTS:-claude gemini opencode}
ACCOUNTS=(a b c)
PROXY_PORT=$((PORT_BASE + 80))
ADMIN_PORT=$((PORT_BASE + 90))
DIRECT_PORT=$((PORT_BASE + 9))
PROXY=http://127.0.0.1:$PROXY_PORT
ADMIN=http://127.0.0.1:$ADMIN_PORT
DIRECT=http://127.0.0.1:$DIRECT_PORT
BIN=$TOOLS/npm/node_modules/.bin
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
PIDS=()
PROXY_PID=

# log, cleanup (trapped at exit), wait_port
# shellcheck source=scripts/real_clients_common.sh
source "$ROOT/scripts/real_clients_common.sh"
port_free() { # port, seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}
has() { [[ " $CLIENTS " == *" $1 "* ]]; }

# --- clients --------------------------------------------------------------------------
install_client() { # bin package version
    if ! "$BIN/$1" --version >/dev/null 2>&1 || { [[ -n "$3" ]] && ! "$BIN/$1" --version 2>/dev/null | grep -qF "$3"; }; then
        log "installing $2@${3:-latest} into $TOOLS/npm"
        npm install --silent --no-audit --no-fund --prefix "$TOOLS/npm" "$2@${3:-latest}" >&2
    fi
}
has claude && install_client claude @anthropic-ai/claude-code "${CLAUDE_VERSION:-}"
has gemini && install_client gemini @google/gemini-cli "${GEMINI_VERSION:-}"
has opencode && install_client opencode opencode-ai "${OPENCODE_VERSION:-}"
if [[ ! -x "$PROXY_BIN" ]]; then
    log "building the example proxy"
    (cd "$ROOT" && nice -n 10 cargo build --release --example proxy >&2)
fi
VERSIONS=()
for c in $CLIENTS; do VERSIONS+=("$c $("$BIN/$c" --version 2>/dev/null | head -1)"); done
log "${VERSIONS[*]}; proxy $PROXY_BIN"

# --- mock accounts --------------------------------------------------------------------
# The client token: what every client sends to the proxy (and what the mock metadata
# server hands Gemini CLI as its access token). A dummy, never printed.
export PROXY_TOKEN=sk-proxy-client-$RANDOM$RANDOM
i=1
for name in "${ACCOUNTS[@]}"; do
    python3 "$ROOT/scripts/mock_llm_account.py" --name "$name" --port $((PORT_BASE + i)) \
        --log "$WORK/mock-$name.jsonl" >"$WORK/mock-$name.out" 2>&1 &
    PIDS+=($!)
    export "ACCT_KEY_${name^^}=sk-account-$name-$RANDOM$RANDOM"
    i=$((i + 1))
done
# The control account outside the proxy (what each client sends by itself), also the GCE
# metadata server for Gemini CLI's Code Assist mode.
python3 "$ROOT/scripts/mock_llm_account.py" --name direct --port "$DIRECT_PORT" \
    --log "$WORK/mock-direct.jsonl" --metadata-token-env PROXY_TOKEN >"$WORK/mock-direct.out" 2>&1 &
PIDS+=($!)
for ((i = 1; i <= ${#ACCOUNTS[@]}; i++)); do wait_port "127.0.0.1:$((PORT_BASE + i))" 20; done
wait_port "127.0.0.1:$DIRECT_PORT" 20

# --- the proxy, one per client (each API wants the account key in its own header) -----
start_proxy() { # label [--key-header H]
    local label=$1 args=() i=1 name
    shift
    for name in "${ACCOUNTS[@]}"; do
        args+=(--upstream "$name=http://127.0.0.1:$((PORT_BASE + i))" --upstream-key "$name=ACCT_KEY_${name^^}")
        i=$((i + 1))
    done
    RUST_LOG=${RUST_LOG:-info,proxy=debug,tower_sticky_session=debug} "$PROXY_BIN" \
        --listen "127.0.0.1:$PROXY_PORT" --admin "127.0.0.1:$ADMIN_PORT" \
        --client-token PROXY_TOKEN "${args[@]}" "$@" >"$WORK/proxy-$label.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_port "127.0.0.1:$PROXY_PORT" 20
    wait_port "127.0.0.1:$ADMIN_PORT" 20
    echo "{\"proxy\":\"$label\",\"args\":\"$*\"}" >>"$WORK/proxies.jsonl"
}
stop_proxy() { # label
    curl -fsS "$ADMIN/metrics" >"$WORK/metrics-$1.txt" || true
    kill "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    port_free "$PROXY_PORT" 20
    port_free "$ADMIN_PORT" 20
}

# One client run: its stdout/stderr in $WORK/LABEL.out/.err, and a line in runs.jsonl with
# the time window (the summary matches mock and proxy log lines to runs by time).
run() { # client label command...
    local client=$1 label=$2 t0 t1 rc
    shift 2
    t0=$(date +%s.%N)
    set +e
    timeout 180 "$@" </dev/null >"$WORK/$label.out" 2>"$WORK/$label.err"
    rc=$?
    set -e
    t1=$(date +%s.%N)
    echo "{\"client\":\"$client\",\"label\":\"$label\",\"rc\":$rc,\"t0\":$t0,\"t1\":$t1}" >>"$WORK/runs.jsonl"
    sleep 0.2 # the next run's window starts after this one's last log line
}
fail_next() { # account path: that account answers the next request on path with 429
    local idx=0 name
    for name in "${ACCOUNTS[@]}"; do [[ $name == "$1" ]] && break; idx=$((idx + 1)); done
    curl -fsS -X POST "http://127.0.0.1:$((PORT_BASE + 1 + idx))/mock/fail?status=429&count=1&path=$2" >/dev/null
}
json_field() { # file python-expression-on-d (the first JSON document of the file)
    python3 -c 'import json,sys
try:
    d = json.load(open(sys.argv[1]))
    print(eval(sys.argv[2]) or "")
except Exception:
    print("")' "$1" "$2"
}
served() { json_field "$WORK/$1.out" "$2" | awk '{print $NF}'; }

# --- Claude Code ----------------------------------------------------------------------
if has claude; then
    claude_run() { # label base-url config-dir args...
        local label=$1 base=$2 dir=$3
        shift 3
        mkdir -p "$dir/cwd"
        (cd "$dir/cwd" && run claude "$label" env HOME="$dir" CLAUDE_CONFIG_DIR="$dir/.claude" \
            ANTHROPIC_BASE_URL="$base" ANTHROPIC_API_KEY="$PROXY_TOKEN" \
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 \
            nice -n 10 "$BIN/claude" -p --output-format json "$@")
    }
    CH=$WORK/claude-home
    start_proxy claude --key-header x-api-key
    log "claude: control run straight to an account (no proxy)"
    claude_run claude-direct "$DIRECT" "$WORK/claude-direct-home" "say hi"
    log "claude: a new session, then --continue"
    claude_run claude-1 "$PROXY" "$CH" "say hi"
    SID=$(json_field "$WORK/claude-1.out" 'd["session_id"]')
    claude_run claude-2-continue "$PROXY" "$CH" --continue "say hi again"
    log "claude: a second new session"
    claude_run claude-3-fresh "$PROXY" "$CH" "say hi"
    HOME_ACCT=$(served claude-1 'd["result"]')
    if [[ -n "$HOME_ACCT" && -n "$SID" ]]; then
        log "claude: account $HOME_ACCT answers the next /v1/messages with 429; --resume $SID"
        fail_next "$HOME_ACCT" /v1/messages
        claude_run claude-4-failover "$PROXY" "$CH" --resume "$SID" "still there?"
        claude_run claude-5-after-failover "$PROXY" "$CH" --resume "$SID" "and now?"
    fi
    stop_proxy claude
fi

# --- Gemini CLI -----------------------------------------------------------------------
if has gemini; then
    gemini_settings() { # dir auth-type
        mkdir -p "$1/.gemini" "$1/cwd"
        printf '{"security":{"auth":{"selectedType":"%s"}},"privacy":{"usageStatisticsEnabled":false},"general":{"disableAutoUpdate":true,"disableUpdateNag":true},"telemetry":{"enabled":false}}\n' \
            "$2" >"$1/.gemini/settings.json"
    }
    # With an API key (auth type gemini-api-key): the Gemini API, base URL from
    # GOOGLE_GEMINI_BASE_URL. (That variable alone selects the auth type "gateway", which
    # 0.61.0's non-interactive mode rejects with "Invalid auth method selected.", hence
    # the settings file.) -m: an explicit model skips the router's JSON classifier calls.
    gemini_key_run() { # label base-url dir args...
        local label=$1 base=$2 dir=$3
        shift 3
        (cd "$dir/cwd" && run gemini "$label" env HOME="$dir" GEMINI_API_KEY="$PROXY_TOKEN" \
            GOOGLE_GEMINI_BASE_URL="$base" \
            nice -n 10 "$BIN/gemini" -m gemini-2.5-flash --skip-trust -o json "$@")
    }
    # Code Assist (auth type compute-default-credentials: what Cloud Shell or a GCE VM
    # uses; a Google login speaks the same API): the access token comes from the mock
    # metadata server (GCE_METADATA_HOST), the API from CODE_ASSIST_ENDPOINT.
    gemini_ca_run() { # label endpoint dir args...
        local label=$1 base=$2 dir=$3
        shift 3
        (cd "$dir/cwd" && run gemini "$label" env HOME="$dir" GCE_METADATA_HOST="127.0.0.1:$DIRECT_PORT" \
            CODE_ASSIST_ENDPOINT="$base" GOOGLE_CLOUD_PROJECT=mock-project \
            nice -n 10 "$BIN/gemini" -m gemini-2.5-flash --skip-trust -o json "$@")
    }
    gemini_settings "$WORK/gemini-key-home" gemini-api-key
    gemini_settings "$WORK/gemini-ca-home" compute-default-credentials
    gemini_settings "$WORK/gemini-direct-home" compute-default-credentials
    # --fingerprint: the last resort for bodies with no session id, which is what Gemini
    # CLI sends with an API key (the hash of `systemInstruction` and the first user
    # content keys the session).
    start_proxy gemini-key --key-header x-goog-api-key --fingerprint
    log "gemini (API key): a new session, then -r latest"
    gemini_key_run gemini-key-1 "$PROXY" "$WORK/gemini-key-home" -p "say hi"
    SID=$(json_field "$WORK/gemini-key-1.out" 'd["session_id"]')
    gemini_key_run gemini-key-2-resume "$PROXY" "$WORK/gemini-key-home" -r latest -p "say hi again"
    log "gemini (API key): a second new session"
    gemini_key_run gemini-key-3-fresh "$PROXY" "$WORK/gemini-key-home" -p "say hello"
    HOME_ACCT=$(served gemini-key-1 'd["response"]')
    if [[ -n "$HOME_ACCT" && -n "$SID" ]]; then
        log "gemini (API key): account $HOME_ACCT answers the next streamGenerateContent with 429; -r $SID"
        fail_next "$HOME_ACCT" /v1beta/models/
        gemini_key_run gemini-key-4-failover "$PROXY" "$WORK/gemini-key-home" -r "$SID" -p "still there?"
        gemini_key_run gemini-key-5-after-failover "$PROXY" "$WORK/gemini-key-home" -r "$SID" -p "and now?"
    fi
    log "gemini (API key): a third new session that opens as the first did (a false merge)"
    gemini_key_run gemini-key-6-same-opening "$PROXY" "$WORK/gemini-key-home" -p "say hi"
    stop_proxy gemini-key
    start_proxy gemini-ca
    log "gemini (Code Assist): control run straight to an account (no proxy)"
    gemini_ca_run gemini-ca-direct "$DIRECT" "$WORK/gemini-direct-home" -p "say hi"
    log "gemini (Code Assist): a new session, then -r latest"
    gemini_ca_run gemini-ca-1 "$PROXY" "$WORK/gemini-ca-home" -p "say hi"
    SID=$(json_field "$WORK/gemini-ca-1.out" 'd["session_id"]')
    gemini_ca_run gemini-ca-2-resume "$PROXY" "$WORK/gemini-ca-home" -r latest -p "say hi again"
    log "gemini (Code Assist): a second new session"
    gemini_ca_run gemini-ca-3-fresh "$PROXY" "$WORK/gemini-ca-home" -p "say hi"
    HOME_ACCT=$(served gemini-ca-1 'd["response"]')
    if [[ -n "$HOME_ACCT" && -n "$SID" ]]; then
        log "gemini (Code Assist): account $HOME_ACCT answers the next streamGenerateContent with 429; -r $SID"
        fail_next "$HOME_ACCT" /v1internal:streamGenerateContent
        gemini_ca_run gemini-ca-4-failover "$PROXY" "$WORK/gemini-ca-home" -r "$SID" -p "still there?"
        gemini_ca_run gemini-ca-5-after-failover "$PROXY" "$WORK/gemini-ca-home" -r "$SID" -p "and now?"
    fi
    stop_proxy gemini-ca
fi

# --- OpenCode -------------------------------------------------------------------------
if has opencode; then
    opencode_config() { # file base-url
        cat >"$1" <<EOF
{
  "\$schema": "https://opencode.ai/config.json",
  "autoupdate": false,
  "share": "disabled",
  "provider": {
    "sticky": {
      "npm": "@ai-sdk/openai-compatible",
      "name": "sticky proxy",
      "options": {"baseURL": "$2/v1", "apiKey": "{env:PROXY_TOKEN}"},
      "models": {"mock-model": {"name": "mock model"}}
    }
  },
  "model": "sticky/mock-model",
  "small_model": "sticky/mock-model"
}
EOF
    }
    opencode_run() { # label config home args...
        local label=$1 config=$2 dir=$3
        shift 3
        mkdir -p "$dir/cwd"
        (cd "$dir/cwd" && run opencode "$label" env HOME="$dir" XDG_CONFIG_HOME="$dir/.config" \
            XDG_DATA_HOME="$dir/.local/share" XDG_CACHE_HOME="$dir/.cache" XDG_STATE_HOME="$dir/.local/state" \
            OPENCODE_CONFIG="$config" OPENCODE_DISABLE_MODELS_FETCH=1 OPENCODE_DISABLE_AUTOUPDATE=1 \
            OPENCODE_DISABLE_LSP_DOWNLOAD=1 OPENCODE_DISABLE_SHARE=1 \
            nice -n 10 "$BIN/opencode" run --format json "$@")
    }
    oc_served() { python3 -c 'import json,sys
t = ""
for l in open(sys.argv[1]):
    try:
        e = json.loads(l)
    except ValueError:
        continue
    if e.get("type") == "text":
        t = e["part"].get("text", "")
print(t.rsplit(" ", 1)[-1] if t else "")' "$WORK/$1.out"; }
    oc_session() { python3 -c 'import json,sys
for l in open(sys.argv[1]):
    try:
        print(json.loads(l)["sessionID"]); break
    except (ValueError, KeyError):
        continue' "$WORK/$1.out"; }
    opencode_config "$WORK/opencode-proxy.json" "$PROXY"
    opencode_config "$WORK/opencode-direct.json" "$DIRECT"
    OH=$WORK/opencode-home
    start_proxy opencode
    log "opencode: control run straight to an account (no proxy)"
    opencode_run opencode-direct "$WORK/opencode-direct.json" "$WORK/opencode-direct-home" "say hi"
    log "opencode: a new session, then --continue"
    opencode_run opencode-1 "$WORK/opencode-proxy.json" "$OH" "say hi"
    SID=$(oc_session opencode-1)
    opencode_run opencode-2-continue "$WORK/opencode-proxy.json" "$OH" --continue "say hi again"
    log "opencode: a second new session"
    opencode_run opencode-3-fresh "$WORK/opencode-proxy.json" "$OH" "say hi"
    HOME_ACCT=$(oc_served opencode-1)
    if [[ -n "$HOME_ACCT" && -n "$SID" ]]; then
        log "opencode: account $HOME_ACCT answers the next chat completion with 429; --session $SID"
        fail_next "$HOME_ACCT" /v1/chat/completions
        opencode_run opencode-4-failover "$WORK/opencode-proxy.json" "$OH" --session "$SID" "still there?"
        opencode_run opencode-5-after-failover "$WORK/opencode-proxy.json" "$OH" --session "$SID" "and now?"
    fi
    stop_proxy opencode
fi

# --- summary --------------------------------------------------------------------------
PYTHONPATH="$ROOT/scripts" python3 - "$WORK" "${VERSIONS[@]}" <<'EOF'
import calendar, hashlib, json, os, re, sys, time
from real_clients_checks import check, finish, jl
work, versions = sys.argv[1], sys.argv[2:]
ACCOUNTS = ["a", "b", "c"]
def digest(v):
    return f"<sha256:{hashlib.sha256(v.encode()).hexdigest()[:8]}>"

events = sorted((e for a in ACCOUNTS + ["direct"] for e in jl(f"{work}/mock-{a}.jsonl")),
                key=lambda e: e["t"])
runs = {r["label"]: r for r in jl(f"{work}/runs.jsonl")}
MODEL_PATH = re.compile(r"^/v1/messages$|^/v1/chat/completions$|^/v1beta/models/.*:(stream)?[gG]enerateContent$|^/v1internal:(stream)?[gG]enerateContent$")
SESSION_HEADERS = ("sticky-session-id", "x-claude-code-session-id", "session-id", "session_id",
                   "x-session-affinity", "x-session-id", "x-opencode-session", "x-kilo-session",
                   "x-litellm-session-id", "thread-id", "conversation_id")
SESSION_FIELDS = ("conversation", "metadata", "prompt_cache_key", "session_id", "sessionId",
                  "request.session_id", "user_prompt_id")

def proxy_lines(label):
    out = []
    try:
        lines = open(f"{work}/proxy-{label}.log").read().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z\s+\w+\s+(.*)", line)
        if not m or " proxied " not in line:
            continue
        t = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + float(m.group(2) or 0)
        kv = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line.split(" proxied ", 1)[1]))
        rec = {k: v.strip('"') for k, v in kv.items()}
        if rec.get("source") == "-":  # no session
            rec.pop("source")
        out.append({"t": t, **rec})
    return out

def in_run(t, r):
    return r["t0"] - 0.001 <= t <= r["t1"] + 0.05

def served_of(label):
    client = runs[label]["client"]
    try:
        raw = open(f"{work}/{label}.out").read()
    except FileNotFoundError:
        return None
    text = ""
    try:
        if client == "opencode":
            for l in raw.splitlines():
                try:
                    e = json.loads(l)
                except ValueError:
                    continue
                if e.get("type") == "text":
                    text = e["part"].get("text", "")
        else:
            d = json.loads(raw[raw.index("{"):])
            text = d.get("result") if client == "claude" else d.get("response")
    except (ValueError, KeyError, AttributeError):
        pass
    return text.rsplit(" ", 1)[-1] if text and text.startswith("hi from account") else None

def session_of(label):
    client = runs[label]["client"]
    try:
        raw = open(f"{work}/{label}.out").read()
        if client == "opencode":
            return json.loads(raw.splitlines()[0])["sessionID"]
        return json.loads(raw[raw.index("{"):])["session_id"]
    except (ValueError, KeyError, IndexError, FileNotFoundError):
        return None

def model_requests(label):
    r = runs[label]
    return [e for e in events if e["kind"] == "http" and MODEL_PATH.match(e["path"])
            and in_run(e["t"], r)]

def carriers(e):
    h = [f"header {k}: {e['headers'][k]}" for k in SESSION_HEADERS if k in e["headers"]]
    b = e.get("body", {})
    f = [f"body {k}: {json.dumps(b[k])[:160]}" for k in SESSION_FIELDS if k in b]
    return h + f

print("\n" + "; ".join(versions) + "\n")
print("Runs (label: rc, seconds, served by, session, model requests -> accounts)")
for label, r in runs.items():
    reqs = model_requests(label)
    print(f"  {label:28} rc={r['rc']} {r['t1'] - r['t0']:6.2f}s served_by={served_of(label)} "
          f"session={session_of(label)} requests={[e['account'] for e in reqs]}")
    if r["rc"] != 0:
        try:
            err = [l for l in open(f"{work}/{label}.err").read().splitlines() if l.strip()][-3:]
            print("      stderr: " + " | ".join(err)[:400])
        except FileNotFoundError:
            pass

EXPECT = {  # group: (proxy label, client, the proxy's expected session source, turns)
    "claude": ("claude", "header:x-claude-code-session-id",
               ["claude-1", "claude-2-continue", "claude-3-fresh", "claude-4-failover", "claude-5-after-failover"],
               "claude-direct"),
    "gemini-key": ("gemini-key", "fingerprint",
                   ["gemini-key-1", "gemini-key-2-resume", "gemini-key-3-fresh", "gemini-key-4-failover",
                    "gemini-key-5-after-failover"], "gemini-key-direct"),
    "gemini-ca": ("gemini-ca", "body:request.session_id",
                  ["gemini-ca-1", "gemini-ca-2-resume", "gemini-ca-3-fresh", "gemini-ca-4-failover",
                   "gemini-ca-5-after-failover"], "gemini-ca-direct"),
    "opencode": ("opencode", "header:x-session-affinity",
                 ["opencode-1", "opencode-2-continue", "opencode-3-fresh", "opencode-4-failover",
                  "opencode-5-after-failover"], "opencode-direct"),
}
VOLATILE = {"content-length", "host", "x-claude-code-session-id", "x-session-affinity", "x-session-id",
            "x-stainless-retry-count", "connection"}
for group, (plabel, source, labels, direct) in EXPECT.items():
    have = [l for l in labels if l in runs]
    if not have:
        continue
    print(f"\n{group}")
    plines = proxy_lines(plabel)
    for l in have + ([direct] if direct in runs else []):
        check(runs[l]["rc"] == 0 and served_of(l) is not None, f"{group} {l}: turn completed")
    t1, t2 = labels[0], labels[1]
    if t1 in runs and t2 in runs:
        s1, s2 = session_of(t1), session_of(t2)
        check(s1 is not None and s1 == s2, f"{group}: {t2} continued the session of {t1} ({s1} -> {s2})")
        check(served_of(t1) is not None and served_of(t1) == served_of(t2),
              f"{group}: both turns on one account ({served_of(t1)} -> {served_of(t2)})")
        reqs = model_requests(t1) + model_requests(t2)
        check(len(reqs) >= 2 and len({e["account"] for e in reqs}) == 1,
              f"{group}: every model request of the session on one account "
              f"({[e['account'] for e in reqs]})")
        srcs = [p.get("source") for p in plines if MODEL_PATH.match(p.get("path", ""))
                and (in_run(p["t"], runs[t1]) or in_run(p["t"], runs[t2]))]
        check(bool(srcs) and all(s == source for s in srcs),
              f"{group}: the proxy keyed them on {source} (proxied lines: {sorted(set(map(str, srcs)))})")
        if reqs:
            print("  what carried the session (first proxied model request):")
            for c in carriers(reqs[0]) or ["nothing: the proxy's fingerprint of the body's opening"]:
                print("    " + c)
    if labels[2] in runs:
        print(f"  info a second session ({labels[2]}) went to {served_of(labels[2])}")
    if labels[3] in runs and labels[4] in runs:
        home, f4, f5 = served_of(t1), served_of(labels[3]), served_of(labels[4])
        check(f4 not in (None, home), f"{group}: a 429 on the home account failed over ({home} -> {f4})")
        check(f5 == f4, f"{group}: after the failover the session stays ({f4} -> {f5})")
        retried = [p for p in plines if in_run(p["t"], runs[labels[3]]) and p.get("pick") == "failover"]
        print(f"  info proxied lines with pick=failover in {labels[3]}: {len(retried)}")
    if direct in runs:
        d = model_requests(direct)
        p = model_requests(t1) if t1 in runs else []
        if d:
            h = d[0]["headers"]
            print(f"  {group}'s own model request ({direct}, straight to an account): "
                  f"{d[0]['method']} {d[0]['path']}{'?' + d[0]['query'] if d[0].get('query') else ''}")
            for k in sorted(h):
                v = h[k] if len(h[k]) < 160 else h[k][:157] + "..."
                print(f"    {k}: {v}")
            if p:
                q = p[0]["headers"]
                changed = {k: (h.get(k), q.get(k)) for k in sorted(set(h) | set(q))
                           if k not in VOLATILE and h.get(k) != q.get(k)}
                print("  what the proxy changed on the way to the account (control -> proxied):")
                for k, (a, b) in changed.items():
                    print(f"    {k}: {a!r} -> {b!r}")

if "gemini-key-1" in runs:
    # The checks of the EXPECT loop ran above (both turns on one account, source
    # fingerprint, failover); what is particular to this mode: the client sends no session.
    print("\ngemini with an API key (the Gemini API): the client's own requests")
    plines = proxy_lines("gemini-key")
    if "gemini-key-2-resume" in runs:
        reqs = model_requests("gemini-key-1") + model_requests("gemini-key-2-resume")
        sig = sorted({c for e in reqs for c in carriers(e)})
        check(bool(reqs) and not sig,
              f"gemini-key: no session signal in the requests, so only the fingerprint keys them (carriers {sig})")
        if reqs:
            print(f"  info body keys of the turn: {reqs[0]['body'].get('keys')}; headers: "
                  f"{sorted(k for k in reqs[0]['headers'] if k not in ('x-goog-api-key',))}")
    # Log lines show a session id redacted (its first byte and length), so whether a new
    # session got the first one's fingerprint shows in how the proxy picked: "pinned" for
    # a new session's first request means a binding existed already (the first
    # session's: the second one, with another prompt, is expected to get its own).
    def picks(label):
        return [(p.get("pick"), p.get("upstream")) for p in plines if MODEL_PATH.match(p.get("path", ""))
                and label in runs and in_run(p["t"], runs[label])]
    for label, what in (("gemini-key-3-fresh", "a second new session with another prompt"),
                        ("gemini-key-6-same-opening", "a third new session with the first one's prompt, "
                                                      "same directory and day")):
        p = picks(label)
        if p:
            print(f"  info {what}: picked {p[0][0]} on {p[0][1]}: "
                  + ("an existing binding, the first session's fingerprint (a false merge)"
                     if p[0][0] == "pinned" else "a fingerprint of its own"))

print("\nKeys")
token = digest(os.environ["PROXY_TOKEN"])
seen = [e for e in events if e["account"] in ACCOUNTS and e["kind"] == "http"]
bearer_token = digest("Bearer " + os.environ["PROXY_TOKEN"])
leaked = [e for e in seen if token in e["headers"].values() or bearer_token in e["headers"].values()]
check(seen and not leaked, f"the client token reached no account ({len(leaked)} of {len(seen)} requests)")
wrong = []
for e in seen:
    key = os.environ[f"ACCT_KEY_{e['account'].upper()}"]
    mine = {digest(key), digest("Bearer " + key)}
    if not mine & set(e["headers"].values()):
        wrong.append(e["path"])
check(seen and not wrong, f"every request reached its account with that account's key ({len(wrong)} without)")
where = sorted({k for e in seen for k, v in e["headers"].items()
                if v in (digest(os.environ[f"ACCT_KEY_{e['account'].upper()}"]),
                         digest("Bearer " + os.environ[f"ACCT_KEY_{e['account'].upper()}"]))})
print(f"  info account keys arrived in: {where}")

print("\nProxy metrics (/metrics, per proxy)")
for p in jl(f"{work}/proxies.jsonl"):
    try:
        lines = [l.rstrip() for l in open(f"{work}/metrics-{p['proxy']}.txt")
                 if re.match(r"(sticky_proxy_retries|sticky_session_(hits|misses|commits|requests|hard_pins)_total)", l)]
        print(f"  {p['proxy']:11} " + "  ".join(l.replace("sticky_session_", "").replace("_total", "") for l in lines))
    except FileNotFoundError:
        print(f"  {p['proxy']:11} (no metrics)")
finish()
EOF
