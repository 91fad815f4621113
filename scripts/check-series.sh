#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# check-series.sh [--build]: scripts/checkpatch.pl --strict on every patch of
# patches/ (from inside the kernel tree, as it must run), and with --build,
# that each patch builds on its own, warning-free: the series is applied one
# patch at a time in a scratch worktree ($CACHE/check) and mm/ plus every
# directory holding a C file the patch touches is rebuilt (and
# tools/testing/vma is built and run when the patch touches it).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

src=$TREE_PATCHED/src
[ -d "$src/.git" ] || "$REPO/scripts/fetch-kernel.sh"
# checkpatch.pl runs scripts/spdxcheck.py on each file a patch adds, and
# only prints a traceback when it cannot (setup.sh installs its modules).
python3 -c 'import ply, git' 2>/dev/null ||
	die "python3 ($(command -v python3)) lacks ply or GitPython: run scripts/setup.sh"
fail=0
while read -r p; do
	if (cd "$src" && ./scripts/checkpatch.pl --strict -q "$REPO/patches/$p"); then
		log "checkpatch clean: $p"
	else
		log "checkpatch: $p has problems"
		fail=1
	fi
done <"$REPO/patches/series"

if [ "${1:-}" = --build ]; then
	# A scratch worktree and build dir next to the two trees ("../src" seen
	# from out/, so ccache shares their objects), never the patched tree
	# itself: its checkout and objects stay as the test run expects them.
	check=$CACHE/check
	[ -f "$TREE_PATCHED/out/.config" ] || "$REPO/scripts/build-kernel.sh" patched
	[ -d "$check/src" ] || git -C "$src" worktree add -q --detach "$check/src" base
	git -C "$check/src" am --abort >/dev/null 2>&1 || true
	git -C "$check/src" checkout -q -f --detach base
	git -C "$check/src" clean -qfdx
	mkdir -p "$check/out"
	cp "$TREE_PATCHED/out/.config" "$check/out/.config"
	kmake "$check" -s olddefconfig
	while read -r p; do
		git -C "$check/src" -c user.name=mremap-dup -c user.email=mremap-dup@localhost \
			am -q "$REPO/patches/$p"
		# mm/ always (every patch is about it), plus the directory of
		# every C file the patch touches.
		dirs=$( (echo mm/x.c; git -C "$check/src" show --name-only --format= HEAD) |
			grep '\.c$' | grep -v '^tools/' | xargs -rn1 dirname | sort -u | sed 's|$|/|')
		logf=$check/build-${p%.patch}.log
		# The series' own KUnit suite is off in the test kernel's config
		# (it runs as an out-of-tree module there): build it here, from
		# the patch that adds it on (an unknown symbol is dropped).
		"$check/src/scripts/config" --file "$check/out/.config" -m MREMAP_DUP_KUNIT_TEST
		if ! kmake "$check" -j"$(nproc)" $dirs >"$logf" 2>&1; then
			log "does not build: $p (see $logf)"
			fail=1
		elif grep -q 'warning:' "$logf"; then
			grep 'warning:' "$logf" >&2
			log "builds with warnings: $p (see $logf)"
			fail=1
		else
			log "builds warning-free ($(echo $dirs)): $p"
		fi
		if git -C "$check/src" show --name-only --format= HEAD | grep -q '^tools/testing/vma/'; then
			make -s -C "$check/src/tools/testing/vma" -j"$(nproc)" >/dev/null &&
				"$check/src/tools/testing/vma/vma" | tail -1 || fail=1
			make -s -C "$check/src/tools/testing/vma" clean >/dev/null
		fi
	done <"$REPO/patches/series"
fi
exit $fail
