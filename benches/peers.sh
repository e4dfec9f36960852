#!/usr/bin/env bash
# The example proxy against HAProxy and NGINX as sticky gateways in front of the same
# upstream: three loopback listeners of examples/bench_server.rs (three "accounts"), each
# response 4 server-sent events ready at once, driven by wrk with 64 keep-alive
# connections sending `POST /v1/chat/completions` over 10 000 session ids in `session-id`
# (benches/peers_sessions.lua).
#
#   benches/peers.sh                            # 5 rounds x 3 gateways x 5 s, about 2 minutes
#   ROUNDS=3 DURATION=5 CONNS=64 GATEWAYS="proxy haproxy" benches/peers.sh
#   PROXY_BIN=/path/to/other/proxy benches/peers.sh   # e.g. a build of the previous commit
#   PROXY_ARGS="--no-body-session" RUST_LOG=warn benches/peers.sh
#   BASE_BIN=/tmp/proxy-before GATEWAYS="proxy base haproxy nginx" benches/peers.sh
#                                               # "base": another proxy build, same flags
#   GATEWAYS="proxy floor haproxy" benches/peers.sh # "floor": examples/floor_proxy.rs
#   GAP_MS=1 GATEWAYS="direct proxy haproxy" benches/peers.sh
#                                               # events 1 ms apart; "direct": wrk straight
#                                               # to one upstream listener (no gateway)
#
# - proxy: target/release/examples/proxy (2 Tokio workers: THREADS), default flags
#   (session headers of known clients, which include `session-id`; JSON body reader on;
#   RUST_LOG as in the environment, default `info`: one log line per request, to a file).
# - haproxy (Debian package): `nbthread 2`, a stick-table on `req.hdr(session-id)` over
#   the three servers (round-robin for a new session), `http-reuse always`.
# - floor (on request): examples/floor_proxy.rs, the least a hyper 1 reverse proxy does
#   for these requests with what makes the proxy cheap (hash of `session-id`, a pool of
#   hyper HTTP/1 connections per thread, ready frames gathered into one write, mimalloc;
#   no log, no timeouts, no layers; one current-thread runtime per thread like the proxy,
#   or FLOOR_RUNTIME=multi): what hyper and Tokio cost here, below anything the proxy adds.
# - nginx (Debian package): 2 worker processes, `hash $http_session_id consistent`,
#   upstream keep-alive, `proxy_buffering off` (a streaming gateway), no access log.
#
# All gateways run at once on their own ports (each idle while another is measured).
# Runs rotate the order every round (same duration each) after one warm-up run per
# gateway (which also binds the 10 000 sessions). Per run: req/s, p50/p99 and the
# gateway's CPU per request from /proc/PID/stat (utime+stime; nginx: master + workers),
# and its neighbours' behind it: the upstream's (/proc) and wrk's (the shell's `times`).
# The three share the 2 cores, so the throughput follows the sum of the three (for
# "direct" the gateway's column is the upstream's own: count it once).
# Then per gateway the median and best run and, per round, the ratios to HAProxy and
# NGINX (median over rounds). Then syscalls per request: a separate SYSCALL_DURATION run
# per gateway under `perf stat -e raw_syscalls:sys_enter -p PIDS` (or `strace -c -f` with
# STRACE=1, which slows the gateway down but names the calls). Last, the proxy's sticky
# counters: lookups that missed beyond the sessions' first requests are sessions that
# lost their binding (and were possibly moved to another account).
#
# Nothing is pinned: the 2 cores are shared by wrk, the upstream and the gateway, as
# they would be on a small box. CPU per request is the steadier figure.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-3}
CONNS=${CONNS:-64}
SESSIONS=${SESSIONS:-10000}
THREADS=${THREADS:-2}
GATEWAYS=${GATEWAYS:-proxy haproxy nginx}
SYSCALL_DURATION=${SYSCALL_DURATION:-3}
EVENTS=${EVENTS:-4}

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
[[ " $GATEWAYS " == *" haproxy "* ]] && ! command -v haproxy >/dev/null 2>&1 && need+=(haproxy)
[[ " $GATEWAYS " == *" nginx "* ]] && ! command -v nginx >/dev/null 2>&1 && need+=(nginx)
if ((${#need[@]})); then
    echo "installing ${need[*]} (Debian packages)" >&2
    apt-get install -y "${need[@]}" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "${need[@]}" >/dev/null; }
fi
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# $work, $pids, build_with_proxy, free_port, wait_port, start_upstream.
source benches/support/proxy_bench.sh
build_with_proxy floor_proxy

# The upstream: three listeners, one Tokio worker.
start_upstream "$EVENTS" "${GAP_MS:-0}"
echo "upstream: pid ${pids[0]} on ${ups[*]}" >&2

declare -A port pidlist
for g in $GATEWAYS; do port[$g]=$(free_port); done
if [[ -n "${port[direct]:-}" ]]; then
    # No gateway: the first upstream listener itself (its CPU is the upstream's).
    port[direct]=${ups[0]##*:}
    pidlist[direct]=${pids[0]}
fi

declare -A admin
start_proxy() { # name binary
    admin[$1]=$(free_port)
    # shellcheck disable=SC2086
    TOKIO_WORKER_THREADS=$THREADS "$2" --listen "127.0.0.1:${port[$1]}" \
        --admin "127.0.0.1:${admin[$1]}" \
        --upstream "account-a=http://${ups[0]}" --upstream "account-b=http://${ups[1]}" \
        --upstream "account-c=http://${ups[2]}" ${PROXY_ARGS:-} >"$work/$1.log" 2>&1 &
    pids+=($!)
    pidlist[$1]=$!
    wait_port "${port[$1]}"
}
[[ -n "${port[proxy]:-}" ]] && start_proxy proxy "$PROXY_BIN"
if [[ -n "${port[floor]:-}" ]]; then
    FLOOR_RUNTIME=${FLOOR_RUNTIME:-per-core} TOKIO_WORKER_THREADS=$THREADS target/release/examples/floor_proxy --listen "127.0.0.1:${port[floor]}" \
        --upstream "http://${ups[0]}" --upstream "http://${ups[1]}" --upstream "http://${ups[2]}" \
        >"$work/floor.log" 2>&1 &
    pids+=($!)
    pidlist[floor]=$!
    wait_port "${port[floor]}"
fi
[[ -n "${port[base]:-}" ]] && start_proxy base "${BASE_BIN:?BASE_BIN names the other proxy build}"

if [[ -n "${port[haproxy]:-}" ]]; then
    cat >"$work/haproxy.cfg" <<CFG
global
    nbthread $THREADS
    maxconn 4000
defaults
    mode http
    timeout connect 10s
    timeout client 300s
    timeout server 300s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:${port[haproxy]}
    default_backend accounts
backend accounts
    balance roundrobin
    stick-table type string len 64 size 200k expire 1h
    stick on req.hdr(session-id)
    server account-a ${ups[0]}
    server account-b ${ups[1]}
    server account-c ${ups[2]}
CFG
    "$HAPROXY" -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
    pids+=($!)
    pidlist[haproxy]=$!
    wait_port "${port[haproxy]}"
fi

if [[ -n "${port[nginx]:-}" ]]; then
    mkdir -p "$work/nginx"
    cat >"$work/nginx.conf" <<CFG
worker_processes $THREADS;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 10000; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    keepalive_requests 1000000;
    upstream accounts {
        hash \$http_session_id consistent;
        server ${ups[0]};
        server ${ups[1]};
        server ${ups[2]};
        keepalive 128;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:${port[nginx]};
        location / {
            proxy_pass http://accounts;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
CFG
    "$NGINX" -c "$work/nginx.conf" -p "$work/nginx" >"$work/nginx.out" 2>&1 &
    pids+=($!)
    wait_port "${port[nginx]}"
    pidlist[nginx]="${pids[-1]} $(ps -o pid= --ppid "${pids[-1]}" | tr -s ' \n' ' ')"
fi

for g in $GATEWAYS; do echo "$g: pids ${pidlist[$g]} on 127.0.0.1:${port[$g]}" >&2; done

cpu_ticks() { # pids... -> "utime stime" in clock ticks, each summed over the pids
    local u=0 s=0 p a b
    for p in "$@"; do
        read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat")
        u=$((u + a)) s=$((s + b))
    done
    echo "$u $s"
}

run() { # gateway duration -> one result line
    local g=$1 dur=$2 u0 s0 u1 s1 up0 ups0 up1 ups1 out wrk_cpu
    # shellcheck disable=SC2086
    read -r u0 s0 < <(cpu_ticks ${pidlist[$g]})
    read -r up0 ups0 < <(cpu_ticks "${pids[0]}")
    # wrk's own CPU time: `times` in the same subshell gives its children's (wrk, grep).
    out=$(
        wrk -t1 -c"$CONNS" -d"${dur}s" --latency -s benches/peers_sessions.lua \
            "http://127.0.0.1:${port[$g]}/" -- "$SESSIONS" | grep '^RESULT'
        times >"$work/times.$g"
        awk 'NR == 2 {
            split($1, u, "m"); split($2, s, "m")
            printf "wrk_cpu_s=%.3f\n", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$work/times.$g"
    )
    # shellcheck disable=SC2086
    read -r u1 s1 < <(cpu_ticks ${pidlist[$g]})
    read -r up1 ups1 < <(cpu_ticks "${pids[0]}")
    wrk_cpu=$(echo "$out" | sed -n 's/^wrk_cpu_s=//p')
    out=$(echo "$out" | grep '^RESULT')
    echo "$g ${out#RESULT } gw_ticks=$((u1 - u0 + s1 - s0)) gw_sys_ticks=$((s1 - s0))" \
        "upstream_ticks=$((up1 - up0 + ups1 - ups0)) wrk_cpu_s=$wrk_cpu"
}

hz=$(getconf CLK_TCK)
echo "# warm-up ${WARMUP}s each (binds the sessions)" >&2
for g in $GATEWAYS; do run "$g" "$WARMUP" >&2; done

results="$work/results"
: >"$results"
read -r -a order <<<"$GATEWAYS"
for r in $(seq "$ROUNDS"); do
    for g in "${order[@]}"; do
        line=$(run "$g" "$DURATION")
        echo "round $r $line"
        echo "$r $line" >>"$results"
    done
    order=("${order[@]:1}" "${order[0]}")
done

echo "# syscalls per request (${SYSCALL_DURATION}s run each)"
for g in $GATEWAYS; do
    pl=$(echo "${pidlist[$g]}" | tr -s ' ' ',' | sed 's/,$//')
    if [[ -n "${STRACE:-}" ]]; then
        args=()
        for p in ${pidlist[$g]}; do args+=(-p "$p"); done
        strace -c -f "${args[@]}" -o "$work/$g.strace" &
    else
        perf stat -e raw_syscalls:sys_enter -p "$pl" -o "$work/$g.perf" &
    fi
    tracer=$!
    sleep 0.5
    out=$(wrk -t1 -c"$CONNS" -d"${SYSCALL_DURATION}s" -s benches/peers_sessions.lua \
        "http://127.0.0.1:${port[$g]}/" -- "$SESSIONS" | grep '^RESULT')
    sleep 0.2
    kill -INT "$tracer"
    wait "$tracer" 2>/dev/null || true
    reqs=$(echo "$out" | sed 's/.*requests=\([0-9]*\).*/\1/')
    if [[ -n "${STRACE:-}" ]]; then
        calls=$(awk '$NF == "total" {print $(NF-2)}' "$work/$g.strace")
        echo "$g: $calls syscalls / $reqs requests = $(awk -v c="$calls" -v n="$reqs" 'BEGIN {printf "%.2f", c / n}') per request"
        awk -v n="$reqs" 'NR > 2 && $NF != "total" && $4 ~ /^[0-9]+$/ {printf "    %-16s %6.2f\n", $NF, $4 / n}' "$work/$g.strace" | sort -k2 -nr | head -8
    else
        calls=$(awk '/raw_syscalls:sys_enter/ {gsub(",", "", $1); print $1}' "$work/$g.perf")
        echo "$g: $calls syscalls / $reqs requests = $(awk -v c="$calls" -v n="$reqs" 'BEGIN {printf "%.2f", c / n}') per request (approximate: includes the ${SYSCALL_DURATION}.7 s around the run)"
    fi
done

for g in proxy base; do
    [[ -n "${port[$g]:-}" ]] || continue
    m=$(curl -s "http://127.0.0.1:${admin[$g]}/metrics")
    misses=$(echo "$m" | awk '$1 ~ /^sticky_session_misses(_total)?$/ {print $2}')
    hits=$(echo "$m" | awk '$1 ~ /^sticky_session_hits(_total)?$/ {print $2}')
    echo "# $g sticky counters: hits=$hits misses=$misses sessions=$SESSIONS; sessions that lost their binding (misses beyond the first request of each): $((misses - SESSIONS))"
done

echo
awk -v hz="$hz" -v conns="$CONNS" -v sessions="$SESSIONS" '
function kv(k,   i, p) { for (i = 3; i <= NF; i++) { split($i, p, "="); if (p[1] == k) return p[2] } }
function median(a, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function med(arr, m, n,   i, tmp) { for (i = 1; i <= n; i++) tmp[i] = arr[m, i]; return median(tmp, n) }
function best(arr, m, n, sign,   i, b) { b = arr[m, 1]; for (i = 2; i <= n; i++) if (sign * arr[m, i] > sign * b) b = arr[m, i]; return b }
{
    r = $1; m = $2; k = ++n[m]; seen[m] = 1
    rps[m, k] = kv("requests") / (kv("duration_us") / 1e6)
    p99[m, k] = kv("p99_us"); p50[m, k] = kv("p50_us")
    cpu[m, k] = kv("gw_ticks") / hz * 1e6 / kv("requests")
    sys[m, k] = kv("gw_sys_ticks") / hz * 1e6 / kv("requests")
    up[m, k] = kv("upstream_ticks") / hz * 1e6 / kv("requests")
    wrk[m, k] = kv("wrk_cpu_s") * 1e6 / kv("requests")
    err[m] += kv("errors") + kv("non2xx")
}
END {
    printf "\nper gateway over %d rounds: median (best)\n", n["proxy"] ? n["proxy"] : n["haproxy"]
    printf "%-8s %20s %18s %18s %22s %12s %10s %8s %7s\n", "", "req/s", "p50 us", "p99 us", "gateway CPU us/req", "of it kernel", "upstream", "wrk", "errors"
    for (m in seen)
        printf "%-8s %11.0f (%6.0f) %9.1f (%6.1f) %9.1f (%6.1f) %12.2f (%6.2f) %12.2f %10.2f %8.2f %7d\n", m,
            med(rps, m, n[m]), best(rps, m, n[m], 1), med(p50, m, n[m]), best(p50, m, n[m], -1),
            med(p99, m, n[m]), best(p99, m, n[m], -1), med(cpu, m, n[m]), best(cpu, m, n[m], -1),
            med(sys, m, n[m]), med(up, m, n[m]), med(wrk, m, n[m]), err[m]
    printf "(upstream, wrk: their CPU us per request behind that gateway, medians)\n"
    if (!("proxy" in seen)) exit
    printf "\nconnections=%d sessions=%d; proxy against each peer: median of the per-round ratios\n", conns, sessions
    for (m in seen) {
        if (m == "proxy") continue
        for (i = 1; i <= n[m]; i++) { rr[i] = rps["proxy", i] / rps[m, i]; cr[i] = cpu["proxy", i] / cpu[m, i] }
        printf "  vs %-8s throughput %.3f x   CPU per request %.2f x\n", m, median(rr, n[m]), median(cr, n[m])
    }
}' "$results"
