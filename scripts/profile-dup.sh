#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# profile-dup.sh [FLAVOUR]: where a DUP of a mapping with no present entries
# spends its time, against a MAP_FIXED mmap() of the same memfd (the bench
# target "within 1.5x of a second mmap(fd)"): scripts/profile-dup.c, in one
# boot of the FLAVOUR kernel (default bench, which has the function_graph
# tracer), timed untraced at 4 KiB and 1 GiB, then one call of each traced
# with function_graph (max depth 5) for __x64_sys_mremap and __x64_sys_mmap.
# Writes times.txt, trace-4k.txt, trace-1g.txt to $CACHE/results/profile-dup.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

flavour=${1:-bench}
tree=$(tree_for "$flavour")
out=$CACHE/results/profile-dup
rm -rf "$out"
mkdir -p "$out"
gcc -O2 -Wall -Wno-unused-result -o "$out/profile-dup" "$REPO/scripts/profile-dup.c"
cat >"$out/guest.sh" <<GUEST
set -e
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
vng --run "$tree/out/arch/x86/boot/bzImage" --disable-kvm --memory 2G --cpus 2 \
	--rwdir="$out" --append no5lvl --exec "bash $out/guest.sh" 2>&1 | tail -3
cat "$out/times.txt"
log "traces: $out/trace-4096.txt $out/trace-1073741824.txt"
