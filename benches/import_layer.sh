#!/usr/bin/env bash
# Import of one plain layer tar (256 MiB of random data plus a kernel and an initrd) by two
# imgstore binaries, alternating, N rounds each; prints every run and the medians.
# Usage: benches/import_layer.sh BASELINE_BIN CANDIDATE_BIN [ROUNDS=7]
# (e.g. a build of main and one of a branch; the same profile for both.)
set -euo pipefail
base=$1 cand=$2 rounds=${3:-7}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/l/boot"
echo kernel >"$work/l/boot/vmlinuz"
echo initrd >"$work/l/boot/initrd.img"
head -c $((256 << 20)) /dev/urandom >"$work/l/big"
tar -C "$work/l" -cf "$work/layer.tar" .
for _ in $(seq 1 "$rounds"); do
    for which in base cand; do
        bin=$base
        [[ $which == cand ]] && bin=$cand
        rm -rf "$work/root"
        start=$(date +%s.%N)
        "$bin" --root "$work/root" import x "$work/layer.tar" >/dev/null
        end=$(date +%s.%N)
        echo "$which $(echo "$end - $start" | bc)"
    done
done | tee "$work/times"
for which in base cand; do
    printf '%s median %s s\n' "$which" \
        "$(grep "^$which " "$work/times" | cut -d' ' -f2 | sort -n | sed -n "$(((rounds + 1) / 2))p")"
done
uptime
