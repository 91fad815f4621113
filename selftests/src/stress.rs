// SPDX-License-Identifier: GPL-2.0

//! MREMAP_DUP under allocation failure and under concurrency, run inside the
//! guest. Prints KTAP.
//!
//! Usage: `mremap-dup-stress [--seconds N] [--seed S] [--race-only]
//! [--no-neighbours] [--only WORD]` (`--seconds`: how long the race runs,
//! default 15; `--only`: the tests whose name contains WORD).
//!
//! - Systematic fault injection (`/proc/thread-self/fail-nth`): a DUP|FIXED
//!   is made with its 1st, 2nd, ... fault-injection point failing, until one
//!   succeeds with nothing injected; that N - 1 is the number of points. Four
//!   sources: a populated 2 MiB memfd mapping, the same with a guard region
//!   (entries copied through page tables), a vgem dumb buffer (below 4 GiB),
//!   and the guarded memfd again with the memfd's next pages mapped right
//!   after the destination, so that the duplicate merges with them.
//!   The destination is a reservation of three VMAs, the first and the last
//!   cut by the destination's ends.
//! - The same with the Nth point and every later one failing (fail-nth
//!   with `/proc/self/make-it-fail` and 100 % probability): the cleanup
//!   after a failure fails too.
//!
//!   After every failed call the errno is ENOMEM, the source's maps line and
//!   contents are unchanged, /proc/self/maps outside the destination is
//!   unchanged (splits of a VMA into pieces with the same attributes aside),
//!   and the destination is either unmapped entirely or still exactly the
//!   reservation, with no page table entry left in it. After every success
//!   the duplicate is one VMA, shared both ways, and its guard pages fault.
//!
//!   failslab and fail_page_alloc are set up by the parent process, which
//!   puts the old settings back when the tests' child processes are done,
//!   however they ended.
//! - A race: DUP (the kernel picks the address, then munmap) against
//!   MADV_GUARD_INSTALL/REMOVE, page faults and MADV_DONTNEED on the same
//!   memfd source mapping, and against munmap/mmap/mprotect of its
//!   neighbours (which merge with it and split it again). The host checks the
//!   kernel log (on a KCSAN kernel: data races); this checks what the
//!   duplicates hold (see `race`).

#[path = "card.rs"]
mod card;

use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mremap_dup::{page_size as page, Placement};

const MADV_GUARD_INSTALL: i32 = 102;
const MADV_GUARD_REMOVE: i32 = 103;
/// /proc/PID/pagemap: present, swapped, guard region marker.
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_GUARD_REGION: u64 = 1 << 58;
const DEBUGFS: &str = "/sys/kernel/debug";

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errname(e: i32) -> String {
    format!("{} ({e})", nix::errno::Errno::from_raw(e).desc())
}

/// MREMAP_DUP of `len` bytes at `src`, at `dst` (MREMAP_FIXED) or anywhere.
fn dup(src: usize, len: usize, dst: Option<usize>) -> Result<usize, i32> {
    let placement = dst.map_or(Placement::Anywhere, Placement::Fixed);
    // SAFETY: DUP leaves the source alone; a destination is always a range
    // this process reserved for it, nothing in it is referenced.
    unsafe { mremap_dup::dup(src as *const libc::c_void, len, placement) }
        .map(|p| p as usize)
        .map_err(|e| e as i32)
}

fn mmap(addr: usize, len: usize, prot: i32, flags: i32, fd: i32, off: usize) -> Result<usize, i32> {
    // SAFETY: MAP_FIXED is only ever used over this process's own
    // reservations and mappings, which nothing references.
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, flags, fd, off as i64) };
    if p == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(p as usize)
    }
}

/// An anonymous private mapping that reserves address space.
fn reserve_at(addr: usize, len: usize, prot: i32, extra: i32) -> Result<usize, String> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | extra;
    mmap(addr, len, prot, flags, -1, 0).map_err(|e| format!("mmap reservation: {}", errname(e)))
}

fn munmap(addr: usize, len: usize) -> i32 {
    // SAFETY: unmapping this process's own mapping, which nothing references.
    unsafe { libc::munmap(addr as *mut libc::c_void, len) }
}

fn mprotect(addr: usize, len: usize, prot: i32) -> i32 {
    // SAFETY: changing the protection of this process's own mapping.
    unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) }
}

fn madvise(addr: usize, len: usize, advice: i32) -> i32 {
    // SAFETY: advice on this process's own mapping; no reference points into
    // pages that a guard or MADV_DONTNEED makes inaccessible or refaults.
    unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) }
}

fn memfd(len: usize) -> Result<OwnedFd, String> {
    // SAFETY: a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"mremap-dup-stress".as_ptr(), 0) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", errname(errno())));
    }
    // SAFETY: fd was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fd is an open memfd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) } != 0 {
        return Err(format!("ftruncate: {}", errname(errno())));
    }
    Ok(fd)
}

