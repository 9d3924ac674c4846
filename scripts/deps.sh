#!/usr/bin/env bash
# Install the OS tools imgstore's tests and example use (Debian). Idempotent; needs root or sudo.
# The boot tests and the demo start real VMs: QEMU (TCG), busybox for the guest's initrd, OVMF and
# systemd-boot for the UEFI-booted cloud image (its ESP is made with sfdisk, mkfs.vfat and mtools).
# The guest kernel is not installed: scripts/vm-kit.sh unpacks it from the package into target/.
set -euo pipefail
pkgs=(erofs-utils qemu-utils docker-registry skopeo umoci b3sum openssl zstd e2fsprogs apache2-utils binutils
      qemu-system-x86 busybox-static cpio xz-utils ovmf systemd-boot-efi dosfstools mtools fdisk hyperfine)
missing() {
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
updated=""
# Two passes: installing one package can remove another of the list (qemu-system-x86 from
# bookworm removes a newer, backported qemu-utils), which the second pass puts back.
for _ in 1 2; do
  mapfile -t todo < <(missing)
  [ ${#todo[@]} -gt 0 ] || exit 0
  [ -n "$updated" ] || { $sudo apt-get update -qq; updated=1; }
  $sudo apt-get install -y -qq "${todo[@]}" </dev/null
done
mapfile -t todo < <(missing)
[ ${#todo[@]} -eq 0 ] || { echo "deps: still missing: ${todo[*]}" >&2; exit 1; }
