#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# lint.sh [LOG]: the style checks a reviewer would run, each one a line of
# LOG ("ok"/"not ok"; default $CACHE/results/lint.log, the tools' output in
# LOG.out), ending with "N tests run, N passed, N failed" as parse-results.py
# reads host logs:
#  - cargo fmt --check and cargo clippy -D warnings on the userspace crates;
#  - rustfmt --check on kernel-rust/ (the kernel's clippy lints run when
#    scripts/build-module.sh builds it, with CLIPPY=1);
#  - scripts/checkpatch.pl --strict on every patch of patches/;
#  - the pipeline's self-test (scripts/tests/: parse-results.py, the
#    selftests harness, build-kernel.sh, fetch-kernel.sh and boot.sh fed
#    crafted inputs, their verdicts asserted; host only, about 20 s).
set -uo pipefail
. "$(dirname "$0")/lib.sh"

logf=${1:-$CACHE/results/lint.log}
mkdir -p "$(dirname "$logf")"
: >"$logf"
run=0 passed=0
lint() {
	local name=$1
	shift
	run=$((run + 1))
	if "$@" >>"$logf.out" 2>&1; then
		passed=$((passed + 1))
		echo "ok $run $name" >>"$logf"
	else
		echo "not ok $run $name (see $logf.out)" >>"$logf"
	fi
}
: >"$logf.out"
lint "cargo fmt --check" cargo fmt --all --check --manifest-path "$REPO/Cargo.toml"
lint "cargo clippy -D warnings" cargo clippy --release --quiet --manifest-path "$REPO/Cargo.toml" \
	--all-targets -- -D warnings
lint "rustfmt --check kernel-rust" rustfmt --check --edition 2021 "$REPO"/kernel-rust/*.rs
lint "checkpatch --strict patches/" "$REPO/scripts/check-series.sh"
lint "pipeline self-test (scripts/tests)" python3 -m unittest discover -s "$REPO/scripts/tests"
echo "$run tests run, $passed passed, $((run - passed)) failed." >>"$logf"
cat "$logf"
[ "$passed" = "$run" ]