/// The pattern word of page `p` for `seed`.
fn word(seed: u64, p: usize) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (p as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn peek(addr: usize) -> u64 {
    // SAFETY: callers pass a readable address of one of their mappings.
    unsafe { (addr as *const u64).read_volatile() }
}

fn poke(addr: usize, v: u64) {
    // SAFETY: callers pass a writable address of one of their mappings.
    unsafe { (addr as *mut u64).write_volatile(v) }
}

/// Writes `seed`'s pattern into pages `pages` of the mapping at `addr`.
fn fill(addr: usize, pages: impl Iterator<Item = usize>, seed: u64) {
    for p in pages {
        poke(addr + p * page(), word(seed, p));
    }
}

/// The first page of `pages` at `addr` that does not hold `seed`'s pattern.
fn mismatch(addr: usize, mut pages: impl Iterator<Item = usize>, seed: u64) -> Option<usize> {
    pages.find(|&p| peek(addr + p * page()) != word(seed, p))
}

/// /proc/self/pagemap entries of `pages` pages at `addr`.
fn pagemap(addr: usize, pages: usize) -> Result<Vec<u64>, String> {
    let f = File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
    let mut buf = vec![0u8; pages * 8];
    f.read_exact_at(&mut buf, (addr / page() * 8) as u64)
        .map_err(|e| format!("pagemap: {e}"))?;
    Ok(buf
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect())
}

/// Runs `f` in a child process: true if the child was killed by SIGSEGV.
fn segfaults(f: impl FnOnce()) -> bool {
    // SAFETY: the caller is single-threaded; the child runs `f` and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        f();
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV
}

/// One /proc/self/maps line.
#[derive(Clone, Debug, PartialEq)]
struct Line {
    start: usize,
    end: usize,
    perms: String,
    off: u64,
    dev: String,
    inode: u64,
    name: String,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{:x}-{:x} {} {:08x} {} {} {}",
            self.start, self.end, self.perms, self.off, self.dev, self.inode, self.name
        )
    }
}

impl Line {
    /// How far the file offset moves over `bytes` of the mapping (maps
    /// shows offset 0 for every anonymous mapping).
    fn file_bytes(&self, bytes: usize) -> u64 {
        if self.inode == 0 && self.dev == "00:00" {
            0
        } else {
            bytes as u64
        }
    }
}

fn parse_line(l: &str) -> Option<Line> {
    let t: Vec<&str> = l.split_whitespace().collect();
    let (s, e) = t.first()?.split_once('-')?;
    Some(Line {
        start: usize::from_str_radix(s, 16).ok()?,
        end: usize::from_str_radix(e, 16).ok()?,
        perms: t.get(1)?.to_string(),
        off: u64::from_str_radix(t.get(2)?, 16).ok()?,
        dev: t.get(3)?.to_string(),
        inode: t.get(4)?.parse().ok()?,
        name: t.get(5..).unwrap_or_default().join(" "),
    })
}

/// /proc/self/maps outside and inside [lo, hi), lines cut at lo and hi, and
/// VMAs that are pieces of one mapping (a split) joined again. [heap] and
/// [stack] are left out: this process's own allocations move them.
#[derive(Debug, PartialEq)]
struct Maps {
    outside: Vec<Line>,
    inside: Vec<Line>,
}

impl Maps {
    fn read(lo: usize, hi: usize) -> Result<Maps, String> {
        let text = fs::read_to_string("/proc/self/maps").map_err(|e| format!("maps: {e}"))?;
        let mut m = Maps {
            outside: Vec::new(),
            inside: Vec::new(),
        };
        for l in text.lines() {
            let l = parse_line(l).ok_or_else(|| format!("maps: cannot parse {l:?}"))?;
            if l.name == "[heap]" || l.name == "[stack]" {
                continue;
            }
            for (s, e, inside) in [
                (l.start, l.end.min(lo), false),
                (l.start.max(lo), l.end.min(hi), true),
                (l.start.max(hi), l.end, false),
            ] {
                if s < e {
                    let piece = Line {
                        start: s,
                        end: e,
                        off: l.off + l.file_bytes(s - l.start),
                        ..l.clone()
                    };
                    push_joined(
                        if inside {
                            &mut m.inside
                        } else {
                            &mut m.outside
                        },
                        piece,
                    );
                }
            }
        }
        Ok(m)
    }

    /// The lines of `self` that are not in `other`, for error messages.
    fn diff(&self, other: &Maps) -> String {
        let show = |v: &[Line], w: &[Line]| -> Vec<String> {
            v.iter()
                .filter(|l| !w.contains(l))
                .map(|l| l.to_string())
                .collect()
        };
        format!(
            "outside: -{:?} +{:?}; inside: -{:?} +{:?}",
            show(&self.outside, &other.outside),
            show(&other.outside, &self.outside),
            show(&self.inside, &other.inside),
            show(&other.inside, &self.inside)
        )
    }
}

fn push_joined(v: &mut Vec<Line>, l: Line) {
    if let Some(last) = v.last_mut() {
        if last.end == l.start
            && last.perms == l.perms
            && last.dev == l.dev
            && last.inode == l.inode
            && last.name == l.name
            && last.off + last.file_bytes(last.end - last.start) == l.off
        {
            last.end = l.end;
            return;
        }
    }
    v.push(l);
}

