#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# build-kernel.sh [patched|unpatched|bench|unpatched-bench]: apply the
# series (patched and bench), configure from ci/kernel.config.fragment
# (bench, unpatched-bench: ci/bench.config.fragment) and build incrementally.
#
# bench is the benchmark kernel (scripts/bench.sh): the patched tree's source
# (bench/src is a symlink to ../patched/src) built with debugging off into
# its own bench/out. It applies the series as patched does and shares the
# patched tree's series.applied marker: applying it a second time would
# rewrite the files and rebuild the debug kernel from scratch.
# unpatched-bench is the same without the series (unpatched/src), for
# scripts/bench.sh --fork.
#
# The build dir is kept: the series or the fragment changing triggers only
# what it must (re-apply, reconfigure); make and ccache do the rest.
# MREMAP_DUP_DEV=1 builds the patched tree as it is checked out (for
# developing the series there; scripts/export-series.sh writes patches/).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

flavour=${1:-patched}
tree=$(tree_for "$flavour")
src=$tree/src
out=$tree/out
fragment=$REPO/ci/kernel.config.fragment
# The tree whose series.applied says which series its source carries.
series_tree=$tree
# Options the .config must have (a fragment line Kconfig silently dropped).
required="CONFIG_RUST=y CONFIG_KUNIT=y CONFIG_KASAN=y CONFIG_PROVE_LOCKING=y
	CONFIG_DEBUG_VM=y CONFIG_DRM_VGEM=y CONFIG_DRM_QXL=y CONFIG_USERFAULTFD=y
	CONFIG_MEM_SOFT_DIRTY=y CONFIG_DEV_DAX_HMEM=y"
# Options it must not have.
forbidden="CONFIG_DEV_DAX_KMEM=y"
if [ "$flavour" = bench ] || [ "$flavour" = unpatched-bench ]; then
	fragment=$REPO/ci/bench.config.fragment
	series_tree=$TREE_PATCHED
	required="CONFIG_RUST=y CONFIG_DRM_VGEM=y CONFIG_DRM_QXL=y CONFIG_DRM_VIRTIO_GPU=y
		CONFIG_DRM_BOCHS=y CONFIG_USERFAULTFD=y CONFIG_BLK_DEV_LOOP=y CONFIG_EXT4_FS=y
		CONFIG_X86_PAT=y CONFIG_DEBUG_FS=y"
	forbidden="CONFIG_KASAN=y CONFIG_PROVE_LOCKING=y CONFIG_LOCKDEP=y CONFIG_DEBUG_VM=y
		CONFIG_PAGE_TABLE_CHECK=y CONFIG_KUNIT=y CONFIG_FAULT_INJECTION=y
		CONFIG_DEBUG_KMEMLEAK=y CONFIG_DEBUG_ATOMIC_SLEEP=y"
	mkdir -p "$tree"
	if [ "$flavour" = bench ]; then
		[ -L "$src" ] || ln -s ../patched/src "$src"
	else
		[ -L "$src" ] || ln -s ../unpatched/src "$src"
	fi
fi
[ -d "$src/.git" ] || "$REPO/scripts/fetch-kernel.sh"

series_hash() {
	(cd "$REPO/patches" && cat series $(cat series)) | sha256sum | cut -d' ' -f1
}

apply_series() {
	[ "$flavour" = patched ] || [ "$flavour" = bench ] || return 0
	if [ "${MREMAP_DUP_DEV:-0}" = 1 ]; then
		log "MREMAP_DUP_DEV=1: building $src as checked out ($(git -C "$src" rev-parse --short HEAD))"
		return 0
	fi
	local want
	want=$(series_hash)
	if [ "$(cat "$series_tree/series.applied" 2>/dev/null)" = "$want" ]; then
		return 0
	fi
	git -C "$src" am --abort >/dev/null 2>&1 || true
	git -C "$src" checkout -q -B series base
	git -C "$src" reset -q --hard base
	local p
	while read -r p; do
		[ -n "$p" ] || continue
		git -C "$src" -c user.name=mremap-dup -c user.email=mremap-dup@localhost \
			am -q "$REPO/patches/$p" || die "git am failed on $p"
	done <"$REPO/patches/series"
	echo "$want" >"$series_tree/series.applied"
	log "applied $(grep -c . "$REPO/patches/series") patches onto base"
}

config_hash() {
	{ cat "$fragment"; kmake_vars; } | sha256sum | cut -d' ' -f1
}

configure() {
	local want
	want=$(config_hash)
	if [ -f "$out/.config" ] && [ "$(cat "$tree/config.done" 2>/dev/null)" = "$want" ]; then
		return 0
	fi
	rm -rf "$out"
	mkdir -p "$out"
	# shellcheck disable=SC2046
	(cd "$src" && vng --kconfig --config "$fragment" \
		O="$out" $(kmake_vars) "CC=ccache clang-19")
	# virtme-ng appends DWARF after the fragment; no debug info keeps the
	# build and the build dir small.
	"$src/scripts/config" --file "$out/.config" \
		-d DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT -e DEBUG_INFO_NONE
	kmake "$tree" -s olddefconfig
	local item
	for item in $required; do
		grep -qx "$item" "$out/.config" || die "$item missing from $out/.config"
	done
	for item in $forbidden; do
		! grep -qx "$item" "$out/.config" || die "$item in $out/.config ($fragment turns it off)"
	done
	echo "$want" >"$tree/config.done"
}

build() {
	local logf=$tree/build.log rc=0
	# make's own status: PIPESTATUS read in the "||" right after the pipeline
	# (an "|| true" after the filter would make it true's; the filter finding
	# nothing is not a failure).
	kmake "$tree" -j"$(nproc)" 2>&1 | tee "$logf" |
		{ grep -E 'warning:|error:|^make.*Error' || true; } || rc=${PIPESTATUS[0]}
	[ "$rc" = 0 ] || die "kernel build failed (make exit $rc), see $logf"
	[ -f "$out/arch/x86/boot/bzImage" ] || die "no bzImage in $out"
	if grep -q 'warning:' "$logf"; then
		die "the $flavour build printed warnings (see $logf)"
	fi
}

timed "apply series ($flavour)" apply_series
timed "configure ($flavour)" configure
timed "build ($flavour)" build
log "kernel: $out/arch/x86/boot/bzImage"
