#!/bin/busybox sh
# /init of the test guest (scripts/vm-kit.sh puts it in the initrd, followed by a body that uses the
# functions below and then `finish`). Every line meant for the host starts with "imgstore-guest: ".
# Kernel command line: imgstore.disks=N says how many disks to wait for.
/bin/busybox mkdir -p /usr/bin /sbin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "imgstore-guest: $*"; }
finish() { say "done"; sync; poweroff -f; }
fail() { say "FAIL $*"; poweroff -f; }

say "init reached at uptime $(cut -d' ' -f1 /proc/uptime) s"
for m in $(cat /lib/modules/order); do
  insmod "/lib/modules/$m" || fail "insmod $m"
done

disks=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in imgstore.disks=*) disks="${arg#imgstore.disks=}" ;; esac
done

# The serial a disk was given: virtio-blk shows it in sysfs, SCSI in VPD page 0x80 (4-byte header).
serial_of() {
  if [ -f "/sys/block/$1/serial" ]; then
    cat "/sys/block/$1/serial"
  elif [ -f "/sys/block/$1/device/vpd_pg80" ]; then
    tail -c +5 "/sys/block/$1/device/vpd_pg80" | tr -d '\000 '
  fi
}

# Wait (up to 20 s) until $disks whole disks are there, then list them as "disk <serial> <dev>".
list_disks() {
  n=0
  while :; do
    found=0
    for b in /sys/block/vd* /sys/block/sd*; do [ -e "$b" ] && found=$((found + 1)); done
    [ "$found" -ge "$disks" ] && break
    n=$((n + 1))
    [ "$n" -le 200 ] || fail "only $found of $disks disks appeared"
    sleep 0.1
  done
  for b in /sys/block/vd* /sys/block/sd*; do
    [ -e "$b" ] || continue
    d="${b##*/}"
    say "disk $(serial_of "$d") $d ro=$(cat "$b/ro")"
  done
}

# The device whose serial is $1.
disk_by_serial() {
  for b in /sys/block/vd* /sys/block/sd*; do
    [ -e "$b" ] || continue
    d="${b##*/}"
    [ "$(serial_of "$d")" = "$1" ] && { echo "/dev/$d"; return 0; }
  done
  return 1
}

# Mount disks cocoon-layer0..N-1 as EROFS on /layers/<i>, and their overlay (top layer first) on
# /merged, read-only, as a VM manager's guest agent would.
mount_layers() {
  lower=""
  i=0
  while [ "$i" -lt "$disks" ]; do
    dev="$(disk_by_serial "cocoon-layer$i")" || fail "no disk with serial cocoon-layer$i"
    mkdir -p "/layers/$i"
    mount -t erofs -o ro "$dev" "/layers/$i" || fail "mount -t erofs $dev"
    lower="/layers/$i${lower:+:$lower}"
    i=$((i + 1))
  done
  if [ "$disks" -eq 1 ]; then
    mount --bind /layers/0 /merged || fail "bind /layers/0"
  else
    mount -t overlay overlay -o "ro,lowerdir=$lower" /merged || fail "overlay $lower"
  fi
  say "overlay lowerdir=$lower"
}
