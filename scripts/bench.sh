#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# bench.sh: benchmarks as ratios measured in one run (see selftests/src/bench.rs):
#  - a second view of a 16 MiB buffer: MREMAP_DUP vs mmap(fd)+MAP_POPULATE
#    vs memcpy to a shadow buffer, on the patched kernel;
#  - fork() cost on the patched vs the unpatched kernel (the series threads a
#    destination address through fork's copy_pte_range()): BENCH_BOOTS
#    (default 2) boots of each kernel, alternating, each giving the median of
#    21 fork() calls; the patched/unpatched ratio of the medians is compared
#    with the spread between boots of one kernel, which is the noise floor.
# The guests run under TCG with -icount shift=0: the guest clock advances by
# one nanosecond per instruction executed, so guest-measured times count
# instructions and do not depend on the host's load (under plain TCG the
# same fork varied 1.8x between boots). Absolute times mean little; the
# ratios are what to read.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

boots=${BENCH_BOOTS:-2}
export BOOT_QEMU_OPTS='-icount shift=0'
"$REPO/scripts/setup.sh"
"$REPO/scripts/fetch-kernel.sh"
"$REPO/scripts/build-kernel.sh" patched
"$REPO/scripts/build-kernel.sh" unpatched
"$REPO/scripts/build-module.sh" patched >/dev/null
cargo build --release --quiet --manifest-path "$REPO/Cargo.toml"
out=$CACHE/results/bench
rm -rf "$out"
mkdir -p "$out"
"$REPO/scripts/boot.sh" patched bench "$out/view"
for i in $(seq "$boots"); do
	for k in patched unpatched; do
		"$REPO/scripts/boot.sh" "$k" bench-fork "$out/fork-$k-$i"
	done
done
echo
grep -v '^fork' "$out/view/bench.txt"
python3 - "$out" "$boots" <<'EOF'
import re, statistics, sys
out, boots = sys.argv[1], int(sys.argv[2])
med = {}
for k in ("patched", "unpatched"):
    med[k] = []
    for i in range(1, boots + 1):
        text = open(f"{out}/fork-{k}-{i}/bench.txt").read()
        med[k].append(float(re.search(r"^fork.*median (\d+) us", text, re.M).group(1)))
    print(f"fork medians, {k}: " + ", ".join(f"{m:.0f} us" for m in med[k]))
p, u = statistics.median(med["patched"]), statistics.median(med["unpatched"])
noise = max(max(v) / min(v) for v in med.values())
ratio = p / u
print(f"fork: patched {p:.0f} us, unpatched {u:.0f} us, ratio patched/unpatched {ratio:.3f}")
print(f"boot-to-boot spread of one kernel (max/min of its medians): {noise:.3f}")
if abs(ratio - 1) <= noise - 1:
    print("fork: no difference beyond boot-to-boot noise")
elif ratio > 1:
    print("fork: patched SLOWER than boot-to-boot noise explains")
else:
    print("fork: patched faster than boot-to-boot noise explains")
EOF
