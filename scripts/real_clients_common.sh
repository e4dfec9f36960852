# Shared by scripts/real_clients.sh and scripts/real_clients_more.sh (sourced, not run):
# their log line, their clean-up at exit (the processes in PIDS, and WORK unless KEEP is
# set) and their wait for a listening port. The sourcing script sets WORK and PIDS first.

log() { printf '== %s\n' "$*" >&2; }

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -z "${KEEP:-}" ]]; then rm -rf "$WORK"; else log "logs kept in $WORK"; fi
}
trap cleanup EXIT

wait_port() { # host:port, seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    return 1
}
