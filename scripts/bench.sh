#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# bench.sh [--max SIZE] [--icount-check] [--fork] [--lockhold]: the MREMAP_DUP benchmarks
# (selftests/src/bench.rs), in one boot of the benchmark kernel (the series
# with every debugging option off: build-kernel.sh bench,
# ci/bench.config.fragment), 4 GiB of guest memory.
#
# For every memory kind (memfd, shmem, a file on ext4 on a loop device, a
# vgem BO, a QXL VRAM BO, each test-device flavour) and size (powers of 4,
# 4 KiB to --max, default 1 GiB; what does not fit a kind is listed as not
# measured), the medians of repeated runs of MREMAP_DUP and of its
# alternatives, turned by scripts/bench-report.py into ratios, each to an
# alternative measured in the same run, and into plots. Written to
# $CACHE/results/bench-<timestamp>/ (bench.tsv, bench.md, plots/*.png); the
# table is copied to docs/bench/bench.md.
#
# The guest runs under TCG (no working KVM on the machines this was made
# on): the numbers are plain TCG wall-clock, as seen by the guest's clock.
# --icount-check boots a second time under -icount shift=0 (the guest clock
# counts instructions, independent of the host's load) for a subset (memfd
# and vgem, up to 16 MiB) and sets its ratios beside the first run's: a
# stability check, not a result.
#
# --fork: instead, fork() and an mremap() move (the paths the series
# changes: fork's copy_pte_range() takes a destination address, the move
# goes through copy_vma() and the split check factored out) on the
# benchmark kernel and on the same without the series (build-kernel.sh
# unpatched-bench: debugging off too): BENCH_BOOTS (default 2) boots of each,
# under -icount (the guest clock counts instructions), the patched/unpatched
# ratio of the medians against the spread between boots of one kernel.
#
# --lockhold: instead, one boot of the benchmark kernel running
# `mremap-dup-bench lockhold` (LOCKHOLD_ARGS, default a 256 MiB vgem buffer,
# 10 s a scenario): the latency of another process's mmap()+munmap() on the
# same DRM device while DUPs of the buffer copy its entries, against idle
# and against the same CPU load without the lock. Table in
# $CACHE/results/lockhold-<timestamp>/lockhold.txt.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

max=1G
icount_check=0
fork=0
lockhold=0
while [ $# -gt 0 ]; do
	case $1 in
	--max) max=$2; shift ;;
	--icount-check) icount_check=1 ;;
	--fork) fork=1 ;;
	--lockhold) lockhold=1 ;;
	*) die "usage: bench.sh [--max SIZE] [--icount-check] [--fork] [--lockhold]" ;;
	esac
	shift
done

fork_comparison() {
	local boots=${BENCH_BOOTS:-2} out=$CACHE/results/bench-fork i k
	export BOOT_QEMU_OPTS='-icount shift=0'
	"$REPO/scripts/build-kernel.sh" bench
	"$REPO/scripts/build-kernel.sh" unpatched-bench
	rm -rf "$out"
	mkdir -p "$out"
	for i in $(seq "$boots"); do
		for k in bench unpatched-bench; do
			"$REPO/scripts/boot.sh" "$k" bench-fork "$out/fork-$k-$i"
		done
	done
	python3 - "$out" "$boots" <<'EOF'
import re, statistics, sys
out, boots = sys.argv[1], int(sys.argv[2])
for what in ("fork", "mremap"):
    med = {}
    for k in ("bench", "unpatched-bench"):
        med[k] = []
        for i in range(1, boots + 1):
            path = f"{out}/fork-{k}-{i}/bench.txt"
            m = re.search(rf"^{what}.*median (\d+) us", open(path).read(), re.M)
            if not m:
                sys.exit(f"no {what} median in {path}: the boot did not finish the benchmark")
            med[k].append(float(m.group(1)))
        print(f"{what} medians, {k}: " + ", ".join(f"{m:.0f} us" for m in med[k]))
    p, u = statistics.median(med["bench"]), statistics.median(med["unpatched-bench"])
    noise = max(max(v) / min(v) for v in med.values())
    ratio = p / u
    print(f"{what}: patched {p:.0f} us, unpatched {u:.0f} us, ratio patched/unpatched {ratio:.3f}")
    print(f"{what}: boot-to-boot spread of one kernel (max/min of its medians): {noise:.3f}")
    if abs(ratio - 1) <= noise - 1:
        print(f"{what}: no difference beyond boot-to-boot noise")
    elif ratio > 1:
        print(f"{what}: patched SLOWER than boot-to-boot noise explains")
    else:
        print(f"{what}: patched faster than boot-to-boot noise explains")
EOF
}

