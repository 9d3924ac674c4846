#!/usr/bin/env bash
# A statically linked (static-pie) release build of the CLI, for hosts that call `imgstore config`
# on every boot: no dynamic loader and no shared-library relocations at start, which is most of
# what a `config` through the lookup caches costs (docs/design.md §10, "boot path").
# The library and the default build are unaffected. Prints the binary's path.
#
# usage: scripts/build-static.sh        (honours CARGO_TARGET_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
triple=$(rustc -vV | sed -n 's/^host: //p')
target=${CARGO_TARGET_DIR:-$PWD/target}
# --target keeps the flag off build scripts and proc-macros (they cannot be static);
# a separate target dir keeps the default build's artefacts untouched.
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$target/static" \
  cargo build --release --quiet --target "$triple" --bin imgstore
bin=$target/static/$triple/release/imgstore
# A static binary asks for no program interpreter (readelf is in binutils, scripts/deps.sh).
if readelf -l "$bin" | grep -q 'program interpreter'; then
  echo "build-static: $bin is not statically linked" >&2
  exit 1
fi
echo "$bin"