/// The destination, made afresh for every call in a slot of its own (a
/// 2 MiB-aligned 4 MiB of an arena reserved PROT_NONE and never touched), so
/// that no page table maps it yet and a DUP that copies entries has to
/// allocate them. From the slot's start, in pages: a read-write fence page,
/// A (PROT_NONE, 2 pages), B (PROT_READ), C (PROT_NONE), a fence page. The
/// destination starts one page into A and ends one page before the end of
/// C: a DUP|FIXED cuts A and C and replaces B.
struct Reservation {
    arena: usize,
    slot: std::cell::Cell<usize>,
    dst: std::cell::Cell<usize>,
    len: usize,
    /// Below 4 GiB (MAP_32BIT: below 2 GiB).
    low: bool,
}

const SLOT: usize = 4 << 20;
const SLOTS: usize = 64;

impl Reservation {
    fn new(len: usize, low: bool) -> Result<Reservation, String> {
        if len + 4 * page() > SLOT {
            return Err(format!("a destination of {len} bytes does not fit a slot"));
        }
        let extra = if low { libc::MAP_32BIT } else { 0 };
        let arena = reserve_at(0, SLOTS * SLOT + (2 << 20), libc::PROT_NONE, extra)?;
        Ok(Reservation {
            arena: arena.next_multiple_of(2 << 20),
            slot: std::cell::Cell::new(SLOTS - 1),
            dst: std::cell::Cell::new(0),
            len,
            low,
        })
    }

    fn dst(&self) -> usize {
        self.dst.get()
    }

    /// Gives the last slot back to the arena and builds the destination in
    /// the next one.
    fn fresh(&self) -> Result<(), String> {
        let old = self.arena + self.slot.get() * SLOT;
        reserve_at(old, SLOT, libc::PROT_NONE, libc::MAP_FIXED)?;
        self.slot.set((self.slot.get() + 1) % SLOTS);
        let (b, p, half) = (self.arena + self.slot.get() * SLOT, page(), self.len / 2);
        self.dst.set(b + 2 * p);
        for (addr, len, prot) in [
            (b, p, libc::PROT_READ | libc::PROT_WRITE),
            (b + 3 * p, half - p, libc::PROT_READ),
            (b + self.len + 3 * p, p, libc::PROT_READ | libc::PROT_WRITE),
        ] {
            if mprotect(addr, len, prot) != 0 {
                return Err(format!("mprotect of the reservation: {}", errname(errno())));
            }
        }
        Ok(())
    }

    fn maps(&self) -> Result<Maps, String> {
        Maps::read(self.dst(), self.dst() + self.len)
    }

    /// An entry left behind in the destination: a present, swap or guard
    /// entry in the reservation (never touched), or, where the destination
    /// is unmapped, in a fresh mapping put there.
    fn stray_entry(&self, unmapped: bool) -> Result<Option<(usize, u64)>, String> {
        let pages = self.len / page();
        if unmapped {
            mmap(
                self.dst(),
                self.len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
            .map_err(|e| format!("mmap over the unmapped destination: {}", errname(e)))?;
        }
        let e = pagemap(self.dst(), pages)?;
        Ok((0..pages)
            .find(|&p| e[p] & (PM_PRESENT | PM_SWAP | PM_GUARD_REGION) != 0)
            .map(|p| (p, e[p])))
    }
}

/// A source mapping, what keeps it alive, and its destination.
struct Case {
    what: &'static str,
    src: usize,
    len: usize,
    /// Pages of the source that hold a guard marker.
    guards: Vec<usize>,
    seed: u64,
    res: Reservation,
    /// The memfd's next 2 pages are mapped right after the destination: the
    /// duplicate merges with that mapping.
    merge: bool,
    keep: Vec<OwnedFd>,
}

/// What a failed call left at the destination.
#[derive(Clone, Copy, PartialEq)]
enum Left {
    Reservation,
    Unmapped,
}

impl Case {
    fn pages(&self) -> usize {
        self.len / page()
    }

    fn plain_pages(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.pages()).filter(|p| !self.guards.contains(p))
    }

    fn src_line(&self, m: &Maps) -> Option<Line> {
        m.outside
            .iter()
            .find(|l| l.start <= self.src && self.src < l.end)
            .cloned()
    }

    /// A populated 2 MiB shared memfd mapping, with guards if asked.
    fn memfd(what: &'static str, guards: Vec<usize>, merge: bool) -> Result<Case, String> {
        let len = 512 * page();
        let fd = memfd(len + 2 * page())?;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let src = mmap(0, len, rw, libc::MAP_SHARED, fd.as_raw_fd(), 0)
            .map_err(|e| format!("mmap memfd: {}", errname(e)))?;
        let c = Case {
            what,
            src,
            len,
            guards,
            seed: 1,
            res: Reservation::new(len, false)?,
            merge,
            keep: vec![fd],
        };
        fill(c.src, c.plain_pages(), c.seed);
        for &g in &c.guards {
            if madvise(src + g * page(), page(), MADV_GUARD_INSTALL) != 0 {
                return Err(format!("MADV_GUARD_INSTALL: {}", errname(errno())));
            }
        }
        Ok(c)
    }

