#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""parse-results.py RESULTS [--host NAME=FILE ...] [--expect-kunit SUITE:N ...]

Counts what one guest run produced: the selftests' KTAP, every KUnit suite's
KTAP, host-side test logs, and the kernel log. Every splat in the kernel log
(BUG, WARNING, KASAN, lockdep, Oops, ...) from the first test on is a failed
test of its own; so is a guest that did not come back, a KTAP plan that was
not completed, and an expected KUnit suite that did not run. Prints one line
per failure, then `N passed, N failed[, N skipped]`. Exit status 1 on any
failure.
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
KTAP_RESULT = re.compile(r"^(\s*)(not ok|ok) (\d+) ([^#]*?)\s*(#\s*(SKIP|skip).*)?$")


def splats(text):
    return [line for line in text.splitlines() if SPLAT.search(line)]


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


def parse_ktap(tally, prefix, text, depth):
    """Counts results at indentation `depth` (0: top level, 1: KUnit cases)."""
    plan = None
    seen = 0
    for line in text.splitlines():
        m = re.match(r"^(\s*)1\.\.(\d+)$", line)
        if m and len(m.group(1)) // 4 == depth and plan is None:
            plan = int(m.group(2))
            continue
        m = KTAP_RESULT.match(line)
        if not m or len(m.group(1).expandtabs(4)) // 4 != depth:
            continue
        seen += 1
        name = f"{prefix}{m.group(4).strip()}"
        if m.group(5):
            tally.skip(name, m.group(5).split("SKIP", 1)[-1].strip() or "no reason given")
        elif m.group(2) == "ok":
            tally.ok(name)
        else:
            tally.fail(name)
    if plan is None:
        tally.fail(f"{prefix}(no KTAP plan)", "output missing or truncated")
    elif seen < plan:
        for i in range(plan - seen):
            tally.fail(f"{prefix}(missing result {seen + i + 1} of {plan})", "run ended early")
    return seen


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check-splat":
        # exit 0 (and print them) if the file has splat lines
        found = splats(open(sys.argv[2], errors="replace").read())
        for line in found[:5]:
            print(line, file=sys.stderr)
        return 0 if found else 1
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--host", action="append", default=[], help="NAME=FILE of a host-side test log")
    ap.add_argument("--expect-kunit", action="append", default=[], help="SUITE:CASES that must have run")
    ap.add_argument("--selftests", type=int, default=1, help="0: no selftest KTAP expected")
    args = ap.parse_args()
    r = args.results
    t = Tally()

    def read(name):
        p = os.path.join(r, name)
        return open(p, errors="replace").read() if os.path.exists(p) else None

    if read("done") is None:
        t.fail("guest", "the guest did not come back (no 'done' marker)")

    if args.selftests:
        text = read("selftests.ktap")
        if text is None:
            t.fail("selftests", "no selftests.ktap")
        else:
            parse_ktap(t, "selftests: ", text, 0)

    # The series' C kselftest (tools/testing/selftests/mm/mremap_dup.c).
    text = read("kselftest.ktap")
    if text is None:
        t.fail("kselftest", "no kselftest.ktap")
    else:
        parse_ktap(t, "kselftest: ", text, 0)

    # Fault injection and races (selftests/src/stress.rs).
    text = read("stress.ktap")
    if text is None:
        t.fail("stress", "no stress.ktap")
    else:
        parse_ktap(t, "stress: ", text, 0)

    kunit_dir = os.path.join(r, "kunit")
    suites = sorted(os.listdir(kunit_dir)) if os.path.isdir(kunit_dir) else []
    for f in suites:
        parse_ktap(t, f"kunit {f[:-5]}: ", open(os.path.join(kunit_dir, f), errors="replace").read(), 1)
    for spec in args.expect_kunit:
        suite, n = spec.rsplit(":", 1)
        if f"{suite}.ktap" not in suites:
            for i in range(int(n)):
                t.fail(f"kunit {suite}: case {i + 1}", "suite did not run (not built or not loaded)")

    for spec in args.host:
        name, path = spec.split("=", 1)
        text = open(path, errors="replace").read() if os.path.exists(path) else ""
        m = re.search(r"(\d+) tests run, (\d+) passed, (\d+) failed", text)
        if not m:
            t.fail(f"host {name}", f"no summary in {path}")
            continue
        for i in range(int(m.group(2))):
            t.ok(f"host {name}: test {i + 1}")
        # Name the failures where the log does ("not ok N what", lint.sh).
        named = re.findall(r"^not ok \d+ (.*)$", text, re.M)
        for i in range(int(m.group(3))):
            t.fail(f"host {name}: " + (named[i] if i < len(named) else f"failed test {i + 1}"))

    boot = read("dmesg-boot.txt") or ""
    full = read("dmesg.txt")
    if full is None:
        t.fail("dmesg", "no kernel log after the tests")
    else:
        boot_lines = boot.splitlines()
        after = full.splitlines()[len(boot_lines):]
        for line in splats("\n".join(boot_lines)):
            t.fail("splat before the first test", line.strip())
        for line in splats("\n".join(after)):
            t.fail("splat during the tests", line.strip())

    for line in t.lines:
        if not line.startswith("PASS"):
            print(line)
    print(f"{t.passed} passed, {t.failed} failed" + (f", {t.skipped} skipped" if t.skipped else ""))
    return 1 if t.failed else 0


if __name__ == "__main__":
    sys.exit(main())
