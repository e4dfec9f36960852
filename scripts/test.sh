#!/usr/bin/env bash
# The project's test command (README "Set-up"): every test, against a real redis-server.
# Installs Debian's redis-server when it is missing and we may (root with apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "redis-server not found: installing Debian's redis-server package" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        echo "redis-server is needed by the Redis store tests: install it (e.g. apt-get install redis-server)" >&2
        exit 1
    fi
fi
# The package starts a system instance; the tests start their own on free ports.
exec cargo test --all-features "$@"
