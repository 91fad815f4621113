// SPDX-License-Identifier: GPL-2.0

//! Tests of the harness itself (`mremap-dup-selftests --harness-selftest
//! DIR`), run on the host by scripts/tests/test_pipeline.py, which checks the
//! KTAP they give: each one misbehaves in a way that must not hide a failure,
//! hang the run or leave state behind. DIR receives the pids of the
//! processes they leave behind and the file standing in for a sysctl.

use std::time::Duration;

use crate::harness::{Failure, Test, TestResult};
use crate::util::{require_dup, SysctlGuard};

fn dir() -> String {
    std::env::args()
        .nth(2)
        .unwrap_or_else(|| "/tmp".to_string())
}

/// Forks a process that records its pid in DIR/NAME and sleeps; with
/// `escape`, it first leaves the test's process group (setsid).
fn leave_behind(name: &str, escape: bool) {
    let path = format!("{}/{name}", dir());
    // SAFETY: the test process is single-threaded; the child only calls
    // async-signal-safe functions and std::fs before sleeping.
    match unsafe { libc::fork() } {
        0 => {
            if escape {
                // SAFETY: setsid(2) has no memory-safety preconditions.
                unsafe { libc::setsid() };
            }
            let _ = std::fs::write(&path, std::process::id().to_string());
            std::thread::sleep(Duration::from_secs(600));
            // SAFETY: ends the forked child.
            unsafe { libc::_exit(0) }
        }
        _ => {
            // Wait until it has written its pid (and left the group).
            for _ in 0..500 {
                if std::fs::metadata(&path).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn passes() -> TestResult {
    Ok(())
}

fn fails() -> TestResult {
    Err(Failure::Fail("failing on purpose".into()))
}

fn skips() -> TestResult {
    Err(Failure::Skip("skipping on purpose".into()))
}

fn panics() -> TestResult {
    panic!("panicking on purpose")
}

fn exits_zero_midway() -> TestResult {
    std::process::exit(0)
}

fn killed_by_signal() -> TestResult {
    // SAFETY: abort(3) has no memory-safety preconditions.
    unsafe { libc::abort() }
}

/// Hangs with SIGALRM, SIGTERM and SIGINT ignored.
fn hangs_ignoring_signals() -> TestResult {
    // SAFETY: setting signal dispositions to SIG_IGN.
    unsafe {
        libc::signal(libc::SIGALRM, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Passes, leaving a grandchild that holds the result pipe open.
fn passes_leaving_grandchild() -> TestResult {
    leave_behind("grandchild.pid", false);
    Ok(())
}

/// Fails, leaving a grandchild that left the process group.
fn fails_leaving_escaped_grandchild() -> TestResult {
    leave_behind("escaped.pid", true);
    Err(Failure::Fail("failing with an escaped grandchild".into()))
}

/// Changes a "sysctl" (a file in DIR holding 42) and is SIGKILLed before its
/// guard can restore it.
fn sysctl_changed_then_killed() -> TestResult {
    let path: &'static str = Box::leak(format!("{}/sysctl", dir()).into_boxed_str());
    let _g = SysctlGuard::set(path, "999")?;
    // SAFETY: raise(2) has no memory-safety preconditions.
    unsafe { libc::raise(libc::SIGKILL) };
    Ok(())
}

/// Journals a module to load again (a file in DIR that is no module, so the
/// parent's finit_module() fails and says so) and is SIGKILLed.
fn module_unloaded_then_killed() -> TestResult {
    let ko = format!("{}/mremap_dup_harness_check_fake.ko", dir());
    std::fs::write(&ko, b"not an ELF file").map_err(|e| Failure::Fail(format!("{ko}: {e}")))?;
    crate::harness::journal_module(std::path::Path::new(&ko), "answer=42");
    // SAFETY: raise(2) has no memory-safety preconditions.
    unsafe { libc::raise(libc::SIGKILL) };
    Ok(())
}

/// Skips on a kernel without MREMAP_DUP, passes on one with it.
fn needs_dup() -> TestResult {
    require_dup()
}

/// The harness's own tests.
pub const TESTS: &[Test] = crate::tests![
    passes,
    fails,
    skips,
    panics,
    exits_zero_midway,
    killed_by_signal,
    hangs_ignoring_signals,
    passes_leaving_grandchild,
    fails_leaving_escaped_grandchild,
    sysctl_changed_then_killed,
    module_unloaded_then_killed,
    needs_dup,
];
