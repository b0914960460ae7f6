#!/usr/bin/env bash
# Everything a fresh machine of this kind needs to run vrio's tests and demo: Debian packages
# (installed only when missing), then the npm dependencies (which build the native addon) and the
# TypeScript build. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(curl tshark iproute2 nftables ethtool iputils-ping iperf3 nbdkit libnbd-bin e2fsprogs util-linux qemu-utils python3-libnbd fio cryptsetup python3-cryptography prometheus chromium tmux libipsec-mb-dev)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages (${missing[*]}); run as root or install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
elif [ ! -f build/Release/vrio_io.node ] ||
  [ -n "$(find native binding.gyp -newer build/Release/vrio_io.node 2>/dev/null)" ]; then
  # The addon's sources changed since it was built (a pull, a checkout): build it again.
  npm run install --silent
fi
npm run build --silent
