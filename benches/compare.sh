#!/usr/bin/env bash
# Time imgstore's file hashing (verify::hash_file, through examples/hashfile.rs) against b3sum and
# `openssl dgst -sha256` on the same file, and print the ratios DESIGN.md §12 sets targets for
# (blake3 >= 0.9x b3sum, sha256 >= 0.95x openssl; ratio = tool time / imgstore time, so > 1 means
# imgstore is faster).
#
# Usage: benches/compare.sh [FILE]   (default: a 2 GiB file under the target dir, created once)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
cargo build --release --example hashfile --manifest-path "$root/Cargo.toml" >&2
hashfile=$target/release/examples/hashfile

file=${1:-}
if [[ -z $file ]]; then
    mkdir -p "$target/bench-compare"
    file=$target/bench-compare/2g.bin
    if [[ ! -f $file || $(stat -c %s "$file") -ne $((2 << 30)) ]]; then
        echo "creating $file" >&2
        rm -f "$file"
        # Random bytes from a fast stream cipher rather than /dev/urandom, which is slower.
        openssl enc -aes-128-ctr -pass pass:imgstore -nosalt -pbkdf2 </dev/zero 2>/dev/null |
            head -c $((2 << 30)) >"$file" || true # openssl dies of SIGPIPE when head is done
        [[ $(stat -c %s "$file") -eq $((2 << 30)) ]] || { echo "could not create $file" >&2; exit 1; }
    fi
    # Read-only like a published blob: only those are mapped (verify reads any other file).
    chmod 0444 "$file"
fi
# Warm the page cache so every tool hashes from memory, as verify of a hot blob does.
cat "$file" >/dev/null

# Same answers first: a fast wrong hash is no result.
[[ $("$hashfile" blake3 "$file" | cut -d' ' -f1) == $(b3sum --no-names "$file") ]] ||
    { echo "blake3 digests differ" >&2; exit 1; }
[[ $("$hashfile" sha256 "$file" | cut -d' ' -f1) == $(openssl dgst -sha256 -r "$file" | cut -d' ' -f1) ]] ||
    { echo "sha256 digests differ" >&2; exit 1; }

# "wall cpu": mean wall time and mean CPU time (user + system) of a command, in seconds. CPU time
# is printed too because on a shared machine the wall time mostly measures the other tenants.
measure() {
    if command -v hyperfine >/dev/null; then
        local json
        json=$(mktemp)
        hyperfine --warmup 1 --runs "${RUNS:-5}" --export-json "$json" --style none "$1" >&2
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"][0]; print(r["mean"], r["user"]+r["system"])' "$json"
        rm -f "$json"
    else
        local out
        out=$( { /usr/bin/time -f "%e %U %S" bash -c "$1" >/dev/null; } 2>&1 | tail -1)
        read -r e u s <<<"$out"
        echo "$e $(echo "$u + $s" | bc)"
    fi
}

q=$(printf %q "$file")
ib3=$(measure "$hashfile blake3 $q")
b3=$(measure "b3sum --no-names $q")
isha=$(measure "$hashfile sha256 $q")
osha=$(measure "openssl dgst -sha256 $q")

python3 - $ib3 $b3 $isha $osha <<'PY'
import sys
ib3, ib3c, b3, b3c, isha, ishac, osha, oshac = map(float, sys.argv[1:])
print(f"blake3: imgstore {ib3:.3f}s (cpu {ib3c:.3f}s)  b3sum {b3:.3f}s (cpu {b3c:.3f}s)")
print(f"        ratio b3sum/imgstore: wall {b3 / ib3:.2f}x  cpu {b3c / ib3c:.2f}x  (target >= 0.90)")
print(f"sha256: imgstore {isha:.3f}s (cpu {ishac:.3f}s)  openssl {osha:.3f}s (cpu {oshac:.3f}s)")
print(f"        ratio openssl/imgstore: wall {osha / isha:.2f}x  cpu {oshac / ishac:.2f}x  (target >= 0.95)")
PY
