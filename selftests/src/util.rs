// SPDX-License-Identifier: GPL-2.0

//! Mappings, content patterns and /proc readers shared by the selftests.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

use crate::harness::{Failure, TestResult};
use crate::{check, fail};
use mremap_dup::{mremap_raw, RemapFlags};

/// The base page size.
pub fn page() -> usize {
    mremap_dup::page_size()
}

/// A mapping this test owns; unmapped on drop.
pub struct Mapping {
    /// Start address.
    pub addr: usize,
    /// Length in bytes.
    pub len: usize,
}

impl Mapping {
    /// Takes ownership of `[addr, addr + len)`, e.g. a duplicate.
    pub fn adopt(addr: usize, len: usize) -> Self {
        Self { addr, len }
    }

    /// The address as a pointer.
    pub fn ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    /// The end address.
    pub fn end(&self) -> usize {
        self.addr + self.len
    }

    /// Gives up ownership without unmapping (the range was unmapped or
    /// replaced by the test itself).
    pub fn forget(self) {
        std::mem::forget(self)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by this value, nothing references it.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// mmap(2), returning a [`Mapping`].
pub fn map(
    addr: usize,
    len: usize,
    prot: i32,
    flags: i32,
    fd: i32,
    off: usize,
) -> Result<Mapping, Errno> {
    // SAFETY: callers pass MAP_FIXED only over ranges that the test owns.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            prot,
            flags,
            fd,
            off as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        Err(Errno::last())
    } else {
        Ok(Mapping::adopt(p as usize, len))
    }
}

pub const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;

/// A memfd of `len` bytes.
pub fn memfd(len: usize, flags: u32) -> Result<OwnedFd, Failure> {
    let name = CString::new("mremap-dup-test").unwrap();
    // SAFETY: name is a valid NUL-terminated string.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        fail!("memfd_create(flags {flags:#x}): {}", Errno::last());
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    truncate(&fd, len)?;
    Ok(fd)
}

/// ftruncate(2).
pub fn truncate(fd: &OwnedFd, len: usize) -> TestResult {
    // SAFETY: fd is an open file descriptor.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        fail!("ftruncate({len}): {}", Errno::last());
    }
    Ok(())
}

/// A MAP_SHARED read-write mapping of a fresh memfd: (fd, mapping).
pub fn shared_memfd(pages: usize) -> Result<(OwnedFd, Mapping), Failure> {
    let len = pages * page();
    let fd = memfd(len, libc::MFD_ALLOW_SEALING)?;
    let m = map(0, len, RW, libc::MAP_SHARED, fd.as_raw_fd(), 0)
        .map_err(|e| Failure::Fail(format!("mmap memfd: {e}")))?;
    Ok((fd, m))
}

/// A PROT_NONE reservation of `pages` pages, below 4 GiB if `low`.
pub fn reserve(pages: usize, low: bool) -> Result<Mapping, Failure> {
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    if low {
        flags |= libc::MAP_32BIT;
    }
    map(0, pages * page(), libc::PROT_NONE, flags, -1, 0)
        .map_err(|e| Failure::Fail(format!("reserve: {e}")))
}

/// The value written at word `w` of page `p` for pattern `seed`.
fn word(seed: u64, p: usize, w: usize) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ((p as u64) << 32) ^ w as u64
}

/// Writes a per-page pattern over `[addr, addr + pages * page)`.
pub fn fill(addr: usize, pages: usize, seed: u64) {
    let words = page() / 8;
    for p in 0..pages {
        for w in [0, words / 2, words - 1] {
            // SAFETY: the caller passes a writable mapping of `pages` pages.
            unsafe {
                ((addr + p * page()) as *mut u64)
                    .add(w)
                    .write_volatile(word(seed, p, w))
            };
        }
    }
}

/// Checks the pattern written by [`fill`]; names the first wrong page.
pub fn verify(what: &str, addr: usize, pages: usize, seed: u64, first_page: usize) -> TestResult {
    let words = page() / 8;
    for p in 0..pages {
        for w in [0, words / 2, words - 1] {
            // SAFETY: the caller passes a readable mapping of `pages` pages.
            let got = unsafe { ((addr + p * page()) as *const u64).add(w).read_volatile() };
            let want = word(seed, p + first_page, w);
            check!(
                got == want,
                "{what}: page {p} word {w}: read {got:#x}, expected {want:#x}"
            );
        }
    }
    Ok(())
}

/// Reads one u64 at `addr`.
pub fn peek(addr: usize) -> u64 {
    // SAFETY: the caller passes a readable address.
    unsafe { (addr as *const u64).read_volatile() }
}

/// Writes one u64 at `addr`.
pub fn poke(addr: usize, v: u64) {
    // SAFETY: the caller passes a writable address.
    unsafe { (addr as *mut u64).write_volatile(v) }
}

/// The /proc/self/maps lines that intersect `[start, end)`.
pub fn maps_in(start: usize, end: usize) -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter(|l| {
            let range = l.split_whitespace().next().unwrap_or("");
            let (s, e) = range.split_once('-').unwrap_or(("0", "0"));
            let s = usize::from_str_radix(s, 16).unwrap_or(0);
            let e = usize::from_str_radix(e, 16).unwrap_or(0);
            s < end && e > start
        })
        .map(str::to_string)
        .collect()
}

