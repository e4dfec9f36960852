#!/usr/bin/env bash
# Instructions per request end to end, counted by callgrind: examples/bench_server under
# `valgrind --tool=callgrind`, driven by wrk over 10 000 session ids (the same requests
# as benches/e2e.sh). Each server runs twice (a 10 s warm-up that creates the bindings,
# then SHORT or LONG seconds); the difference in instructions over the difference in
# requests is the cost of one request, start-up and warm-up cancelled. Unlike wrk's
# throughput, the count does not move with the machine's load (it does not weigh cache
# misses either: read it next to benches/e2e.sh).
#
#   benches/e2e_instructions.sh                      # bare, layer, naive
#   SERVERS="bare layer" SHORT=5 LONG=20 benches/e2e_instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SERVERS=${SERVERS:-bare layer naive}
SHORT=${SHORT:-5}
LONG=${LONG:-20}
for tool in valgrind wrk; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)" >&2; exit 1; }
done
cargo build --release --example bench_server >&2
SERVER=target/release/examples/bench_server
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

one() { # mode seconds -> "requests instructions"
    local mode=$1 dur=$2 addr w r vp
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
        "$SERVER" "--$mode" --listen 127.0.0.1:0 --threads 1 >"$work/out" 2>"$work/err" &
    vp=$!
    for _ in $(seq 300); do grep -q '^listening on' "$work/out" 2>/dev/null && break; sleep 0.1; done
    addr=$(sed -n 's/^listening on //p' "$work/out")
    w=$(wrk -t1 -c4 -d10s -s benches/e2e_sessions.lua "http://$addr/" -- 10000 | sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p')
    r=$(wrk -t1 -c4 -d"${dur}s" -s benches/e2e_sessions.lua "http://$addr/" -- 10000 | sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p')
    kill -TERM "$vp"
    wait "$vp" 2>/dev/null || true
    echo "$((w + r)) $(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$work/err")"
}

declare -A per
for mode in $SERVERS; do
    read -r r1 i1 < <(one "$mode" "$SHORT")
    read -r r2 i2 < <(one "$mode" "$LONG")
    per[$mode]=$(( (i2 - i1) / (r2 - r1) ))
    printf '%-6s %7d instructions per request (%d and %d requests)\n' "$mode" "${per[$mode]}" "$r1" "$r2"
done
for mode in $SERVERS; do
    [[ $mode == bare || -z "${per[bare]:-}" ]] && continue
    echo "$mode: +$(( per[$mode] - per[bare] )) over bare ($(awk "BEGIN{printf \"%.2f\", ${per[$mode]}/${per[bare]}}") x)"
done
