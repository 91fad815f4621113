// SPDX-License-Identifier: GPL-2.0

//! A small KTAP test harness in the spirit of `kselftest_harness.h`.
//!
//! Every test runs in its own forked child, so that rlimits, sysctl guards,
//! mappings and signals of one test cannot leak into the next, and so that a
//! test killed by a signal is reported as a failure instead of ending the run.
//! The result is KTAP on stdout, closed by a `# Totals:` line, which the host
//! script parses.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::panic::{self, AssertUnwindSafe};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe, ForkResult};

/// Why a test did not pass.
#[derive(Debug)]
pub enum Failure {
    /// The behaviour under test was wrong: the message names the case.
    Fail(String),
    /// The test could not run here; the message says why.
    Skip(String),
}

/// What a test returns.
pub type TestResult = Result<(), Failure>;

/// A named test.
pub struct Test {
    /// Named after the behaviour it checks.
    pub name: &'static str,
    /// The test body, run in a child process.
    pub run: fn() -> TestResult,
}

/// A table of tests, each named after its function.
#[macro_export]
macro_rules! tests {
    ($($f:ident),* $(,)?) => {
        &[$($crate::harness::Test { name: stringify!($f), run: $f }),*]
    };
}

/// Fails the test with a message naming the case, unless `cond` holds.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::harness::Failure::Fail(format!(
                "{}:{}: {}", file!(), line!(), format!($($arg)+))));
        }
    };
}

/// Fails the test with a message naming the case.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)+) => {
        return Err($crate::harness::Failure::Fail(format!(
            "{}:{}: {}", file!(), line!(), format!($($arg)+))))
    };
}

/// Turns an error into a test failure that names what was being done.
pub trait Context<T> {
    /// Fails with `what` and the error.
    fn ctx(self, what: &str) -> Result<T, Failure>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, Failure> {
        self.map_err(|e| Failure::Fail(format!("{what}: {e}")))
    }
}

const EXIT_PASS: i32 = 0;
const EXIT_FAIL: i32 = 1;
const EXIT_SKIP: i32 = 2;
/// A test that hangs this long (guest under TCG) fails.
const TIMEOUT_S: u32 = 120;

fn run_child(test: &Test, out: OwnedFd) -> ! {
    // SAFETY: alarm() has no memory-safety preconditions; the default SIGALRM
    // action kills this child, which the parent reports as a failure.
    unsafe { libc::alarm(TIMEOUT_S) };
    let res = panic::catch_unwind(AssertUnwindSafe(test.run));
    let (code, msg) = match res {
        Ok(Ok(())) => (EXIT_PASS, String::new()),
        Ok(Err(Failure::Fail(m))) => (EXIT_FAIL, format!("{m}\nmaps:\n{}", own_maps())),
        Ok(Err(Failure::Skip(m))) => (EXIT_SKIP, m),
        Err(p) => {
            let m = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            (EXIT_FAIL, format!("panic: {m}"))
        }
    };
    let mut f = std::fs::File::from(out);
    let _ = f.write_all(msg.as_bytes());
    drop(f);
    // SAFETY: _exit() ends this forked child without running the parent's
    // atexit handlers or flushing its copies of stdio buffers.
    unsafe { libc::_exit(code) }
}

fn own_maps() -> String {
    std::fs::read_to_string("/proc/self/maps").unwrap_or_default()
}

/// Runs `tests` (those whose name contains one of `filters`, if any), prints
/// KTAP and returns the number of failures.
pub fn run(tests: &[&Test], filters: &[String]) -> usize {
    let selected: Vec<&Test> = tests
        .iter()
        .copied()
        .filter(|t| filters.is_empty() || filters.iter().any(|f| t.name.contains(f.as_str())))
        .collect();
    println!("KTAP version 1");
    println!("1..{}", selected.len());
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    for (i, test) in selected.iter().enumerate() {
        let n = i + 1;
        let _ = std::io::stdout().flush();
        let (rd, wr) = pipe().expect("pipe");
        // SAFETY: the child only runs the test and then _exit()s; this
        // harness is single-threaded, so no lock can be held across fork().
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                drop(rd);
                run_child(test, wr)
            }
            ForkResult::Parent { child } => {
                drop(wr);
                let mut msg = String::new();
                let mut f = std::fs::File::from(rd);
                let _ = f.read_to_string(&mut msg);
                let status = waitpid(child, None).expect("waitpid");
                let (verdict, note) = match status {
                    WaitStatus::Exited(_, EXIT_PASS) => ("ok", String::new()),
                    WaitStatus::Exited(_, EXIT_SKIP) => ("skip", msg.clone()),
                    WaitStatus::Exited(_, code) => ("not ok", format!("exit {code}: {msg}")),
                    WaitStatus::Signaled(_, sig, _) => {
                        let why = if sig == Signal::SIGALRM {
                            format!("timed out after {TIMEOUT_S} s")
                        } else {
                            format!("killed by {sig:?}")
                        };
                        ("not ok", why)
                    }
                    other => ("not ok", format!("unexpected status {other:?}")),
                };
                match verdict {
                    "ok" => {
                        pass += 1;
                        println!("ok {n} {}", test.name);
                    }
                    "skip" => {
                        skip += 1;
                        println!("ok {n} {} # SKIP {}", test.name, note.replace('\n', " "));
                    }
                    _ => {
                        fail += 1;
                        for line in note.lines() {
                            println!("# {}: {line}", test.name);
                        }
                        println!("not ok {n} {}", test.name);
                    }
                }
            }
        }
    }
    println!("# Totals: pass:{pass} fail:{fail} skip:{skip}");
    fail
}
