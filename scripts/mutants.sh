#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# mutants.sh [--list] [--check] [--baseline] [--file LIST] [--shard K/N] [NAME...]:
# mutation testing of the series. Each mutant of scripts/mutants.txt is one
# small named change to the series' final tree that breaks one rule of the
# contract; the tests must notice it.
#
# For each mutant (all of the list, or the NAMEs given): the tree
# $CACHE/mutant/src (a clone of the series repository at branch v2s, reset
# --hard between mutants) gets the mutant's substitution, is built
# incrementally in $CACHE/mutant/out (scripts/build-kernel.sh mutant: the
# same configuration as the patched kernel), and booted with the guest tests
# (scripts/boot.sh mutant failfast: what scripts/test.sh's guest runs, the
# C kselftest and the KUnit suites first, stopping at the first program that
# fails or leaves a splat); mutants of mm/vma.c also run the VMA userland
# tests. A mutant is KILLED when parse-results.py counts any failure or
# splat (failures the unmutated tree has too, from --baseline, excepted),
# SURVIVED otherwise. The baseline runs everything (mode test).
#
#   --list      print the list: name, file, rule
#   --check     apply every substitution to a clean tree, build nothing:
#               ERROR for each that does not match exactly once
#   --baseline  run the unmutated tree the same way; its failures are then
#               not counted as kills (flaky or known-failing tests)
#   --file F    another list (default scripts/mutants.txt)
#   --report    build nothing: the latest verdict of every mutant of the
#               list from summary.tsv (series head, repo head, what killed
#               it), those never run, and `mutants: K of N killed`
#   --shard K/N run the Kth of every N mutants of the selection, in tree
#               mutant (K = 1) or mutantK, with a guest of one CPU
#               (BOOT_CPUS=1): N shards run side by side on N cores (a TCG
#               guest's boot and most tests run on one CPU anyway). Their
#               baseline must be run the same way (--baseline --shard 1/N).
#
# The list: one mutant a line, `name | file | s#perl regex#replacement# |
# rule it breaks [| tests: FILTER...] [| cpus: N]`. The substitution is applied to the
# whole file (so \n and \t match across lines) and must match exactly once:
# otherwise the code moved and the line is an ERROR, not a survivor. A
# `tests:` field restricts the Rust selftests to those names (as the selftests
# binary's name filters); the KUnit suites and the kselftest always run.
# A `cpus:` field gives the mutant's guest N CPUs even in a shard (a race
# whose two sides must run at once).
# A comment block containing `# equivalent:` before a mutant says why no test
# can kill it; such a mutant is still run when asked for.
#
# The guest runs what scripts/test.sh's guest runs: boot.sh and guest-test.sh
# of this repo as committed (HEAD, exported to $CACHE/mutant/shadow and run
# from there), the Rust selftests and modules built from that same HEAD, and
# the series' C kselftest and C KUnit module built from the mutant tree at
# the series head ($CACHE/mutant/kselftest, where guest-test.sh looks).
#
# Environment: MUTANT_BRANCH (default v2s) of the series repository
# $CACHE/patched/src; MUTANT_TIMEOUT (seconds for one guest run, default
# 900: a mutant that hangs the guest is killed by the timeout);
# MUTANT_STOP_AT=HH:MM (UTC): start no mutant after that time.
#
# Results: $CACHE/results/mutants/NAME/ (mutant.diff, build.log, guest/,
# parse.txt) and $CACHE/results/mutants/summary.tsv, one line per run.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

list=$REPO/scripts/mutants.txt
mode=run
names=()
shard=1 shards=1
while [ $# -gt 0 ]; do
	case $1 in
	--list) mode=list ;;
	--check) mode=check ;;
	--baseline) mode=baseline ;;
	--report) mode=report ;;
	--file) list=$2; shift ;;
	--shard)
		[[ $2 =~ ^([1-9])/([1-9])$ ]] && [ "${BASH_REMATCH[1]}" -le "${BASH_REMATCH[2]}" ] ||
			die "--shard K/N: 1 <= K <= N <= 9"
		shard=${BASH_REMATCH[1]} shards=${BASH_REMATCH[2]}
		shift
		;;
	-*) die "usage: $0 [--list] [--check] [--baseline] [--file LIST] [--shard K/N] [NAME...]" ;;
	*) names+=("$1") ;;
	esac
	shift
done

