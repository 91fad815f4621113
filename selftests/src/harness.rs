// SPDX-License-Identifier: GPL-2.0

//! A small KTAP test harness in the spirit of `kselftest_harness.h`.
//!
//! Every test runs in its own forked child, so that rlimits, mappings and
//! signals of one test cannot leak into the next, and so that a test killed
//! by a signal is reported as a failure instead of ending the run. The result
//! is KTAP on stdout, closed by a `# Totals:` line, which the host script
//! parses.
//!
//! The parent cannot be held up by a test:
//! - the child is the leader of its own process group; the parent kills the
//!   whole group (SIGKILL) when the test ends and when it times out, and, as
//!   a child subreaper, also kills any descendant that left the group
//!   (setsid) and was reparented to it;
//! - the timeout is the parent's (a poll() deadline on a pidfd and the result
//!   pipe), so a test cannot escape it by blocking or ignoring a signal, and
//!   the parent never blocks reading a pipe that a grandchild still holds;
//! - a child that is not reaped after SIGKILL (stuck in the kernel) is
//!   reported and left behind, and the run goes on;
//! - a test reports its verdict through the pipe and its exit status, which
//!   must agree: an exit(0) from the middle of a test is not a pass;
//! - global state a test changes through [`journal_restore`] (the sysctl
//!   guards of `util.rs`) or [`journal_module`] (a module the test unloads)
//!   is restored by the parent after the child is gone, however it ended
//!   (the child's own guards restore it first when it ends normally).

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe2, setpgid, ForkResult, Pid};

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
/// A test that runs longer than this (guest under TCG) fails;
/// `MREMAP_DUP_TEST_TIMEOUT` (seconds) overrides it.
const TIMEOUT_S: u64 = 120;
/// How long the parent waits for a SIGKILLed test to be reaped.
const REAP_S: u64 = 10;

/// The write end of the restore journal in a test child (-1 elsewhere).
static JOURNAL_FD: AtomicI32 = AtomicI32::new(-1);

/// Records that `path` held `old` before the test changed it: the parent
/// writes `old` back after the test's process is gone, whether its own guard
/// ran or the child was killed. Outside a test child, does nothing.
pub fn journal_restore(path: &str, old: &str) {
    journal(FILE, path, old);
}

/// Records that the module `ko` was loaded with `params` before the test
/// unloads it: if `/sys/module/NAME` (NAME from the file name) is gone
/// after the test's process, the parent loads it again. Outside a test
/// child, does nothing.
pub fn journal_module(ko: &std::path::Path, params: &str) {
    journal(MODULE, &ko.to_string_lossy(), params);
}

/// Journal record kinds: a file to write back, a module to load again.
const FILE: &str = "F";
const MODULE: &str = "M";

fn journal(kind: &str, a: &str, b: &str) {
    let fd = JOURNAL_FD.load(Ordering::Relaxed);
    if fd < 0 || a.contains('\0') || b.contains('\0') {
        return;
    }
    let rec = format!("{kind}\0{a}\0{b}\0");
    // SAFETY: a write(2) of a local buffer to the journal pipe this child
    // inherited; a record is below PIPE_BUF, so it is written whole or not.
    unsafe { libc::write(fd, rec.as_ptr().cast(), rec.len()) };
}

/// Loads the module `ko` with `params` (finit_module(2)) if it is not.
fn reload_module(ko: &str, params: &str) -> Option<String> {
    let path = std::path::Path::new(ko);
    let name = path.file_stem()?.to_string_lossy().replace('-', "_");
    if std::path::Path::new("/sys/module").join(&name).exists() {
        return None;
    }
    let res = std::fs::File::open(path).and_then(|f| {
        let cparams = std::ffi::CString::new(params).map_err(std::io::Error::other)?;
        // SAFETY: f is an open file and cparams a NUL-terminated string,
        // both only read by the kernel.
        let r =
            unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), cparams.as_ptr(), 0) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    });
    Some(format!(
        "loaded {ko} again ({params:?}){}",
        res.err()
            .map(|e| format!(": failed: {e}"))
            .unwrap_or_default()
    ))
}