    /// A 2 MiB vgem dumb buffer, populated, its duplicate below 4 GiB.
    fn vgem() -> Result<Option<Case>, String> {
        let Ok(card) = card::open_card("vgem") else {
            return Ok(None);
        };
        let db = drm_ffi::mode::dumbbuffer::create(card.as_fd(), 1024, 512, 32, 0)
            .map_err(|e| format!("DRM_IOCTL_MODE_CREATE_DUMB: {e}"))?;
        let off = drm_ffi::mode::dumbbuffer::map(card.as_fd(), db.handle, 0, 0)
            .map_err(|e| format!("DRM_IOCTL_MODE_MAP_DUMB: {e}"))?
            .offset;
        let len = db.size as usize;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let src = mmap(0, len, rw, libc::MAP_SHARED, card.as_raw_fd(), off as usize)
            .map_err(|e| format!("mmap of the dumb buffer: {}", errname(e)))?;
        let c = Case {
            what: "vgem dumb buffer",
            src,
            len,
            guards: Vec::new(),
            seed: 3,
            res: Reservation::new(len, true)?,
            merge: false,
            keep: vec![card],
        };
        fill(c.src, c.plain_pages(), c.seed);
        Ok(Some(c))
    }

    /// The state before a call: maps and the source's contents.
    fn before(&self) -> Result<Maps, String> {
        self.res.fresh()?;
        if self.merge {
            let (rw, fixed) = (
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
            );
            let fd = self.keep[0].as_raw_fd();
            mmap(
                self.res.dst() + self.len,
                2 * page(),
                rw,
                fixed,
                fd,
                self.len,
            )
            .map_err(|e| format!("mmap of the next memfd pages: {}", errname(e)))?;
        }
        let m = self.res.maps()?;
        if self.src_line(&m).is_none() {
            return Err("no maps line for the source".into());
        }
        Ok(m)
    }

    fn dup_fixed(&self) -> Result<usize, i32> {
        dup(self.src, self.len, Some(self.res.dst()))
    }

    fn check_source(&self, before: &Maps, now: &Maps) -> Result<(), String> {
        if self.src_line(before) != self.src_line(now) {
            return Err(format!(
                "source maps line changed: {:?} -> {:?}",
                self.src_line(before).map(|l| l.to_string()),
                self.src_line(now).map(|l| l.to_string())
            ));
        }
        if let Some(p) = mismatch(self.src, self.plain_pages(), self.seed) {
            return Err(format!("source page {p} changed"));
        }
        Ok(())
    }

    /// The maps after a call, if the source and everything outside the
    /// destination are as they were `before`.
    fn maps_after(&self, before: &Maps) -> Result<Maps, String> {
        let now = self.res.maps()?;
        self.check_source(before, &now)?;
        if now.outside != before.outside {
            return Err(format!(
                "maps changed outside the destination: {}",
                before.diff(&now)
            ));
        }
        Ok(now)
    }

    /// After a failed call: what it left at the destination, or what is wrong.
    fn check_failed(&self, err: i32, before: &Maps) -> Result<Left, String> {
        if err != libc::ENOMEM {
            return Err(format!("errno {}, want ENOMEM", errname(err)));
        }
        let now = self.maps_after(before)?;
        let left = if now.inside.is_empty() {
            Left::Unmapped
        } else if now.inside == before.inside {
            Left::Reservation
        } else {
            return Err(format!(
                "destination neither the reservation nor unmapped: {}",
                before.diff(&now)
            ));
        };
        if let Some((p, e)) = self.res.stray_entry(left == Left::Unmapped)? {
            return Err(format!(
                "destination {} but page {p} has a page table entry ({e:#x})",
                if left == Left::Unmapped {
                    "unmapped"
                } else {
                    "still the reservation"
                }
            ));
        }
        Ok(left)
    }

    /// After a successful DUP|FIXED: one VMA mapping what the source maps,
    /// shared both ways, guard pages faulting; nothing else changed.
    fn check_dup(&self, d: usize, before: &Maps) -> Result<(), String> {
        let dst = self.res.dst();
        if d != dst {
            return Err(format!("duplicate at {d:#x}, not at {dst:#x}"));
        }
        if self.res.low && d + self.len > 1 << 32 {
            return Err(format!("duplicate at {d:#x}, not below 4 GiB"));
        }
        let now = self.maps_after(before)?;
        let src = self.src_line(&now).ok_or("no maps line for the source")?;
        let want = Line {
            start: dst,
            end: dst + self.len,
            off: src.off + src.file_bytes(self.src - src.start),
            ..src
        };
        if now.inside != [want.clone()] {
            return Err(format!("duplicate {:?}, want {want}", now.inside));
        }
        if let Some(p) = mismatch(d, self.plain_pages(), self.seed) {
            return Err(format!(
                "duplicate page {p} does not hold the source's contents"
            ));
        }
        fill(d, self.plain_pages(), self.seed + 1);
        if let Some(p) = mismatch(self.src, self.plain_pages(), self.seed + 1) {
            return Err(format!(
                "write via the duplicate not seen via the source (page {p})"
            ));
        }
        fill(self.src, self.plain_pages(), self.seed);
        if let Some(p) = mismatch(d, self.plain_pages(), self.seed) {
            return Err(format!(
                "write via the source not seen via the duplicate (page {p})"
            ));
        }
        let entries = pagemap(d, self.pages())?;
        for &g in &self.guards {
            if entries[g] & PM_GUARD_REGION == 0 {
                return Err(format!("no guard marker in the duplicate's page {g}"));
            }
            if !segfaults(|| {
                peek(d + g * page());
            }) {
                return Err(format!(
                    "reading the duplicate's guard page {g} did not fault"
                ));
            }
        }
        Ok(())
    }
}

