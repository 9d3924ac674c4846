#!/usr/bin/env bash
# Install the OS tools imgstore's tests and example use (Debian). Idempotent; needs root or sudo.
set -euo pipefail
pkgs=(erofs-utils qemu-utils docker-registry skopeo umoci b3sum openssl zstd e2fsprogs apache2-utils binutils)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" </dev/null
fi
