#!/usr/bin/env bash
# The whole test suite: what CI runs. Installs OS tools, then lint, tests, bench and fuzz builds.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo clippy --no-default-features --lib -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
# A release build must carry no test hooks: the failpoints compile only under the `unstable`
# feature (tests, benches, fuzz), so neither the variable nor any point name is in the binary.
# (The check must see the binary: a missing file would make grep find nothing and pass.)
target=${CARGO_TARGET_DIR:-target}
cargo build --release --bin imgstore
test -s "$target/release/imgstore" || { echo "error: no release binary at $target/release/imgstore" >&2; exit 1; }
if strings "$target/release/imgstore" | grep -E 'IMGSTORE_FAILPOINT|ingest\.staged|publish\.(before|after)_rename|gc\.after_delete'; then
    echo "error: the release binary contains failpoints" >&2
    exit 1
fi
cargo bench --no-run
(cd fuzz && cargo build --bins)
cargo test 2>&1 | tee "$target/test-output.txt"
# cargo test prints one "test result:" per binary; print the grand total as the closing line.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$target/test-output.txt"
