#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""parse-results.py RESULTS [--host NAME=FILE ...] [--expect-kunit SUITE:N ...]
                   [--kernel-without-dup] [--selftests 0]
parse-results.py --check-splat FILE
parse-results.py --known-boot-splat FILE

Counts what one guest run produced: the test programs' KTAP (their exit
status in exit.txt), every KUnit suite's KTAP, host-side test logs, and the
kernel log. Prints one line per failure (`FAIL name: why`) and skip, a line
for the kernel's built-in KUnit suites, then, last,
`N passed, N failed[, N skipped]`. Exit status 1 on any failure.

What is a failure (each counted, with its reason):
- a guest that did not come back (no `done`), a missing KTAP file;
- KTAP: no plan, more results than the plan (overrun) or fewer (each missing
  result), a duplicate or out-of-order test number, `Bail out!`, a `not ok`
  (also with `# SKIP`), an `# XPASS`; for a test program, a missing
  `# Totals:` line where the program prints one, or totals that disagree
  with its results, a missing exit status, or a nonzero exit status without
  a failed result (kselftest's 4, KSFT_SKIP, is accepted when every result
  was a skip); for a KUnit suite, a missing or failed suite result;
- a skip because MREMAP_DUP is missing ("MREMAP_DUP not supported by this
  kernel"), unless --kernel-without-dup (test.sh --unpatched);
- an expected KUnit suite (--expect-kunit) that did not run, or ran fewer
  cases;
- the kernel log: no `mremap-dup: tests start` marker (guest-test.sh writes
  it to /dev/kmsg before the first test; without it the log was truncated or
  the tests never started), a log that does not begin with the boot's first
  line or that says printk messages were dropped, and every splat line
  (BUG, WARNING, KASAN, lockdep, Oops, ...): before the marker as "splat
  before the first test", from the marker on as "splat during the tests".
  No splat is filtered out;
- kmemleak.txt (a test run: boot.sh turns kmemleak on, guest-test.sh scans
  after the tests): every unreferenced object, or a scan that failed; a scan
  that found nothing is one pass;
- failfast (guest-test.sh mode failfast, scripts/mutants.sh): the programs
  and KUnit suites that did not run after the first failure, as failures
  "not run (fail-fast: ...)".

Skips are counted apart, never as passes. The kernel's built-in KUnit suites
(rust_*: proof that Rust and KUnit work) are counted in N like the project's
own tests, and shown on a line of their own.

--check-splat FILE: exit 0 (and print them) if FILE has splat lines.
--known-boot-splat FILE: exit 0 if FILE has splat lines and every one of them
belongs to the known early-boot KASAN report of toolchain.md (boot.sh boots
again only then); exit 1 otherwise, saying why.
"""

import argparse
import os
import re
import sys

# Lines that mean the kernel found something wrong. No line is filtered out:
# a splat is a failure whoever caused it.
SPLAT = re.compile(
    r"(BUG:|WARNING:|kernel BUG at|Oops|general protection fault|"
    r"Kernel panic|UBSAN:|DEBUG_LOCKS_WARN_ON|possible circular locking|"
    r"possible recursive locking|inconsistent lock state|"
    r"Disabling lock debugging|INFO: task .* blocked|"
    r"Unable to handle|page_table_check|list_add corruption|"
    r"list_del corruption|refcount_t:|bad page state|Bad page)",
    0,
)
# What guest-test.sh writes to /dev/kmsg right before the first test.
MARKER = "mremap-dup: tests start"
# The first line of every boot's log.
LOG_START = re.compile(r"^\[\s*0\.000000\] Linux version ")
# The early-boot KASAN report of the unpatched and patched 7.2.13 debug
# kernel under TCG (toolchain.md pitfalls): at about 0.004 s, in
# do_raw_spin_lock() called from handle_edge_irq(), followed by lockdep
# turning itself off. Only this is worth another boot.
KNOWN_BOOT_BUG = re.compile(
    r"^\[\s*0\.\d+\] BUG: KASAN: wild-memory-access in do_raw_spin_lock\+0x[0-9a-f]+/0x[0-9a-f]+$"
)
KNOWN_BOOT_TRACE = "handle_edge_irq"
KNOWN_BOOT_AFTER = re.compile(r"^\[\s*\d+\.\d+\] Disabling lock debugging due to kernel taint$")
# The reason the series' tests give when the kernel lacks MREMAP_DUP.
NO_DUP = "MREMAP_DUP not supported by this kernel"

KTAP_RESULT = re.compile(r"^(not ok|ok)\s+(\d+)\s*([^#]*?)\s*(?:#\s*(.*))?$")
KTAP_PLAN = re.compile(r"^1\.\.(\d+)\s*(#.*)?$")
TOTALS = re.compile(r"^# Totals: (.*)$")

# The test programs guest-test.sh runs: (name, KTAP file, prints "# Totals").
# Their exit status is the line "NAME exit N" of exit.txt.
PROGRAMS = [
    ("selftests", "selftests.ktap", True),  # selftests/src/harness.rs
    ("kselftest", "kselftest.ktap", True),  # kselftest_harness.h
    # selftests/src/stress.rs: fault injection and the races.
    ("stress", "stress.ktap", True),
    # selftests/src/model.rs: the random-operation model and its leak check.
    ("model", "model.ktap", True),
    # dup_range() of crates/mremap-dup (selftests/src/helper_tests.rs) and
    # of include/mremap_dup.h (tests/c/mremap_dup_helper_test.c).
    ("helper", "helper.ktap", True),
    ("helper-c", "helper-c.ktap", True),
]


def splats(text):
    return [line for line in text.splitlines() if SPLAT.search(line)]


def known_boot_splat(text):
    """(True, "") if every splat line of `text` is part of the known
    early-boot KASAN report; else (False, why)."""
    lines = text.splitlines()
    found = [i for i, line in enumerate(lines) if SPLAT.search(line)]
    if not found:
        return False, "no splat"
    bug = [i for i in found if KNOWN_BOOT_BUG.match(lines[i])]
    if len(bug) != 1:
        return False, f"not the known early-boot KASAN report: {lines[found[0]].strip()}"
    start = bug[0]
    end = next((j for j in range(start + 1, len(lines)) if "==========" in lines[j]), len(lines))
    if not any(KNOWN_BOOT_TRACE in line for line in lines[start:end]):
        return False, f"KASAN report without {KNOWN_BOOT_TRACE} in its trace: {lines[start].strip()}"
    for i in found:
        if i != start and not KNOWN_BOOT_AFTER.match(lines[i]):
            return False, f"another splat besides the known report: {lines[i].strip()}"
    return True, ""


class Tally:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0
        self.lines = []

    def ok(self, name):
        self.passed += 1
        self.lines.append(f"PASS {name}")

    def fail(self, name, why=""):
        self.failed += 1
        self.lines.append(f"FAIL {name}" + (f": {why}" if why else ""))

    def skip(self, name, why):
        self.skipped += 1
        self.lines.append(f"SKIP {name}: {why}")


def ktap_level(text, depth):
    """The plan, results, totals and bail-outs of the KTAP lines at `depth`
    (indented by 4 * depth columns)."""
    plans, results, totals, bail = [], [], None, []
    for line in text.splitlines():
        stripped = line.lstrip(" \t")
        indent = len(line[: len(line) - len(stripped)].expandtabs(4))
        if indent // 4 != depth or indent % 4:
            continue
        stripped = stripped.rstrip()
        m = KTAP_PLAN.match(stripped)
        if m:
            plans.append(int(m.group(1)))
            continue
        m = KTAP_RESULT.match(stripped)
        if m:
            results.append((m.group(1), int(m.group(2)), m.group(3).strip(), (m.group(4) or "").strip()))
            continue
        m = TOTALS.match(stripped)
        if m:
            totals = dict(re.findall(r"(\w+):(\d+)", m.group(1)))
            continue
        if stripped.startswith("Bail out!"):
            bail.append(stripped)
    return plans, results, totals, bail


def check_ktap(tally, prefix, text, depth, dup_required, totals_required=False):
    """Counts the results at `depth` strictly; returns {pass, fail, skip}
    of the results themselves (not of the structural failures)."""
    plans, results, totals, bail = ktap_level(text, depth)
    counts = {"pass": 0, "fail": 0, "skip": 0, "xfail": 0}
    if not plans:
        tally.fail(f"{prefix}(no KTAP plan)", "output missing or truncated")
    elif len(plans) > 1:
        tally.fail(f"{prefix}(KTAP plan)", f"{len(plans)} plans: {plans}")
    plan = plans[0] if plans else None
    last = 0
    for verdict, num, name, directive in results:
        name = f"{prefix}{name or f'test {num}'}"
        # A gap is counted below, as the results missing from the plan.
        if num <= last:
            tally.fail(name, f"duplicate or out-of-order test number {num} after {last}")
        last = max(last, num)
        if plan is not None and num > plan:
            tally.fail(name, f"plan overrun: result {num} beyond the plan 1..{plan}")
        word = directive.split(None, 1)[0].upper() if directive else ""
        reason = directive.split(None, 1)[1].strip() if len(directive.split(None, 1)) > 1 else ""
        if word == "SKIP" and verdict == "ok":
            counts["skip"] += 1
            if dup_required and NO_DUP in reason:
                tally.fail(name, f"skipped on a kernel that must have MREMAP_DUP: {reason}")
            else:
                tally.skip(name, reason or "no reason given")
        elif verdict == "not ok":
            counts["fail"] += 1
            tally.fail(name, directive)
        elif word == "XPASS":
            counts["fail"] += 1
            tally.fail(name, "passed, but was expected to fail (XPASS)")
        elif word == "XFAIL":
            counts["xfail"] += 1
            tally.ok(name)
        else:
            counts["pass"] += 1
            tally.ok(name)
    if plan is not None:
        seen = {num for _, num, _, _ in results}
        for i in range(1, plan + 1):
            if i not in seen:
                tally.fail(f"{prefix}(missing result {i} of {plan})", "no result with this number: run ended early?")
    for line in bail:
        tally.fail(f"{prefix}(bail out)", line)
    if totals is None:
        if totals_required:
            tally.fail(f"{prefix}(no # Totals line)", "the program did not finish")
    else:
        said = {k: int(totals.get(k, 0)) for k in ("pass", "fail", "skip", "xfail")}
        said_fail = said["fail"] + int(totals.get("xpass", 0)) + int(totals.get("error", 0))
        if (said["pass"] + said["xfail"], said_fail, said["skip"]) != (
            counts["pass"] + counts["xfail"],
            counts["fail"],
            counts["skip"],
        ):
            tally.fail(
                f"{prefix}(# Totals)",
                f"'# Totals: {' '.join(f'{k}:{v}' for k, v in totals.items())}' disagrees with the results "
                f"(pass:{counts['pass'] + counts['xfail']} fail:{counts['fail']} skip:{counts['skip']})",
            )
    return counts


def exit_statuses(text):
    """{program: status} from exit.txt lines "NAME exit N"."""
    out = {}
    for line in (text or "").splitlines():
        m = re.match(r"^(\S+) exit (-?\d+)$", line.strip())
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def check_program(tally, name, text, status, dup_required, totals_required):
    before = tally.failed
    counts = check_ktap(tally, f"{name}: ", text, 0, dup_required, totals_required)
    if status is None:
        tally.fail(f"{name} (exit status)", "no exit status in exit.txt: the program did not finish")
    elif status != 0 and tally.failed == before:
        all_skipped = counts["skip"] > 0 and counts["skip"] == sum(counts.values())
        if not (status == 4 and all_skipped):
            tally.fail(f"{name} (exit status)", f"exit status {status} without a failed test")


def check_kunit(tally, suite, text, dup_required):
    prefix = f"kunit {suite}: "
    before = tally.failed
    counts = check_ktap(tally, prefix, text, 1, dup_required)
    # The suite's own result (depth 0) says it finished and how.
    _, results, _, _ = ktap_level(text, 0)
    if not results:
        tally.fail(f"{prefix}(suite result)", "no suite result: the suite did not finish")
    elif any(v == "not ok" for v, *_ in results) and tally.failed == before:
        tally.fail(f"{prefix}(suite result)", "suite not ok although no case failed")
    return counts


def check_kernel_log(tally, full):
    lines = full.splitlines()
    if not lines or not LOG_START.match(lines[0]):
        tally.fail("dmesg", "the kernel log does not begin at boot (ring buffer overwritten: log_buf_len too small?)")
    for line in lines:
        if "printk messages dropped" in line:
            tally.fail("dmesg", f"messages lost: {line.strip()}")
    at = next((i for i, line in enumerate(lines) if MARKER in line), None)
    if at is None:
        tally.fail("dmesg", f"no '{MARKER}' marker: log truncated, or the tests never started")
        for line in splats(full):
            tally.fail("splat (log without marker)", line.strip())
        return
    for line in splats("\n".join(lines[:at])):
        tally.fail("splat before the first test", line.strip())
    for line in splats("\n".join(lines[at:])):
        tally.fail("splat during the tests", line.strip())


# /sys/kernel/debug/kmemleak after guest-test.sh's scans: one block per
# object, "unreferenced object 0x... (size N):", its comm, hex dump and
# backtrace.
KMEMLEAK_OBJECT = re.compile(r"^unreferenced object (0x[0-9a-f]+) \(size (\d+)\):", re.M)


def check_kmemleak(tally, text):
    """One failure per unreferenced object (where it was allocated), or one
    pass for a scan that found none; any other text is a failed scan."""
    blocks = KMEMLEAK_OBJECT.split(text)
    if len(blocks) == 1:
        if text.strip():
            tally.fail("kmemleak", text.strip().splitlines()[0])
        else:
            tally.ok("kmemleak: no unreferenced object after the tests")
        return
    for i in range(1, len(blocks), 3):
        addr, size, body = blocks[i], blocks[i + 1], blocks[i + 2]
        frames = re.findall(r"^\s+(?:\[<[0-9a-f]+>\]\s+)?(\S+\+0x[0-9a-f]+/0x[0-9a-f]+)", body, re.M)
        where = " < ".join(f for f in frames if "kmemleak" not in f and not f.startswith(("__kmalloc", "kmalloc", "kmem_cache_alloc")))
        tally.fail(f"kmemleak: unreferenced object {addr} (size {size})", where[:200] or body.strip()[:200])


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check-splat":
        # exit 0 (and print them) if the file has splat lines
        found = splats(open(sys.argv[2], errors="replace").read())
        for line in found[:5]:
            print(line, file=sys.stderr)
        return 0 if found else 1
    if len(sys.argv) == 3 and sys.argv[1] == "--known-boot-splat":
        known, why = known_boot_splat(open(sys.argv[2], errors="replace").read())
        print("the known early-boot KASAN report" if known else why, file=sys.stderr)
        return 0 if known else 1
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--host", action="append", default=[], help="NAME=FILE of a host-side test log")
    ap.add_argument("--expect-kunit", action="append", default=[], help="SUITE:CASES that must have run")
    ap.add_argument("--selftests", type=int, default=1, help="0: no selftest KTAP expected")
    ap.add_argument(
        "--program",
        action="append",
        default=[],
        help="expect only these test programs (scripts/soak.sh: model)",
    )
    ap.add_argument(
        "--kernel-without-dup",
        action="store_true",
        help=f"the kernel lacks MREMAP_DUP: a skip '{NO_DUP}' is a skip, not a failure",
    )
    args = ap.parse_args()
    r = args.results
    dup_required = not args.kernel_without_dup
    t = Tally()

    def read(name):
        p = os.path.join(r, name)
        return open(p, errors="replace").read() if os.path.exists(p) else None

    if read("done") is None:
        t.fail("guest", "the guest did not come back (no 'done' marker)")

    # guest-test.sh failfast (scripts/mutants.sh): what did not run after
    # the first failure is a failure named so.
    failfast = read("failfast")
    not_run = f"not run (fail-fast: {failfast.strip()})" if failfast else None
    statuses = exit_statuses(read("exit.txt"))
    for name, ktap, totals in PROGRAMS:
        if name == "selftests" and not args.selftests:
            continue
        if args.program and name not in args.program:
            continue
        text = read(ktap)
        if text is None:
            t.fail(name, not_run or f"no {ktap}")
        else:
            check_program(t, name, text, statuses.get(name), dup_required, totals)

    # KUnit: the project's suites (--expect-kunit, mremap_dup*) and the
    # kernel's built-in ones, counted alike and shown apart.
    expected = {spec.rsplit(":", 1)[0]: int(spec.rsplit(":", 1)[1]) for spec in args.expect_kunit}
    kunit_dir = os.path.join(r, "kunit")
    suites = sorted(f[:-5] for f in os.listdir(kunit_dir) if f.endswith(".ktap")) if os.path.isdir(kunit_dir) else []
    builtin = Tally()
    for suite in suites:
        text = open(os.path.join(kunit_dir, f"{suite}.ktap"), errors="replace").read()
        ours = suite in expected or suite.startswith("mremap_dup")
        if ours:
            counts = check_kunit(t, suite, text, dup_required)
        else:
            before = (t.passed, t.failed, t.skipped)
            check_kunit(t, suite, text, dup_required)
            builtin.passed += t.passed - before[0]
            builtin.failed += t.failed - before[1]
            builtin.skipped += t.skipped - before[2]
            continue
        ran = sum(counts.values())
        if suite in expected and ran < expected[suite]:
            for i in range(ran, expected[suite]):
                t.fail(f"kunit {suite}: case {i + 1}", f"expected {expected[suite]} cases, {ran} ran")
    for suite, n in expected.items():
        if suite not in suites:
            for i in range(n):
                t.fail(f"kunit {suite}: case {i + 1}", not_run or "suite did not run (not built or not loaded)")

    for spec in args.host:
        name, path = spec.split("=", 1)
        text = open(path, errors="replace").read() if os.path.exists(path) else ""
        m = re.search(r"(\d+) tests run, (\d+) passed, (\d+) failed", text)
        if not m:
            t.fail(f"host {name}", f"no summary in {path}")
            continue
        run, passed, failed = (int(g) for g in m.groups())
        if run != passed + failed:
            t.fail(f"host {name}", f"summary does not add up: {m.group(0)}")
        for i in range(passed):
            t.ok(f"host {name}: test {i + 1}")
        # Name the failures where the log does ("not ok N what", lint.sh).
        named = re.findall(r"^not ok \d+ (.*)$", text, re.M)
        for i in range(failed):
            t.fail(f"host {name}: " + (named[i] if i < len(named) else f"failed test {i + 1}"))

    leaks = read("kmemleak.txt")
    if leaks is not None:
        check_kmemleak(t, leaks)

    full = read("dmesg.txt")
    if full is None:
        t.fail("dmesg", "no kernel log after the tests")
    else:
        check_kernel_log(t, full)

    for line in t.lines:
        if not line.startswith("PASS"):
            print(line)
    accel = read("accel.txt")
    if accel:
        print(f"guest accelerator: {accel.strip()}")
    if suites:
        print(
            f"kernel built-in KUnit suites (counted in the line below): {builtin.passed} passed, "
            f"{builtin.failed} failed, {builtin.skipped} skipped"
        )
    print(f"{t.passed} passed, {t.failed} failed" + (f", {t.skipped} skipped" if t.skipped else ""))
    return 1 if t.failed else 0


if __name__ == "__main__":
    sys.exit(main())
