#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# demo.sh: build and boot the patched kernel and show MREMAP_DUP working: a
# memfd mapping duplicated into a PROT_NONE reservation below 4 GiB, with a
# write through each mapping read back through the other.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

timed "set-up" "$REPO/scripts/setup.sh"
timed "kernel fetch" "$REPO/scripts/fetch-kernel.sh"
timed "kernel build (patched)" "$REPO/scripts/build-kernel.sh" patched
timed "demo build" cargo build --release --quiet --manifest-path "$REPO/Cargo.toml"
results=$CACHE/results/demo
timed "guest run" "$REPO/scripts/boot.sh" patched demo "$results"
echo
cat "$results/demo.txt"
grep -q 'shared both ways, OK' "$results/demo.txt"
