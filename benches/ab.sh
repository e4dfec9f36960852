#!/usr/bin/env bash
# Two builds of the example proxy against each other, in alternating pairs: both run
# side by side in front of the same upstream (three examples/bench_server listeners,
# 4 SSE events per answer, as benches/peers.sh), and wrk (`-t1 -c64`, 10 000 sessions,
# benches/peers_sessions.lua) drives one and then the other for DURATION seconds,
# PAIRS times, in ABBA order. Per run: the proxy's CPU per request (utime+stime from
# /proc, and each apart) and its requests. At the end: the medians of the per-pair
# ratios (B against A) and their quartiles.
#
# On this shared 2-core machine one build's CPU per request moves by ±15 % from run to
# run; alternating short runs of the two and taking the median of the ratios separates
# differences of a few percent that one benches/peers.sh run does not.
#
#   benches/ab.sh target/proxy-before target/release/examples/proxy
#   PAIRS=20 DURATION=3 RUST_LOG=warn benches/ab.sh A B
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?usage: benches/ab.sh PROXY_A PROXY_B}
B=${2:?usage: benches/ab.sh PROXY_A PROXY_B}
PAIRS=${PAIRS:-20}
DURATION=${DURATION:-3}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release --example bench_server >&2
# $work, $pids, free_port, wait_port, start_upstream.
source benches/support/proxy_bench.sh
start_upstream 4 0

# start NAME BIN: the proxy's pid and port, on one line.
start() {
    local port
    port=$(free_port)
    RUST_LOG=${RUST_LOG:-info} TOKIO_WORKER_THREADS=2 "$2" --listen "127.0.0.1:$port" \
        --upstream "account-a=http://${ups[0]}" --upstream "account-b=http://${ups[1]}" \
        --upstream "account-c=http://${ups[2]}" >/dev/null 2>"$work/$1.log" &
    echo "$! $port"
}
read -r pa porta < <(start a "$A")
read -r pb portb < <(start b "$B")
pids+=("$pa" "$pb")
wait_port "$porta"
wait_port "$portb"

# run PID PORT: "cpu_us user_us sys_us requests" per request, over one wrk run.
run() {
    local u0 s0 u1 s1 n
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$1/stat")
    n=$(wrk -t1 -c64 -d"${DURATION}s" -s benches/peers_sessions.lua "http://127.0.0.1:$2/" -- 10000 |
        sed -n 's/.*requests=\([0-9]*\).*/\1/p')
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$1/stat")
    local tick
    tick=$(getconf CLK_TCK)
    python3 -c "u=($u1-$u0)*1e6/$tick/$n; s=($s1-$s0)*1e6/$tick/$n; print(f'{u+s:.2f} {u:.2f} {s:.2f} $n')"
}
echo "# warm-up" >&2
run "$pa" "$porta" >/dev/null
run "$pb" "$portb" >/dev/null
: >"$work/pairs"
for k in $(seq "$PAIRS"); do
    if ((k % 2)); then
        a=$(run "$pa" "$porta"); b=$(run "$pb" "$portb")
    else
        b=$(run "$pb" "$portb"); a=$(run "$pa" "$porta")
    fi
    echo "pair $k A: cpu/user/sys us per request, requests = $a | B: $b"
    echo "$a $b" >>"$work/pairs"
done
python3 - "$work/pairs" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
def q(xs):
    xs = sorted(xs)
    return statistics.median(xs), xs[len(xs) // 4], xs[(3 * len(xs)) // 4]
cpu = q([r[4] / r[0] for r in rows])
thr = q([r[7] / r[3] for r in rows])
print(f"B against A over {len(rows)} pairs: CPU per request median {cpu[0]:.3f} x "
      f"(quartiles {cpu[1]:.3f}-{cpu[2]:.3f}), throughput median {thr[0]:.3f} x "
      f"(quartiles {thr[1]:.3f}-{thr[2]:.3f})")
print(f"medians per request: A user {statistics.median(r[1] for r in rows):.2f} us, "
      f"sys {statistics.median(r[2] for r in rows):.2f} us; "
      f"B user {statistics.median(r[5] for r in rows):.2f} us, sys {statistics.median(r[6] for r in rows):.2f} us")
PY
