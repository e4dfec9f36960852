#!/usr/bin/env bash
# On-demand soak of the reliability tests (RELIABILITY.md), in release mode:
#   - the table model and the header property test with PROPTEST_CASES cases (default 10 000),
#   - the 1 000 000-id flood with memory and retention figures, and retention by touch rate,
#   - the concurrency invariants and the end-to-end failure injection, SOAK_REPEAT times.
# Prints the figures each test reports. CI runs the same tests at their small sizes.
#
#   scripts/soak.sh                         # defaults
#   PROPTEST_CASES=50000 SOAK_REPEAT=50 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cases="${PROPTEST_CASES:-10000}"
repeat="${SOAK_REPEAT:-20}"
cargo_test() { cargo test --release --all-features "$@"; }

echo "=== build (release) ==="
cargo_test --no-run --test reliability --test hostile_input

echo
echo "=== property tests: ${cases} cases each ==="
PROPTEST_CASES="$cases" cargo_test --test reliability -- model:: --nocapture --test-threads 1 2>&1 \
    | grep -E '^model:|test result'
PROPTEST_CASES="$cases" cargo_test --test hostile_input arbitrary_header_bytes 2>&1 \
    | grep -E 'test result'
echo "hostile input property: ${cases} cases of arbitrary header bytes"

echo
echo "=== flood: 1 000 000 unique ids, capacity 10 000; retention by touch rate ==="
cargo_test --test reliability -- flood:: --include-ignored --nocapture --test-threads 1 2>&1 \
    | grep -E 'flood:|retention:|test result'

echo
echo "=== concurrency invariants and failure injection, ${repeat} runs each ==="
# "test binary:filter" (the reliability tests share one binary; hostile input has its own).
for run in reliability:concurrency:: reliability:failure_injection:: hostile_input:; do
    bin="${run%%:*}" filter="${run#*:}" test="${filter%::}"
    test="${test:-$bin}"
    for _ in $(seq 1 "$repeat"); do
        cargo_test -q --test "$bin" -- $filter >/dev/null 2>&1 || {
            echo "FAILED: $test (rerun: cargo test --release --all-features --test $bin -- $filter)"
            exit 1
        }
    done
    echo "$test: $repeat runs passed"
done
echo
echo "soak passed"
