#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# bench.sh: benchmarks as ratios measured in one run (see selftests/src/bench.rs):
#  - a second view of a 16 MiB buffer: MREMAP_DUP vs mmap(fd)+MAP_POPULATE
#    vs memcpy to a shadow buffer, on the patched kernel;
#  - fork() cost on the patched vs the unpatched kernel (the series threads a
#    destination address through fork's copy_pte_range()).
# Under TCG absolute times mean little; the ratios are what to read.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

"$REPO/scripts/setup.sh"
"$REPO/scripts/fetch-kernel.sh"
"$REPO/scripts/build-kernel.sh" patched
"$REPO/scripts/build-kernel.sh" unpatched
cargo build --release --quiet --manifest-path "$REPO/Cargo.toml"
"$REPO/scripts/boot.sh" patched bench "$CACHE/results/bench-patched"
"$REPO/scripts/boot.sh" unpatched bench-fork "$CACHE/results/bench-unpatched"
echo
cat "$CACHE/results/bench-patched/bench.txt"
p=$(awk '/^fork with/{print $(NF-1)}' "$CACHE/results/bench-patched/bench.txt")
u=$(awk '/^fork with/{print $(NF-1)}' "$CACHE/results/bench-unpatched/bench.txt")
echo "fork: patched $p us, unpatched $u us, ratio patched/unpatched $(python3 -c "print(f'{$p/$u:.3f}')")"
