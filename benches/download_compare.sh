#!/usr/bin/env bash
# Cloud image download throughput (issue 15), one run each, everything on 127.0.0.1:
#  1. a 1 GiB qcow2 served capped at 50 MB/s per connection: imgstore pull with 1, 4 and 8
#     connections (target: 4 connections >= 3x one);
#  2. the same file uncapped: imgstore pull (1 connection, and the default: no --connections) vs
#     `curl -o` (target: parity),
#     and vs curl streamed through `tee` into sha256sum and b3sum (the hashing imgstore does while
#     it downloads; curl -o does none; skipped without b3sum), plus `qemu-img check` of the
#     downloaded file alone (the post-processing share of a pull: imgstore checks every qcow2
#     before publishing it).
# The server is examples/range_server.rs (the test suite's range server). Each imgstore run is a
# complete pull into a fresh store (download, hashing, qemu-img check, publish, index commit).
#
# usage: nice -n 10 bash benches/download_compare.sh [SIZE_MIB]   (default 1024)
#        DL_SKIP_CAPPED=1 skips part 1.
#        DL_BASELINE=/path/to/an/older/imgstore also times that binary's uncapped pulls (1
#        connection and default) in the same rounds, for old-vs-new ratios from one run.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-1024}
RATE=50000000
# Two builds: the example needs the dev-dependencies (whose `unstable` feature would otherwise
# be unified into the imgstore measured here).
cargo build --release --quiet --example range_server
cargo build --release --quiet --bin imgstore
BIN=target/release/imgstore
SRV=target/release/examples/range_server
WORK=$(mktemp -d /var/tmp/imgstore-dl-bench.XXXXXX)
trap 'exec 3>&- 4>&- 2>/dev/null; rm -rf "$WORK"' EXIT

head -c "$((MIB << 20))" /dev/urandom > "$WORK/src.raw"
qemu-img convert -f raw -O qcow2 -o compat=1.1 "$WORK/src.raw" "$WORK/image.qcow2"
rm "$WORK/src.raw"
SIZE=$(stat -c %s "$WORK/image.qcow2")
echo "image: $SIZE bytes"

serve() { # $1 = rate; sets URL, keeps the server's stdin open on fd 3/4
  coproc SERVER { "$SRV" "$WORK/image.qcow2" "$1"; }
  read -r URL <&"${SERVER[0]}"
}

timed() { # label, command...: prints wall seconds and CPU seconds (user + sys) of the client
  /usr/bin/time -f "$1 %e s wall, %U s user + %S s sys" "${@:2}" > /dev/null
}

pull() { # connections, or "default" (no --connections); optional binary and label
  local bin=${2:-$BIN} label=${3:-imgstore}
  rm -rf "$WORK/root"
  if [ "$1" = default ]; then
    timed "$label (default connections):" "$bin" --root "$WORK/root" pull "$URL"
  else
    timed "$label --connections $1:" "$bin" --root "$WORK/root" pull --connections "$1" "$URL"
  fi
}

if [ -z "${DL_SKIP_CAPPED:-}" ]; then
  echo "== capped at $RATE B/s per connection"
  serve "$RATE"
  for n in 1 4 8; do pull "$n"; done
  exec {SERVER[1]}>&-; wait "$SERVER_PID" 2>/dev/null || true
fi

echo "== uncapped"
serve 0
for i in 1 2 3; do
  timed "curl -o:" curl -sS -o "$WORK/curl.out" "$URL"
  sync "$WORK/curl.out"
  timed "qemu-img check of the file:" qemu-img check -q "$WORK/curl.out"
  rm -f "$WORK/curl.out"
  if command -v b3sum > /dev/null; then
    timed "curl | tee + sha256sum + b3sum:" bash -c \
      'curl -sS "$1" | tee "$2" >(sha256sum > /dev/null) | b3sum > /dev/null; sync "$2"' _ "$URL" "$WORK/curl.out"
    rm -f "$WORK/curl.out"
  fi
  pull 1
  pull default
  if [ -n "${DL_BASELINE:-}" ]; then
    pull 1 "$DL_BASELINE" baseline
    pull default "$DL_BASELINE" baseline
  fi
done
exec {SERVER[1]}>&-; wait "$SERVER_PID" 2>/dev/null || true
