#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# boot.sh FLAVOUR MODE RESULTS: boot the patched|unpatched kernel under
# virtme-ng with all four DRM cards (vgem, virtio-gpu, bochs, qxl) and run
# scripts/guest-test.sh MODE in it, collecting results into RESULTS.
#
# KVM is used when it works here; otherwise TCG (the choice is cached).
# A splat in the kernel log before the first test is not ours (toolchain.md:
# an early-boot KASAN report under TCG, which also turns lockdep off): such a
# boot is retried (up to 8 boots), and said so; if it persists the tests run
# on a boot that had it, and it counts as a failure.
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
qemu_opts="-device virtio-gpu-pci -device bochs-display -device qxl ${BOOT_QEMU_OPTS:-}"
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
kernel_args='no5lvl memmap=1M$0x60000000'

boot_once() {
	local accel=$1 keep=${2:-} kvm_opt=()
	[ "$accel" = tcg ] && kvm_opt=(--disable-kvm)
	rm -rf "$results"
	mkdir -p "$results"
	log "booting $flavour kernel ($accel), mode $mode"
	# vng's output must be piped, never redirected (toolchain.md pitfalls).
	(cd "$REPO" && timeout --foreground 3000 vng --run "$kernel" --memory 2G --cpus 2 \
		"${kvm_opt[@]}" --rwdir="$results" --qemu-opts="$qemu_opts" \
		--append="$kernel_args" \
		--exec "bash ./scripts/guest-test.sh $results $mode $tree/module $keep" 2>&1 |
		tee "$results.console.log" | grep -E '^(ok|not ok|# Totals|MREMAP_DUP|memfd|wrote|vgem)' || true)
	[ -f "$results/done" ]
}

boot_splat() {
	python3 "$REPO/scripts/parse-results.py" --check-splat "$results/dmesg-boot.txt"
}

# Does KVM work here? Nested KVM on some hosts makes QEMU abort at start
# ("failed to set MSR 0x10a"): a paused QEMU that is still alive after a few
# seconds means it works.
kvm_works() {
	[ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
	local rc=0
	(timeout 8 qemu-system-x86_64 -enable-kvm -cpu host -m 64 -display none \
		-nodefaults -machine q35 -S -monitor none >/dev/null 2>&1) 2>/dev/null || rc=$?
	[ "$rc" = 124 ]
}

accel=$(cat "$accel_file" 2>/dev/null || true)
if [ -z "$accel" ]; then
	if kvm_works; then accel=kvm; else accel=tcg; fi
	log "accelerator: $accel"
fi

# Under TCG the early-boot KASAN report came in 3 of 5 boots here: allow a
# few more boots before running the tests on a boot that had one.
max_tries=8
for try in $(seq "$max_tries"); do
	if ! boot_once "$accel"; then
		if [ "$accel" = kvm ]; then
			log "no result under KVM: falling back to TCG (and remembering it)"
			accel=tcg
			echo tcg >"$accel_file"
			boot_once "$accel" || log "guest did not come back under TCG either"
		else
			log "guest did not come back"
		fi
	fi
	[ -f "$results/done" ] && echo "$accel" >"$accel_file"
	if [ -f "$results/boot-splat" ] || { [ -f "$results/dmesg-boot.txt" ] && boot_splat; }; then
		log "try $try: splat in the kernel log before the first test:"
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
