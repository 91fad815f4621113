#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# test.sh [--unpatched] [--no-setup]: the whole test run, end to end.
#
#   set-up -> kernel fetch -> apply patches/ -> build (incremental) ->
#   host tests (VMA userland tests of the patched tree) -> Rust selftests
#   build -> boot under virtme-ng -> selftests + KUnit in the guest ->
#   parse KTAP and the kernel log -> "N passed, N failed"
#
# --unpatched runs the same selftests on the pristine 7.2 kernel (its own
# cached build dir): there they must fail.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

flavour=patched
setup=1
for arg in "$@"; do
	case $arg in
	--unpatched) flavour=unpatched ;;
	--no-setup) setup=0 ;;
	*) die "usage: $0 [--unpatched] [--no-setup]" ;;
	esac
done

start=$(date +%s)
if [ "$setup" = 1 ]; then
	timed "set-up" "$REPO/scripts/setup.sh"
fi
timed "kernel fetch" "$REPO/scripts/fetch-kernel.sh"
timed "kernel build ($flavour)" "$REPO/scripts/build-kernel.sh" "$flavour"

host_args=()
if [ "$flavour" = patched ]; then
	# The VMA userland tests (tools/testing/vma) exercise mm/vma.c, which the
	# series changes, on the host.
	vmalog=$CACHE/results/vma-userland.log
	mkdir -p "$CACHE/results"
	vma_tests() {
		local dir=$TREE_PATCHED/src/tools/testing/vma
		make -s -C "$dir" -j"$(nproc)" >"$vmalog" 2>&1 && "$dir/vma" >>"$vmalog" 2>&1
		local rc=$?
		make -s -C "$dir" clean >/dev/null 2>&1 || true
		return $rc
	}
	timed "VMA userland tests (host)" vma_tests || true
	host_args+=(--host "vma-userland=$vmalog")
	# Style: rustfmt/clippy of the Rust code, checkpatch of the series.
	lintlog=$CACHE/results/lint.log
	timed "lint (host)" "$REPO/scripts/lint.sh" "$lintlog" || true
	host_args+=(--host "lint=$lintlog")
fi

timed "Rust test device module ($flavour)" "$REPO/scripts/build-module.sh" "$flavour" ||
	log "the test device did not build: its tests will fail"
timed "Rust selftests build" cargo build --release --quiet --manifest-path "$REPO/Cargo.toml"
timed "C kselftest and KUnit module build ($flavour)" "$REPO/scripts/build-kselftest.sh" "$flavour"
timed "C tests of include/mremap_dup.h build" "$REPO/scripts/build-c-tests.sh"

results=$CACHE/results/$flavour
timed "guest run ($flavour)" "$REPO/scripts/boot.sh" "$flavour" test "$results"

log "results in $results; whole run took $(( $(date +%s) - start )) s"
echo
# The KUnit suite of kernel-rust/ must have run: where it did not build or
# load (the pristine kernel), each of its 5 cases is a failure. On the
# pristine kernel a test that skips because MREMAP_DUP is missing is a skip;
# on the patched one it is a failure.
parse_args=()
[ "$flavour" = unpatched ] && parse_args+=(--kernel-without-dup)
python3 "$REPO/scripts/parse-results.py" "$results" --expect-kunit mremap_dup:5 \
	--expect-kunit mremap_dup_mm:2 "${parse_args[@]}" "${host_args[@]}"
