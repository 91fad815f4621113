#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# soak.sh [--seconds N] [--ops N] [--seed N] [--jobs N]: the long soak of the
# random-operation model (selftests/src/model.rs), which a test run runs for
# 15 s only: one boot of the patched debug kernel (KASAN, lockdep, DEBUG_VM,
# PAGE_TABLE_CHECK, kmemleak) with the test device, vgem and the other DRM
# cards, as scripts/test.sh boots it, running mremap-dup-model alone until
# it has done --ops operations (default 1000000) or --seconds have passed
# (default 7200); then the model's leak check and a kmemleak scan. The
# results are parsed as a test run's are: a failed operation or leak check,
# a splat in the kernel log or an unreferenced object is a failure.
# --jobs N (default 1): N model processes at once in the guest, with seeds
# seed to seed+N-1, sharing out --ops (each process runs one CPU; --seconds
# bounds each); the leak check is taken around all of them.
# BOOT_CPUS (default 2) sets the guest's CPUs.
# Results in $CACHE/results/soak-<timestamp>; builds nothing (run
# scripts/test.sh once first).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

seconds=7200 ops=1000000 jobs=1 seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
while [ $# -gt 0 ]; do
	case $1 in
	--seconds) seconds=$2; shift ;;
	--ops) ops=$2; shift ;;
	--seed) seed=$2; shift ;;
	--jobs) jobs=$2; shift ;;
	*) die "usage: $0 [--seconds N] [--ops N] [--seed N] [--jobs N]" ;;
	esac
	shift
done

out=$CACHE/results/soak-$(date +%Y%m%d-%H%M%S)
echo "SOAK_ARGS=(--seed $seed --ops $ops --seconds $seconds --jobs $jobs)" >"$out.env"
log "model soak: seed $seed, $jobs process(es), at most $ops operations or $seconds s; results in $out"
BOOT_TIMEOUT=$((seconds + 1200)) "$REPO/scripts/boot.sh" patched soak "$out"
grep -h '^# [0-9]* ops \(in\|by\)\|^# ok/failed\|^# leak check' "$out/model.ktap" || true
python3 "$REPO/scripts/parse-results.py" "$out" --program model --expect-kunit mremap_dup:5
