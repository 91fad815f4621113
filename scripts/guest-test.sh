#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# guest-test.sh RESULTS [MODE [MODDIR [KEEP]]]: runs inside the virtme-ng guest (cwd = the
# repo, shared read-only from the host). Writes everything the host parses
# into RESULTS, a --rwdir directory:
#   dmesg-boot.txt   the kernel log at the end of the boot
#   selftests.ktap   the Rust selftests' KTAP
#   kunit/*.ktap     every KUnit suite's results (debugfs)
#   dmesg.txt        the kernel log after the last test
#   done             written last: the guest came back
# MODE: test (default) runs everything; demo runs the README demo only;
# bench runs the benchmark, bench-fork the fork one, bench-lockhold the
# lock hold-time one (scripts/bench.sh);
# soak (scripts/soak.sh) runs the random-operation model alone, long;
# failfast (scripts/mutants.sh) runs what test runs, the quickest-to-fail
# first (the C kselftest, the KUnit suites, the Rust selftests, then the
# rest), and stops at the first program or suite that fails or leaves a
# splat: the file failfast says where, parse-results.py counts what did not
# run as failures named "(fail-fast)".
# MODDIR: where build-module.sh left the test device module.
# KEEP: non-empty to run the tests even after a splat during boot.
set -uo pipefail

results=$1
mode=${2:-test}
moddir=${3:-}
keep_boot_splat=${4:-}
repo=$(pwd)
bin=$repo/target/release

mount -t debugfs none /sys/kernel/debug 2>/dev/null || true
dmesg >"$results/dmesg-boot.txt"
uname -a >"$results/uname.txt"

# The known early-boot KASAN report of toolchain.md (under TCG; it also
# turns lockdep off) makes this boot worth less: stop here and let the host
# boot again. Any other splat during boot is not retried: the tests run and
# parse-results.py counts it as a failure.
if [ -z "$keep_boot_splat" ] &&
	python3 "$repo/scripts/parse-results.py" --known-boot-splat "$results/dmesg-boot.txt" 2>/dev/null; then
	echo boot-splat >"$results/boot-splat"
	dmesg >"$results/dmesg.txt"
	echo done >"$results/done"
	exit 0
fi

# parse-results.py splits the kernel log here: before this line is the boot,
# from it on the tests. A log without it was truncated (boot.sh sets
# log_buf_len) or the tests never started: a failure.
echo "mremap-dup: tests start" >/dev/kmsg
# kmemleak (boot.sh turns it on for mode test): what the boot allocated and
# lost is not the tests' (cleared here); what they leak is scanned at the end.
kmemleak=/sys/kernel/debug/kmemleak
[ -w $kmemleak ] && echo clear >$kmemleak

# bench (scripts/bench.sh): the test device loaded, an ext4 image of
# BENCH_EXT4_SIZE (sparse, in RESULTS, which is on the host's disk) on a loop
# device, no periodic writeback (dirty pages of the file stay dirty and
# mapped writable, as in a process that keeps writing), then
# mremap-dup-bench run with the arguments BENCH_ARGS; both are set in
# RESULTS.env, which boot.sh's fresh RESULTS leaves alone.
# bench-fork: the fork benchmark only.
if [ "$mode" = bench ]; then
	BENCH_ARGS=()
	BENCH_EXT4_SIZE=2G
	# shellcheck disable=SC1091
	[ -f "$results.env" ] && . "$results.env"
	pat_base=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^memmap=[^$]*\$//p' | head -1)
	insmod "$moddir/mremap_dup_testdev.ko" ${pat_base:+"pat_base=$pat_base"} >"$results/insmod.txt" 2>&1
	sysctl -q vm.dirty_writeback_centisecs=0 vm.dirty_expire_centisecs=360000 \
		vm.dirty_background_ratio=90 vm.dirty_ratio=95
	mnt=/tmp/bench-ext4
	mkdir -p "$mnt"
	img=$results/ext4.img
	truncate -s "$BENCH_EXT4_SIZE" "$img"
	{ mkfs.ext4 -q -F "$img" && dev=$(losetup -f --show "$img") && mount -t ext4 "$dev" "$mnt"; } \
		>"$results/ext4.txt" 2>&1 || echo "no ext4 mount" >>"$results/ext4.txt"
	"$bin/mremap-dup-bench" run --file-dir "$mnt" "${BENCH_ARGS[@]}" >"$results/bench.tsv" 2>"$results/bench.err"
	echo "bench exit $?" >"$results/exit.txt"
	umount "$mnt" 2>/dev/null
	[ -n "${dev:-}" ] && losetup -d "$dev"
	rm -f "$img"
	dmesg >"$results/dmesg.txt"
	echo done >"$results/done"
	exit 0
