#!/usr/bin/env bash
# The built-in example: needs no network. Builds imgstore and shows what it does.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build --release --quiet
bin=target/release/imgstore
echo "== imgstore ref ubuntu ghcr.io/cocoonstack/cocoon/ubuntu:24.04-xface localhost:5000/a/b@sha256:$(printf '%064d' 0)"
$bin ref ubuntu ghcr.io/cocoonstack/cocoon/ubuntu:24.04-xface "localhost:5000/a/b@sha256:$(printf '%064d' 0)"
echo "== imgstore ref ubuntu -o json"
$bin ref ubuntu -o json
