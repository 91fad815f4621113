#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# boot.sh FLAVOUR MODE RESULTS: boot the FLAVOUR kernel (tree_for in lib.sh) under
# virtme-ng with all four DRM cards (vgem, virtio-gpu, bochs, qxl) and run
# scripts/guest-test.sh MODE in it, collecting results into RESULTS.
#
# KVM is used when it works here; otherwise TCG (the choice is cached), and
# the choice is always said, with why (TCG is the norm on a machine whose
# nested KVM is broken); a boot that fails under KVM is said so and redone
# under TCG, early if QEMU reports a KVM internal error or the guest does
# not begin (kvm_watch). The choice is also written to RESULTS/accel.txt,
# which parse-results.py prints.
# Only the known early-boot KASAN report of toolchain.md (under TCG; it also
# turns lockdep off) makes a boot worth retrying (up to 8 boots), and said so;
# if it persists the tests run on a boot that had it, and it counts as a
# failure. Any other splat during boot is not retried: the tests run and it
# counts as a failure.
# A boot that takes longer than BOOT_TIMEOUT is stopped: timeout signals the
# whole process group (vng and its QEMU; SIGKILL 30 s later), and the QEMU
# of the boot (its -pidfile) is killed if it is still there.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

flavour=$1
mode=$2
results=$3
tree=$(tree_for "$flavour")
kernel=$tree/out/arch/x86/boot/bzImage
[ -f "$kernel" ] || die "no kernel at $kernel: run scripts/build-kernel.sh $flavour"
accel_file=$CACHE/accel
# BOOT_QEMU_OPTS: more QEMU options (scripts/bench.sh: -icount).
# BOOT_MEMORY: the guest's memory (default 2G; scripts/bench.sh: 4G).
# BOOT_CPUS: its CPUs (default 2; scripts/mutants.sh --shard: 1 per shard).
# BOOT_TIMEOUT: seconds before a boot is given up (default 3000).
# KVM_BOOT_LIMIT: seconds a guest under KVM has to begin (default 300).
# BOOT_QXL_OPTS: properties of the qxl device (scripts/bench.sh:
# ",ram_size_mb=512", the BAR that QXL's TTM VRAM domain manages; default 64).
# ivshmem-plain: 8 MiB of shared memory in BAR 2, which guest-test.sh binds
# to vfio-pci (no-IOMMU mode) for the VFIO tests (selftests/src/vfio.rs).
ivshmem_opts="-object memory-backend-memfd,id=ivshmem,size=8M,share=on -device ivshmem-plain,memdev=ivshmem"
qemu_opts="-device virtio-gpu-pci -device bochs-display -device qxl${BOOT_QXL_OPTS:-} $ivshmem_opts ${BOOT_QEMU_OPTS:-}"
# no5lvl: under TCG vng uses -cpu max, which has LA57, and the unpatched
# 7.2.13 KASAN kernel then often reports a "wild-memory-access" in
# handle_edge_irq() at 0.005 s, on an address of the 5-level direct map
# (ff11...), and turns lockdep off for the rest of the boot (toolchain.md
# pitfalls; 6 of 9 boots here). 4-level paging is what the selftests were
# written for; the report is not filtered, it just does not happen.
#
# memmap=1M$0x60000000 takes 1 MiB of the guest's RAM out of System RAM for
# the test device's PAT_WC flavour: x86 PAT tracks remap_pfn_range() of
# memory that is not RAM (guest-test.sh passes the address to the module).
#
# memmap=16M%0x70000000-1+0xefffffff turns 16 MiB of the guest's RAM into
# "soft reserved" memory (e820 type 0xefffffff), which device-dax's hmem
# driver offers as /dev/dax0.0 (2 MiB pages: the selftests devdax_*).
#
# log_buf_len=16M: the whole kernel log of a run stays in the ring buffer
# (the default 256 KiB would lose the boot, and with it the marker
# parse-results.py splits the log at, after a few splats).
kernel_args='no5lvl memmap=1M$0x60000000 memmap=16M%0x70000000-1+0xefffffff log_buf_len=16M'
# kmemleak (built in, off by default: ci/kernel.config.fragment) for a test
# run: guest-test.sh clears it when the tests start and scans at the end.
case $mode in test | soak) kernel_args+=' kmemleak=on' ;; esac
pidfile=$results.qemu.pid

boot_once() {
	local accel=$1 keep=${2:-} kvm_opt=()
	[ "$accel" = tcg ] && kvm_opt=(--disable-kvm)
	rm -rf "$results"
	mkdir -p "$results"
	log "booting $flavour kernel ($accel), mode $mode"
	rm -f "$pidfile"
	# vng's output must be piped, never redirected (toolchain.md pitfalls).
	# Not --foreground: timeout then signals the whole process group, QEMU
	# (a child of vng) included; stdin from /dev/null, as a background group
	# must not read the terminal.
	# The QEMU of the boot is killed on the writing side of the pipe, as soon
	# as timeout returns: a QEMU that left the process group would otherwise
	# keep the pipe, and this function, waiting.
	local limit=${BOOT_TIMEOUT:-3000} watcher=
	: >"$results.console.log"
	if [ "$accel" = kvm ]; then
		kvm_watch &
		watcher=$!
	fi
	(
		cd "$REPO" || exit 1
		vrc=0
		timeout --kill-after=30 "$limit" vng --run "$kernel" \
			--memory "${BOOT_MEMORY:-2G}" --cpus "${BOOT_CPUS:-2}" \
			"${kvm_opt[@]}" --rwdir="$results" --qemu-opts="$qemu_opts -pidfile $pidfile" \
			--append="$kernel_args" \
			--exec "bash ./scripts/guest-test.sh $results $mode $tree/module $keep" </dev/null 2>&1 || vrc=$?
		case $vrc in
		124 | 137) log "the guest did not finish within $limit s: stopped (timeout exit $vrc)" ;;
		esac
		kill_qemu
		exit "$vrc"
	) | tee "$results.console.log" |
		{ grep -E '^(ok|not ok|# Totals|MREMAP_DUP|memfd|wrote|vgem)' || true; } || true
	if [ -n "$watcher" ]; then
		kill "$watcher" 2>/dev/null || true
		wait "$watcher" 2>/dev/null || true
	fi
	echo "$accel ($accel_why)" >"$results/accel.txt"
	[ -f "$results/done" ]
}

