#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# profile-dup.sh [FLAVOUR]: where a DUP of a mapping with no present entries
# spends its time, against a MAP_FIXED mmap() of the same memfd (the bench
# target "within 1.5x of a second mmap(fd)"): scripts/profile-dup.c, in one
# boot of the FLAVOUR kernel (default bench, which has the function_graph
# tracer), timed untraced at 4 KiB and 1 GiB, then one call of each traced
# with function_graph (max depth 5) for __x64_sys_mremap and __x64_sys_mmap.
# Writes times.txt, trace-4k.txt, trace-1g.txt to $CACHE/results/profile-dup.
#
# --perf: instead of the function_graph traces (whose per-call overhead
# inflates deep call chains), sample with perf (cpu-clock, call graphs) a
# loop of 20000 DUPs at 4 KiB, and one of 20000 MAP_FIXED mmap()s, each
# followed by the mmap() that puts the reservation back; writes
# perf-dup.txt and perf-mmap.txt (per kernel function: self time, and time
# with callees). --len N: the size of the --perf loops (default 4096).
# --present: the memfd's pages are in the page cache and each DUP's source
# is a fresh mapping of them, as for bench.rs's dup_empty (PRESENT=1 for
# profile-dup.c).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

perf=0 len=4096 present=0
while [ $# -gt 0 ]; do
	case $1 in
	--perf) perf=1 ;;
	--len) len=$2; shift ;;
	--present) present=1 ;;
	*) break ;;
	esac
	shift
done
flavour=${1:-bench}
tree=$(tree_for "$flavour")
out=$CACHE/results/profile-dup
rm -rf "$out"
mkdir -p "$out"
gcc -O2 -Wall -Wno-unused-result -o "$out/profile-dup" "$REPO/scripts/profile-dup.c"
if [ $perf = 1 ]; then
	cat >"$out/guest.sh" <<GUEST
set -e
export PRESENT=$present
echo 0 >/proc/sys/kernel/kptr_restrict
echo -1 >/proc/sys/kernel/perf_event_paranoid
for m in dup mmap; do
	perf record -q -e cpu-clock -F 4000 -g -o /tmp/perf-\$m.data $out/profile-dup $len \$m 20000 >>$out/times.txt
	{
		echo "## self time"
		perf report -i /tmp/perf-\$m.data --stdio --no-children --sort sym --percent-limit 0.5 -g none
		echo "## with callees"
		perf report -i /tmp/perf-\$m.data --stdio --children --sort sym --percent-limit 1 -g none
	} >$out/perf-\$m.txt 2>&1
done
GUEST
else
	cat >"$out/guest.sh" <<GUEST
set -e
export PRESENT=$present
cd /sys/kernel/tracing
for s in 4096 1073741824; do $out/profile-dup \$s; done >$out/times.txt
echo function_graph >current_tracer
echo 0 >tracing_on
echo __x64_sys_mremap >set_graph_function
echo __x64_sys_mmap >>set_graph_function
echo 5 >max_graph_depth
for s in 4096 1073741824; do
	echo >trace
	$out/profile-dup \$s trace >>$out/times.txt
	cat trace >$out/trace-\$s.txt
done
GUEST
fi
vng --run "$tree/out/arch/x86/boot/bzImage" --disable-kvm --memory 2G --cpus 2 \
	--rwdir="$out" --append no5lvl --exec "bash $out/guest.sh" 2>&1 | tail -3
cat "$out/times.txt"
if [ $perf = 1 ]; then
	log "profiles: $out/perf-dup.txt $out/perf-mmap.txt"
else
	log "traces: $out/trace-4096.txt $out/trace-1073741824.txt"
fi
