#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# build-module.sh [patched|unpatched|bench]: build the Rust kernel code of
# kernel-rust/ (the test device and its KUnit suite) as out-of-tree modules
# against that kernel's build dir. The sources (the modules, and
# testdev_abi.rs, the device's interface that both include) are copied to
# the cache so that the repo stays clean and each kernel gets its own
# objects.
#
# MREMAP_DUP_MODDIR: build there instead of the kernel's module/ directory
# (which scripts/boot.sh loads from), so that a build of other sources does
# not replace the modules a running guest uses.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

flavour=${1:-patched}
tree=$(tree_for "$flavour")
moddir=${MREMAP_DUP_MODDIR:-$tree/module}
rm -rf "$moddir"
mkdir -p "$moddir"
cp "$REPO"/kernel-rust/Kbuild "$REPO"/kernel-rust/mremap_dup_testdev.rs \
	"$REPO"/kernel-rust/mremap_dup_kunit.rs "$REPO"/kernel-rust/testdev_abi.rs "$moddir/"
: >"$moddir/build.log"
# CLIPPY=1: the modules are compiled by clippy-driver (the one matching
# rustc-web, not a rustup one), with the kernel's lint set; a lint is a
# warning and fails the patched build below.
build() {
	kmake "$tree" M="$moddir" CLIPPY=1 CLIPPY_DRIVER=/usr/bin/clippy-driver "$@" modules 2>&1 |
		tee -a "$moddir/build.log"
	return "${PIPESTATUS[0]}"
}
build || die "test device build failed ($flavour), see $moddir/build.log"
# The benchmark kernel has no KUnit: the test device only.
if ! grep -qx CONFIG_KUNIT=y "$tree/out/.config"; then
	log "no KUnit in the $flavour kernel: the KUnit suite is not built"
elif ! build MREMAP_DUP_KUNIT=1; then
	# The KUnit suite calls kunit_mremap(), which only the series provides:
	# on the pristine kernel it cannot build, and its cases count as failed.
	[ "$flavour" = unpatched ] || die "KUnit suite build failed ($flavour), see $moddir/build.log"
	log "KUnit suite does not build on the $flavour kernel (expected: no kunit_mremap())"
	rm -f "$moddir/mremap_dup_kunit.ko"
fi
if grep -q 'warning' "$moddir/build.log" && { [ "$flavour" = patched ] || [ "$flavour" = bench ]; }; then
	die "module build printed warnings ($flavour), see $moddir/build.log"
fi
ls "$moddir"/*.ko