"$REPO/scripts/setup.sh"
"$REPO/scripts/fetch-kernel.sh"
cargo build --release --quiet --manifest-path "$REPO/Cargo.toml"
if [ "$fork" = 1 ]; then
	fork_comparison
	exit 0
fi
"$REPO/scripts/build-kernel.sh" bench
"$REPO/scripts/build-module.sh" bench >/dev/null

mkdir -p "$CACHE/results"
if [ "$lockhold" = 1 ]; then
	out=$CACHE/results/lockhold-$(date +%Y%m%d-%H%M%S)
	echo "LOCKHOLD_ARGS=(${LOCKHOLD_ARGS:-})" >"$out.env"
	BOOT_MEMORY=4G BOOT_TIMEOUT=3600 "$REPO/scripts/boot.sh" bench bench-lockhold "$out"
	grep -q 'lockhold exit 0' "$out/exit.txt" || die "mremap-dup-bench lockhold failed: see $out/lockhold.txt"
	cat "$out/lockhold.txt"
	exit 0
fi
out=$CACHE/results/bench-$(date +%Y%m%d-%H%M%S)
# QXL's VRAM domain is its RAM BAR: 512 MiB instead of 64 (BOs up to 256 MiB).
export BOOT_MEMORY=4G BOOT_TIMEOUT=7200 BOOT_QXL_OPTS=,ram_size_mb=512

# run DIR ARGS...: one boot of the benchmark kernel running
# mremap-dup-bench run ARGS (guest-test.sh reads DIR.env).
run() {
	local dir=$1
	shift
	{
		printf 'BENCH_ARGS=('
		printf '%q ' "$@"
		printf ')\n'
		# The ext4 image: room for the largest file, sparse on the host.
		echo "BENCH_EXT4_SIZE=$(python3 -c "import sys; print(int(sys.argv[1]) * 3 // 2 + (256 << 20))" "$max_bytes")"
	} >"$dir.env"
	"$REPO/scripts/boot.sh" bench bench "$dir"
	[ -s "$dir/bench.tsv" ] || die "no results in $dir/bench.tsv (see $dir.console.log, $dir/bench.err)"
	grep -q 'bench exit 0' "$dir/exit.txt" || die "mremap-dup-bench failed: $(tail -3 "$dir/bench.err")"
}
max_bytes=$(python3 -c "
import sys; s = sys.argv[1]; u = {'K': 10, 'M': 20, 'G': 30}
print(int(s[:-1]) << u[s[-1].upper()] if s[-1].upper() in u else int(s))" "$max")

start=$(date +%s)
run "$out" --max "$max"
elapsed=$(($(date +%s) - start))
check=()
if [ "$icount_check" = 1 ]; then
	BOOT_QEMU_OPTS='-icount shift=0' run "$out/icount" --max 16M --kinds memfd,vgem --vmas ''
	check=(--check "$out/icount")
fi

# What the table was measured on.
{
	echo "Measured $(date -u +%Y-%m-%d) by \`scripts/bench.sh --max $max\` in ${elapsed} s:" \
		"one boot of the benchmark kernel ($(cat "$out/uname.txt" | awk '{print $3}')," \
		"the series applied from patches/ (sha256 of series + patches $(cut -c1-12 "$TREE_PATCHED/series.applied");" \
		"last commit touching patches/: $(git -C "$REPO" log -1 --format=%h -- patches))," \
		"ci/bench.config.fragment: no KASAN, lockdep, DEBUG_VM, PAGE_TABLE_CHECK, KUnit)," \
		"guest under QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}') TCG" \
		"(\`$(cat "$CACHE/accel" 2>/dev/null || echo tcg)\`), 2 vCPUs, 4 GiB, QXL RAM BAR 512 MiB," \
		"on a host $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//') with $(nproc) cores."
	echo
	echo "Absolute times under TCG say little about hardware; the ratios compare two ways of doing"
	echo "the same thing on the same emulated machine, in the same process, in the same rounds."
	echo
} >"$out/meta.md"

py=python3
[ -x "$CACHE/venv/bin/python3" ] && py=$CACHE/venv/bin/python3
"$py" "$REPO/scripts/bench-report.py" "$out" "${check[@]}" >/dev/null
mkdir -p "$REPO/docs/bench"
cp "$out/bench.md" "$REPO/docs/bench/bench.md"
log "results: $out (bench.tsv, bench.md, plots/); table copied to docs/bench/bench.md"
sed -n '/^### Headlines/,/^### A second/p' "$out/bench.md" | head -n -1
