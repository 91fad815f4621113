#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# fetch-kernel.sh: download linux-source-7.2 and lay out two git trees under
# the cache: unpatched/src (the pristine base commit) and patched/src (the
# same base, with patches/ applied by apply-series.sh). Idempotent.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

deb=$CACHE/dl/${KPKG}_${KPKG_VERSION}_all.deb

download() {
	[ -s "$deb" ] && return 0
	mkdir -p "$CACHE/dl"
	(cd "$CACHE/dl" && apt-get download -q "$KPKG=$KPKG_VERSION")
	[ -s "$deb" ] || die "apt-get download did not produce $deb"
}

# The base tree: the tarball as Debian ships it, committed once. Debian's
# top-level .gitignore ends with "/*" + "!/debian/", which would hide every
# new file of the series from git; that block is dropped in the base commit.
unpack_base() {
	local dst=$TREE_UNPATCHED/src
	if git -C "$dst" rev-parse -q --verify base >/dev/null 2>&1; then
		return 0
	fi
	rm -rf "$TREE_UNPATCHED" "$CACHE/tmp-unpack"
	mkdir -p "$CACHE/tmp-unpack" "$TREE_UNPATCHED"
	dpkg-deb --fsys-tarfile "$deb" |
		tar -xO "./usr/src/$KPKG.tar.xz" | tar -xJ -C "$CACHE/tmp-unpack"
	mv "$CACHE/tmp-unpack/$KPKG" "$dst"
	rmdir "$CACHE/tmp-unpack"
	[ "$(make -s -C "$dst" kernelversion)" = "$KVERSION" ] ||
		die "unexpected kernel version in $dst"
	sed -i '/^# Debian/,$d' "$dst/.gitignore"
	if grep -qx '/\*' "$dst/.gitignore"; then
		# Block not recognised by its comment: drop the two lines.
		sed -i -e '/^\/\*$/d' -e '/^!\/debian\/$/d' "$dst/.gitignore"
	fi
	git -C "$dst" init -q -b pristine
	git -C "$dst" add -A
	git -C "$dst" -c user.name=mremap-dup -c user.email=mremap-dup@localhost \
		commit -q -m "Linux $KVERSION (Debian $KPKG $KPKG_VERSION)"
	git -C "$dst" tag base
}

clone_patched() {
	local dst=$TREE_PATCHED/src
	[ -d "$dst/.git" ] && return 0
	mkdir -p "$TREE_PATCHED"
	git clone -q --shared "$TREE_UNPATCHED/src" "$dst"
	# the clone brings the "base" tag along
	git -C "$dst" rev-parse -q --verify base >/dev/null || die "no base tag in $dst"
}

timed "download $KPKG $KPKG_VERSION" download
timed "unpack + base commit" unpack_base
timed "patched tree" clone_patched
log "trees: $TREE_UNPATCHED/src, $TREE_PATCHED/src"