/// Writes N to fail-nth, runs `f`, and says whether a fault was injected.
/// With `later`, every allocation after the Nth fails too: make-it-fail is
/// set around `f` (100 % probability for tasks that have it set).
fn with_fail_nth<R>(
    nth: &File,
    mif: &File,
    n: usize,
    later: bool,
    f: impl FnOnce() -> R,
) -> Result<(R, bool), String> {
    let io = |e: std::io::Error| format!("fault injection: {e}");
    nth.write_at(n.to_string().as_bytes(), 0).map_err(io)?;
    if later {
        mif.write_at(b"1", 0).map_err(io)?;
    }
    let r = f();
    if later {
        // Writing make-it-fail allocates nothing; should that ever change,
        // the write fails (ENOMEM) until it gets through.
        let mut tries = 0;
        while let Err(e) = mif.write_at(b"0", 0) {
            tries += 1;
            if tries == 1000 {
                return Err(io(e));
            }
        }
    }
    let mut buf = [0u8; 32];
    let k = nth.read_at(&mut buf, 0).map_err(io)?;
    nth.write_at(b"0", 0).map_err(io)?;
    let left = String::from_utf8_lossy(&buf[..k]);
    Ok((r, left.trim() == "0"))
}

fn open_rw(path: &str) -> Result<File, String> {
    let f = OpenOptions::new().read(true).write(true).open(path);
    f.map_err(|e| format!("{path}: {e}"))
}

/// Fails the 1st, 2nd, ... fault-injection point of a DUP|FIXED of `c`
/// (with `later`: and every point after it) until one succeeds with nothing
/// injected.
fn systematic(c: &Case, later: bool) -> Result<String, String> {
    let nth = open_rw("/proc/thread-self/fail-nth")?;
    let mif = open_rw("/proc/self/make-it-fail")?;
    let mut states = String::new();
    for n in 1..2000 {
        let before = c.before()?;
        let (r, injected) = with_fail_nth(&nth, &mif, n, later, || c.dup_fixed())?;
        if std::env::var_os("MREMAP_DUP_STRESS_VERBOSE").is_some() {
            let inside = c.res.maps()?.inside;
            let inside: Vec<String> = inside.iter().map(|l| l.to_string()).collect();
            eprintln!(
                "# {}: fail-nth {n}: {r:x?}, injected {injected}, destination {inside:?}",
                c.what
            );
        }
        let ctx = |m: String| format!("{}: fail-nth {n}: {m} [{states}]", c.what);
        match r {
            Err(e) => {
                let left = c.check_failed(e, &before).map_err(ctx)?;
                if !injected {
                    return Err(ctx("ENOMEM but no fault injected".into()));
                }
                states.push(if left == Left::Unmapped { 'U' } else { 'R' });
            }
            Ok(d) => {
                c.check_dup(d, &before).map_err(ctx)?;
                if !injected {
                    return Ok(format!(
                        "{}: {} injection points [{states}] (R: ENOMEM, reservation left; \
                         U: ENOMEM, destination unmapped; S: succeeded anyway); \
                         succeeded at fail-nth {n}",
                        c.what,
                        n - 1
                    ));
                }
                states.push('S');
            }
        }
    }
    Err(format!("{}: no DUP succeeded in 2000 calls", c.what))
}

/// The debugfs fault-injection settings a test run changes, restored on drop.
struct FaultInjection {
    saved: Vec<(String, String)>,
}

impl FaultInjection {
    /// failslab and fail_page_alloc: GFP_KERNEL, order-0 allocations may
    /// fail, through fail-nth, or always while make-it-fail is set. Quiet unless MREMAP_DUP_STRESS_VERBOSE is set (then a stack
    /// trace of each injected failure goes to the kernel log).
    fn setup() -> Result<FaultInjection, String> {
        if !std::path::Path::new(&format!("{DEBUGFS}/failslab")).exists() {
            // SAFETY: NUL-terminated strings; mounting debugfs where it goes.
            unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    c"/sys/kernel/debug".as_ptr(),
                    c"debugfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
        }
        if !std::path::Path::new("/proc/self/fail-nth").exists() {
            return Err("no /proc/self/fail-nth (CONFIG_FAULT_INJECTION)".into());
        }
        let verbose = if std::env::var_os("MREMAP_DUP_STRESS_VERBOSE").is_some() {
            "2"
        } else {
            "0"
        };
        let mut fi = FaultInjection { saved: Vec::new() };
        for f in ["failslab", "fail_page_alloc"] {
            for (attr, val) in [
                ("ignore-gfp-wait", "N"),
                ("verbose", verbose),
                ("task-filter", "Y"),
                ("probability", "100"),
                ("interval", "1"),
                ("times", "-1"),
                ("space", "0"),
            ] {
                fi.set(&format!("{DEBUGFS}/{f}/{attr}"), val)?;
            }
        }
        fi.set(&format!("{DEBUGFS}/fail_page_alloc/min-order"), "0")?;
        fi.set(
            &format!("{DEBUGFS}/fail_page_alloc/ignore-gfp-highmem"),
            "N",
        )?;
        Ok(fi)
    }

