#!/usr/bin/env bash
# The example proxy's status page (admin listener, GET /) in a real headless browser.
#
# Starts the proxy (debug build, built with `nice` if needed) in front of two local
# accounts (python3 -m http.server) and one unreachable one, sends a few sticky requests,
# then loads the page in Debian's chromium: checks that its script ran and redrew the
# page from /status.json (the `data-refreshed` mark), that the numbers it shows are
# /metrics' numbers, and that the unreachable account shows as cooling down; saves a
# screenshot to docs/status-page.png. Not part of `cargo test` (needs a browser):
#
#   apt-get install -y chromium       # if missing
#   scripts/status_page_check.sh      # exit 0 when every check passed
#   KEEP=1 scripts/status_page_check.sh   # keep the work directory (DOM, logs)
set -euo pipefail
cd "$(dirname "$0")/.."

browser="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
[ -n "$browser" ] || { echo "chromium not found (apt-get install -y chromium)"; exit 1; }

nice -n 10 cargo build -q --example proxy
proxy=target/debug/examples/proxy

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "kept: $work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1"; exit 1
}

mkdir -p "$work/www"
echo "hello from an account" > "$work/www/index.html"
up1=$(free_port); up2=$(free_port); listen=$(free_port); admin=$(free_port)
python3 -m http.server "$up1" --bind 127.0.0.1 --directory "$work/www" >"$work/up1.log" 2>&1 &
pids+=($!)
python3 -m http.server "$up2" --bind 127.0.0.1 --directory "$work/www" >"$work/up2.log" 2>&1 &
pids+=($!)
wait_port "$up1"; wait_port "$up2"

# acct-3 points at a port nothing listens on: unreachable, so it cools down.
"$proxy" --listen "127.0.0.1:$listen" --admin "127.0.0.1:$admin" --cooldown 600 \
    --upstream "acct-1=http://127.0.0.1:$up1" --upstream "acct-2=http://127.0.0.1:$up2" \
    --upstream "acct-3=http://127.0.0.1:1" >"$work/proxy.log" 2>&1 &
pids+=($!)
wait_port "$listen"; wait_port "$admin"

for i in 1 2 3 4 5 6; do
    curl -sf -o /dev/null -H "x-session-id: chat-$((i % 3))" "http://127.0.0.1:$listen/" \
        || { echo "request $i failed"; exit 1; }
done

chrome() {
    "$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
        --disable-component-update --disable-sync --no-first-run \
        --user-data-dir="$(mktemp -d -p "$work")" --window-size=1200,800 \
        --virtual-time-budget=3000 "$@" 2>>"$work/chromium.log"
}
page="http://127.0.0.1:$admin/"
chrome --dump-dom "$page" >"$work/dom.html"
curl -sf "http://127.0.0.1:$admin/metrics" >"$work/metrics.txt"

fail=0
check() { if eval "$2"; then echo "ok: $1"; else echo "FAILED: $1"; fail=1; fi; }
shown() { sed -n "s/.*id=\"$1\">\([^<]*\)<.*/\1/p" "$work/dom.html" | head -1; }
metric() { awk -v n="$1" '$1 == n { print $2 }' "$work/metrics.txt"; }

check "the page's script redrew it from /status.json" \
    'grep -q "data-refreshed=\"[0-9]" "$work/dom.html"'
for pair in requests:sticky_session_requests_total hits:sticky_session_hits_total \
    lookups:sticky_session_lookups_total retries:sticky_proxy_retries_total \
    bindings:sticky_session_bindings ws_open:sticky_proxy_ws_open; do
    id="${pair%%:*}"; name="${pair#*:}"
    check "$id on the page ($(shown "$id")) is $name ($(metric "$name"))" \
        '[ -n "$(shown "$id")" ] && [ "$(shown "$id")" = "$(metric "$name")" ]'
done
check "every account is listed" \
    'grep -q "<td>acct-1</td>" "$work/dom.html" && grep -q "<td>acct-3</td>" "$work/dom.html"'
check "the unreachable account is cooling down" \
    '[ "$(metric "sticky_proxy_cooling{account=\"acct-3\"}")" = 1 ] && grep -q "cooling down until" "$work/dom.html"'

mkdir -p docs
chrome --screenshot="$PWD/docs/status-page.png" "$page" >/dev/null
check "screenshot saved (docs/status-page.png)" '[ -s docs/status-page.png ]'

[ "$fail" = 0 ] && echo "status page check passed" || { echo "status page check FAILED"; exit 1; }
