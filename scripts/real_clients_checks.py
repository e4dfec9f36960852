"""What the real-client scripts' summaries share (imported by the Python they run at the
end of scripts/real_clients.sh and scripts/real_clients_more.sh): reading the mock
accounts' JSON-lines logs, and the checks' tally."""

import json
import sys

fails = []


def jl(path):
    """The JSON objects of a JSON-lines file, none when it does not exist."""
    try:
        return [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    except FileNotFoundError:
        return []


def check(ok, what):
    """Prints one check's outcome and counts it when it failed."""
    print(("  ok   " if ok else "  FAIL ") + what)
    if not ok:
        fails.append(what)


def finish():
    """Prints the tally and exits: 0 when every check passed."""
    print(f"\n{len(fails)} failed" if fails else "\nall checks passed")
    sys.exit(1 if fails else 0)