/// One /proc/self/maps entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    pub start: usize,
    pub end: usize,
    pub perms: String,
    pub offset: usize,
}

/// The VMA holding `addr`, from /proc/self/maps.
pub fn vma_at(addr: usize) -> Option<Vma> {
    maps_in(addr, addr + 1).first().map(|l| {
        let mut f = l.split_whitespace();
        let (s, e) = f.next().unwrap().split_once('-').unwrap();
        let perms = f.next().unwrap().to_string();
        let offset = usize::from_str_radix(f.next().unwrap(), 16).unwrap();
        Vma {
            start: usize::from_str_radix(s, 16).unwrap(),
            end: usize::from_str_radix(e, 16).unwrap(),
            perms,
            offset,
        }
    })
}

/// The smaps block of the VMA holding `addr`.
pub fn smaps_at(addr: usize) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut out = String::new();
    let mut inside = false;
    for l in smaps.lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        if let Some((s, e)) = first.split_once('-') {
            if let (Ok(s), Ok(e)) = (usize::from_str_radix(s, 16), usize::from_str_radix(e, 16)) {
                inside = s <= addr && addr < e;
            }
        }
        if inside {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// The VmFlags of the VMA holding `addr` (two-letter mnemonics).
pub fn vm_flags_at(addr: usize) -> Vec<String> {
    smaps_at(addr)
        .lines()
        .find_map(|l| l.strip_prefix("VmFlags:"))
        .map(|f| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// A field of /proc/self/status, in kB.
pub fn status_kb(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// What a failed call must not have changed: the maps lines and contents of
/// the source VMA and of the destination range.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    maps: Vec<String>,
    words: Vec<u64>,
}

/// Takes a snapshot of `ranges`; `readable` ones also have their contents
/// (first word of every page) recorded.
pub fn snapshot(ranges: &[(usize, usize, bool)]) -> Snapshot {
    let mut maps = Vec::new();
    let mut words = Vec::new();
    for &(start, len, readable) in ranges {
        maps.extend(maps_in(start, start + len));
        if readable {
            for p in (start..start + len).step_by(page()) {
                words.push(peek(p));
            }
        }
    }
    Snapshot { maps, words }
}

/// The raw syscall with DUP, as a result.
pub fn dup_raw(
    old: usize,
    old_len: usize,
    new_len: usize,
    flags: RemapFlags,
    new: usize,
) -> Result<usize, Errno> {
    // SAFETY: the tests call this only with destinations they own (their own
    // reservations) or with arguments the kernel must refuse.
    unsafe { mremap_raw(old, old_len, new_len, flags, new) }
}

/// Skips the test unless the kernel knows MREMAP_DUP (checked first by every
/// test that needs it). The reason starts as the C kselftest's and the
/// stress tests' do ("MREMAP_DUP not supported by this kernel"): the host
/// counts such a skip as a failure on a kernel that must have MREMAP_DUP
/// (parse-results.py without --kernel-without-dup).
pub fn require_dup() -> TestResult {
    if !mremap_dup::is_supported() {
        return Err(Failure::Skip(
            "MREMAP_DUP not supported by this kernel (a DUP of a shared anonymous page gave EINVAL)"
                .to_string(),
        ));
    }
    Ok(())
}

/// Checks that `res` is the error `want`.
pub fn expect_errno<T: std::fmt::Debug>(
    case: &str,
    res: Result<T, Errno>,
    want: Errno,
) -> TestResult {
    match res {
        Err(e) if e == want => Ok(()),
        Err(e) => fail!(
            "{case}: got {e} ({}), expected {want} ({})",
            e as i32,
            want as i32
        ),
        Ok(v) => fail!("{case}: succeeded ({v:?}), expected {want}"),
    }
}

/// Runs `f` in a child process; returns the signal that killed it, if any.
pub fn in_child_signal(f: impl FnOnce()) -> Option<Signal> {
    // SAFETY: the test process is single-threaded; the child only touches
    // memory and then _exit()s.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            f();
            // SAFETY: ends the forked child without running atexit handlers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => match waitpid(child, None) {
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(sig),
            _ => None,
        },
    }
}

/// Runs `f` in a child process and returns its exit code.
pub fn in_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: as for in_child_signal().
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = f();
            // SAFETY: ends the forked child without running atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => code,
            _ => -1,
        },
    }
}

/// Restores a sysctl file to its old value on drop; the harness's parent
/// restores it too (after the test's process is gone, however it ended:
/// [`crate::harness::journal_restore`]).
pub struct SysctlGuard {
    path: &'static str,
    old: String,
}

impl SysctlGuard {
    /// Writes `value` to `path`, remembering the old value.
    pub fn set(path: &'static str, value: &str) -> Result<Self, Failure> {
        let old = std::fs::read_to_string(path)
            .map_err(|e| Failure::Fail(format!("read {path}: {e}")))?;
        crate::harness::journal_restore(path, &old);
        std::fs::write(path, value).map_err(|e| Failure::Fail(format!("write {path}: {e}")))?;
        Ok(Self { path, old })
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, self.old.trim());
    }
}
