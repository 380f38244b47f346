#!/usr/bin/env bash
# Makes sure qemu-system-x86_64 is QEMU 9.0 or later (run as root on Debian 12).
#
# Debian 12's QEMU 7.2 has a TCG dirty-tracking bug that loses a guest's
# stores during live migration (fixed upstream in 9.0; docs/vm.md, "Which
# QEMU"). When qemu-system-x86_64 is missing or older than 9.0, this adds
# bookworm-backports as an apt source (a file in /etc/apt/sources.list.d,
# deb.debian.org, signed by the Debian archive keyring like Debian's own
# sources) unless a source already names it, and installs qemu-system-x86
# and seabios from there (QEMU 10.0 with SeaBIOS 1.16.3, as measured).
# Idempotent and silent when QEMU is recent enough.
#
# Knobs (for checking the script without changing the machine):
#   FERRY_SETUP_DRY_RUN=1     print what would be done; write and run nothing
#   FERRY_QEMU=PATH           the QEMU to check (default qemu-system-x86_64)
#   FERRY_APT_SOURCES_DIR=D   where the source file goes (default
#                             /etc/apt/sources.list.d); with APT_CONFIG
#                             naming a private apt dir, apt uses it too
#   FERRY_APT_SIMULATE=1      apt-get install -s (resolve, install nothing)
set -euo pipefail

qemu=${FERRY_QEMU:-qemu-system-x86_64}
dry=${FERRY_SETUP_DRY_RUN:-}
simulate=${FERRY_APT_SIMULATE:-}
sources_dir=${FERRY_APT_SOURCES_DIR:-/etc/apt/sources.list.d}
list=$sources_dir/ferry-bookworm-backports.sources
min_major=9

# major prints the major version of the QEMU at $1, or nothing.
major() {
	"$1" --version 2>/dev/null |
		sed -n '1s/^QEMU emulator version \([0-9][0-9]*\)\.[0-9][0-9]*\.[0-9][0-9]*.*/\1/p'
}

have=$(major "$qemu" || true)
if [ -n "$have" ] && [ "$have" -ge "$min_major" ]; then
	exit 0
fi

run() {
	if [ -n "$dry" ]; then
		echo "install-qemu: would run: $*"
	else
		"$@"
	fi
}

if [ -n "$have" ]; then
	what="QEMU $have.x"
else
	what="missing (or prints no version)"
fi
echo "install-qemu: $qemu is $what; installing qemu-system-x86 (>= $min_major.0) from bookworm-backports"

source_text='Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg'

# Another file already naming bookworm-backports (deb822 or one-line) is
# enough; ours is (re)written only when absent or different.
named_elsewhere=$(grep -lsE '^[^#]*bookworm-backports' /etc/apt/sources.list "$sources_dir"/*.list "$sources_dir"/*.sources 2>/dev/null |
	grep -vxF "$list" || true)
if [ -z "$named_elsewhere" ] && [ "$(cat "$list" 2>/dev/null)" != "$source_text" ]; then
	if [ -n "$dry" ]; then
		echo "install-qemu: would write $list:"
		echo "$source_text" | sed 's/^/    /'
	else
		mkdir -p "$sources_dir"
		printf '%s\n' "$source_text" >"$list.tmp"
		mv "$list.tmp" "$list"
	fi
fi

export DEBIAN_FRONTEND=noninteractive
run apt-get update -qq
install=(apt-get install -y --no-install-recommends -t bookworm-backports)
if [ -n "$simulate" ]; then
	run "${install[@]}" -s qemu-system-x86 seabios
elif [ -n "$dry" ]; then
	run "${install[@]}" -qq qemu-system-x86 seabios
else
	"${install[@]}" -qq qemu-system-x86 seabios >/dev/null
fi

if [ -z "$dry" ] && [ -z "$simulate" ]; then
	now=$(major "$qemu" || true)
	if [ -z "$now" ] || [ "$now" -lt "$min_major" ]; then
		echo "install-qemu: $qemu is still ${now:-missing} (major version) after the install; want $min_major.0 or later" >&2
		exit 1
	fi
	echo "install-qemu: $("$qemu" --version | head -n1)"
fi