    fn set(&mut self, path: &str, val: &str) -> Result<(), String> {
        let old = fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        fs::write(path, val).map_err(|e| format!("{path}: {e}"))?;
        self.saved.push((path.to_string(), old.trim().to_string()));
        Ok(())
    }
}

impl Drop for FaultInjection {
    fn drop(&mut self) {
        for (path, old) in self.saved.iter().rev() {
            if let Err(e) = fs::write(path, old) {
                println!("# could not restore {path} to {old}: {e}");
            }
        }
    }
}

/// A small xorshift generator: a run's choices follow from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// What the race's threads share.
struct Race {
    stop: AtomicBool,
    error: Mutex<Option<String>>,
    /// Per page of the guarded half: even when no madvise() on it is under
    /// way, `% 4 == 2` while a guard is installed.
    seq: Vec<AtomicU64>,
    ops: AtomicU64,
    /// The memfd the source and its neighbours map.
    memfd: i32,
}

impl Race {
    fn fail(&self, msg: String) {
        self.error.lock().unwrap().get_or_insert(msg);
        self.stop.store(true, Ordering::SeqCst);
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }
}

/// The race's layout, in pages of one memfd: `N` pages mapped left of the
/// source, the source (`PAGES`: guards come and go in the first `GUARDED`,
/// faults and MADV_DONTNEED in the rest), `N` pages right of it. A neighbour
/// of the same file at the adjacent offset merges with the source; it is
/// narrower than a duplicate, so that no duplicate lands in its hole.
const PAGES: usize = 64;
const GUARDED: usize = 32;
const N: usize = 4;
const PATTERN: u64 = 7;

/// DUP racing madvise(), faults and neighbour changes. Oracle: every page of
/// a duplicate without a guard marker holds the memfd's pattern; a page
/// whose guard was installed by a madvise() that returned before the DUP
/// began, and not removed until it returned, has a guard marker in the
/// duplicate; one whose guard was removed likewise has none. (Pages whose
/// madvise() overlapped the DUP may go either way.)
fn race(seconds: u64, seed: u64, neighbours: bool) -> Result<String, String> {
    let p = page();
    let fd = memfd((2 * N + PAGES) * p)?;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let region = reserve_at(0, (2 * N + PAGES) * p, libc::PROT_NONE, 0)?;
    let fixed = libc::MAP_SHARED | libc::MAP_FIXED;
    mmap(region, (2 * N + PAGES) * p, rw, fixed, fd.as_raw_fd(), 0)
        .map_err(|e| format!("mmap memfd: {}", errname(e)))?;
    fill(region, 0..2 * N + PAGES, PATTERN);
    let src = region + N * p;
    if madvise(src, p, MADV_GUARD_INSTALL) != 0 {
        return Ok(format!("SKIP MADV_GUARD_INSTALL: {}", errname(errno())));
    }
    madvise(src, p, MADV_GUARD_REMOVE);

    let race = Arc::new(Race {
        stop: AtomicBool::new(false),
        error: Mutex::new(None),
        seq: (0..GUARDED).map(|_| AtomicU64::new(0)).collect(),
        ops: AtomicU64::new(0),
        memfd: fd.as_raw_fd(),
    });
    let mut threads = Vec::new();
    let spawn = |t: u64, f: fn(&Race, usize, Rng)| {
        let race = race.clone();
        std::thread::spawn(move || f(&race, src, Rng::new(seed ^ (t << 32))))
    };
    // Two guard threads (even and odd pages), faults, neighbours.
    threads.push(spawn(1, |r, src, rng| guard_thread(r, src, rng, 0)));
    threads.push(spawn(2, |r, src, rng| guard_thread(r, src, rng, 1)));
    threads.push(spawn(3, fault_thread));
    if neighbours {
        threads.push(spawn(4, neighbour_thread));
    }

    let start = Instant::now();
    let (mut dups, mut held, mut absent) = (0u64, 0u64, 0u64);
    while race.running() && start.elapsed() < Duration::from_secs(seconds) {
        match dup_and_check(&race, src) {
            Ok((h, a)) => {
                dups += 1;
                held += h;
                absent += a;
            }
            Err(m) => race.fail(m),
        }
    }
    race.stop.store(true, Ordering::SeqCst);
    for t in threads {
        if t.join().is_err() {
            race.fail("a thread panicked".into());
        }
    }
    if let Some(e) = race.error.lock().unwrap().take() {
        return Err(format!("{e} (seed {seed}, after {dups} DUPs)"));
    }
    if held == 0 || absent == 0 {
        return Err(format!(
            "the guard oracle never applied: {dups} DUPs, {held} stable guards, {absent} stable clear pages"
        ));
    }
    Ok(format!(
        "{dups} DUPs in {seconds} s against {} madvise/fault/neighbour operations; \
         {held} guards installed before a DUP found in its duplicate, {absent} removed ones absent (seed {seed})",
        race.ops.load(Ordering::Relaxed)
    ))
}

