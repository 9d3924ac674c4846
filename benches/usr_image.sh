#!/usr/bin/env bash
# Pull and import of a large real-world layer, side by side (issue 14's closing note):
# a one-layer image built from this machine's /usr (in path order, every 4th file of 4 KiB or
# more and every 40th smaller one, none above 64 MiB, up to ~870 MB and 9,000 files, as
# benches/erofs_writer.rs samples; plus a boot/ with kernel and initrd stand-ins), gzip -6 (~350 MB), pushed to a
# docker-registry on 127.0.0.1. Alternating rounds, medians:
#   - `CAND pull` vs `skopeo copy docker://… oci:DIR` (download + verify only) from the same
#     registry (target: pull <= 1.5x skopeo), and `BASE pull` for context;
#   - `CAND import` vs `BASE import` of the same .tar.gz (target: candidate >= 3x faster).
# Usage: nice -n 10 benches/usr_image.sh BASE_BIN CAND_BIN [ROUNDS=3]
# (BASE_BIN: a release build of the commit before the in-process writer, e.g. main at c23eca8;
# it needs root and erofs-utils. Both binaries built with the same profile.)
set -euo pipefail
base=$1 cand=$2 rounds=${3:-3}
work=$(mktemp -d /var/tmp/usr-image.XXXXXX)
reg_pid=
cleanup() {
    [[ -n $reg_pid ]] && kill "$reg_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The layer: /usr files in path order up to the caps, plus boot files.
mkdir -p "$work/extra/boot"
head -c $((8 << 20)) /dev/urandom >"$work/extra/boot/vmlinuz"
head -c $((32 << 20)) /dev/urandom >"$work/extra/boot/initrd.img"
find /usr -xdev \( -type f -o -type l \) -printf '%s %p\n' | LC_ALL=C sort -k2 |
    awk '$1 > 67108864 { next }
         $1 >= 4096 { if (++big % 4) next } $1 < 4096 { if (++small % 40) next }
         !stop && (n >= 9000 || b + $1 > 870000000) { stop = 1 }
         !stop { n++; b += $1; print substr($0, index($0, " ") + 2) }' >"$work/files"
tar -cf "$work/layer.tar" -C "$work/extra" boot -C / -T "$work/files"
gzip -6 -c "$work/layer.tar" >"$work/layer.tar.gz"
rm "$work/layer.tar"
echo "layer: $(wc -l <"$work/files") files from /usr," \
    "$(($(stat -c %s "$work/layer.tar.gz") / 1000000)) MB gzip," \
    "$(($(gzip -l "$work/layer.tar.gz" | awk 'NR==2 {print $2}') / 1000000)) MB tar (gzip -l, mod 4 GiB)"

# An OCI layout holding it, pushed to a loopback registry.
sha() { sha256sum "$1" | cut -d' ' -f1; }
lay=$work/layout
mkdir -p "$lay/blobs/sha256"
ldig=$(sha "$work/layer.tar.gz")
lsize=$(stat -c %s "$work/layer.tar.gz")
mv "$work/layer.tar.gz" "$lay/blobs/sha256/$ldig"
diffid=$(gzip -dc "$lay/blobs/sha256/$ldig" | sha256sum | cut -d' ' -f1)
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"config":{}}' \
    "$diffid" >"$work/config"
cdig=$(sha "$work/config")
csize=$(stat -c %s "$work/config")
mv "$work/config" "$lay/blobs/sha256/$cdig"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$cdig" "$csize" "$ldig" "$lsize" >"$work/manifest"
mdig=$(sha "$work/manifest")
msize=$(stat -c %s "$work/manifest")
mv "$work/manifest" "$lay/blobs/sha256/$mdig"
printf '{"imageLayoutVersion":"1.0.0"}' >"$lay/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}' \
    "$mdig" "$msize" >"$lay/index.json"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/registry"
cat >"$work/registry.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
ref=127.0.0.1:$port/bench/usr:v1
skopeo --insecure-policy copy --quiet --preserve-digests --dest-tls-verify=false "oci:$lay:v1" "docker://$ref"
cp "$lay/blobs/sha256/$ldig" "$work/layer.tar.gz"

timed() { # label command...
    local start end
    start=$(date +%s.%N)
    "${@:2}" >/dev/null
    end=$(date +%s.%N)
    echo "$1 $(echo "$end - $start" | bc)"
}
for _ in $(seq 1 "$rounds"); do
    rm -rf "$work/sk"
    timed skopeo skopeo --insecure-policy copy --quiet --src-tls-verify=false "docker://$ref" "oci:$work/sk:v1"
    rm -rf "$work/root"
    timed pull-cand "$cand" --root "$work/root" pull "$ref"
    rm -rf "$work/root"
    timed pull-base "$base" --root "$work/root" pull "$ref"
    rm -rf "$work/root"
    timed import-cand "$cand" --root "$work/root" import x "$work/layer.tar.gz"
    rm -rf "$work/root"
    timed import-base "$base" --root "$work/root" import x "$work/layer.tar.gz"
    rm -rf "$work/root"
done | tee "$work/times"
median() { grep "^$1 " "$work/times" | cut -d' ' -f2 | sort -n | sed -n "$(((rounds + 1) / 2))p"; }
for w in skopeo pull-cand pull-base import-cand import-base; do
    printf '%-12s median %s s\n' "$w" "$(median "$w")"
done
echo "pull-cand / skopeo = $(echo "scale=2; $(median pull-cand) / $(median skopeo)" | bc)"
echo "import-base / import-cand = $(echo "scale=2; $(median import-base) / $(median import-cand)" | bc)"
uptime