fi
# bench-lockhold (scripts/bench.sh --lockhold): mremap-dup-bench lockhold
# with LOCKHOLD_ARGS of RESULTS.env.
if [ "$mode" = bench-lockhold ]; then
	LOCKHOLD_ARGS=()
	# shellcheck disable=SC1091
	[ -f "$results.env" ] && . "$results.env"
	"$bin/mremap-dup-bench" lockhold "${LOCKHOLD_ARGS[@]}" >"$results/lockhold.txt" 2>&1
	echo "lockhold exit $?" >"$results/exit.txt"
	dmesg >"$results/dmesg.txt"
	echo done >"$results/done"
	exit 0
fi
if [ "$mode" = bench-fork ]; then
	"$bin/mremap-dup-bench" fork 2>&1 | tee "$results/bench.txt"
	dmesg >"$results/dmesg.txt"
	echo done >"$results/done"
	exit 0
fi

if [ "$mode" = demo ]; then
	"$bin/mremap-dup-demo" 2>&1 | tee "$results/demo.txt"
	dmesg >"$results/dmesg.txt"
	echo done >"$results/done"
	exit 0
fi

ls -l /dev/dri/ >"$results/dri.txt" 2>&1
# The test device first: the KUnit suite (run at insmod) maps it.
for mod in mremap_dup_testdev mremap_dup_kunit; do
	ko=$moddir/$mod.ko
	if [ ! -f "$ko" ]; then
		echo "$ko: not built" >>"$results/insmod.txt"
		continue
	fi
	if [ "$mod" = mremap_dup_kunit ]; then
		for _ in $(seq 50); do
			[ -e /dev/mremap_dup_testdev ] && break
			sleep 0.1
		done
	fi
	args=()
	# The PAT_WC flavour's memory: the region boot.sh reserved with
	# memmap=<size>$<base> (not System RAM, so x86 PAT tracks its mappings).
	pat_base=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^memmap=[^$]*\$//p' | head -1)
	[ "$mod" = mremap_dup_testdev ] && [ -n "$pat_base" ] && args=("pat_base=$pat_base")
	insmod "$ko" "${args[@]}" >>"$results/insmod.txt" 2>&1 || echo "insmod $ko failed" >>"$results/insmod.txt"
done

# The VFIO tests' device: QEMU's ivshmem-plain (1af4:1110, boot.sh), bound
# to vfio-pci in no-IOMMU mode. Not found or not bound: the VFIO tests fail
# (they say why); vfio.txt says what happened here.
vfio_bdf=
echo 1 >/sys/module/vfio/parameters/enable_unsafe_noiommu_mode 2>>"$results/vfio.txt"
for d in /sys/bus/pci/devices/*; do
	if [ "$(cat "$d/vendor")" = 0x1af4 ] && [ "$(cat "$d/device")" = 0x1110 ]; then
		vfio_bdf=$(basename "$d")
		echo vfio-pci >"$d/driver_override"
		[ -e "$d/driver" ] && echo "$vfio_bdf" >"$d/driver/unbind"
		echo "$vfio_bdf" >/sys/bus/pci/drivers_probe
		echo "$vfio_bdf: driver $(basename "$(readlink "$d/driver")"), group $(basename "$(readlink "$d/iommu_group")")" >>"$results/vfio.txt"
	fi
done
[ -n "$vfio_bdf" ] || echo "no ivshmem device (1af4:1110)" >>"$results/vfio.txt"

kself=$(dirname "$moddir")/kselftest

# splat_since_start: a splat in the kernel log since the marker.
splat_since_start() {
	dmesg | sed -n "/mremap-dup: tests start/,\$p" >"$results/dmesg.partial"
	python3 "$repo/scripts/parse-results.py" --check-splat "$results/dmesg.partial" 2>/dev/null
}

# stop_early WHAT: in failfast mode, true (and the reason in failfast) when
# WHAT failed (its exit status, in $?) or a splat is in the log.
stop_early() {
	local rc=$? what=$1
	[ "$mode" = failfast ] || return 1
	if [ "$rc" != 0 ]; then
		echo "stopped after $what: exit status $rc" >"$results/failfast"
	elif splat_since_start; then
		echo "stopped after $what: a splat in the kernel log" >"$results/failfast"
	else
		return 1
	fi
}

# run_prog NAME KTAP CMD...: a test program, its KTAP and its exit status
# (the line "NAME exit N" of exit.txt).
run_prog() {
	local name=$1 ktap=$2 rc
	shift 2
	"$@" >"$results/$ktap" 2>&1
	rc=$?
	echo "$name exit $rc" >>"$results/exit.txt"
	return $rc
}

# KUnit suites write their results to debugfs when they run (at insmod).
collect_kunit() {
	local d bad=0
	mkdir -p "$results/kunit"
	for d in /sys/kernel/debug/kunit/*/; do
		[ -f "$d/results" ] || continue
		cp "$d/results" "$results/kunit/$(basename "$d").ktap"
		grep -q '^not ok' "$d/results" && bad=1
	done
	return $bad
}