/// One DUP of the source, checked, unmapped: (stable guards, stable clear
/// pages) the oracle checked.
fn dup_and_check(race: &Race, src: usize) -> Result<(u64, u64), String> {
    let p = page();
    let seqs = || -> Vec<u64> { race.seq.iter().map(|s| s.load(Ordering::SeqCst)).collect() };
    let before = seqs();
    let d = dup(src, PAGES * p, None).map_err(|e| format!("DUP: {}", errname(e)))?;
    let after = seqs();
    let entries = pagemap(d, PAGES);
    let mut res = Ok((0, 0));
    if let Ok(entries) = &entries {
        let (mut held, mut absent) = (0, 0);
        for (q, &e) in entries.iter().enumerate() {
            let guard = e & PM_GUARD_REGION != 0;
            let stable = q < GUARDED && before[q] == after[q] && before[q] % 2 == 0;
            let want = if q < GUARDED {
                before[q] % 4 == 2
            } else {
                false
            };
            if (stable || q >= GUARDED) && guard != want {
                res = Err(format!(
                    "page {q} of a duplicate {} a guard marker, its source page {} one throughout the DUP",
                    if guard { "has" } else { "lacks" },
                    if want { "had" } else { "had not" }
                ));
                break;
            }
            if stable && want {
                held += 1;
            } else if stable {
                absent += 1;
            }
            if !guard && peek(d + q * p) != word(PATTERN, N + q) {
                res = Err(format!(
                    "page {q} of a duplicate does not hold the memfd's contents"
                ));
                break;
            }
        }
        res = res.map(|_| (held, absent));
    }
    munmap(d, PAGES * p);
    entries?;
    res
}

/// MADV_GUARD_INSTALL and MADV_GUARD_REMOVE on the guarded half's pages of
/// parity `parity`, each bracketed by `seq` updates.
fn guard_thread(race: &Race, src: usize, mut rng: Rng, parity: usize) {
    while race.running() {
        let q = rng.below(GUARDED / 2) * 2 + parity;
        let s = race.seq[q].load(Ordering::SeqCst);
        let advice = if s % 4 == 0 {
            MADV_GUARD_INSTALL
        } else {
            MADV_GUARD_REMOVE
        };
        race.seq[q].store(s + 1, Ordering::SeqCst);
        if madvise(src + q * page(), page(), advice) != 0 {
            race.fail(format!(
                "madvise({advice}) of page {q}: {}",
                errname(errno())
            ));
            return;
        }
        race.seq[q].store(s + 2, Ordering::SeqCst);
        race.ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes (of the same pattern), reads and MADV_DONTNEED in the unguarded
/// half: page faults under the VMA lock alone.
fn fault_thread(race: &Race, src: usize, mut rng: Rng) {
    while race.running() {
        let q = GUARDED + rng.below(PAGES - GUARDED);
        let addr = src + q * page();
        match rng.below(8) {
            0..=3 => poke(addr, word(PATTERN, N + q)),
            4 | 5 => {
                if peek(addr) != word(PATTERN, N + q) {
                    race.fail(format!(
                        "source page {q} does not hold the memfd's contents"
                    ));
                }
            }
            6 => {
                madvise(addr, page(), libc::MADV_DONTNEED);
            }
            _ => {
                let n = (PAGES - q).min(8);
                madvise(addr, n * page(), libc::MADV_DONTNEED);
            }
        }
        race.ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// The source's neighbours, same memfd at the adjacent offsets: unmapped and
/// mapped again (split from the source VMA, merged with it again),
/// mprotect()ed read-only and back, replaced by PROT_NONE anonymous memory
/// and back, read.
fn neighbour_thread(race: &Race, src: usize, mut rng: Rng) {
    let p = page();
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    // (address, first memfd page, still ours)
    let mut slots = [(src - N * p, 0, true), (src + PAGES * p, N + PAGES, true)];
    let memfd_at = |addr: usize, first: usize, flags: i32| {
        mmap(
            addr,
            N * p,
            rw,
            libc::MAP_SHARED | flags,
            race.memfd,
            first * p,
        )
    };
    let holds =
        |addr: usize, first: usize| (0..N).all(|k| peek(addr + k * p) == word(PATTERN, first + k));
    while race.running() {
        let i = rng.below(2);
        let (addr, first, ours) = slots[i];
        if !ours {
            continue;
        }
        let ok = match rng.below(4) {
            0 => {
                munmap(addr, N * p);
                // Another thread's mmap() may have taken the hole: then the
                // slot is no longer ours to touch.
                match memfd_at(addr, first, libc::MAP_FIXED_NOREPLACE) {
                    Ok(_) => true,
                    Err(libc::EEXIST) => {
                        slots[i].2 = false;
                        true
                    }
                    Err(_) => false,
                }
            }
            1 => {
                mprotect(addr, N * p, libc::PROT_READ) == 0
                    && holds(addr, first)
                    && mprotect(addr, N * p, rw) == 0
            }
            2 => {
                reserve_at(addr, N * p, libc::PROT_NONE, libc::MAP_FIXED).is_ok()
                    && memfd_at(addr, first, libc::MAP_FIXED).is_ok()
            }
            _ => holds(addr, first),
        };
        if !ok {
            race.fail(format!(
                "neighbour at memfd page {first}: an operation failed or it does not hold the memfd's contents ({})",
                errname(errno())
            ));
        }
        race.ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `f` in a child process in its own process group, killed after
/// `limit`: a test that crashes or hangs fails alone.
fn in_child(limit: Duration, f: impl FnOnce() -> Result<String, String>) -> Result<String, String> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", errname(errno())));
    }
    // SAFETY: the parent is single-threaded; the child runs `f` and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: a process group of its own, so that a timeout kills it all.
        unsafe { libc::setpgid(0, 0) };
        let (code, msg) = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(m)) => (0, m),
            Ok(Err(m)) => (1, m),
            Err(_) => (1, "panicked".to_string()),
        };
        // SAFETY: the pipe's write end; then leave without the parent's
        // destructors (the fault-injection settings are the parent's).
        unsafe {
            libc::write(fds[1], msg.as_ptr().cast(), msg.len());
            libc::_exit(code);
        }
    }
    // SAFETY: the parent's copy of the write end.
    unsafe { libc::close(fds[1]) };
    // SAFETY: the read end, owned from here on.
    let mut out = File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            break;
        }
        if start.elapsed() > limit {
            // SAFETY: the child's process group.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(format!("timed out after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut msg = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut msg);
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(msg)
    } else if libc::WIFSIGNALED(status) {
        Err(format!(
            "killed by signal {}: {msg}",
            libc::WTERMSIG(status)
        ))
    } else {
        Err(msg)
    }
}

