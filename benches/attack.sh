#!/usr/bin/env bash
# Load-and-attack run of the example proxy (examples/attack.rs): CLIENTS streaming clients
# (default 1 000) must all be served while IDLE idle HTTP/2 connections (2 000), DRIBBLERS
# body dribblers (1 000, one byte every 3 s) and LARGE large-body clients (40 x 15 MiB)
# attack the release proxy binary, with its default limits, for SECS seconds (90: long
# enough for --header-timeout 30 s, --body-timeout 60 s and --conn-idle-timeout 60 s to
# close the attackers at least once). Prints the proxy's RSS and open descriptors every
# second, then the maxima, the failures and the time the attackers were held. Exit 1 if
# any streaming client saw a failure. Figures: RELIABILITY.md, "Load and attack run".
#
#   benches/attack.sh
#   CLIENTS=500 SECS=120 benches/attack.sh
#   PROXY_ARGS="--conn-idle-timeout 10" benches/attack.sh    # extra proxy flags
set -euo pipefail
cd "$(dirname "$0")/.."
# ~4 000 client connections, each with a socket on both sides (driver and proxy), plus
# the proxy's upstream connections: raise the soft limit to the hard one.
ulimit -n "$(ulimit -Hn)"
nice -n 10 cargo build --release --example proxy --example attack >&2
PROXY_BIN=target/release/examples/proxy nice -n 10 target/release/examples/attack
