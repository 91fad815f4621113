#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# setup.sh: install everything the kernel build, the guest boot and the Rust
# selftests need, pinned as in ../shared/docs/toolchain.md. Idempotent: a
# second run checks and returns in seconds.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (apt-get, and the guest needs /dev/kvm or TCG)"
mkdir -p "$CACHE"

apt_sources() {
	local list=/etc/apt/sources.list.d/kernel-toolchain.sources
	local pin=/etc/apt/preferences.d/kernel-toolchain-sid
	if [ -f "$list" ] && [ -f "$pin" ]; then
		return 0
	fi
	local mirror
	mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
	[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
	cat >"$list" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $mirror
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
	# sid is only for *downloading* linux-source-7.2: never install from it.
	cat >"$pin" <<'EOF'
Package: *
Pin: release n=sid
Pin-Priority: 1
EOF
	rm -f "$CACHE/.apt-updated"
}

apt_packages() {
	local pkgs=(
		"rustc-web=$RUSTV" "libstd-rust-web-dev=$RUSTV" "libstd-rust-web-1.96=$RUSTV"
		"rust-web-src=$RUSTV" "rust-web-clippy=$RUSTV" "libllvm22=$LLVM22V"
		clang-19 lld-19 llvm-19 libclang-19-dev
		flex bison bc cpio libelf-dev libssl-dev dwarves ccache busybox-static kmod udev
		git make python3 python3-venv liburcu-dev curl ca-certificates xz-utils gcc libc6-dev
		"qemu-system-x86=$QEMUV" "qemu-system-common=$QEMUV" "qemu-system-data=$QEMUV"
		"seabios=$SEABIOSV" "qemu-system-modules-spice=$QEMUV"
		"qemu-system-modules-opengl=$QEMUV"
	)
	local missing=() p name ver have
	for p in "${pkgs[@]}"; do
		name=${p%%=*}
		ver=${p#*=}
		have=$(dpkg-query -W -f='${db:Status-Abbrev}${Version}' "$name" 2>/dev/null || true)
		case $have in
		ii*) if [ "$name" != "$p" ] && [ "${have#ii }" != "$ver" ] &&
			[ "${have:3}" != "$ver" ]; then missing+=("$p"); fi ;;
		*) missing+=("$p") ;;
		esac
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing: ${missing[*]}"
	if [ ! -f "$CACHE/.apt-updated" ]; then
		apt-get update -q
		touch "$CACHE/.apt-updated"
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm \
		--no-install-recommends "${missing[@]}"
	dpkg-query -W -f='${Version}\n' libc6 | grep -q '^2\.36' ||
		die "libc6 is no longer bookworm's 2.36: sid leaked in"
}

rust_userspace() {
	# rustup's cargo for the userspace crates; the kernel uses /usr/bin/rustc.
	if ! command -v cargo >/dev/null; then
		# No rustup on this machine: Debian's cargo (same rustc-web 1.96).
		if ! dpkg -s cargo-web >/dev/null 2>&1; then
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm \
				--no-install-recommends "cargo-web=$RUSTV" ||
				die "no cargo: install rustup or Debian's cargo-web"
		fi
	fi
	if [ ! -x "$BINDGEN" ] ||
		! "$BINDGEN" --version 2>/dev/null | grep -q "$BINDGEN_VERSION"; then
		cargo install --locked bindgen-cli --version "$BINDGEN_VERSION" \
			--root "$HOME/.cargo"
	fi
}

virtme_ng() {
	if [ -x "$CACHE/venv/bin/vng" ] &&
		"$CACHE/venv/bin/vng" --version 2>/dev/null | grep -q "$VNG_VERSION"; then
		return 0
	fi
	# /usr/bin/python3: the venv must not depend on a pyenv shim.
	local py=python3
	[ -x /usr/bin/python3 ] && py=/usr/bin/python3
	"$py" -m venv "$CACHE/venv"
	"$CACHE/venv/bin/pip" install -q "virtme-ng==$VNG_VERSION"
}

# matplotlib in the same venv, for the plots of scripts/bench.sh (which
# writes its tables without them when the package index is unreachable).
plotting() {
	"$CACHE/venv/bin/python3" -c 'import matplotlib' 2>/dev/null && return 0
	"$CACHE/venv/bin/pip" install -q "matplotlib==$MATPLOTLIB_VERSION" ||
		log "matplotlib not installed: scripts/bench.sh will write no plots"
}

# ply and GitPython in the same venv (first in PATH, lib.sh), for the
# kernel's scripts/spdxcheck.py, which checkpatch.pl runs on every file a
# patch adds: without them it prints a traceback and checks nothing.
spdxcheck_deps() {
	"$CACHE/venv/bin/python3" -c 'import ply, git' 2>/dev/null && return 0
	"$CACHE/venv/bin/pip" install -q "ply==$PLY_VERSION" "GitPython==$GITPYTHON_VERSION"
}

timed "apt sources" apt_sources
timed "apt packages" apt_packages
timed "rust userspace toolchain + bindgen" rust_userspace
timed "virtme-ng venv" virtme_ng
timed "matplotlib" plotting
timed "spdxcheck modules" spdxcheck_deps
log "setup complete"
