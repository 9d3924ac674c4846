#!/usr/bin/env bash
# The guest side of the boot tests, the demo and benches/boot_share.sh: a real Debian kernel and a
# busybox initrd, for QEMU under TCG.
#
#   scripts/vm-kit.sh                      prints the kit dir, fetching the kernel once
#   scripts/vm-kit.sh initrd OUT BODY      writes OUT (gzip'd cpio): busybox, the kernel modules and
#                                          /init = scripts/vm-guest-init.sh followed by the file BODY
#
# The kernel comes out of Debian's `linux-image-<version>-cloud-amd64` package (the version the
# metapackage `linux-image-cloud-amd64` depends on) through `apt-get download` + `dpkg-deb -x`:
# nothing is installed on the host, no kernel hooks run. The kit lives in $IMGSTORE_VM_KIT
# (default target/vm-kit) and is reused; concurrent callers wait on a lock.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
kit="${IMGSTORE_VM_KIT:-$repo/target/vm-kit}"
# What the guest loads: virtio PCI transport, virtio-blk and virtio-scsi disks, EROFS, overlayfs.
want=(virtio_pci virtio_blk virtio_scsi sd_mod erofs overlay)

fetch_kernel() {
  local ver deb tmp
  ver="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }')"
  if [ -z "$ver" ]; then
    apt-get update -qq
    ver="$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')"
  fi
  [ -n "$ver" ] || { echo "vm-kit: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
  tmp="$(mktemp -d "$kit/fetch.XXXXXX")"
  # apt's sandbox user cannot write into a root-owned temp dir; the download is verified by apt.
  (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$ver" 2>/dev/null) ||
    (apt-get update -qq && cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$ver")
  deb="$(ls "$tmp"/*.deb)"
  dpkg-deb -x "$deb" "$tmp/x"
  local kver mods
  kver="$(ls "$tmp/x/lib/modules")"
  mods="$tmp/x/lib/modules/$kver/kernel"
  mkdir -p "$tmp/kit/modules"
  cp "$tmp/x/boot/vmlinuz-$kver" "$tmp/kit/vmlinuz"
  # Load order: every module after what its .modinfo `depends=` names (a depth-first walk).
  # Modules may be compressed in other kernel builds; busybox insmod wants them plain.
  local -A seen=()
  add() {
    local name="$1" file dep
    [ -n "${seen[$name]:-}" ] && return
    seen[$name]=1
    file="$(find "$mods" \( -name "$name.ko*" -o -name "${name//_/-}.ko*" \) | head -n1)"
    [ -n "$file" ] || { echo "vm-kit: module $name not in $deb" >&2; exit 1; }
    case "$file" in
      *.ko.xz) xz -dc "$file" >"$tmp/kit/modules/$name.ko" ;;
      *.ko.zst) zstd -qdc "$file" >"$tmp/kit/modules/$name.ko" ;;
      *.ko.gz) gzip -dc "$file" >"$tmp/kit/modules/$name.ko" ;;
      *) cp "$file" "$tmp/kit/modules/$name.ko" ;;
    esac
    for dep in $(tr '\0' '\n' <"$tmp/kit/modules/$name.ko" | sed -n 's/^depends=//p' | tr ',' ' '); do
      add "$dep"
    done
    echo "$name.ko" >>"$tmp/kit/modules/order"
  }
  for m in "${want[@]}"; do add "$m"; done
  cp "$(command -v busybox)" "$tmp/kit/busybox"
  echo "$kver" >"$tmp/kit/version"
  rm -rf "$kit/current"
  mv "$tmp/kit" "$kit/current"
  rm -rf "$tmp"
}

mkdir -p "$kit"
exec 9>"$kit/.lock"
flock 9
[ -f "$kit/current/version" ] || fetch_kernel >&2

case "${1:-}" in
  "") echo "$kit/current" ;;
  initrd)
    out="$2" body="$3"
    root="$(mktemp -d "$kit/initrd.XXXXXX")"
    mkdir -p "$root"/{bin,dev,proc,sys,layers,merged,lib/modules}
    cp "$kit/current/busybox" "$root/bin/busybox"
    cp "$kit/current/modules/"* "$root/lib/modules/"
    cat "$repo/scripts/vm-guest-init.sh" "$body" >"$root/init"
    printf '\nfinish\n' >>"$root/init"
    chmod 0755 "$root/init"
    (cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -1) >"$out.tmp"
    mv "$out.tmp" "$out"
    rm -rf "$root"
    ;;
  *) echo "usage: $0 [initrd OUT BODY]" >&2; exit 2 ;;
esac
