# SPDX-License-Identifier: GPL-2.0
# Shared settings for the scripts/ verbs. Source it; do not run it.
#
# Everything reusable (downloaded .debs, kernel trees, build dirs, ccache,
# the virtme-ng venv) lives under one cache directory outside the repo.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MREMAP_DUP_CACHE:-$HOME/.cache/mremap-dup}

# The kernel the series applies to: Debian's linux-source-7.2 package.
KPKG=linux-source-7.2
KPKG_VERSION=7.2.13-1
KVERSION=7.2.13
# The version of the series in patches/ ("[PATCH v2 n/m]").
SERIES_VERSION=2

# Pinned toolchain (see ../shared/docs/toolchain.md).
RUSTV=1.96.0+dfsg1-1~deb12u2
LLVM22V=1:22.1.8-1~deb12u1
QEMUV=1:10.0.2+ds-2+deb13u1~bpo12+1
SEABIOSV=1.16.3-2~bpo12+1
BINDGEN_VERSION=0.73.2
VNG_VERSION=1.42
MATPLOTLIB_VERSION=3.11.2
PLY_VERSION=3.11
GITPYTHON_VERSION=3.2.1

# Two trees and two build dirs, laid out so that the path of the source
# seen from the build dir is the same ("../src") for both: with
# CCACHE_BASEDIR=$CACHE, ccache then shares C objects between them, and the
# unpatched kernel costs little more than its Rust objects and the link.
TREE_PATCHED=$CACHE/patched
TREE_UNPATCHED=$CACHE/unpatched

export CCACHE_DIR=$CACHE/ccache
export CCACHE_BASEDIR=$CACHE
export CCACHE_MAXSIZE=5G
export LIBCLANG_PATH=/usr/lib/llvm-19/lib
export PATH=$HOME/.cargo/bin:$CACHE/venv/bin:$PATH

BINDGEN=$HOME/.cargo/bin/bindgen

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# timed DESCRIPTION CMD...: run CMD, then print how long it took.
timed() {
	local what=$1 start rc=0
	shift
	start=$(date +%s)
	log "$what ..."
	"$@" || rc=$?
	log "$what: $(( $(date +%s) - start )) s (exit $rc)"
	return $rc
}

# tree_for patched|unpatched|mutant|bench|unpatched-bench -> the directory holding src/ and out/
tree_for() {
	case $1 in
	patched) echo "$TREE_PATCHED" ;;
	unpatched) echo "$TREE_UNPATCHED" ;;
	# scripts/mutants.sh: v2s plus one mutant (mutant2...: its other shards)
	mutant | mutant[2-9]) echo "$CACHE/$1" ;;
	# scripts/bench.sh: the patched source (bench/src -> ../patched/src),
	# built without debugging (ci/bench.config.fragment) into bench/out.
	bench) echo "$CACHE/bench" ;;
	# scripts/bench.sh --fork: the unpatched source (unpatched-bench/src ->
	# ../unpatched/src) built as bench is, into unpatched-bench/out.
	unpatched-bench) echo "$CACHE/unpatched-bench" ;;
	*) die "unknown kernel flavour '$1'" ;;
	esac
}

# kmake TREE ARGS...: make on that tree with the exact toolchain variables.
# The same variables must be passed to every make on one O= (Kconfig records
# the compilers' versions and would otherwise reconfigure from scratch).
kmake_vars() {
	echo LLVM=-19 RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
		HOSTRUSTC=/usr/bin/rustc BINDGEN="$BINDGEN"
}
kmake() {
	local tree=$1
	shift
	# shellcheck disable=SC2046
	make -C "$tree/src" O="$tree/out" $(kmake_vars) "CC=ccache clang-19" "$@"
}
