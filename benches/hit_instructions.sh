#!/usr/bin/env bash
# Instructions per request on the hit path, counted by callgrind (see
# benches/hit_instructions.rs). Deterministic: the same binary gives the same counts
# whatever else the machine is doing.
#
#   benches/hit_instructions.sh                 # every case
#   CASES="bare layer_hit" benches/hit_instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${CASES:-bare bare_10k layer_hit layer_hit_10k naive_hit naive_hit_10k moka_get}
N1=${N1:-20000}
N2=${N2:-40000}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
bin=$(cargo bench --bench hit_instructions --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*hit_instructions[^"]*\)".*/\1/p' | tail -1)
[[ -x "$bin" ]] || { echo "build failed" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
count() { # case iterations
    valgrind --tool=callgrind --callgrind-out-file="$work/out" "$bin" "$1" "$2" >/dev/null 2>"$work/log"
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$work/log"
}
declare -A per
for c in $CASES; do
    a=$(count "$c" "$N1"); b=$(count "$c" "$N2")
    per[$c]=$(( (b - a) / (N2 - N1) ))
    printf '%-14s %8d instructions per iteration\n' "$c" "${per[$c]}"
done
if [[ -n "${per[bare]:-}" && -n "${per[moka_get]:-}" && -n "${per[layer_hit]:-}" ]]; then
    added=$(( per[layer_hit] - per[bare] ))
    echo "layer_hit added over bare: $added = $(awk "BEGIN{printf \"%.2f\", $added/${per[moka_get]}}") x moka_get"
fi
if [[ -n "${per[bare_10k]:-}" && -n "${per[moka_get]:-}" && -n "${per[layer_hit_10k]:-}" ]]; then
    added=$(( per[layer_hit_10k] - per[bare_10k] ))
    echo "layer_hit_10k added over bare_10k: $added = $(awk "BEGIN{printf \"%.2f\", $added/${per[moka_get]}}") x moka_get"
fi
if [[ -n "${per[naive_hit]:-}" && -n "${per[layer_hit]:-}" ]]; then
    echo "layer_hit / naive_hit: $(awk "BEGIN{printf \"%.3f\", ${per[layer_hit]}/${per[naive_hit]}}")"
fi
if [[ -n "${per[naive_hit_10k]:-}" && -n "${per[layer_hit_10k]:-}" ]]; then
    echo "layer_hit_10k / naive_hit_10k: $(awk "BEGIN{printf \"%.3f\", ${per[layer_hit_10k]}/${per[naive_hit_10k]}}")"
fi