load_c_kunit() {
	insmod "$kself/mremap_dup_mm_kunit.ko" >>"$results/insmod.txt" 2>&1 ||
		echo "insmod $kself/mremap_dup_mm_kunit.ko failed" >>"$results/insmod.txt"
}

selftests() {
	MREMAP_DUP_VFIO_BDF=$vfio_bdf MREMAP_DUP_TESTDEV_KO=$moddir/mremap_dup_testdev.ko \
		run_prog selftests selftests.ktap "$bin/mremap-dup-selftests"
}
# The series' own tests, built by build-kselftest.sh: the C kselftest, and
# the C KUnit suite as a module (it runs when loaded).
kselftest() { run_prog kselftest kselftest.ktap "$kself/mremap_dup"; }
# The helper a WoW64 layer calls: dup_range() of crates/mremap-dup and its C
# twin include/mremap_dup.h (built by build-c-tests.sh).
helper() { run_prog helper helper.ktap "$bin/mremap-dup-helper-tests"; }
helper_c() { run_prog helper-c helper-c.ktap "$repo/target/c-tests/mremap-dup-helper-tests-c"; }
# Fault injection over every allocation of a DUP, and DUP racing madvise and
# faults (short: 5 s here; longer with --seconds N by hand).
stress() { run_prog stress stress.ktap "$bin/mremap-dup-stress" --seconds 5; }
# The random-operation model (selftests/src/model.rs): 15 s of seeded
# operations against its model of an arena, then its leak check. A new seed
# each run, printed in the result's name (--seed N replays it by hand).
model() {
	local model_seed
	model_seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
	run_prog model model.ktap "$bin/mremap-dup-model" --seed "$model_seed" --seconds 15
}

# An object is reported once two scans found it unreferenced (the first one
# records its checksum); kmemleak.txt is what they found.
scan_kmemleak() {
	if [ -w $kmemleak ]; then
		echo scan >$kmemleak && echo scan >$kmemleak &&
			cat $kmemleak >"$results/kmemleak.txt" ||
			echo "kmemleak: scan failed" >"$results/kmemleak.txt"
	elif grep -qw kmemleak=on /proc/cmdline; then
		echo "kmemleak: on the command line, but no $kmemleak (disabled itself? see dmesg)" >"$results/kmemleak.txt"
	fi
}

if [ "$mode" = soak ]; then
	# scripts/soak.sh: the model alone, with SOAK_ARGS of RESULTS.env (seed,
	# operations, seconds), then the kmemleak scan. The Rust KUnit suite
	# ran at insmod above.
	SOAK_ARGS=()
	# shellcheck disable=SC1091
	[ -f "$results.env" ] && . "$results.env"
	run_prog model model.ktap "$bin/mremap-dup-model" "${SOAK_ARGS[@]}"
	collect_kunit
	scan_kmemleak
elif [ "$mode" = failfast ]; then
	# The Rust KUnit suite ran at insmod above.
	for step in collect_kunit kselftest "load_c_kunit; collect_kunit" selftests helper helper_c stress model; do
		eval "$step"
		stop_early "$step" && break
	done
	collect_kunit
else
	selftests
	kselftest
	helper
	helper_c
	stress
	model
	load_c_kunit
	collect_kunit
	scan_kmemleak
fi

dmesg >"$results/dmesg.txt"
echo done >"$results/done"
