#!/usr/bin/env bash
# Cloud image download throughput (issue 15), one run each, everything on 127.0.0.1:
#  1. a 1 GiB qcow2 served capped at 50 MB/s per connection: imgstore pull with 1, 4 and 8
#     connections (target: 4 connections >= 3x one);
#  2. the same file uncapped: imgstore pull (1 and 4 connections) vs `curl -o` (target: parity).
# The server is examples/range_server.rs (the test suite's range server). Each imgstore run is a
# complete pull into a fresh store (download, hashing, qemu-img check, publish, index commit).
#
# usage: nice -n 10 bash benches/download_compare.sh [SIZE_MIB]   (default 1024)
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

pull() { # connections
  rm -rf "$WORK/root"
  timed "imgstore --connections $1:" "$BIN" --root "$WORK/root" pull --connections "$1" "$URL"
}

echo "== capped at $RATE B/s per connection"
serve "$RATE"
for n in 1 4 8; do pull "$n"; done
exec {SERVER[1]}>&-; wait "$SERVER_PID" 2>/dev/null || true

echo "== uncapped"
serve 0
for i in 1 2 3; do
  timed "curl -o:" curl -sS -o "$WORK/curl.out" "$URL"
  sync "$WORK/curl.out"
  rm -f "$WORK/curl.out"
  pull 1
  pull 4
done
exec {SERVER[1]}>&-; wait "$SERVER_PID" 2>/dev/null || true
