#!/usr/bin/env bash
# Load run of the example proxy: CLIENTS concurrent clients (default 1 000) streaming
# server-sent events through the release proxy binary for SECS seconds (default 30), over
# three accounts of which one answers 503 to everything (about a third of the requests
# hit it first and fail over). Prints the proxy's RSS every second, then the totals; fails
# if any client saw a failure. Figures: RELIABILITY.md, "The example proxy under load".
#
#   benches/proxy_load.sh
#   CLIENTS=2000 SECS=60 SESSIONS=10000 benches/proxy_load.sh
#   ADMIN_WALK=1 SECS=60 benches/proxy_load.sh   # p50/p99 to the response head while the
#                                                 # admin walks every binding, and before
set -euo pipefail
cd "$(dirname "$0")/.."
# Each client holds one connection to the proxy, which holds one to an account.
ulimit -n "$(( $(ulimit -Hn) < 65536 ? $(ulimit -Hn) : 65536 ))"
cargo build --release --example proxy >&2
PROXY_BIN=target/release/examples/proxy \
    cargo test --release --test proxy_load -- --ignored --nocapture
