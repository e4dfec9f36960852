#!/usr/bin/env bash
# The example proxy's CPU per request thread by thread (its two workers, the log thread,
# the runtime's own threads), and each thread's involuntary context switches per
# request: the proxy (2 workers, RUST_LOG as in the environment, default `info`, stderr
# to a file) in front of three examples/bench_server listeners (4 SSE events per answer,
# as benches/peers.sh), driven by wrk with 64 connections over 10 000 sessions
# (benches/peers_sessions.lua) for DURATION seconds after a 3 s warm-up. Counts from
# /proc/PID/task/*/stat and status before and after the run.
#
#   benches/proxy_threads.sh                        # the release build
#   PROXY_BIN=target/proxy-before DURATION=15 benches/proxy_threads.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-8}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
# $work, $pids, build_with_proxy, free_port, wait_port, start_upstream.
source benches/support/proxy_bench.sh
build_with_proxy
start_upstream 4 0
port=$(free_port)
RUST_LOG=${RUST_LOG:-info} TOKIO_WORKER_THREADS=2 "$PROXY_BIN" --listen "127.0.0.1:$port" \
    --upstream "account-a=http://${ups[0]}" --upstream "account-b=http://${ups[1]}" \
    --upstream "account-c=http://${ups[2]}" >"$work/proxy.out" 2>"$work/proxy.log" &
proxy=$!
pids+=("$proxy")
wait_port "$port"
wrk -t1 -c64 -d3s -s benches/peers_sessions.lua "http://127.0.0.1:$port/" -- 10000 >/dev/null
# One line per thread: its id, name, utime+stime in ticks, involuntary switches.
snapshot() {
    for t in /proc/"$proxy"/task/*; do
        printf '%s %s %s %s\n' "${t##*/}" "$(tr ' ' '_' <"$t/comm")" \
            "$(awk '{print $14 + $15}' "$t/stat")" \
            "$(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "$t/status")"
    done
}
snapshot >"$work/before"
out=$(wrk -t1 -c64 -d"${DURATION}s" -s benches/peers_sessions.lua "http://127.0.0.1:$port/" -- 10000 | grep '^RESULT')
snapshot >"$work/after"
reqs=$(echo "$out" | sed 's/.*requests=\([0-9]*\).*/\1/')
tick_us=$(awk -v hz="$(getconf CLK_TCK)" 'BEGIN {print 1e6 / hz}')
echo "$reqs requests in ${DURATION}s"
join "$work/before" "$work/after" | awk -v n="$reqs" -v t="$tick_us" '
    { printf "%-18s CPU %6.2f us per request, involuntary switches %.3f per request\n",
        $2, ($6 - $3) * t / n, ($7 - $4) / n }'
