#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""The pipeline cannot hide a failure: crafted inputs, asserted verdicts.

Runs on the host in well under a minute, without a kernel build or a guest:
  python3 -m unittest discover -s scripts/tests -v
(scripts/lint.sh runs it as one of its checks, so test.sh counts it.)

- parse-results.py on crafted result directories: strict KTAP, exit
  statuses, the kernel-log marker, splats, skips never passes;
- the selftests harness (mremap-dup-selftests --harness-selftest): timeouts
  that cannot be escaped, grandchildren that hold the result pipe, a sysctl
  restored after SIGKILL, require_dup() skipping;
- build-kernel.sh with a fake make that fails over a stale bzImage;
- fetch-kernel.sh resolving a pinned version that left the archive (fake
  apt-cache), and its check that the series applies;
- boot.sh with a fake vng: a hung guest and its QEMU killed at the timeout,
  a guest stopped by a KVM internal error, or that never begins under KVM,
  killed early and redone under TCG,
  only the known early-boot KASAN report retried, a KVM failure said so.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(REPO, "scripts")
PARSE = os.path.join(SCRIPTS, "parse-results.py")


def write(path, text, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text).lstrip("\n") if text.startswith("\n") else text)
    if mode:
        os.chmod(path, mode)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def kunit(suite, cases, suite_ok=True, totals=True):
    lines = ["KTAP version 1", "1..1", "    KTAP version 1", f"    # Subtest: {suite}", f"    1..{len(cases)}"]
    lines += [f"    {c}" for c in cases]
    if totals:
        lines.append("# Totals: pass:%d fail:0 skip:0 total:%d" % (len(cases), len(cases)))
    lines.append(f"{'ok' if suite_ok else 'not ok'} 1 {suite}")
    return "\n".join(lines) + "\n"


