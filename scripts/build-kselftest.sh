#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# build-kselftest.sh [patched|unpatched]: build the series' own tests for
# the guest (which shares the host's filesystem) into $tree/kselftest/:
#   mremap_dup          tools/testing/selftests/mm/mremap_dup.c, static; the
#                       same binary runs on the pristine kernel, where every
#                       test skips (built from the patched tree's source and
#                       uapi headers either way)
#   mremap_dup_mm_kunit.ko  mm/tests/mremap_dup_kunit.c (CONFIG_MREMAP_DUP_KUNIT_TEST,
#                       off in the test kernel's config) built out of tree
#                       against that kernel; it cannot build on the pristine
#                       kernel, where its cases count as failed
set -euo pipefail
. "$(dirname "$0")/lib.sh"

flavour=${1:-patched}
tree=$(tree_for "$flavour")
src=$TREE_PATCHED/src
test=$src/tools/testing/selftests/mm/mremap_dup.c
out=$tree/kselftest
[ -f "$test" ] || die "no $test: the series is not applied to $src"
[ -f "$TREE_PATCHED/out/.config" ] || die "the patched kernel is not configured: run scripts/build-kernel.sh"
rm -rf "$out"
mkdir -p "$out"
kmake "$TREE_PATCHED" -s headers
gcc -static -O2 -Wall -Werror \
	-I "$src/tools/testing/selftests" -isystem "$TREE_PATCHED/out/usr/include" \
	-o "$out/mremap_dup" "$test"

kunit=$out/kunit
mkdir -p "$kunit"
# Named mremap_dup_mm_kunit here: kernel-rust/ has a mremap_dup_kunit module.
cp "$src/mm/tests/mremap_dup_kunit.c" "$kunit/mremap_dup_mm_kunit.c"
# The file includes "../internal.h", found through mm/tests/ of the tree.
printf 'obj-m := mremap_dup_mm_kunit.o\nccflags-y := -I$(srctree)/mm/tests\n' >"$kunit/Kbuild"
if kmake "$tree" M="$kunit" modules >"$kunit/build.log" 2>&1; then
	cp "$kunit/mremap_dup_mm_kunit.ko" "$out/"
	! grep -q 'warning:' "$kunit/build.log" || die "KUnit module build printed warnings, see $kunit/build.log"
elif [ "$flavour" = patched ]; then
	die "KUnit module build failed, see $kunit/build.log"
else
	log "the KUnit suite does not build on the $flavour kernel (expected)"
fi
log "built: $(ls "$out" | grep -vx kunit | tr '\n' ' ')"