# kvm_watch: a guest under nested KVM can fail after the probe below found
# KVM working, in two ways seen here on fresh machines: QEMU reports a "KVM
# internal error" (an emulation failure on a lock cmpxchg16b of SLUB's,
# early in the boot) and stays up; or QEMU spins at 100 % CPU and the guest
# never starts (toolchain.md). Either way the boot would wait out
# BOOT_TIMEOUT (50 minutes). Kill its QEMU when its output reports the
# error, or when the guest has not begun (dmesg-boot.txt, the first thing
# guest-test.sh writes) within KVM_BOOT_LIMIT seconds (default 300; under
# TCG the debug kernel's guest begins in about 90 s here). The boot then
# fails and is redone under TCG.
kvm_watch() {
	local waited=0 limit=${KVM_BOOT_LIMIT:-300}
	while sleep 1; do
		waited=$((waited + 1))
		if grep -qs "KVM internal error" "$results.console.log"; then
			log "KVM internal error in the guest: stopping its QEMU"
		elif [ ! -e "$results/dmesg-boot.txt" ] && [ "$waited" -ge "$limit" ]; then
			log "no sign of the guest under KVM after $limit s: stopping its QEMU"
		else
			continue
		fi
		kill_qemu
		return
	done
}

# kill_qemu: the QEMU of the last boot, if it outlived vng and timeout.
kill_qemu() {
	local pid
	pid=$(cat "$pidfile" 2>/dev/null) || return 0
	if [ -n "$pid" ] && grep -qaF -- "$pidfile" "/proc/$pid/cmdline" 2>/dev/null; then
		log "QEMU $pid of this boot still running: killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$pidfile"
}

boot_splat() {
	python3 "$REPO/scripts/parse-results.py" --check-splat "$results/dmesg-boot.txt"
}

# Does KVM work here? Nested KVM on some hosts makes QEMU abort at start
# ("failed to set MSR 0x10a"): a paused QEMU that is still alive after a few
# seconds means it works. Says why not on stdout.
kvm_works() {
	[ -r /dev/kvm ] && [ -w /dev/kvm ] || { echo "no usable /dev/kvm"; return 1; }
	local rc=0 err
	err=$( (timeout 8 qemu-system-x86_64 -enable-kvm -cpu host -m 64 -display none \
		-nodefaults -machine q35 -S -monitor none >/dev/null) 2>&1) || rc=$?
	[ "$rc" = 124 ] && return 0
	echo "QEMU -enable-kvm exited within 8 s (exit $rc): $(head -c 200 <<<"$err" | tr '\n' ' ')"
	return 1
}

accel=$(cat "$accel_file" 2>/dev/null || true)
if [ -z "$accel" ]; then
	if why=$(kvm_works); then
		accel=kvm
		accel_why="KVM works here"
	else
		accel=tcg
		accel_why="KVM unusable here: $why"
	fi
else
	accel_why="cached in $accel_file (remove it to probe KVM again)"
fi
log "accelerator: $accel ($accel_why)"

# Under TCG the early-boot KASAN report came in 3 of 5 boots here: allow a
# few more boots before running the tests on a boot that had one.
max_tries=8
for try in $(seq "$max_tries"); do
	if ! boot_once "$accel"; then
		if [ "$accel" = kvm ]; then
			log "WARNING: no result under KVM: falling back to TCG (and remembering it in $accel_file); the KVM boot's last console lines:"
			tail -5 "$results.console.log" >&2 || true
			cp "$results.console.log" "$results.kvm-failed.console.log" 2>/dev/null || true
			accel=tcg
			accel_why="fell back: the boot under KVM gave no result (console: $results.kvm-failed.console.log)"
			echo tcg >"$accel_file"
			boot_once "$accel" || log "guest did not come back under TCG either"
		else
			log "guest did not come back"
		fi
	fi
	[ -f "$results/done" ] && echo "$accel" >"$accel_file"
	if [ -f "$results/dmesg-boot.txt" ] && [ ! -f "$results/boot-splat" ] && boot_splat 2>/dev/null; then
		log "a splat during boot that is not the known early-boot KASAN report: not retried, counted as a failure"
	fi
	if [ -f "$results/boot-splat" ]; then
		log "try $try: the known early-boot KASAN report (toolchain.md) before the first test:"
		boot_splat || true
		cp "$results/dmesg-boot.txt" "$results.boot-splat-$try.txt" 2>/dev/null || true
		if [ "$try" -lt "$max_tries" ]; then
			log "booting again"
			continue
		fi
		# It persists: run the tests anyway, the splat counts as a failure.
		log "splat persists after $try boots: running the tests on this one"
		rm -f "$results/done"
		boot_once "$accel" keep-boot-splat || true
	fi
	break
done
