#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# fetch-kernel.sh: download linux-source-7.2 and lay out two git trees under
# the cache: unpatched/src (the pristine base commit) and patched/src (the
# same base, with patches/ applied by build-kernel.sh). Idempotent.
#
# The version is the pinned KPKG_VERSION (lib.sh; FETCH_KERNEL_PIN overrides
# it). When the archive no longer has it (sid moves on) and it is not in the
# download cache, the newest linux-source-7.2 the archive has is used
# instead, said so, and checked: the series must apply to it (each patch of
# patches/series in order, git apply --cached on a scratch index of the new
# base), or the fetch fails. FETCH_KERNEL_DRY=1 only resolves the version
# and prints the choice (nothing downloaded or unpacked).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

pinned=${FETCH_KERNEL_PIN:-$KPKG_VERSION}

# resolve_version: the version to use, on stdout; why, on stderr.
resolve_version() {
	if [ -s "$CACHE/dl/${KPKG}_${pinned}_all.deb" ]; then
		log "$KPKG $pinned: pinned version, already downloaded"
		echo "$pinned"
		return
	fi
	local versions newest v
	versions=$(apt-cache madison "$KPKG" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | sort -u)
	if grep -qxF "$pinned" <<<"$versions"; then
		log "$KPKG $pinned: pinned version, in the archive"
		echo "$pinned"
		return
	fi
	newest=
	for v in $versions; do
		if [ -z "$newest" ] || dpkg --compare-versions "$v" gt "$newest"; then
			newest=$v
		fi
	done
	[ -n "$newest" ] ||
		die "$KPKG: pinned $pinned is not in the archive and no other version is (apt-get update? sid in the sources, toolchain.md section 1)"
	log "WARNING: $KPKG $pinned (pinned in scripts/lib.sh) has left the archive: falling back to $newest, the newest it has; the series is checked against it"
	echo "$newest"
}

# A base tree already unpacked is used as it is (no archive look-up); it
# says which version it holds.
if [ "${FETCH_KERNEL_DRY:-0}" != 1 ] &&
	have=$(git -C "$TREE_UNPATCHED/src" log -1 --format=%s base 2>/dev/null); then
	log "base tree: $have"
	case $have in
	*"$KPKG $pinned)") ;;
	*) log "WARNING: the base tree is not $KPKG $pinned (pinned): remove $TREE_UNPATCHED and $TREE_PATCHED to fetch again" ;;
	esac
	version=${have##* }
	version=${version%)}
else
	version=$(resolve_version)
fi
# The upstream version: 7.2.14-1 -> 7.2.14.
kversion=${version%%-*}
[ "$version" = "$KPKG_VERSION" ] && kversion=$KVERSION
if [ "${FETCH_KERNEL_DRY:-0}" = 1 ]; then
	echo "$KPKG $version (kernel $kversion)$( [ "$version" = "$pinned" ] || echo ", fallback from pinned $pinned")"
	exit 0
fi

deb=$CACHE/dl/${KPKG}_${version}_all.deb

download() {
	[ -s "$deb" ] && return 0
	mkdir -p "$CACHE/dl"
	(cd "$CACHE/dl" && apt-get download -q "$KPKG=$version")
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
	[ "$(make -s -C "$dst" kernelversion)" = "$kversion" ] ||
		die "unexpected kernel version in $dst (expected $kversion)"
	sed -i '/^# Debian/,$d' "$dst/.gitignore"
	if grep -qx '/\*' "$dst/.gitignore"; then
		# Block not recognised by its comment: drop the two lines.
		sed -i -e '/^\/\*$/d' -e '/^!\/debian\/$/d' "$dst/.gitignore"
	fi
	git -C "$dst" init -q -b pristine
	git -C "$dst" add -A
	git -C "$dst" -c user.name=mremap-dup -c user.email=mremap-dup@localhost \
		commit -q -m "Linux $kversion (Debian $KPKG $version)"
	git -C "$dst" tag base
	[ "$version" = "$pinned" ] || check_series_applies "$dst"
}

# check_series_applies TREE: every patch of patches/series applies, in order,
# to TREE's base (on a scratch index: the tree's files are not touched).
check_series_applies() {
	local tree=$1 idx p
	idx=$(mktemp)
	GIT_INDEX_FILE=$idx git -C "$tree" read-tree base
	while read -r p; do
		[ -n "$p" ] || continue
		GIT_INDEX_FILE=$idx git -C "$tree" apply --cached "$REPO/patches/$p" ||
			{ rm -f "$idx"; die "the series does not apply to $KPKG $version: $p fails"; }
	done <"$REPO/patches/series"
	rm -f "$idx"
	log "the series applies to $KPKG $version"
}

clone_patched() {
	local dst=$TREE_PATCHED/src
	[ -d "$dst/.git" ] && return 0
	mkdir -p "$TREE_PATCHED"
	git clone -q --shared "$TREE_UNPATCHED/src" "$dst"
	# the clone brings the "base" tag along
	git -C "$dst" rev-parse -q --verify base >/dev/null || die "no base tag in $dst"
}

timed "download $KPKG $version" download
timed "unpack + base commit" unpack_base
timed "patched tree" clone_patched
log "trees: $TREE_UNPATCHED/src, $TREE_PATCHED/src ($(git -C "$TREE_UNPATCHED/src" log -1 --format=%s base))"
