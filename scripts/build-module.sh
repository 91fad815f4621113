#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# build-module.sh [patched|unpatched]: build the Rust kernel code of
# kernel-rust/ (the test device) as an out-of-tree module against that
# kernel's build dir. The sources are copied to the cache so that the repo
# stays clean and each kernel gets its own objects.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

flavour=${1:-patched}
tree=$(tree_for "$flavour")
moddir=$tree/module
rm -rf "$moddir"
mkdir -p "$moddir"
cp "$REPO"/kernel-rust/Kbuild "$REPO"/kernel-rust/*.rs "$moddir/"
kmake "$tree" M="$moddir" modules 2>&1 | tee "$moddir/build.log"
[ "${PIPESTATUS[0]}" = 0 ] || die "module build failed ($flavour), see $moddir/build.log"
if grep -q 'warning' "$moddir/build.log"; then
	die "module build printed warnings ($flavour)"
fi
ls "$moddir"/*.ko
