#!/usr/bin/env bash
# Boot-path share: for one bootable OCI image (two layers: the vm-kit's Debian kernel + a busybox
# initrd, and a small layer), how long `imgstore config` takes against how long the guest takes
# to reach init, as a ratio.
#   - CLI: `imgstore -o json config ID` through hyperfine (process start to exit);
#   - library: `Store::open` + `Store::config` in-process (examples/config_time.rs, mean of N);
#   - guest: QEMU started from that config (examples/boot_qemu, TCG unless IMGSTORE_VM_KVM=1) to
#     the first line the guest's /init prints, host wall clock, mean of BOOTS boots.
#
# usage: benches/boot_share.sh [BOOTS] [RUNS]      (defaults: 3 boots, 50 CLI runs)
set -euo pipefail

boots=${1:-3}
runs=${2:-50}
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
bin=$target/release/imgstore
work=$target/tmp/boot-share
root=$work/root

# Separate builds: an example build turns on dev-dependency features the binary must not get.
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin imgstore
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --example boot_qemu --example config_time
kit=$("$repo/scripts/vm-kit.sh")
rm -rf "$work"
mkdir -p "$work/boot/boot" "$work/top"
cp "$kit/vmlinuz" "$work/boot/boot/vmlinuz"
printf 'list_disks >/dev/null\nmount_layers >/dev/null\nsay "$(head -n1 /merged/hello.txt)"\n' >"$work/guest.sh"
"$repo/scripts/vm-kit.sh" initrd "$work/boot/boot/initrd.img" "$work/guest.sh"
echo "hello from a layer" >"$work/top/hello.txt"
tar -C "$work/boot" -cf "$work/boot.tar" .
tar -C "$work/top" -cf "$work/top.tar" .
"$bin" --root "$root" import boot-share "$work/boot.tar" "$work/top.tar" >/dev/null

# config, CLI.
hyperfine -N --warmup 5 --runs "$runs" --export-json "$work/cli.json" \
  --command-name "imgstore config (CLI)" "'$bin' --root '$root' -o json config boot-share" >&2
cli_ns=$(python3 -c "import json; print(int(json.load(open('$work/cli.json'))['results'][0]['mean'] * 1e9))")

# config, library.
lib_ns=$("$target/release/examples/config_time" "$root" boot-share 2000)

# Guest to init.
"$bin" --root "$root" -o json config boot-share >"$work/config.json"
cmd=$("$target/release/examples/boot_qemu" --json "$work/config.json" \
  --append "console=ttyS0 panic=-1 quiet imgstore.disks=2")
total_ns=0
for i in $(seq "$boots"); do
  t0=$(date +%s%N)
  init_ns=""
  hello=""
  while IFS= read -r line; do
    line="${line%$'\r'}"
    case "$line" in
      *"imgstore-guest: init reached"*) [ -n "$init_ns" ] || init_ns=$(($(date +%s%N) - t0)) ;;
      *"imgstore-guest: hello from a layer") hello=1 ;;
    esac
  done < <(eval "timeout 120 $cmd" 2>&1)
  [ -n "$init_ns" ] && [ -n "$hello" ] || { echo "boot $i: the guest did not reach init and read its layer" >&2; exit 1; }
  echo "boot $i: guest init after $((init_ns / 1000000)) ms" >&2
  total_ns=$((total_ns + init_ns))
done
guest_ns=$((total_ns / boots))

python3 - "$cli_ns" "$lib_ns" "$guest_ns" "$boots" <<'EOF'
import os, sys
cli, lib, guest, boots = (int(x) for x in sys.argv[1:])
print(f"guest to init (mean of {boots} boots, {'KVM' if os.environ.get('IMGSTORE_VM_KVM') == '1' else 'TCG'}): {guest / 1e6:9.1f} ms")
print(f"config, CLI (hyperfine mean):       {cli / 1e6:9.3f} ms   = {cli / guest:.5f} x guest-to-init ({100 * cli / guest:.3f} %)")
print(f"config, library (open + config):    {lib / 1e3:9.1f} us   = {lib / guest:.7f} x guest-to-init ({100 * lib / guest:.5f} %)")
EOF
