#!/usr/bin/env bash
# Fetches the guest kernel for the qemu driver: Debian's cloud kernel
# (linux-image-cloud-amd64), downloaded with apt-get and unpacked with dpkg -x
# into build/guest/. Leaves stable paths:
#   build/guest/vmlinuz      the kernel
#   build/guest/VERSION      the versioned package it came from
# Also makes sure busybox-static and QEMU 9.0 or later (scripts/install-qemu.sh)
# are installed.
# Idempotent: a second run only checks and returns quickly. Never commit
# anything under build/ (it is gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/guest

scripts/install-qemu.sh
need=()
[ -x /bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
	echo "fetch-guest: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ -s "$out/vmlinuz" ] && [ -s "$out/VERSION" ]; then
	exit 0
fi

resolve() {
	apt-cache depends linux-image-cloud-amd64 2>/dev/null |
		awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}
pkg=$(resolve || true)
if [ -z "$pkg" ]; then
	apt-get update -qq
	pkg=$(resolve || true)
fi
if [ -z "$pkg" ]; then
	echo "fetch-guest: cannot resolve the package behind linux-image-cloud-amd64" >&2
	exit 1
fi

echo "fetch-guest: fetching $pkg"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
(cd "$tmp" && apt-get download -qq "$pkg" >/dev/null)
deb=$(ls "$tmp"/*.deb)
mkdir -p "$tmp/x"
dpkg -x "$deb" "$tmp/x"
kernel=$(ls "$tmp"/x/boot/vmlinuz-* | head -n1)
mkdir -p "$out"
cp "$kernel" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$pkg" >"$out/VERSION.tmp"
mv "$out/VERSION.tmp" "$out/VERSION"
echo "fetch-guest: kernel $(basename "$kernel") -> $out/vmlinuz"
