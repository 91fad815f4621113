#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# build-kselftest.sh: build the series' C kselftest,
# tools/testing/selftests/mm/mremap_dup.c of the patched tree, as a static
# binary at $CACHE/kselftest/mremap_dup for the guest (which shares the
# host's filesystem). The same binary runs on the pristine kernel, where
# every test skips. The uapi headers are the patched tree's (make headers).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

src=$TREE_PATCHED/src
test=$src/tools/testing/selftests/mm/mremap_dup.c
[ -f "$test" ] || die "no $test: the series is not applied to $src"
[ -f "$TREE_PATCHED/out/.config" ] || die "the patched kernel is not configured: run scripts/build-kernel.sh"
kmake "$TREE_PATCHED" -s headers
mkdir -p "$CACHE/kselftest"
gcc -static -O2 -Wall -Werror \
	-I "$src/tools/testing/selftests" -isystem "$TREE_PATCHED/out/usr/include" \
	-o "$CACHE/kselftest/mremap_dup" "$test"
log "kselftest: $CACHE/kselftest/mremap_dup"
