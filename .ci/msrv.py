#!/usr/bin/env python3
"""The declared rust-version, checked without another toolchain (none can be fetched
on these machines): the library's own dependencies, every feature on, must not ask for
a newer Rust than the crate declares. Clippy's `incompatible_msrv` lint, which reads
the same rust-version, checks the crate's own use of the standard library (`.ci/run`'s
clippy step). Exit 1, naming each offender, when either is newer."""
import json
import subprocess
import sys


def version(v):
    parts = [int(p) for p in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.loads(
    subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"]
    )
)
root_id = meta["resolve"]["root"]
packages = {p["id"]: p for p in meta["packages"]}
root = packages[root_id]
declared = root.get("rust_version")
if not declared:
    sys.exit("Cargo.toml declares no rust-version")
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}

# What a user of the library builds: normal and build dependencies, not dev ones.
seen, todo = set(), [root_id]
while todo:
    for dep in nodes[todo.pop()]["deps"]:
        kinds = {k["kind"] for k in dep["dep_kinds"]}
        if kinds - {"dev"} and dep["pkg"] not in seen:
            seen.add(dep["pkg"])
            todo.append(dep["pkg"])

newer = sorted(
    (packages[p]["name"], packages[p]["version"], packages[p]["rust_version"])
    for p in seen
    if packages[p].get("rust_version")
    and version(packages[p]["rust_version"]) > version(declared)
)
for name, ver, rv in newer:
    print(f"{name} {ver} needs Rust {rv}, above the declared rust-version {declared}")
if newer:
    sys.exit(1)
print(f"rust-version {declared}: {len(seen)} library dependencies, none asks for a newer Rust")