type Body = Box<dyn FnOnce() -> Result<String, String>>;

/// The sources of the fault-injection tests: None if there is no vgem card.
fn case(i: usize) -> Result<Option<Case>, String> {
    match i {
        0 => Case::memfd("memfd over three VMAs", Vec::new(), false).map(Some),
        1 => Case::memfd("memfd with guard pages", vec![1, 300], false).map(Some),
        2 => Case::vgem(),
        _ => Case::memfd("memfd with guard pages, merged", vec![1, 300], true).map(Some),
    }
}

fn injection_tests() -> Vec<(&'static str, Body)> {
    let one = |i: usize, later: bool| -> Body {
        Box::new(move || match case(i)? {
            Some(c) => systematic(&c, later),
            None => Ok("SKIP no vgem card (CONFIG_DRM_VGEM)".into()),
        })
    };
    vec![
        ("fail_nth_memfd_over_three_vmas", one(0, false)),
        ("fail_nth_memfd_guard_region", one(1, false)),
        ("fail_nth_vgem_below_4g", one(2, false)),
        ("fail_nth_memfd_guard_region_merged", one(3, false)),
        ("fail_nth_and_later_memfd_over_three_vmas", one(0, true)),
        ("fail_nth_and_later_memfd_guard_region", one(1, true)),
        ("fail_nth_and_later_vgem_below_4g", one(2, true)),
        ("fail_nth_and_later_memfd_guard_region_merged", one(3, true)),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let seconds = arg("--seconds", 15);
    let seed = arg("--seed", 1);
    let race_only = args.iter().any(|a| a == "--race-only");
    // --no-neighbours: the race without munmap/mmap/mprotect of the source's
    // neighbours (whose VMA splits race madvise() in mainline already).
    let neighbours = !args.iter().any(|a| a == "--no-neighbours");
    // --only WORD: the tests whose name contains WORD.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));

    let mut tests = if race_only {
        Vec::new()
    } else {
        injection_tests()
    };
    let injection = tests.len();
    tests.push((
        "race_dup_madvise_faults_neighbours",
        Box::new(move || race(seconds, seed, neighbours)),
    ));
    let keep = |name: &str| only.is_none() || only.is_some_and(|w| name.contains(w.as_str()));
    let injection = tests[..injection].iter().filter(|t| keep(t.0)).count();
    tests.retain(|t| keep(t.0));

    println!("KTAP version 1");
    println!("1..{}", tests.len());
    let supported = mremap_dup::is_supported();
    let mut fi = None;
    let mut failed = 0;
    for (i, (name, body)) in tests.into_iter().enumerate() {
        let n = i + 1;
        if !supported {
            println!("ok {n} {name} # SKIP MREMAP_DUP not supported by this kernel");
            continue;
        }
        let res = if i < injection {
            fi = fi.or_else(|| Some(FaultInjection::setup()));
            match fi.as_ref().unwrap() {
                Ok(_) => in_child(Duration::from_secs(600), body),
                Err(e) => Ok(format!("SKIP fault injection not available: {e}")),
            }
        } else {
            // Everything back as it was before the race.
            fi = None;
            in_child(Duration::from_secs(seconds + 120), body)
        };
        match res {
            Ok(msg) if msg.starts_with("SKIP") => println!("ok {n} {name} # {msg}"),
            Ok(msg) => {
                println!("# {name}: {msg}");
                println!("ok {n} {name}");
            }
            Err(msg) => {
                failed += 1;
                println!("# {name}: {msg}");
                println!("not ok {n} {name}");
            }
        }
    }
    drop(fi);
    std::process::exit(i32::from(failed > 0));
}
