#!/usr/bin/env bash
# The boot path through the CLI (issue 12), with hyperfine, at each size:
#   config NAME -o json, config PREFIX12 -o json  — through the lookup caches, and through the JSON
#   on a read-only hard-linked copy of the same root without caches (nothing can be rebuilt there);
#   list -o json at 100k (or the largest size given), both ways.
#   The cached rows run twice: the default (dynamic) build and scripts/build-static.sh's binary.
# Needs root (bind mount) and hyperfine. Usage: bash benches/boot_path.sh [SIZES...]
# Results: hyperfine's tables on stdout and target/boot-path/result.md.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("${@:-1000 10000 100000 1000000}")
read -r -a sizes <<<"${sizes[*]}"
base=${BOOT_PATH_DIR:-$PWD/target/boot-path}
mkdir -p "$base"
nice -n 10 cargo build --release --quiet --bin imgstore --example boot_path_root
bin=$PWD/target/release/imgstore
# The same CLI linked statically (scripts/build-static.sh): start-up is most of a cached `config`.
static=$(nice -n 10 scripts/build-static.sh)
out=$base/result.md
: >"$out"
mounts=()
cleanup() { for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || true; done; }
trap cleanup EXIT

for n in "${sizes[@]}"; do
  root=$(target/release/examples/boot_path_root "$base" "$n")
  mapfile -t q <"$root/.complete"
  name=${q[0]} prefix=${q[2]}
  # Build the caches: a read rebuilds them once the indexes are older than the fs clock.
  for _ in $(seq 100); do
    "$bin" --root "$root" -o json list >/dev/null
    [[ -e $root/oci/db/images.idx && -e $root/cloudimg/db/images.idx ]] && break
    sleep 0.05
  done
  # The JSON path: a hard-linked copy without caches, mounted read-only.
  copy=$base/nocache-$n ro=$base/ro-$n
  if [[ ! -d $copy ]]; then cp -al "$root" "$copy"; fi
  rm -f "$copy"/*/db/images.idx
  mkdir -p "$ro"
  umount "$ro" 2>/dev/null || true
  mount --bind "$copy" "$ro" && mount -o remount,bind,ro "$ro"
  mounts+=("$ro")
  runs=(--min-runs 30)
  (( n >= 100000 )) && runs=(--runs 10)
  for what in name prefix; do
    query=$name; [[ $what == prefix ]] && query=$prefix
    echo "### config by $what, $n images" | tee -a "$out"
    nice -n 10 hyperfine -N --warmup 3 "${runs[@]}" --export-markdown "$base/tmp.md" \
      -n "cache $n" "$bin --root $root -o json config $query" \
      -n "cache $n, static binary" "$static --root $root -o json config $query" \
      -n "json $n" "$bin --root $ro -o json config $query"
    cat "$base/tmp.md" >>"$out"
  done
done
n=${sizes[-1]}
for s in "${sizes[@]}"; do (( s == 100000 )) && n=100000; done
echo "### list -o json, $n images" | tee -a "$out"
nice -n 10 hyperfine -N --warmup 1 --runs 10 --export-markdown "$base/tmp.md" \
  -n "cache $n" "$bin --root $base/boot-path-$n -o json list" \
  -n "json $n" "$bin --root $base/ro-$n -o json list"
cat "$base/tmp.md" >>"$out"
rm -f "$base/tmp.md"
echo "results: $out"
