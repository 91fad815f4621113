#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# build-kcsan.sh [COMMIT]: build a KCSAN kernel (ci/kcsan.config.fragment) of
# the patched tree's repository at COMMIT (default bf11e51d2, the head of
# series v1) in a worktree and build dir of its own, $CACHE/kcsan/{src,out}
# (the same layout as patched/ and unpatched/, so that ccache shares objects
# through CCACHE_BASEDIR). Not part of the test run: KCSAN excludes KASAN,
# and the first build takes half an hour or more on 2 cores; another COMMIT
# rebuilds what it changes. Log: $CACHE/kcsan/build.log.
#
# Run the race test on it (in the guest, denser sampling than the default
# 1 access in 4000 makes the DUP's race show in a minute; --no-neighbours
# leaves out the neighbours' VMA splits, which race MADV_GUARD_INSTALL in
# mainline too: __split_vma() calls vm_area_dup() before vma_start_write()):
#   vng --run $CACHE/kcsan/out/arch/x86/boot/bzImage --disable-kvm --memory 2G \
#     --cpus 2 --append no5lvl --exec 'echo 400 >/sys/module/kcsan/parameters/skip_watch;
#     echo 400 >/sys/module/kcsan/parameters/udelay_task;
#     target/release/mremap-dup-stress --race-only --no-neighbours --seconds 60; dmesg'
# v1 (bf11e51d2): 9 reports "assert: race in madvise_vma_behavior / vm_area_dup"
# (vm_area_dup <- copy_vma <- mremap_dup); v2 (fd501bd71): none.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

commit=${1:-bf11e51d2}
tree=$CACHE/kcsan
src=$tree/src
out=$tree/out

if [ ! -d "$src" ]; then
	git -C "$TREE_PATCHED/src" worktree add -q --detach "$src" "$commit"
fi
[ -z "$(git -C "$src" status --porcelain --untracked-files=no)" ] ||
	die "$src has local changes"
git -C "$src" checkout -q --detach "$commit"

config_hash() {
	{ cat "$REPO/ci/kcsan.config.fragment"; kmake_vars; } | sha256sum | cut -d' ' -f1
}

configure() {
	local want item
	want=$(config_hash)
	if [ -f "$out/.config" ] && [ "$(cat "$tree/config.done" 2>/dev/null)" = "$want" ]; then
		return 0
	fi
	mkdir -p "$out"
	# shellcheck disable=SC2046
	(cd "$src" && vng --kconfig --config "$REPO/ci/kcsan.config.fragment" \
		O="$out" $(kmake_vars) "CC=ccache clang-19")
	# virtme-ng appends DWARF after the fragment: no debug info, as build-kernel.sh.
	"$src/scripts/config" --file "$out/.config" \
		-d DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT -e DEBUG_INFO_NONE
	kmake "$tree" -s olddefconfig
	for item in CONFIG_KCSAN=y CONFIG_DEBUG_VM=y CONFIG_DRM_VGEM=y CONFIG_USERFAULTFD=y \
		"# CONFIG_KASAN is not set" "# CONFIG_RUST is not set" "# CONFIG_KUNIT is not set"; do
		grep -qx "$item" "$out/.config" || die "'$item' missing from $out/.config"
	done
	echo "$want" >"$tree/config.done"
}

timed "configure (KCSAN)" configure
timed "KCSAN kernel build ($(git -C "$src" log --oneline -1))" \
	kmake "$tree" -j"$(nproc)" >"$tree/build.log" 2>&1 ||
	die "KCSAN build failed, see $tree/build.log"
[ -f "$out/arch/x86/boot/bzImage" ] || die "no bzImage in $out"
log "kernel: $out/arch/x86/boot/bzImage"
