#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# check-series.sh [--build]: scripts/checkpatch.pl --strict on every patch of
# patches/ (from inside the kernel tree, as it must run), and with --build,
# that each patch builds on its own: the series is applied one patch at a
# time on a scratch branch of the patched tree and the objects of the
# directories each patch touches are rebuilt (plus tools/testing/vma when
# the patch touches it).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

src=$TREE_PATCHED/src
[ -d "$src/.git" ] || "$REPO/scripts/fetch-kernel.sh"
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
	[ -f "$TREE_PATCHED/out/.config" ] || "$REPO/scripts/build-kernel.sh" patched
	head=$(git -C "$src" rev-parse HEAD)
	git -C "$src" checkout -q -B check-series base
	while read -r p; do
		git -C "$src" -c user.name=mremap-dup -c user.email=mremap-dup@localhost am -q "$REPO/patches/$p"
		dirs=$(git -C "$src" show --name-only --format= HEAD | grep '\.[ch]$' |
			grep -v '^tools/' | xargs -rn1 dirname | sort -u | sed 's|$|/|')
		if [ -n "$dirs" ] && ! kmake "$TREE_PATCHED" -s -j"$(nproc)" $dirs; then
			log "does not build: $p"
			fail=1
		fi
		if git -C "$src" show --name-only --format= HEAD | grep -q '^tools/testing/vma/'; then
			make -s -C "$src/tools/testing/vma" -j"$(nproc)" >/dev/null && "$src/tools/testing/vma/vma" | tail -1 || fail=1
			make -s -C "$src/tools/testing/vma" clean >/dev/null
		fi
		log "built: $p"
	done <"$REPO/patches/series"
	git -C "$src" checkout -q --detach "$head"
fi
exit $fail