flavour=mutant
[ "$shard" -gt 1 ] && flavour=mutant$shard
mtree=$(tree_for "$flavour")
# One CPU a guest when shards share the machine.
[ "$shards" -gt 1 ] && export BOOT_CPUS=1
msrc=$mtree/src
shadow=$mtree/shadow
resdir=$CACHE/results/mutants
branch=${MUTANT_BRANCH:-v2s}
guest_timeout=${MUTANT_TIMEOUT:-900}

# The list as fields separated by \x1f (US; a tab would let read(1) merge
# empty fields): name file subst rule tests equivalent. A malformed line
# comes out as name "!LINE" and the line as its rule.
parse_list() {
	perl -ne '
		chomp;
		next if /^\s*$/;
		if (/^#/) { $eq = 1 if /^#\s*equivalent:/; next; }
		my @f = split / \| /, $_, -1;
		my ($tests, $cpus) = ("", "");
		while (@f > 4 && $f[-1] =~ /^(tests|cpus):\s*(.*)$/) {
			if ($1 eq "tests") { $tests = $2 } else { $cpus = $2 }
			pop @f;
		}
		if (@f < 4) { print "!$.\x1f\x1f\x1f$_\x1f\x1f0\x1f\n"; $eq = 0; next; }
		my ($name, $file, $rule) = (shift @f, shift @f, pop @f);
		print join("\x1f", $name, $file, join(" | ", @f), $rule, $tests,
			   $eq ? 1 : 0, $cpus), "\n";
		$eq = 0;' "$list"
}

# apply FILE SUBST: apply the substitution to FILE in the mutant tree.
# Prints why not and fails if it does not match exactly once.
apply() {
	perl -e '
		my ($file, $subst) = @ARGV;
		open(my $fh, "<", $file) or do { print "cannot read $file\n"; exit 2 };
		local $/;
		my $orig = <$fh>;
		close $fh;
		$_ = $orig;
		my $n = eval "$subst" . "g";
		if ($@) { $@ =~ s/\n/ /g; print "bad substitution: $@\n"; exit 2 }
		$n ||= 0;
		if ($n != 1) { print "substitution matched $n times (the code moved?)\n"; exit 2 }
		if ($_ eq $orig) { print "substitution changes nothing\n"; exit 2 }
		open($fh, ">", $file) or do { print "cannot write $file\n"; exit 2 };
		print $fh $_;
		close $fh;' "$msrc/$1" "$2"
}

# The mutant tree at the head of the series branch, nothing applied.
clean_tree() {
	git -C "$msrc" reset -q --hard "$head"
}

setup_tree() {
	if [ ! -d "$msrc/.git" ]; then
		mkdir -p "$mtree"
		git clone -q --no-checkout "$TREE_PATCHED/src" "$msrc"
	fi
	git -C "$msrc" fetch -q "$TREE_PATCHED/src" "$branch"
	head=$(git -C "$msrc" rev-parse FETCH_HEAD)
	git -C "$msrc" checkout -q --detach "$head"
	clean_tree
}

if [ "$mode" = list ]; then
	parse_list | while IFS=$'\x1f' read -r name file _ rule tests eq cpus; do
		printf '%s | %s | %s%s%s%s\n' "$name" "$file" "$rule" \
			"${tests:+ | tests: $tests}" "${cpus:+ | cpus: $cpus}" \
			"$( [ "$eq" = 1 ] && echo ' [equivalent]')"
	done
	exit 0
fi

if [ "$mode" = report ]; then
	parse_list | python3 -c '
import sys
summary, = sys.argv[1:]
latest = {}
try:
    for line in open(summary):
        f = line.rstrip("\n").split("\t")
        if len(f) == 8 and f[4] in ("KILLED", "SURVIVED", "ERROR"):
            latest[f[3]] = f  # time series repo name verdict details build guest
except FileNotFoundError:
    pass
counts = {"KILLED": 0, "SURVIVED": 0, "ERROR": 0, "NOT RUN": 0}
eq_survived = 0
for rec in sys.stdin:
    name, _file, _subst, rule, _tests, eq, _cpus = rec.rstrip("\n").split("\x1f")
    if name.startswith("!"):
        continue
    f = latest.get(name)
    verdict = f[4] if f else "NOT RUN"
    counts[verdict] += 1
    tag = " [equivalent]" if eq == "1" else ""
    if verdict == "SURVIVED" and eq == "1":
        eq_survived += 1
    if f:
        print(f"{verdict:8} {name}{tag} (series {f[1]}, repo {f[2]}, {f[0]}): {f[5]}")
    else:
        print(f"{verdict:8} {name}{tag}: {rule}")
killed, survived = counts["KILLED"], counts["SURVIVED"]
not_run, errors = counts["NOT RUN"], counts["ERROR"]
print(f"mutants: {killed} of {killed + survived} killed ({eq_survived} of the {survived} survivors"
      f" marked equivalent); {not_run} not run, {errors} errors")
' "$resdir/summary.tsv"
	exit 0
fi

exec 9>"$CACHE/$flavour.lock"
flock -n 9 || die "another mutants.sh is running"
setup_tree
trap clean_tree EXIT

# This shard's part of the selection: every shards-th entry.
selected() {
	selection | awk -v k="$shard" -v n="$shards" '(NR - 1) % n == k - 1'
}

# Selected entries of the list; an unknown NAME is an error.
selection() {
	local all
	all=$(parse_list)
	if [ ${#names[@]} = 0 ]; then
		echo "$all"
		return
	fi
	local n
	for n in "${names[@]}"; do
		awk -F'\x1f' -v n="$n" '$1 == n' <<<"$all" | grep . || printf '%s\x1f\x1f\x1f(not in %s)\x1f\x1f0\n' "!$n" "$list"
	done
}

if [ "$mode" = check ]; then
	errors=0 count=0
	while IFS=$'\x1f' read -r -u 3 name file subst rule _ _ _; do
		count=$((count + 1))
		if [[ $name == !* ]]; then
			echo "ERROR ${name#!}: malformed line: $rule"
			errors=$((errors + 1))
			continue
		fi
		clean_tree
		if why=$(apply "$file" "$subst"); then
			echo "ok $name"
		else
			echo "ERROR $name: $why"
			errors=$((errors + 1))
		fi
	done 3< <(selected)
	echo "mutants: $count checked, $errors errors"
	[ "$errors" = 0 ]
	exit
fi

# --- everything below builds and boots: at the lowest priority ---

renice -n 19 -p $$ >/dev/null
mkdir -p "$resdir"

# The directory boot.sh is started from: this repo as committed (HEAD), so
# that the scripts, the Rust modules and the selftests match each other while
# others edit the working tree. Its target/release/mremap-dup-selftests is a
# wrapper passing the mutant's `tests:` filters to the real binary.
prepare_shadow() {
	rm -rf "$shadow"
	mkdir -p "$shadow"
	git -C "$REPO" archive HEAD | tar -x -C "$shadow"
	repo_head=$(git -C "$REPO" rev-parse --short HEAD)
	timed "Rust selftests build (repo at $repo_head)" env CARGO_TARGET_DIR="$CACHE/mutant/cargo-target" \
		cargo build --release --quiet --manifest-path "$shadow/Cargo.toml"
	mkdir -p "$shadow/target/release"
	# Every program guest-test.sh runs: the workspace's binaries, and the C
	# tests of include/mremap_dup.h (into $shadow/target/c-tests).
	find "$CACHE/mutant/cargo-target/release" -maxdepth 1 -type f -executable -name 'mremap-dup-*' \
		-exec cp -t "$shadow/target/release" {} +
	mv "$shadow/target/release/mremap-dup-selftests" "$shadow/target/release/mremap-dup-selftests.real"
	timed "C tests build" "$shadow/scripts/build-c-tests.sh" >/dev/null
	cat >"$shadow/target/release/mremap-dup-selftests" <<'EOF2'
#!/bin/bash
# Written by scripts/mutants.sh: the selftests with the mutant's name filters.
shadow=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck disable=SC2046
exec "$0.real" $(cat "$shadow/filters" 2>/dev/null)
EOF2
	chmod +x "$shadow/target/release/mremap-dup-selftests"
}

# What the guest loads and runs besides the selftests, built against the
# unmutated series once per run (mutants change no exported interface):
# the Rust modules (build-module.sh), and in $CACHE/mutant/kselftest, as
# build-kselftest.sh builds them but from the mutant tree and build dir
# (that script uses the patched tree's), the series' C kselftest and its C
# KUnit suite as the module mremap_dup_mm_kunit.
prepare_guest_files() {
	# The modules build against the kernel's build dir: build it unmutated
	# first (after a change of the series, that is most of the work).
	clean_tree
	timed "unmutated kernel" nice -n 19 "$shadow/scripts/build-kernel.sh" "$flavour" >"$resdir/kernel-build-$flavour.log" 2>&1 ||
		die "unmutated kernel build failed, see $resdir/kernel-build-$flavour.log"
	timed "Rust modules" "$shadow/scripts/build-module.sh" "$flavour" >"$resdir/module-build-$flavour.log" 2>&1 ||
		die "module build failed, see $resdir/module-build-$flavour.log"
	local out=$mtree/kselftest kunit=$mtree/kselftest/kunit
	rm -rf "$out"
	mkdir -p "$kunit"
	kmake "$mtree" -s headers
	gcc -static -O2 -Wall -Werror -I "$msrc/tools/testing/selftests" -isystem "$mtree/out/usr/include" \
		-o "$out/mremap_dup" "$msrc/tools/testing/selftests/mm/mremap_dup.c"
	cp "$msrc/mm/tests/mremap_dup_kunit.c" "$kunit/mremap_dup_mm_kunit.c"
	printf 'obj-m := mremap_dup_mm_kunit.o\nccflags-y := -I$(srctree)/mm/tests\n' >"$kunit/Kbuild"
	kmake "$mtree" M="$kunit" modules >"$kunit/build.log" 2>&1 ||
		die "C KUnit module build failed, see $kunit/build.log"
	cp "$kunit/mremap_dup_mm_kunit.ko" "$out/"
}

# guest RESULTS MODE: boot the mutant kernel with the tests, at most
# $guest_timeout seconds (a hung guest is a kill).
guest() {
	local out=$1 mode=$2 pid waited=0 qemu
	# boot.sh's own limit stops a hung guest and kills its QEMU; this one,
	# a minute later, is the backstop. vng runs under timeout(1), which puts
	# itself in a process group of its own: killing boot.sh's group leaves
	# QEMU running, so QEMU is killed by its pidfile as well.
	(cd "$shadow" && BOOT_TIMEOUT=$guest_timeout exec setsid nice -n 19 ./scripts/boot.sh "$flavour" "$mode" "$out") \
		</dev/null >"$out.boot.log" 2>&1 &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		if [ "$waited" -ge $((guest_timeout + 60)) ]; then
			log "guest run over $guest_timeout s: stopping it"
			kill -TERM -- "-$pid" 2>/dev/null || true
			qemu=$(cat "$out.qemu.pid" 2>/dev/null) || true
			if [ -n "$qemu" ] && grep -qaF -- "$out.qemu.pid" "/proc/$qemu/cmdline" 2>/dev/null; then
				kill -KILL "$qemu" 2>/dev/null || true
			fi
			sleep 5
			kill -KILL -- "-$pid" 2>/dev/null || true
			echo "$guest_timeout" >"$out.timeout"
			break
		fi
		sleep 5
		waited=$((waited + 5))
	done
	wait "$pid" 2>/dev/null || true
}

vma_userland() {
	local dir=$msrc/tools/testing/vma rc
	nice -n 19 make -s -C "$dir" -j"$(nproc)" >"$1" 2>&1 && "$dir/vma" >>"$1" 2>&1
	rc=$?
	make -s -C "$dir" clean >/dev/null 2>&1 || true
	return $rc
}

# Short names of the failures in a parse-results.py output.
killers() {
	sed -n 's/^FAIL //p' "$1" | grep -v 'not run (fail-fast' | sed -E \
		-e 's/^selftests: //' \
		-e 's/^kunit ([^:]*): /kunit \1./' \
		-e 's/^(splat [a-z ]*): .*\] (.{0,60}).*/\1: \2/' |
		awk 'NR <= 4 { printf "%s%s", (NR > 1 ? ", " : ""), $0 } END { if (NR > 4) printf " (+%d more)", NR - 4 }'
}

killed=0 survived=0 errors=0
record() { # verdict name details build_s guest_s
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "${head:0:12}" "$repo_head" "$2" "$1" "$3" "$4" "$5" \
		>>"$resdir/summary.tsv"
}

run_one() {
	local name=$1 file=$2 subst=$3 rule=$4 tests=$5 eq=$6 cpus=${7:-}
	local rdir=$resdir/$name why t0 build_s guest_s rc=0 mode
	local expect=(--expect-kunit mremap_dup:5 --expect-kunit "mremap_dup_mm:$(grep -c 'KUNIT_CASE(' "$msrc/mm/tests/mremap_dup_kunit.c")")
	local host_args=()
	rm -rf "$rdir"
	mkdir -p "$rdir"
	clean_tree
	if [ "$name" != baseline ]; then
		if ! why=$(apply "$file" "$subst"); then
			echo "ERROR $name: $why"
			errors=$((errors + 1))
			record ERROR "$name" "$why" 0 0
			return
		fi
	fi
	git -C "$msrc" diff >"$rdir/mutant.diff"
	log "mutant $name: $(git -C "$msrc" diff --stat | tail -1)"
	t0=$(date +%s)
	if ! nice -n 19 "$shadow/scripts/build-kernel.sh" "$flavour" >"$rdir/build.log" 2>&1; then
		echo "ERROR $name: build failed, see $rdir/build.log"
		errors=$((errors + 1))
		record ERROR "$name" "build failed" $(( $(date +%s) - t0 )) 0
		return
	fi
	build_s=$(( $(date +%s) - t0 ))
	if [ "$file" = mm/vma.c ] || [ "$name" = baseline ]; then
		vma_userland "$rdir/vma-userland.log" || true
		host_args+=(--host "vma-userland=$rdir/vma-userland.log")
	fi
	printf '%s\n' "$tests" >"$shadow/filters"
	mode=failfast
	[ "$name" = baseline ] && mode=test
	t0=$(date +%s)
	# A race that needs two CPUs in the guest gets them, sharded or not.
	[ -n "$cpus" ] && local BOOT_CPUS=$cpus && export BOOT_CPUS
	guest "$rdir/guest" "$mode"
	# QEMU itself failing (TCG: "iotlb_to_section: Assertion ... failed"
	# within seconds of boot) says nothing of the mutant: run it again, once.
	if [ ! -f "$rdir/guest/done" ] &&
		grep -q '^qemu-system[^:]*: .*Assertion' "$rdir/guest.console.log" 2>/dev/null; then
		log "$name: QEMU failed ($(grep -m1 '^qemu-system' "$rdir/guest.console.log")): booting again"
		mv "$rdir/guest.console.log" "$rdir/guest.qemu-failed.log"
		guest "$rdir/guest" "$mode"
	fi
	guest_s=$(( $(date +%s) - t0 ))
	python3 "$shadow/scripts/parse-results.py" "$rdir/guest" "${expect[@]}" "${host_args[@]}" \
		>"$rdir/parse.txt" 2>&1 || rc=$?
	[ -f "$rdir/guest.timeout" ] && echo "FAIL guest: hung, stopped after $guest_timeout s" >>"$rdir/parse.txt" && rc=1
	log "$name: built in $build_s s, guest run $guest_s s: $(tail -1 "$rdir/parse.txt")"
	if [ "$name" = baseline ]; then
		grep '^FAIL' "$rdir/parse.txt" | grep -v '^FAIL splat' >"$resdir/baseline.fails" || true
		echo "baseline: $(tail -1 "$rdir/parse.txt") (failures here are not counted as kills: $resdir/baseline.fails)"
		record BASELINE baseline "$(tail -1 "$rdir/parse.txt")" "$build_s" "$guest_s"
		return
	fi
	# Failures the unmutated tree has too do not kill.
	if [ -s "$resdir/baseline.fails" ]; then
		grep -vxF -f "$resdir/baseline.fails" "$rdir/parse.txt" >"$rdir/parse.counted" || true
	else
		cp "$rdir/parse.txt" "$rdir/parse.counted"
	fi
	if [ "$rc" != 0 ] && grep -q '^FAIL' "$rdir/parse.counted"; then
		why=$(killers "$rdir/parse.counted")
		echo "killed $name (by: $why)"
		killed=$((killed + 1))
		record KILLED "$name" "$why" "$build_s" "$guest_s"
	else
		echo "SURVIVED $name: $rule$( [ "$eq" = 1 ] && echo ' [marked equivalent]')"
		survived=$((survived + 1))
		record SURVIVED "$name" "$rule" "$build_s" "$guest_s"
	fi
}

prepare_shadow
log "series $branch at ${head:0:12}, repo at $repo_head; results in $resdir"
prepare_guest_files
if [ "$mode" = baseline ]; then
	run_one baseline "" "" "the unmutated tree" "" 0
	exit 0
fi
while IFS=$'\x1f' read -r -u 3 name file subst rule tests eq cpus; do
	if [[ $name == !* ]]; then
		echo "ERROR ${name#!}: malformed line: $rule"
		errors=$((errors + 1))
		continue
	fi
	if [ -n "${MUTANT_STOP_AT:-}" ] && [[ $(date -u +%H%M) > ${MUTANT_STOP_AT/:/} ]]; then
		echo "NOT RUN $name: after MUTANT_STOP_AT=$MUTANT_STOP_AT UTC"
		continue
	fi
	run_one "$name" "$file" "$subst" "$rule" "$tests" "$eq" "$cpus"
done 3< <(selected)
echo "mutants: $killed of $((killed + survived)) killed$( [ "$errors" -gt 0 ] && echo ", $errors errors")"
