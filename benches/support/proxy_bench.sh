# Shared by the benchmark scripts, sourced from the repository's root: a work directory
# and the processes to stop on exit (all of them, e2e.sh too), free loopback ports, and
# the upstream the proxy's scripts (peers.sh, proxy_instructions.sh, ab.sh) run it in
# front of.

# $work (a new temporary directory) and $pids (processes to stop), both cleaned up on exit.
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# build_with_proxy [EXAMPLE...]: builds examples/bench_server and the EXAMPLEs (release),
# and the proxy too unless PROXY_BIN names a build of it; PROXY_BIN is then set.
build_with_proxy() {
    local examples=(--example bench_server)
    for e in "$@"; do examples+=(--example "$e"); done
    if [[ -z "${PROXY_BIN:-}" ]]; then
        cargo build --release --example proxy "${examples[@]}" >&2
        PROXY_BIN=target/release/examples/proxy
    else
        cargo build --release "${examples[@]}" >&2
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_port PORT: until something listens on it (10 s), else the logs in $work and fail.
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    for f in "$work"/*.log "$work"/*.out; do echo "== $f"; tail -n 5 "$f"; done >&2
    return 1
}

# start_upstream EVENTS GAP_MS: examples/bench_server (built) on three loopback listeners
# (the accounts), one Tokio worker, EVENTS server-sent events per answer GAP_MS apart;
# its pid is pids[0] and its addresses are ${ups[@]}.
start_upstream() {
    target/release/examples/bench_server --bare --threads 1 --events "$1" --event-gap "$2" \
        --listen 127.0.0.1:0 --listen 127.0.0.1:0 --listen 127.0.0.1:0 >"$work/upstream.out" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        [[ $(grep -c '^listening on' "$work/upstream.out" 2>/dev/null || true) == 3 ]] && break
        sleep 0.05
    done
    mapfile -t ups < <(sed -n 's/^listening on //p' "$work/upstream.out")
}
