#!/usr/bin/env bash
# Installs what ferry needs on a fresh Debian 12 machine (run as root): QEMU
# 9.0 or later from bookworm-backports (scripts/install-qemu.sh), and
# fetches the guest kernel and busybox into build/guest. Idempotent: a second
# run does nothing but check.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v ip >/dev/null || need+=(iproute2)
command -v zstd >/dev/null || need+=(zstd)
if [ ${#need[@]} -gt 0 ]; then
	echo "setup: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# QEMU 9.0 or later, from bookworm-backports when Debian 12's 7.2 is all
# there is (docs/vm.md, "Which QEMU").
scripts/install-qemu.sh

if ! command -v staticcheck >/dev/null && [ ! -x "$(go env GOPATH)/bin/staticcheck" ]; then
	echo "setup: installing staticcheck"
	go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi

if [ -x scripts/fetch-guest.sh ]; then
	scripts/fetch-guest.sh
fi
