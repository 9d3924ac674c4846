#!/usr/bin/env bash
# The built-in example, end to end, with no network: make a small disk image and a small OCI
# layer, import both, then list, inspect, config, verify, rm and gc.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build --release --quiet
bin="$PWD/target/release/imgstore"
work="$PWD/target/demo"
rm -rf "$work"
mkdir -p "$work/src/layer/boot" "$work/root/firmware"
root="$work/root"
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "imgstore $*"; "$bin" --root "$root" "$@"; }

# A 64 MiB raw disk with a recognisable pattern, and a one-layer OCI image with a kernel.
qemu-img create -q -f raw "$work/src/disk.raw" 64M
printf 'imgstore demo disk\n' | dd of="$work/src/disk.raw" conv=notrunc status=none
echo "fake kernel" > "$work/src/layer/boot/vmlinuz-6.1.0"
echo "fake initrd" > "$work/src/layer/boot/initrd.img-6.1.0"
echo "hello from a layer" > "$work/src/layer/hello.txt"
tar -C "$work/src/layer" -cf "$work/src/layer.tar" .
# Placeholder UEFI firmware so `config` can show a cloud image's boot setup.
echo "placeholder firmware" > "$root/firmware/CLOUDHV.fd"

run ref ubuntu ghcr.io/cocoonstack/cocoon/ubuntu:24.04-xface
run import demo-disk "$work/src/disk.raw"
run import demo-disk "$work/src/disk.raw"
run import demo-oci "$work/src/layer.tar"
run list
run inspect demo-disk
run config demo-disk demo-oci -o json
run verify
run verify --sha256 demo-disk
run rm demo-disk
run gc --grace 0
run list -o json
