#!/usr/bin/env bash
# gc scan + sweep of N orphan blobs through the release CLI against
# `find blobs -name '*.qcow2' -delete` on an identical tree (DESIGN.md §12: ≤ 1.3 × find).
# Trees are built on disk under the target dir (not tmpfs) by hyperfine's --prepare, untimed, and
# synced there: otherwise gc's one fsync of blobs/ would also pay for the setup's 100,000 creates.
#
# usage: benches/gc_compare.sh [N] [RUNS]      (defaults: 100000 blobs, 3 runs each)
set -euo pipefail

n=${1:-100000}
runs=${2:-3}
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
bin=$target/release/imgstore
work=$target/tmp/gc-compare
root=$work/root

cargo build --release --quiet --bin imgstore --manifest-path "$repo/Cargo.toml"
mkdir -p "$work"

# A root with N empty orphans <64 hex>.qcow2 (made by a Python one-liner: no fork per file).
build="rm -rf '$root' && mkdir -p '$root/cloudimg/blobs' && python3 -c \"
import os
d = '$root/cloudimg/blobs'
for i in range($n):
    os.close(os.open(os.path.join(d, '%064x.qcow2' % i), os.O_CREAT | os.O_WRONLY, 0o644))
\" && sync"

hyperfine --runs "$runs" --prepare "$build" \
    --command-name "find -delete ($n)" "find '$root/cloudimg/blobs' -name '*.qcow2' -delete" \
    --command-name "imgstore gc --grace 0 ($n)" "'$bin' --root '$root' gc --grace 0 -o json > /dev/null" \
    --command-name "imgstore gc --grace 0, 1 thread ($n)" "RAYON_NUM_THREADS=1 '$bin' --root '$root' gc --grace 0 -o json > /dev/null" \
    --export-markdown "$work/result.md"
# The last command run must have deleted every orphan.
test -z "$(ls -A "$root/cloudimg/blobs")" || { echo "orphans left behind" >&2; exit 1; }
rm -rf "$root"
