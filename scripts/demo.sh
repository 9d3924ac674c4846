#!/usr/bin/env bash
# The built-in example, end to end: make a small disk image and a two-layer OCI image (a real
# Debian kernel + busybox initrd, and a layer with hello.txt), import both, then list, inspect,
# config, verify, rm and gc, and finally boot the OCI image in QEMU from what `config` returns.
# Network: only the package registry (OS packages, and the guest kernel's .deb via vm-kit.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
# Two builds: building an example turns on the dev-dependency features (`unstable`), which the
# imgstore binary must not get.
cargo build --release --quiet --bin imgstore
cargo build --release --quiet --example boot_qemu
kit="$(./scripts/vm-kit.sh)"
target="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$target/release/imgstore"
work="$PWD/target/demo"
rm -rf "$work"
mkdir -p "$work/src/boot/boot" "$work/src/layer" "$work/root/firmware"
root="$work/root"
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "imgstore $*"; "$bin" --root "$root" "$@"; }

# A 64 MiB raw disk with a recognisable pattern, and a two-layer OCI image: a boot layer with
# the kit's kernel and an initrd whose /init mounts the layer disks and prints hello.txt.
qemu-img create -q -f raw "$work/src/disk.raw" 64M
printf 'imgstore demo disk\n' | dd of="$work/src/disk.raw" conv=notrunc status=none
cp "$kit/vmlinuz" "$work/src/boot/boot/vmlinuz-$(cat "$kit/version")"
printf 'list_disks >/dev/null\nmount_layers >/dev/null\nsay "$(head -n1 /merged/hello.txt)"\n' >"$work/src/guest.sh"
./scripts/vm-kit.sh initrd "$work/src/boot/boot/initrd.img-$(cat "$kit/version")" "$work/src/guest.sh"
echo "hello from a layer" > "$work/src/layer/hello.txt"
tar -C "$work/src/boot" -cf "$work/src/boot.tar" .
tar -C "$work/src/layer" -cf "$work/src/layer.tar" .
# Placeholder UEFI firmware so `config` can show a cloud image's boot setup.
echo "placeholder firmware" > "$root/firmware/CLOUDHV.fd"

run ref ubuntu ghcr.io/cocoonstack/cocoon/ubuntu:24.04-xface
run import demo-disk "$work/src/disk.raw"
run import demo-disk "$work/src/disk.raw"
run import demo-oci "$work/src/boot.tar" "$work/src/layer.tar"
run list
run inspect demo-disk
run config demo-disk demo-oci -o json
run verify
run verify --sha256 demo-disk
run rm demo-disk
run gc --grace 0
run list -o json

# Boot it: config → examples/boot_qemu (the reference translation) → QEMU (TCG; IMGSTORE_VM_KVM=1
# for KVM). The guest's first line of its own is hello.txt, read through the overlay of the layers.
say "imgstore -o json config demo-oci; boot_qemu demo-oci  # Store::config -> QEMU command line"
t0=$(date +%s%N)
"$bin" --root "$root" -o json config demo-oci >"$work/config.json"
t1=$(date +%s%N)
disks=$(grep -o '"serial"' "$work/config.json" | wc -l)
cmd=$("$target/release/examples/boot_qemu" --root "$root" demo-oci \
  --append "console=ttyS0 panic=-1 quiet imgstore.disks=$disks")
echo "$cmd"
t2=$(date +%s%N)
first="" init_ms=""
while IFS= read -r line; do
  line="${line%$'\r'}" # the serial console ends lines with CR LF
  case "$line" in
    *"imgstore-guest: init reached"*) init_ms=$((($(date +%s%N) - t2) / 1000000)) ;;
    *"imgstore-guest: done"*) ;;
    *"imgstore-guest: "*) [ -n "$first" ] || first="${line#*imgstore-guest: }" ;;
  esac
done < <(eval "timeout 120 $cmd" 2>&1)
[ "$first" = "hello from a layer" ] || { echo "demo: the guest did not print hello.txt" >&2; exit 1; }
printf '\nguest: %s\n' "$first"
accel=TCG
[ "${IMGSTORE_VM_KVM:-}" != 1 ] || accel=KVM
printf 'config took %d ms (CLI process, start to exit); the guest reached init %d ms after QEMU started (%s)\n' \
  $(((t1 - t0) / 1000000)) "$init_ms" "$accel"