def load_parse_results():
    import importlib.util

    spec = importlib.util.spec_from_file_location("parse_results", PARSE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# Every test program parse-results.py expects, passing one test, then the
# three whose KTAP the cases below change.
PROGRAMS = load_parse_results().PROGRAMS
GOOD = {ktap: "KTAP version 1\n1..1\nok 1 t\n# Totals: pass:1 fail:0 skip:0\n" for _, ktap, _ in PROGRAMS}
GOOD.update({
    "done": "done\n",
    "exit.txt": "".join(f"{name} exit 0\n" for name, _, _ in PROGRAMS),
    "selftests.ktap": "KTAP version 1\n1..3\nok 1 a\nok 2 b\nok 3 c # SKIP no vgem\n# Totals: pass:2 fail:0 skip:1\n",
    "kselftest.ktap": "TAP version 13\n1..2\nok 1 dup.x\nok 2 dup.y # XFAIL known\n"
    "# Totals: pass:1 fail:0 xfail:1 xpass:0 skip:0 error:0\n",
    "stress.ktap": "KTAP version 1\n1..1\n# race: fine\nok 1 race\n# Totals: pass:1 fail:0 skip:0\n",
    "kunit/mremap_dup.ktap": kunit("mremap_dup", [f"ok {i} c{i}" for i in range(1, 6)]),
    "kunit/mremap_dup_mm.ktap": kunit("mremap_dup_mm", ["ok 1 m1", "ok 2 m2"]),
    "kunit/rust_allocator.ktap": kunit("rust_allocator", ["ok 1 test_alignment"], totals=False),
    "kunit/rust_kvec.ktap": kunit("rust_kvec", ["ok 1 k1", "ok 2 k2 # SKIP "]),
    "dmesg.txt": "[    0.000000] Linux version 7.2.13+ (root@vm)\n[    1.000000] booting\n"
    "[   20.000000] mremap-dup: tests start\n[   21.000000] mremap_dup_testdev: loaded\n",
})
# selftests, kselftest (xfail), stress, the other programs, kunit
GOOD_PASSED = 2 + 2 + 1 + (len(PROGRAMS) - 3) + 5 + 2 + 1 + 1
EXIT_OK = GOOD["exit.txt"]


class ParseResults(unittest.TestCase):
    def run_parse(self, changes=None, extra=(), drop=()):
        d = tempfile.mkdtemp(prefix="parse-")
        self.addCleanup(shutil.rmtree, d)
        files = dict(GOOD)
        files.update(changes or {})
        for name, text in files.items():
            if name not in drop and text is not None:
                write(os.path.join(d, name), text)
        p = subprocess.run(
            [sys.executable, PARSE, d, "--expect-kunit", "mremap_dup:5", "--expect-kunit", "mremap_dup_mm:2", *extra],
            capture_output=True,
            text=True,
        )
        return p.returncode, p.stdout

    def assertFails(self, changes=None, why="", extra=(), drop=()):
        rc, out = self.run_parse(changes, extra, drop)
        self.assertEqual(rc, 1, out)
        self.assertRegex(out.splitlines()[-1], r"^\d+ passed, [1-9]\d* failed(, \d+ skipped)?$", out)
        self.assertIn(why, "\n".join(line for line in out.splitlines() if line.startswith("FAIL")), out)
        return out

    def test_good_run(self):
        rc, out = self.run_parse()
        self.assertEqual(rc, 0, out)
        lines = out.splitlines()
        self.assertEqual(lines[-1], f"{GOOD_PASSED} passed, 0 failed, 2 skipped")
        self.assertEqual(
            lines[-2], "kernel built-in KUnit suites (counted in the line below): 2 passed, 0 failed, 1 skipped"
        )

    def test_skips_are_not_passes(self):
        rc, out = self.run_parse({"selftests.ktap": "KTAP version 1\n1..1\nok 1 a # SKIP x\n# Totals: pass:0 fail:0 skip:1\n"})
        self.assertEqual(rc, 0, out)
        # selftests' 2 passes and 1 skip became 1 skip
        self.assertEqual(out.splitlines()[-1], f"{GOOD_PASSED - 2} passed, 0 failed, 2 skipped")

    def test_plan_overrun(self):
        self.assertFails({"stress.ktap": "1..1\nok 1 race\nok 2 extra\n"}, "plan overrun")

    def test_missing_results(self):
        out = self.assertFails({"stress.ktap": "1..3\nok 1 race\n"}, "missing result 2 of 3")
        self.assertIn("missing result 3 of 3", out)

    def test_duplicate_number(self):
        self.assertFails({"stress.ktap": "1..2\nok 1 race\nok 1 race\n"}, "duplicate or out-of-order")

    def test_out_of_order(self):
        self.assertFails({"stress.ktap": "1..2\nok 2 b\nok 1 a\n"}, "duplicate or out-of-order")

    def test_no_plan(self):
        self.assertFails({"stress.ktap": "ok 1 race\n"}, "no KTAP plan")

    def test_missing_totals(self):
        self.assertFails({"selftests.ktap": "KTAP version 1\n1..1\nok 1 a\n"}, "no # Totals line")

    def test_totals_disagree(self):
        self.assertFails({"selftests.ktap": "1..1\nok 1 a\n# Totals: pass:0 fail:1 skip:0\n"}, "disagrees")

    def test_missing_exit_status(self):
        self.assertFails({"exit.txt": EXIT_OK.replace("stress exit 0\n", "")}, "no exit status")

    def test_nonzero_exit_without_failure(self):
        self.assertFails({"exit.txt": EXIT_OK.replace("selftests exit 0", "selftests exit 139")}, "exit status 139")

    def test_ksft_skip_exit_when_all_skipped(self):
        rc, out = self.run_parse(
            {
                "exit.txt": EXIT_OK.replace("kselftest exit 0", "kselftest exit 4"),
                "kselftest.ktap": "1..1\nok 1 x # SKIP no\n# Totals: pass:0 fail:0 xfail:0 xpass:0 skip:1 error:0\n",
            },
            extra=("--kernel-without-dup",),
        )
        self.assertEqual(rc, 0, out)

    def test_not_ok_skip_is_a_failure(self):
        self.assertFails({"stress.ktap": "1..1\nnot ok 1 race # SKIP hm\n"}, "stress: race")

    def test_bail_out(self):
        self.assertFails({"stress.ktap": "1..1\nok 1 race\nBail out! oops\n"}, "bail out")

    def test_no_dup_skip_fails_unless_unpatched(self):
        skip = "KTAP version 1\n1..1\nok 1 a # SKIP MREMAP_DUP not supported by this kernel (x)\n# Totals: pass:0 fail:0 skip:1\n"
        self.assertFails({"selftests.ktap": skip}, "must have MREMAP_DUP")
        rc, out = self.run_parse({"selftests.ktap": skip}, extra=("--kernel-without-dup",))
        self.assertEqual(rc, 0, out)

    def test_kunit_suite_unfinished(self):
        text = "KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: mremap_dup\n    1..5\n    ok 1 c1\n"
        out = self.assertFails({"kunit/mremap_dup.ktap": text}, "no suite result")
        self.assertIn("missing result 5 of 5", out)

    def test_kunit_fewer_cases_than_expected(self):
        self.assertFails({"kunit/mremap_dup_mm.ktap": kunit("mremap_dup_mm", ["ok 1 m1"])}, "expected 2 cases, 1 ran")

    def test_kunit_expected_suite_missing(self):
        self.assertFails(drop=("kunit/mremap_dup_mm.ktap",), why="suite did not run")

    def test_builtin_kunit_failure_counts(self):
        out = self.assertFails({"kunit/rust_kvec.ktap": kunit("rust_kvec", ["ok 1 k1", "not ok 2 k2"], False)}, "rust_kvec: k2")
        self.assertIn("kernel built-in KUnit suites (counted in the line below): 2 passed, 1 failed, 0 skipped", out)

    def test_no_marker(self):
        self.assertFails({"dmesg.txt": "[    0.000000] Linux version 7.2.13+\n[   21.0] x\n"}, "no 'mremap-dup: tests start' marker")

    def test_log_not_from_boot(self):
        self.assertFails(
            {"dmesg.txt": "[   15.000000] late line\n[   20.000000] mremap-dup: tests start\n"}, "does not begin at boot"
        )

    def test_printk_dropped(self):
        self.assertFails(
            {"dmesg.txt": GOOD["dmesg.txt"] + "[   22.0] ** 12 printk messages dropped **\n"}, "messages lost"
        )

    def test_splats_before_and_after_marker(self):
        text = (
            "[    0.000000] Linux version 7.2.13+\n[    1.0] WARNING: CPU: 0 PID: 1 at x\n"
            "[   20.0] mremap-dup: tests start\n[   21.0] BUG: KASAN: slab-use-after-free in y\n"
        )
        out = self.assertFails({"dmesg.txt": text}, "splat before the first test")
        self.assertIn("FAIL splat during the tests: [   21.0] BUG: KASAN: slab-use-after-free in y", out)

    def test_guest_did_not_come_back(self):
        self.assertFails(drop=("done",), why="did not come back")

    KMEMLEAK = (
        "unreferenced object 0xffff888012345600 (size 64):\n"
        '  comm "mremap-dup-self", pid 123, jiffies 4294901234\n'
        "  hex dump (first 32 bytes):\n"
        "    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................\n"
        "  backtrace (crc 1a2b3c4d):\n"
        "    kmemleak_alloc+0x4a/0x80\n"
        "    __kmalloc_cache_noprof+0x2b0/0x4c0\n"
        "    dup_page_range_prepare+0x1f3/0x5a0\n"
        "    mremap_dup+0x9a/0x200\n"
    )

    def test_kmemleak_object_fails_with_where(self):
        out = self.assertFails({"kmemleak.txt": self.KMEMLEAK + self.KMEMLEAK.replace("5600", "5700")},
                               "kmemleak: unreferenced object 0xffff888012345600 (size 64): dup_page_range_prepare")
        self.assertIn("FAIL kmemleak: unreferenced object 0xffff888012345700", out)

    def test_kmemleak_clean_scan_passes_once(self):
        rc, out = self.run_parse({"kmemleak.txt": ""})
        self.assertEqual(rc, 0, out)
        self.assertEqual(out.splitlines()[-1], f"{GOOD_PASSED + 1} passed, 0 failed, 2 skipped")

    def test_kmemleak_off_fails(self):
        self.assertFails({"kmemleak.txt": "kmemleak: scan failed\n"}, "kmemleak: kmemleak: scan failed")

    def test_failfast_names_what_did_not_run(self):
        out = self.assertFails({"failfast": "stopped after kselftest: exit status 1\n"},
                               "not run (fail-fast: stopped after kselftest: exit status 1)", drop=("model.ktap",))
        self.assertIn("FAIL model: not run (fail-fast", out)

    def known(self, text):
        d = tempfile.mkdtemp(prefix="splat-")
        self.addCleanup(shutil.rmtree, d)
        write(os.path.join(d, "dmesg-boot.txt"), text)
        return subprocess.run([sys.executable, PARSE, "--known-boot-splat", os.path.join(d, "dmesg-boot.txt")],
                              capture_output=True).returncode

    KNOWN = (
        "[    0.000000] Linux version 7.2.13\n"
        "[    0.004123] ==================================================================\n"
        "[    0.004123] BUG: KASAN: wild-memory-access in do_raw_spin_lock+0xd0/0x230\n"
        "[    0.004123] Read of size 4 at addr 1fffffff8000001c by task swapper/0/0\n"
        "[    0.004123]  handle_edge_irq+0x1a0/0x8e0\n"
        "[    0.004123] ==================================================================\n"
        "[    0.004200] Disabling lock debugging due to kernel taint\n"
    )

    def test_known_boot_splat_only(self):
        self.assertEqual(self.known(self.KNOWN), 0)
        self.assertEqual(self.known("[    0.0] Linux version\n"), 1)
        self.assertEqual(self.known(self.KNOWN + "[    3.0] WARNING: CPU: 1 PID: 1 at z\n"), 1)
        self.assertEqual(self.known(self.KNOWN.replace("handle_edge_irq", "other_fn")), 1)
        self.assertEqual(self.known(self.KNOWN.replace("do_raw_spin_lock", "do_raw_spin_unlock")), 1)
        self.assertEqual(self.known(self.KNOWN.replace("wild-memory-access", "slab-out-of-bounds")), 1)


class Harness(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        subprocess.run(
            ["cargo", "build", "--release", "--quiet", "-p", "mremap-dup-selftests", "--bin", "mremap-dup-selftests"],
            cwd=REPO,
            check=True,
        )
        cls.dir = tempfile.mkdtemp(prefix="harness-")
        write(os.path.join(cls.dir, "sysctl"), "42\n")
        env = dict(os.environ, MREMAP_DUP_TEST_TIMEOUT="2")
        t0 = time.monotonic()
        p = subprocess.run(
            [os.path.join(REPO, "target/release/mremap-dup-selftests"), "--harness-selftest", cls.dir],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        cls.seconds = time.monotonic() - t0
        cls.rc, cls.out = p.returncode, p.stdout
        cls.results = {}
        for line in cls.out.splitlines():
            if line.startswith(("ok ", "not ok ")):
                words = line.split()
                verdict = "not ok" if line.startswith("not") else "ok"
                name = words[3] if verdict == "not ok" else words[2]
                cls.results[name] = line

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir)

    def verdict(self, name):
        return self.results.get(name, "")

    def test_totals_and_exit_status(self):
        self.assertEqual(self.rc, 1, self.out)
        self.assertIn("1..12", self.out)
        self.assertEqual(self.out.splitlines()[-1], "# Totals: pass:2 fail:8 skip:2", self.out)

    def test_pass_fail_skip(self):
        self.assertTrue(self.verdict("passes").startswith("ok "), self.out)
        self.assertTrue(self.verdict("fails").startswith("not ok"), self.out)
        self.assertRegex(self.verdict("skips"), r"^ok \d+ skips # SKIP skipping on purpose$")

    def test_panic_exit_and_signal_are_failures(self):
        for name in ("panics", "exits_zero_midway", "killed_by_signal"):
            self.assertTrue(self.verdict(name).startswith("not ok"), name + "\n" + self.out)
        self.assertIn("# exits_zero_midway: exited with status 0 without reporting a result", self.out)
        self.assertIn("# killed_by_signal: killed by SIGABRT", self.out)

    def test_timeout_cannot_be_escaped(self):
        self.assertTrue(self.verdict("hangs_ignoring_signals").startswith("not ok"), self.out)
        self.assertIn("# hangs_ignoring_signals: timed out after 2 s: process group killed", self.out)
        # One 2 s timeout; a grandchild holding the pipe must not add its 600 s.
        self.assertLess(self.seconds, 30, self.out)

    def test_leftover_processes_killed(self):
        self.assertTrue(self.verdict("passes_leaving_grandchild").startswith("ok "), self.out)
        self.assertTrue(self.verdict("fails_leaving_escaped_grandchild").startswith("not ok"), self.out)
        self.assertIn("# fails_leaving_escaped_grandchild: killed 1 process(es) the test left behind", self.out)
        for f in ("grandchild.pid", "escaped.pid"):
            with open(os.path.join(self.dir, f)) as fh:
                self.assertFalse(alive(int(fh.read())), f)

    def test_sysctl_restored_after_sigkill(self):
        self.assertTrue(self.verdict("sysctl_changed_then_killed").startswith("not ok"), self.out)
        with open(os.path.join(self.dir, "sysctl")) as f:
            self.assertEqual(f.read().strip(), "42")
        self.assertIn("restored", self.out)

    def test_module_loaded_again_after_sigkill(self):
        self.assertTrue(self.verdict("module_unloaded_then_killed").startswith("not ok"), self.out)
        # Loading a file that is no module fails (and needs root): the
        # attempt, after the child is gone, is what is checked.
        self.assertRegex(self.out, r"# module_unloaded_then_killed: loaded \S+/mremap_dup_harness_check_fake\.ko "
                                   r"again \(\"answer=42\"\): failed: ")

    def test_require_dup_skips(self):
        line = self.verdict("needs_dup")
        self.assertTrue(line.startswith("ok "), self.out)
        # On a kernel without MREMAP_DUP (the host, usually) a skip with the reason.
        if "# SKIP" in line:
            self.assertIn("# SKIP MREMAP_DUP not supported by this kernel", line)


class Sandbox(unittest.TestCase):
    """A cache directory of its own, with fake tools first in PATH
    (lib.sh puts $CACHE/venv/bin there)."""

    def setUp(self):
        self.cache = tempfile.mkdtemp(prefix="cache-")
        self.addCleanup(shutil.rmtree, self.cache, True)
        self.bin = os.path.join(self.cache, "venv/bin")
        os.makedirs(self.bin)
        self.env = dict(os.environ, MREMAP_DUP_CACHE=self.cache)

    def fake(self, name, text):
        write(os.path.join(self.bin, name), text, 0o755)

    def run_script(self, *args, env=None, timeout=120):
        p = subprocess.run(
            [os.path.join(SCRIPTS, args[0]), *args[1:]],
            capture_output=True,
            text=True,
            env=dict(self.env, **(env or {})),
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return p.returncode, p.stdout + p.stderr


class BuildKernel(Sandbox):
    def setUp(self):
        super().setUp()
        t = os.path.join(self.cache, "unpatched")
        os.makedirs(os.path.join(t, "src/.git"))
        os.makedirs(os.path.join(t, "out/arch/x86/boot"))
        write(os.path.join(t, "out/.config"), "")
        h = subprocess.run(
            ["bash", "-c", f'. {SCRIPTS}/lib.sh; {{ cat "$REPO/ci/kernel.config.fragment"; kmake_vars; }} | sha256sum | cut -d" " -f1'],
            capture_output=True, text=True, env=self.env, check=True,
        ).stdout
        write(os.path.join(t, "config.done"), h)
        self.bzimage = os.path.join(t, "out/arch/x86/boot/bzImage")

    def test_failed_make_over_stale_bzimage(self):
        write(self.bzimage, "stale")
        self.fake("make", '#!/bin/sh\necho "  CC mm/mremap.o"\nexit 2\n')
        rc, out = self.run_script("build-kernel.sh", "unpatched")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("kernel build failed (make exit 2)", out)

    def test_good_make(self):
        self.fake("make", f'#!/bin/sh\necho "  LD vmlinux"\ntouch {self.bzimage}\n')
        rc, out = self.run_script("build-kernel.sh", "unpatched")
        self.assertEqual(rc, 0, out)

    def test_warning_fails(self):
        self.fake("make", f'#!/bin/sh\necho "mm/x.c:1:1: warning: unused"\ntouch {self.bzimage}\n')
        rc, out = self.run_script("build-kernel.sh", "unpatched")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("printed warnings", out)


class FetchKernel(Sandbox):
    MADISON = (
        "linux-source-7.2 | 7.2.14-1 | http://deb.debian.org/debian sid/main amd64 Packages\n"
        "linux-source-7.2 | 7.2.9~rc1-1 | http://deb.debian.org/debian sid/main amd64 Packages\n"
        "linux-source-7.2 | 7.2.13-2 | http://deb.debian.org/debian sid/main amd64 Packages\n"
    )

    def resolve(self, pin, madison):
        write(os.path.join(self.cache, "madison"), madison)
        self.fake("apt-cache", f'#!/bin/sh\ncat {self.cache}/madison\n')
        return self.run_script("fetch-kernel.sh", env={"FETCH_KERNEL_DRY": "1", "FETCH_KERNEL_PIN": pin})

    def test_pinned_gone_newest_used(self):
        rc, out = self.resolve("7.2.13-1", self.MADISON)
        self.assertEqual(rc, 0, out)
        self.assertIn("linux-source-7.2 7.2.14-1 (kernel 7.2.14), fallback from pinned 7.2.13-1", out)
        self.assertIn("has left the archive: falling back to 7.2.14-1", out)

    def test_pinned_present(self):
        rc, out = self.resolve("7.2.13-2", self.MADISON)
        self.assertEqual(rc, 0, out)
        self.assertIn("linux-source-7.2 7.2.13-2 (kernel 7.2.13)\n", out)
        self.assertNotIn("fallback", out)

    def test_nothing_in_archive(self):
        rc, out = self.resolve("7.2.13-1", "")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("not in the archive", out)

    def test_series_check(self):
        tree = os.path.join(self.cache, "tree")
        repo = os.path.join(self.cache, "repo")
        os.makedirs(tree)
        git = ["git", "-C", tree, "-c", "user.name=t", "-c", "user.email=t@t"]
        write(os.path.join(tree, "f.c"), "one\ntwo\n")
        subprocess.run(["git", "init", "-q", tree], check=True)
        subprocess.run([*git, "add", "f.c"], check=True)
        subprocess.run([*git, "commit", "-qm", "base"], check=True)
        subprocess.run([*git, "tag", "base"], check=True)
        good = "--- a/f.c\n+++ b/f.c\n@@ -1,2 +1,2 @@\n one\n-two\n+TWO\n"
        then = "--- a/f.c\n+++ b/f.c\n@@ -1,2 +1,2 @@\n one\n-TWO\n+2\n"
        bad = "--- a/f.c\n+++ b/f.c\n@@ -1,2 +1,2 @@\n one\n-three\n+3\n"
        for name, text in (("1.patch", good), ("2.patch", then), ("3.patch", bad)):
            write(os.path.join(repo, "patches", name), text)

        def check(series):
            write(os.path.join(repo, "patches/series"), series)
            script = (
                f". {SCRIPTS}/lib.sh; REPO={repo}; KPKG=linux-source-7.2; version=7.2.14-1; "
                f'source <(sed -n "/^check_series_applies()/,/^}}/p" {SCRIPTS}/fetch-kernel.sh); '
                f"check_series_applies {tree}"
            )
            p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=self.env)
            return p.returncode, p.stderr

        rc, out = check("1.patch\n2.patch\n")
        self.assertEqual(rc, 0, out)
        self.assertIn("the series applies to linux-source-7.2 7.2.14-1", out)
        rc, out = check("1.patch\n3.patch\n")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("does not apply to linux-source-7.2 7.2.14-1: 3.patch fails", out)
        # Nothing of the tree was touched.
        with open(os.path.join(tree, "f.c")) as f:
            self.assertEqual(f.read(), "one\ntwo\n")


FAKE_VNG = r'''#!/usr/bin/env python3
# A fake vng: FAKE_VNG says what the "guest" does.
import os, sys, time, subprocess
args = sys.argv[1:]
rw = next(a.split("=", 1)[1] for a in args if a.startswith("--rwdir="))
opts = next(a.split("=", 1)[1] for a in args if a.startswith("--qemu-opts=")).split()
pidfile = opts[opts.index("-pidfile") + 1]
cache = os.environ["MREMAP_DUP_CACHE"]
with open(os.path.join(cache, "boots"), "a") as f:
    f.write(("kvm" if "--disable-kvm" not in args else "tcg") + " " + " ".join(args) + "\n")
mode = os.environ["FAKE_VNG"]
def qemu(escape):
    # A "QEMU" whose command line names the pidfile, as the real one's does.
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "-pidfile", pidfile],
                            start_new_session=escape)
if mode == "hang":
    q = qemu(True)  # out of timeout's reach: only the pidfile finds it
    open(pidfile, "w").write(str(q.pid))
    other = qemu(False)  # in the process group: timeout kills it
    open(os.path.join(cache, "other.pid"), "w").write(str(other.pid))
    open(os.path.join(cache, "qemu.pid"), "w").write(str(q.pid))
    time.sleep(600)
if mode in ("kvm-internal-error", "kvm-no-guest") and "--disable-kvm" not in args:
    # QEMU stays up and the guest never begins (no dmesg-boot.txt), with
    # or without the error on QEMU's output.
    q = qemu(False)
    open(pidfile, "w").write(str(q.pid))
    if mode == "kvm-internal-error":
        print("KVM internal error. Suberror: 1\nemulation failure", flush=True)
    sys.exit(1 if q.wait() else 0)
if mode == "kvm-broken" and "--disable-kvm" not in args:
    print("qemu-system-x86_64: error: failed to set MSR 0x10a")
    sys.exit(1)
boot = "[    0.000000] Linux version 7.2.13\n"
if mode in ("splat-known", "splat-other"):
    with open(os.path.join(os.environ["SPLAT_FILE"])) as f:
        boot += f.read()
open(os.path.join(rw, "dmesg-boot.txt"), "w").write(boot)
keep = "keep-boot-splat" in " ".join(args)
if mode == "splat-known" and not keep:
    open(os.path.join(rw, "boot-splat"), "w").write("boot-splat\n")
open(os.path.join(rw, "dmesg.txt"), "w").write(boot + "[   20.0] mremap-dup: tests start\n")
open(os.path.join(rw, "done"), "w").write("done\n")
print("ok 1 fake")
'''


class Boot(Sandbox):
    def setUp(self):
        super().setUp()
        write(os.path.join(self.cache, "patched/out/arch/x86/boot/bzImage"), "")
        write(os.path.join(self.cache, "accel"), "tcg\n")
        self.fake("vng", FAKE_VNG)
        self.results = os.path.join(self.cache, "results/patched")

    def boots(self):
        with open(os.path.join(self.cache, "boots")) as f:
            return f.read().splitlines()

    def test_hung_guest_and_its_qemu_killed(self):
        t0 = time.monotonic()
        rc, out = self.run_script("boot.sh", "patched", "test", self.results, env={"FAKE_VNG": "hang", "BOOT_TIMEOUT": "3"})
        self.assertLess(time.monotonic() - t0, 60, out)
        self.assertIn("the guest did not finish within 3 s", out)
        self.assertIn("still running: killing it", out)
        for f in ("qemu.pid", "other.pid"):
            with open(os.path.join(self.cache, f)) as fh:
                pid = int(fh.read())
            for _ in range(50):
                if not alive(pid):
                    break
                time.sleep(0.1)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
                self.fail(f"{f} {pid} survived boot.sh\n{out}")
        self.assertIn("log_buf_len=16M", self.boots()[0])

    def splat_run(self, mode, text):
        path = os.path.join(self.cache, "splat.txt")
        write(path, text)
        return self.run_script("boot.sh", "patched", "test", self.results, env={"FAKE_VNG": mode, "SPLAT_FILE": path})

    def test_known_boot_splat_retried(self):
        rc, out = self.splat_run("splat-known", ParseResults.KNOWN.split("\n", 1)[1])
        self.assertEqual(rc, 0, out)
        self.assertEqual(len(self.boots()), 9, out)  # 8 tries, then the tests on one with it
        self.assertIn("try 1: the known early-boot KASAN report", out)
        self.assertIn("keep-boot-splat", self.boots()[-1])

    def test_other_boot_splat_not_retried(self):
        rc, out = self.splat_run("splat-other", "[    5.000000] WARNING: CPU: 0 PID: 1 at mm/x.c:1 f\n")
        self.assertEqual(rc, 0, out)
        self.assertEqual(len(self.boots()), 1, out)
        self.assertIn("not the known early-boot KASAN report: not retried, counted as a failure", out)

    def test_kvm_failure_said(self):
        write(os.path.join(self.cache, "accel"), "kvm\n")
        rc, out = self.run_script("boot.sh", "patched", "test", self.results, env={"FAKE_VNG": "kvm-broken"})
        self.assertEqual(rc, 0, out)
        self.assertEqual([b.split()[0] for b in self.boots()], ["kvm", "tcg"], out)
        self.assertIn("WARNING: no result under KVM: falling back to TCG", out)
        with open(os.path.join(self.results, "accel.txt")) as f:
            self.assertIn("tcg (fell back", f.read())
        with open(os.path.join(self.cache, "accel")) as f:
            self.assertEqual(f.read().strip(), "tcg")

    def test_kvm_internal_error_stops_the_boot(self):
        write(os.path.join(self.cache, "accel"), "kvm\n")
        t0 = time.monotonic()
        rc, out = self.run_script("boot.sh", "patched", "test", self.results, env={"FAKE_VNG": "kvm-internal-error"})
        self.assertLess(time.monotonic() - t0, 60, out)
        self.assertEqual(rc, 0, out)
        self.assertIn("KVM internal error in the guest: stopping its QEMU", out)
        self.assertEqual([b.split()[0] for b in self.boots()], ["kvm", "tcg"], out)
        with open(os.path.join(self.cache, "accel")) as f:
            self.assertEqual(f.read().strip(), "tcg")

    def test_kvm_guest_that_never_begins_stopped(self):
        write(os.path.join(self.cache, "accel"), "kvm\n")
        t0 = time.monotonic()
        rc, out = self.run_script("boot.sh", "patched", "test", self.results,
                                  env={"FAKE_VNG": "kvm-no-guest", "KVM_BOOT_LIMIT": "3"})
        self.assertLess(time.monotonic() - t0, 60, out)
        self.assertEqual(rc, 0, out)
        self.assertIn("no sign of the guest under KVM after 3 s: stopping its QEMU", out)
        self.assertEqual([b.split()[0] for b in self.boots()], ["kvm", "tcg"], out)

    def test_accelerator_always_said(self):
        rc, out = self.run_script("boot.sh", "patched", "test", self.results, env={"FAKE_VNG": "ok"})
        self.assertEqual(rc, 0, out)
        self.assertIn("accelerator: tcg (cached in", out)


if __name__ == "__main__":
    unittest.main()
