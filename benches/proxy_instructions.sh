#!/usr/bin/env bash
# Instructions per request through the example proxy, counted by callgrind: the proxy
# (2 workers) under `valgrind --tool=callgrind` in front of three examples/bench_server
# listeners (4 SSE events per answer, as benches/peers.sh), driven by wrk with 8
# connections over SESSIONS session ids (default 1 000, so that the sessions' first
# requests are a small share and the steady state dominates). Every thread of the proxy
# is counted (the log thread too). Total instructions over requests, start-up included
# (a few million: under 1 % at these request counts). Unlike CPU time, the count does
# not move with the machine's load; it does not weigh cache misses or preemption either:
# read it next to benches/peers.sh.
#
#   benches/proxy_instructions.sh                               # the release build, warn and info
#   PROXY_BIN=target/proxy-before LEVELS=warn benches/proxy_instructions.sh
#   SESSIONS=10000 DURATION=20 benches/proxy_instructions.sh
#   SIM=1 LEVELS=info PROXY_ARGS=--no-body-session benches/proxy_instructions.sh
#
# SIM=1 adds callgrind's cache and branch simulation (its L1 caches are 32 KiB, 8-way,
# 64-byte lines, as this machine's; no hardware counters can be read here) and prints,
# per request, the instructions, the L1 instruction and data misses (read, write) and
# the mispredicted conditional and indirect branches. Slower: fewer requests in the
# same DURATION. PROXY_ARGS go to the proxy (e.g. --no-body-session).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15}
SESSIONS=${SESSIONS:-1000}
LEVELS=${LEVELS:-warn info}
for tool in valgrind wrk; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)" >&2; exit 1; }
done
# $work, $pids, build_with_proxy, free_port, wait_port, start_upstream.
source benches/support/proxy_bench.sh
build_with_proxy
start_upstream 4 0

for level in $LEVELS; do
    port=$(free_port)
    sim=()
    [[ ${SIM:-0} != 0 ]] && sim=(--cache-sim=yes --branch-sim=yes)
    # shellcheck disable=SC2086
    RUST_LOG=$level TOKIO_WORKER_THREADS=2 valgrind --tool=callgrind ${sim[@]+"${sim[@]}"} \
        --callgrind-out-file="$work/cg.$level" "$PROXY_BIN" --listen "127.0.0.1:$port" \
        --upstream "account-a=http://${ups[0]}" --upstream "account-b=http://${ups[1]}" \
        --upstream "account-c=http://${ups[2]}" ${PROXY_ARGS:-} \
        >"$work/proxy.$level.log" 2>"$work/proxy.$level.err" &
    vp=$!
    for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    out=$(wrk -t1 -c8 -d"${DURATION}s" -s benches/peers_sessions.lua \
        "http://127.0.0.1:$port/" -- "$SESSIONS" | grep '^RESULT')
    kill -TERM "$vp"
    wait "$vp" || true
    reqs=$(echo "$out" | sed 's/.*requests=\([0-9]*\).*/\1/')
    instr=$(sed -n 's/^summary: //p;s/^totals: //p' "$work/cg.$level" | head -1 | awk '{print $1}')
    echo "RUST_LOG=$level: $instr instructions / $reqs requests = $(awk -v i="$instr" -v n="$reqs" 'BEGIN {printf "%.0f", i / n}') per request"
    if [[ ${SIM:-0} != 0 ]]; then
        # The columns by the names on callgrind's `events:` line.
        awk -v n="$reqs" '/^events:/ { for (i = 2; i <= NF; i++) col[$i] = i }
            /^summary:/ { printf "  per request: L1 instruction misses %.0f, L1 data read misses %.0f, write misses %.0f, mispredicted conditional branches %.0f, indirect %.0f\n",
                $col["I1mr"] / n, $col["D1mr"] / n, $col["D1mw"] / n, $col["Bcm"] / n, $col["Bim"] / n }' \
            "$work/cg.$level"
    fi
done
