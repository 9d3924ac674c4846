#!/usr/bin/env bash
# What the chain rule costs an import (docs/design.md §11), baseline measured in the same run.
#
#   bash benches/chain_cost.sh BASE CAND [ROUNDS]
#
# BASE and CAND are imgstore binaries (e.g. a release build of main, and of this branch). One
# upper layer tar of /usr/share/doc + /usr/lib/python3.11 (no `usr/` or `usr/share/` entries:
# both implied) goes over a small base layer whose `usr/` is either 0755 root:root (nothing
# differs: no chain image) or 0775 (the upper layer gets a chain image). Rounds alternate:
#   base-plain  BASE imports [base755, upper]
#   cand-plain  CAND imports [base755, upper]   -> cost of recording the layer views
#   cand-chain  CAND imports [base775, upper]   -> plus copying, patching and hashing the chain
# Each import goes into a fresh store; prints every time, the medians, the ratios, and the
# sizes of the view files and blobs.
set -euo pipefail
BASE=$(realpath "$1")
CAND=$(realpath "$2")
ROUNDS=${3:-3}
work=$(mktemp -d "${TMPDIR:-/tmp}/chain_cost.XXXXXX")
trap 'rm -rf "$work"' EXIT

tar -C / -cf "$work/upper.tar" usr/share/doc usr/lib/python3.11 2>/dev/null
python3 - "$work" <<'EOF'
import io, sys, tarfile
for mode, name in [(0o755, "base755.tar"), (0o775, "base775.tar")]:
    with tarfile.open(f"{sys.argv[1]}/{name}", "w", format=tarfile.GNU_FORMAT) as t:
        for path, m, data in [("boot", 0o755, None), ("boot/vmlinuz-6.1", 0o644, b"kernel"),
                              ("boot/initrd.img-6.1", 0o644, b"initrd"), ("usr", mode, None)]:
            ti = tarfile.TarInfo(path); ti.mode = m; ti.mtime = 1650000000
            if data is None:
                ti.type = tarfile.DIRTYPE; t.addfile(ti)
            else:
                ti.size = len(data); t.addfile(ti, io.BytesIO(data))
EOF
echo "upper layer: $(stat -c %s "$work/upper.tar") bytes, $(tar -tf "$work/upper.tar" | wc -l) entries"

run() { # label binary base-tar
    local root="$work/store-$1"
    rm -rf "$root"
    sync
    /usr/bin/time -f "$1 %e %U %S" -a -o "$work/times" \
        "$2" --root "$root" import img "$work/$3" "$work/upper.tar" >/dev/null
}

for r in $(seq "$ROUNDS"); do
    run base-plain "$BASE" base755.tar
    run cand-plain "$CAND" base755.tar
    run cand-chain "$CAND" base775.tar
done

# Wall time ($2) and CPU time (user + sys, $3 + $4) of each run, then medians and ratios.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
wall() { grep "^$1 " "$work/times" | awk '{print $2}'; }
cpu() { grep "^$1 " "$work/times" | awk '{printf "%.2f\n", $3 + $4}'; }
for l in base-plain cand-plain cand-chain; do
    echo "$l: wall $(wall "$l" | tr '\n' ' ')s (median $(wall "$l" | median)); cpu $(cpu "$l" | tr '\n' ' ')s (median $(cpu "$l" | median))"
done
for m in wall cpu; do
    bp=$($m base-plain | median); cp=$($m cand-plain | median); cc=$($m cand-chain | median)
    echo "$m: cand-plain / base-plain = $(echo "scale=3; $cp / $bp" | bc), cand-chain / cand-plain = $(echo "scale=3; $cc / $cp" | bc)"
done
echo "views (cand-chain store):"
find "$work/store-cand-chain/oci/boot" -name layer.view -printf '  %s bytes %p\n'
echo "blobs (cand-chain store):"
find "$work/store-cand-chain/oci/blobs" -name '*.erofs' -printf '  %s bytes %f\n'
uptime
