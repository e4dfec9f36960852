#!/usr/bin/env bash
# End-to-end cost of the sticky-session layer: a hyper 1 server on 127.0.0.1 streaming a
# small body (examples/bench_server.rs), with and without the layer, driven by wrk over
# 10 000 session ids in `sticky-session-id` on keep-alive connections.
#
#   benches/e2e.sh                         # 8 rounds x 2 servers x 5 s, about 2 minutes
#   ROUNDS=3 DURATION=5 CONNS=16 benches/e2e.sh
#   SERVERS="bare layer naive" benches/e2e.sh   # also the layer over the naive store
#
# Both servers run at once on separate loopback ports, pinned to CPU 0 with one Tokio
# worker each; wrk runs with one thread pinned to CPU 1 (set SERVER_CPU / WRK_CPU, or
# NO_PIN=1 to not pin). Runs alternate bare/layer, reversing the order every round
# (ABBA), same duration each, after one warm-up run per server (which also creates the
# 10 000 bindings). Prints each run, then per server the median and best run (req/s, p50,
# p99, server CPU time per request from /proc/PID/stat), and against bare: the median of
# the per-round ratios/differences and best-of-runs against best-of-runs. On a shared
# machine other work only ever slows a run down, so the best runs are the cleanest.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-8}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-3}
CONNS=${CONNS:-16}
SESSIONS=${SESSIONS:-10000}
SERVERS=${SERVERS:-bare layer}
SERVER_CPU=${SERVER_CPU:-0}
WRK_CPU=${WRK_CPU:-1}

if ! command -v wrk >/dev/null 2>&1; then
    echo "installing wrk (Debian package)" >&2
    apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi

cargo build --release --example bench_server >&2
SERVER=target/release/examples/bench_server

# $work (a temporary directory) and $pids (processes to stop), both cleaned up on exit.
source benches/support/proxy_bench.sh

pin() { # pin CPU command...
    local cpu=$1; shift
    if [[ -n "${NO_PIN:-}" ]]; then "$@"; else taskset -c "$cpu" "$@"; fi
}

start_server() { # name flag
    local name=$1 flag=$2
    if [[ -n "${NO_PIN:-}" ]]; then
        "$SERVER" "$flag" --listen 127.0.0.1:0 --threads 1 >"$work/$name.out" 2>&1 &
    else
        taskset -c "$SERVER_CPU" "$SERVER" "$flag" --listen 127.0.0.1:0 --threads 1 >"$work/$name.out" 2>&1 &
    fi
    pids+=($!)
    eval "${name}_pid=$!"
    for _ in $(seq 100); do
        grep -q '^listening on' "$work/$name.out" 2>/dev/null && break
        sleep 0.05
    done
    eval "${name}_addr=$(sed -n 's/^listening on //p' "$work/$name.out")"
}

for name in $SERVERS; do
    start_server "$name" "--$name"
    echo "$name server: pid $(eval echo "\$${name}_pid") on $(eval echo "\$${name}_addr")" >&2
done

# Requests come from benches/e2e_sessions.lua: formatted once in init() and handed out
# round-robin, so the per-request Lua work is a table index, the same for every server.

cpu_ticks() { # pid -> utime+stime in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat"
}

run() { # name duration -> one result line
    local name=$1 dur=$2 pid addr t0 t1 out
    pid=$(eval echo "\$${name}_pid")
    addr=$(eval echo "\$${name}_addr")
    t0=$(cpu_ticks "$pid")
    out=$(pin "$WRK_CPU" wrk -t1 -c"$CONNS" -d"${dur}s" --latency -s benches/e2e_sessions.lua \
        "http://$addr/" -- "$SESSIONS" | grep '^RESULT')
    t1=$(cpu_ticks "$pid")
    echo "$name ${out#RESULT } server_ticks=$((t1 - t0))"
}

hz=$(getconf CLK_TCK)
echo "# warm-up ${WARMUP}s each (creates the bindings)" >&2
for name in $SERVERS; do run "$name" "$WARMUP" >&2; done
reversed=$(echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' ')

results="$work/results"
: >"$results"
for r in $(seq "$ROUNDS"); do
    if (( r % 2 )); then order=$SERVERS; else order=$reversed; fi
    for name in $order; do
        line=$(run "$name" "$DURATION")
        echo "round $r $line"
        echo "$line" >>"$results"
    done
done

for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()
for name in $SERVERS; do
    echo "# $name server counters: $(grep '^stats' "$work/$name.out" || echo 'n/a')"
done

awk -v hz="$hz" -v conns="$CONNS" -v sessions="$SESSIONS" '
function kv(k,   i, p) { for (i = 2; i <= NF; i++) { split($i, p, "="); if (p[1] == k) return p[2] } }
function median(a, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function med(arr, m, n,   i, tmp) { for (i = 1; i <= n; i++) tmp[i] = arr[m, i]; return median(tmp, n) }
function best(arr, m, n, sign,   i, b) { b = arr[m, 1]; for (i = 2; i <= n; i++) if (sign * arr[m, i] > sign * b) b = arr[m, i]; return b }
{
    m = $1; k = ++n[m]
    rps[m, k] = kv("requests") / (kv("duration_us") / 1e6)
    p99[m, k] = kv("p99_us"); p50[m, k] = kv("p50_us")
    cpu[m, k] = kv("server_ticks") / hz * 1e6 / kv("requests")
    util[m, k] = kv("server_ticks") / hz / (kv("duration_us") / 1e6) * 100
    err[m] += kv("errors") + kv("non2xx")
}
END {
    printf "\nper server over %d runs: median (best)\n", n["bare"]
    printf "%-6s %20s %18s %18s %22s %12s %7s\n", "", "req/s", "p50 us", "p99 us", "server CPU us/req", "server CPU", "errors"
    for (m in n)
        printf "%-6s %11.0f (%6.0f) %9.1f (%6.1f) %9.1f (%6.1f) %12.2f (%6.2f) %10.0f%% %7d\n", m,
            med(rps, m, n[m]), best(rps, m, n[m], 1), med(p50, m, n[m]), best(p50, m, n[m], -1),
            med(p99, m, n[m]), best(p99, m, n[m], -1), med(cpu, m, n[m]), best(cpu, m, n[m], -1),
            med(util, m, n[m]), err[m]
    printf "\nconnections=%d sessions=%d; ratios are medians of the per-round ratios (each round runs\n", conns, sessions
    printf "every server back to back), then best-of-runs against best-of-runs.\n"
    for (m in n) {
        if (m == "bare") continue
        for (i = 1; i <= n[m]; i++) {
            r[i] = rps[m, i] / rps["bare", i]; d99[i] = p99[m, i] - p99["bare", i]; dc[i] = cpu[m, i] - cpu["bare", i]
        }
        printf "\n%s vs bare:\n", m
        printf "  throughput ratio:        %.3f  best/best %.3f  (target >= 0.97)\n", median(r, n[m]), best(rps, m, n[m], 1) / best(rps, "bare", n["bare"], 1)
        printf "  p99 added:               %+.0f us  best/best %+.0f us  (target <= 50 us)\n", median(d99, n[m]), best(p99, m, n[m], -1) - best(p99, "bare", n["bare"], -1)
        printf "  server CPU per request:  %+.2f us  best/best %+.2f us (%+.1f%%)\n", median(dc, n[m]), best(cpu, m, n[m], -1) - best(cpu, "bare", n["bare"], -1), (best(cpu, m, n[m], -1) / best(cpu, "bare", n["bare"], -1) - 1) * 100
    }
}' "$results"