fn timeout() -> Duration {
    let s = std::env::var("MREMAP_DUP_TEST_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(TIMEOUT_S);
    Duration::from_secs(s)
}

fn run_child(test: &Test, out: OwnedFd, journal: OwnedFd) -> ! {
    JOURNAL_FD.store(journal.as_raw_fd(), Ordering::Relaxed);
    std::mem::forget(journal);
    let res = panic::catch_unwind(AssertUnwindSafe(test.run));
    // The first byte is the verdict, which must agree with the exit status.
    let (code, msg) = match res {
        Ok(Ok(())) => (EXIT_PASS, "P".to_string()),
        Ok(Err(Failure::Fail(m))) => (EXIT_FAIL, format!("F{m}\nmaps:\n{}", own_maps())),
        Ok(Err(Failure::Skip(m))) => (EXIT_SKIP, format!("S{m}")),
        Err(p) => {
            let m = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            (EXIT_FAIL, format!("Fpanic: {m}"))
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

/// Reads what is available on a non-blocking fd into `buf`; false at EOF.
fn drain(fd: RawFd, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    loop {
        // SAFETY: read(2) into a local buffer of that size.
        let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
        match n {
            0 => return false,
            n if n > 0 => buf.extend_from_slice(&chunk[..n as usize]),
            _ => return nix::errno::Errno::last() != nix::errno::Errno::EAGAIN,
        }
    }
}

/// How a test's process ended.
enum End {
    Status(WaitStatus),
    TimedOut,
    /// Timed out, and still not reaped after SIGKILL.
    Unkillable,
}

/// Waits for `child` until `deadline`, collecting its result pipe, without
/// ever blocking on the pipe (a grandchild may hold it open).
fn supervise(child: Pid, rd: &OwnedFd, deadline: Instant, msg: &mut Vec<u8>) -> End {
    // SAFETY: pidfd_open(2) of our own child; -1 (old kernel) falls back to
    // polling the pipe with a short period.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.as_raw(), 0) } as RawFd;
    let mut pipe_open = true;
    let end = loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(st) => break End::Status(st),
            Err(e) => break End::Status(WaitStatus::Exited(child, 128 + e as i32)),
        }
        let now = Instant::now();
        if now >= deadline {
            break End::TimedOut;
        }
        let mut fds = Vec::with_capacity(2);
        if pipe_open {
            fds.push(libc::pollfd {
                fd: rd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if pidfd >= 0 {
            fds.push(libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let left = (deadline - now)
            .as_millis()
            .min(if pidfd >= 0 { 60_000 } else { 20 });
        // SAFETY: poll(2) on a local array of that length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, left as i32) };
        if pipe_open {
            pipe_open = drain(rd.as_raw_fd(), msg);
        }
    };
    let _ = killpg(child, Signal::SIGKILL);
    let end = match end {
        End::TimedOut => {
            let give_up = Instant::now() + Duration::from_secs(REAP_S);
            loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) if Instant::now() < give_up => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(WaitStatus::StillAlive) => break End::Unkillable,
                    _ => break End::TimedOut,
                }
            }
        }
        end => end,
    };
    drain(rd.as_raw_fd(), msg);
    if pidfd >= 0 {
        // SAFETY: closing the pidfd opened above.
        unsafe { libc::close(pidfd) };
    }
    end
}

/// Kills and reaps what a test left behind: its process group, and any
/// descendant reparented to this (subreaper) process. Returns how many
/// leftover processes were killed.
fn kill_leftovers(pgid: Pid, unkillable: &[Pid]) -> usize {
    let _ = killpg(pgid, Signal::SIGKILL);
    let me = std::process::id().to_string();
    let mut killed = 0;
    for _ in 0..3 {
        let mut found = false;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces and parens.
            let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
            let mut f = rest.split(' ');
            let (state, ppid) = (f.next(), f.next());
            if ppid == Some(me.as_str()) && state != Some("Z") {
                let pid = e.file_name().to_string_lossy().parse::<i32>();
                if let Some(pid) = pid
                    .ok()
                    .filter(|p| !unkillable.contains(&Pid::from_raw(*p)))
                {
                    // SAFETY: kill(2) of a process reparented to us.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    killed += 1;
                    found = true;
                }
            }
        }
        // Reap every zombie child (the killed ones become zombies shortly).
        std::thread::sleep(Duration::from_millis(if found { 50 } else { 0 }));
        while let Ok(st) = waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            if st == WaitStatus::StillAlive {
                break;
            }
        }
        if !found {
            break;
        }
    }
    killed
}

/// Writes back, newest first, what the test journaled (see
/// [`journal_restore`], [`journal_module`]); returns a note for each value that had to be
/// restored here (the test's own guard did not run).
fn restore_journal(journal: &OwnedFd) -> Vec<String> {
    let mut buf = Vec::new();
    drain(journal.as_raw_fd(), &mut buf);
    let text = String::from_utf8_lossy(&buf);
    let fields: Vec<&str> = text.split('\0').collect();
    let mut notes = Vec::new();
    for rec in fields.chunks_exact(3).rev() {
        let (kind, path, old) = (rec[0], rec[1], rec[2]);
        if kind == MODULE {
            notes.extend(reload_module(path, old));
            continue;
        }
        let now = std::fs::read_to_string(path).unwrap_or_default();
        if now.trim() != old.trim() {
            let res = std::fs::write(path, old.trim());
            notes.push(format!(
                "restored {path} to {} (was {}){}",
                old.trim(),
                now.trim(),
                res.err().map(|e| format!(": {e}")).unwrap_or_default()
            ));
        }
    }
    notes
}

/// The verdict of a test, its reason, and notes to print either way.
fn verdict(end: End, msg: &[u8], limit: Duration) -> (&'static str, String) {
    let text = String::from_utf8_lossy(msg);
    let (tag, body) = match text.chars().next() {
        Some(c) => (Some(c), text[c.len_utf8()..].to_string()),
        None => (None, String::new()),
    };
    match end {
        End::TimedOut => ("not ok", format!("timed out after {} s: process group killed", limit.as_secs())),
        End::Unkillable => (
            "not ok",
            format!(
                "timed out after {} s, and not dead {REAP_S} s after SIGKILL (stuck in the kernel?): left behind",
                limit.as_secs()
            ),
        ),
        End::Status(WaitStatus::Exited(_, EXIT_PASS)) if tag == Some('P') => ("ok", String::new()),
        End::Status(WaitStatus::Exited(_, EXIT_SKIP)) if tag == Some('S') => ("skip", body),
        End::Status(WaitStatus::Exited(_, EXIT_FAIL)) if tag == Some('F') => ("not ok", body),
        End::Status(WaitStatus::Exited(_, code)) => (
            "not ok",
            match tag {
                None => format!("exited with status {code} without reporting a result"),
                Some(t) => format!("exit status {code} does not match the reported result '{t}': {body}"),
            },
        ),
        End::Status(WaitStatus::Signaled(_, sig, _)) => ("not ok", format!("killed by {sig:?}")),
        End::Status(other) => ("not ok", format!("unexpected status {other:?}")),
    }
}

/// Runs `tests` (those whose name contains one of `filters`, if any), prints
/// KTAP and returns the number of failures.
pub fn run(tests: &[&Test], filters: &[String]) -> usize {
    let selected: Vec<&Test> = tests
        .iter()
        .copied()
        .filter(|t| filters.is_empty() || filters.iter().any(|f| t.name.contains(f.as_str())))
        .collect();
    // Descendants of a test that leave its process group are reparented here
    // when their parent dies, and killed after the test.
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) has no memory-safety preconditions.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let limit = timeout();
    println!("KTAP version 1");
    println!("1..{}", selected.len());
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    let mut unkillable = Vec::new();
    for (i, test) in selected.iter().enumerate() {
        let n = i + 1;
        let _ = std::io::stdout().flush();
        let (rd, wr) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).expect("pipe");
        let (jrd, jwr) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).expect("pipe");
        // The child writes its result blocking (the parent drains as it goes).
        // SAFETY: fcntl(F_SETFL) on a pipe fd we own.
        unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETFL, 0) };
        let deadline = Instant::now() + limit;
        // SAFETY: the child only runs the test and then _exit()s; this
        // harness is single-threaded, so no lock can be held across fork().
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                drop(rd);
                drop(jrd);
                let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
                run_child(test, wr, jwr)
            }
            ForkResult::Parent { child } => {
                drop(wr);
                drop(jwr);
                // Both sides set the group, so that it exists before killpg().
                let _ = setpgid(child, child);
                let mut msg = Vec::new();
                let end = supervise(child, &rd, deadline, &mut msg);
                if matches!(end, End::Unkillable) {
                    unkillable.push(child);
                }
                let leftovers = kill_leftovers(child, &unkillable);
                let mut notes = restore_journal(&jrd);
                if leftovers > 0 {
                    notes.push(format!(
                        "killed {leftovers} process(es) the test left behind"
                    ));
                }
                let (verdict, note) = verdict(end, &msg, limit);
                for line in &notes {
                    println!("# {}: {line}", test.name);
                }
                match verdict {
                    "ok" => {
                        pass += 1;
                        println!("ok {n} {}", test.name);
                    }
                    "skip" => {
                        skip += 1;
                        let why = note.replace('\n', " ");
                        let why = if why.trim().is_empty() {
                            "no reason given".to_string()
                        } else {
                            why
                        };
                        println!("ok {n} {} # SKIP {why}", test.name);
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
    let _ = std::io::stdout().flush();
    fail
}
