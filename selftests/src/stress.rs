// SPDX-License-Identifier: GPL-2.0

//! MREMAP_DUP under allocation failure and under concurrency, run inside the
//! guest. Prints KTAP.
//!
//! Usage: `mremap-dup-stress [--seconds N] [--seed S] [--race-only]
//! [--no-neighbours] [--only WORD]` (`--seconds`: how long each race test
//! runs, default 15; `--only`: the tests whose name contains WORD). Ends
//! with a `# Totals: pass:N fail:N skip:N` line, as the selftests do.
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
//! - DUP racing hole punching (fallocate, MADV_REMOVE), ftruncate() down and
//!   up, mremap() moves of the source and fork(), on a memfd and on a tmpfs
//!   file: every page of a duplicate compared exactly with the generation
//!   its page must hold, or zero (see `race_truncate`).
//! - DUP of a vgem buffer's mapping racing GEM_CLOSE of its handle, close()
//!   of the card and munmap() of the original: the duplicate keeps the
//!   buffer, which is freed with it (see `race_vgem`).
//! - DUP of a QXL VRAM buffer's mapping racing TTM's eviction of the buffer
//!   (see `race_qxl_eviction`).
//! - DUP of an ext4 file's mapping, next to a neighbour it merges with,
//!   racing the file's writeback: what is written through the duplicate
//!   reaches the disk (see `race_writeback`).
//!
//!   Each race runs in a child process and ends by checking that it left no
//!   fd and no mapping behind (the madvise race aside).

#[path = "card.rs"]
mod card;
#[path = "ext4.rs"]
mod ext4;

use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
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
        let (_, src, len) = card::map_dumb(&card, 1024, 512)?;
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

/// VmPTE of /proc/self/status: the bytes of this mm's page tables, in kB.
fn vm_pte_kb() -> Result<u64, String> {
    let status = fs::read_to_string("/proc/self/status").map_err(|e| format!("status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPTE:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmPTE in /proc/self/status".into())
}

/// Page tables prepared for a copy that is then abandoned are freed.
///
/// A populated 16-page memfd mapping (its entries are copied, so the DUP
/// allocates a PTE table for the destination before it allocates the new
/// VMA) and, 4 MiB further in the same 8 MiB region, a 2 MiB destination
/// that nothing maps: no other VMA shares its PTE table, and the PMD table
/// above it is the source's. DUP|FIXED there with the 1st, 2nd, ...
/// fault-injection point failing (with `later`: and every point after it)
/// until one succeeds with nothing injected. After every failure VmPTE is
/// what it was before the call and the destination is still unmapped;
/// after the success and munmap() of the duplicate, too.
fn page_tables_freed(later: bool) -> Result<String, String> {
    const PMD: usize = 2 << 20;
    let pages = 16;
    let len = pages * page();
    let fd = memfd(len)?;
    // An 8 MiB region inside one 1 GiB range (one PMD table), 2 MiB-aligned.
    let region = reserve_at(0, 4 * PMD + PMD, libc::PROT_NONE, 0)?;
    let base = (region + PMD - 1) & !(PMD - 1);
    if base / (1 << 30) != (base + 4 * PMD - 1) / (1 << 30) {
        return Ok("SKIP the region straddles a 1 GiB boundary (run again)".into());
    }
    let src = mmap(
        base,
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED | libc::MAP_FIXED,
        fd.as_raw_fd(),
        0,
    )
    .map_err(|e| format!("mmap of the memfd: {}", errname(e)))?;
    fill(src, 0..pages, 7);
    let dst = base + 2 * PMD;
    if munmap(dst, PMD) != 0 {
        return Err(format!("munmap of the destination: {}", errname(errno())));
    }
    let nth = open_rw("/proc/thread-self/fail-nth")?;
    let mif = open_rw("/proc/self/make-it-fail")?;
    let unmapped = |what: &str| -> Result<(), String> {
        let m = Maps::read(dst, dst + PMD)?;
        if m.inside.is_empty() {
            Ok(())
        } else {
            Err(format!("{what}: the destination is mapped: {:?}", m.inside))
        }
    };
    for n in 1..2000 {
        let before = vm_pte_kb()?;
        let (r, injected) = with_fail_nth(&nth, &mif, n, later, || dup(src, len, Some(dst)))?;
        match r {
            Err(e) => {
                if e != libc::ENOMEM || !injected {
                    return Err(format!("fail-nth {n}: {}, injected {injected}", errname(e)));
                }
                unmapped(&format!("fail-nth {n}"))?;
                let after = vm_pte_kb()?;
                if after != before {
                    return Err(format!(
                        "fail-nth {n}: VmPTE {before} -> {after} kB after a failed DUP: \
                         page tables prepared for the copy left behind"
                    ));
                }
            }
            Ok(d) => {
                if let Some(p) = mismatch(d, 0..pages, 7) {
                    return Err(format!(
                        "fail-nth {n}: duplicate page {p} does not hold the source's"
                    ));
                }
                if munmap(d, len) != 0 {
                    return Err(format!("munmap of the duplicate: {}", errname(errno())));
                }
                unmapped("after munmap")?;
                let after = vm_pte_kb()?;
                if after != before {
                    return Err(format!(
                        "fail-nth {n}: VmPTE {before} -> {after} kB after DUP and munmap"
                    ));
                }
                if !injected {
                    return Ok(format!(
                        "{} injection points, VmPTE {before} kB after each",
                        n - 1
                    ));
                }
            }
        }
    }
    Err("no DUP succeeded in 2000 calls".into())
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
            mount_debugfs();
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

/// Stopping a race's threads, and its first failure.
struct Control {
    stop: AtomicBool,
    error: Mutex<Option<String>>,
}

impl Control {
    fn new() -> Control {
        Control {
            stop: AtomicBool::new(false),
            error: Mutex::new(None),
        }
    }

    /// Records the first failure and stops every thread.
    fn fail(&self, msg: String) {
        self.error.lock().unwrap().get_or_insert(msg);
        self.stop.store(true, Ordering::SeqCst);
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }

    fn error(&self) -> Option<String> {
        self.error.lock().unwrap().take()
    }
}

/// What the race's threads share.
struct Race {
    ctl: Control,
    /// Per page of the guarded half: even when no madvise() on it is under
    /// way, `% 4 == 2` while a guard is installed.
    seq: Vec<AtomicU64>,
    ops: AtomicU64,
    /// The memfd the source and its neighbours map.
    memfd: i32,
}

impl Race {
    fn fail(&self, msg: String) {
        self.ctl.fail(msg);
    }

    fn running(&self) -> bool {
        self.ctl.running()
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
        ctl: Control::new(),
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
    race.ctl.stop.store(true, Ordering::SeqCst);
    for t in threads {
        if t.join().is_err() {
            race.fail("a thread panicked".into());
        }
    }
    if let Some(e) = race.ctl.error() {
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

/// What a test leaves behind: the open fds and /proc/self/maps, without
/// [heap], [stack] and unnamed private anonymous mappings (thread stacks and
/// malloc arenas, which glibc keeps for reuse after a thread exits). A
/// duplicate, a file or device mapping or an fd a test forgot is in it.
#[derive(PartialEq)]
struct Leftovers {
    fds: Vec<String>,
    maps: Vec<Line>,
}

impl Leftovers {
    fn read() -> Result<Leftovers, String> {
        let mut fds: Vec<String> = fs::read_dir("/proc/self/fd")
            .map_err(|e| format!("/proc/self/fd: {e}"))?
            .filter_map(|e| e.ok())
            .map(|e| {
                let target = fs::read_link(e.path()).unwrap_or_default();
                format!(
                    "{} -> {}",
                    e.file_name().to_string_lossy(),
                    target.display()
                )
            })
            .collect();
        fds.sort();
        let text = fs::read_to_string("/proc/self/maps").map_err(|e| format!("maps: {e}"))?;
        let mut maps = Vec::new();
        for l in text.lines() {
            let l = parse_line(l).ok_or_else(|| format!("maps: cannot parse {l:?}"))?;
            let anon_private = l.inode == 0 && l.name.is_empty() && l.perms.ends_with('p');
            if !anon_private && l.name != "[heap]" && l.name != "[stack]" {
                maps.push(l);
            }
        }
        Ok(Leftovers { fds, maps })
    }

    /// Fails if an fd or a mapping is not as it was in `self` (the fd that
    /// reads /proc/self/fd is in both).
    fn check(&self) -> Result<(), String> {
        let now = Leftovers::read()?;
        if now == *self {
            return Ok(());
        }
        let new = |v: &[Line], w: &[Line]| -> Vec<String> {
            v.iter()
                .filter(|l| !w.contains(l))
                .map(|l| l.to_string())
                .collect()
        };
        let fds: Vec<&String> = now.fds.iter().filter(|f| !self.fds.contains(f)).collect();
        let gone: Vec<&String> = self.fds.iter().filter(|f| !now.fds.contains(f)).collect();
        Err(format!(
            "left behind: fds +{fds:?} -{gone:?}, maps +{:?} -{:?}",
            new(&now.maps, &self.maps),
            new(&self.maps, &now.maps)
        ))
    }
}

/// The file of `race_dup_truncate_punch_move_fork_*`.
#[derive(Clone, Copy)]
enum Backing {
    Memfd,
    /// A file on a tmpfs mount (/dev/shm, /tmp or /run, the first that is
    /// tmpfs), unlinked as soon as it is created.
    Tmpfs,
}

/// The truncation race's file, in pages: `TPAGES`, of which the first
/// `FLOOR` are never truncated away.
const TPAGES: usize = 32;
const FLOOR: usize = 16;

/// What a page of the file holds, as the thread that changed it last left
/// it: generation `gen`'s pattern, or zeroes (a hole punched, MADV_REMOVE,
/// a truncation). A page's lock is held across every change to it and
/// across every read of it that is compared exactly.
struct PageState {
    gen: u64,
    zero: bool,
}

/// The word at the start and at the end of page `p` in generation `gen`:
/// a tag, the page number and the generation, so that a word read without
/// the page's lock can be told to be some generation of this page (or zero)
/// rather than garbage or another page.
fn gen_word(p: usize, gen: u64) -> u64 {
    0x5a5a_u64 << 48 | (p as u64) << 32 | (gen & 0xffff_ffff)
}

fn plausible(p: usize, w: u64) -> bool {
    w == 0 || w >> 32 == gen_word(p, 0) >> 32
}

impl PageState {
    fn expected(&self, p: usize) -> u64 {
        if self.zero {
            0
        } else {
            gen_word(p, self.gen)
        }
    }
}

/// The first and last word of page `p` of the mapping at `addr`.
fn page_words(addr: usize, p: usize) -> (u64, u64) {
    let a = addr + p * page();
    (peek(a), peek(a + page() - 8))
}

/// What the truncation race's threads share.
struct Trunc {
    ctl: Control,
    pages: Vec<Mutex<PageState>>,
    fd: i32,
    /// A mapping of the whole file that stays where it is: the writes and
    /// MADV_REMOVE go through it.
    w: usize,
    /// The source of every DUP, moved to `alt` and back by `mover`.
    src: usize,
    alt: usize,
    /// Odd from just before the source is moved away until it is back.
    moving: AtomicU64,
    /// Operations per thread: writes, holes, truncations, moves and
    /// populates, forks.
    ops: [AtomicU64; 5],
}

impl Trunc {
    /// Locks pages `first..end`, in order (every thread that locks several
    /// does so in ascending order).
    fn lock(&self, first: usize, end: usize) -> Vec<std::sync::MutexGuard<'_, PageState>> {
        self.pages[first..end]
            .iter()
            .map(|m| m.lock().unwrap())
            .collect()
    }

    /// A DUP of the source where the kernel picks: the duplicate, or None
    /// for EFAULT while the source was moved away (`moving` odd before the
    /// call, or changed during it). Any other errno, or EFAULT while the
    /// source stayed mapped throughout, is an error.
    fn dup_source(&self) -> Result<Option<usize>, String> {
        let before = self.moving.load(Ordering::SeqCst);
        let r = dup(self.src, TPAGES * page(), None);
        let after = self.moving.load(Ordering::SeqCst);
        match r {
            Ok(d) => Ok(Some(d)),
            Err(libc::EFAULT) if before % 2 == 1 || before != after => Ok(None),
            Err(e) => Err(format!(
                "DUP of the source: {}{}",
                errname(e),
                if before == after && before % 2 == 0 {
                    " while the source stayed mapped throughout"
                } else {
                    ", want EFAULT (source moved away)"
                }
            )),
        }
    }

    /// Waits until the source is back in place (or the race stops).
    fn wait_for_source(&self) {
        while self.ctl.running() && self.moving.load(Ordering::SeqCst) % 2 == 1 {
            std::thread::yield_now();
        }
    }

    /// Every page of the mapping at `addr` compared exactly with what its
    /// page must hold, under the page's lock.
    fn check_all(&self, addr: usize, what: &str) -> Result<(), String> {
        for (p, m) in self.pages.iter().enumerate() {
            let st = m.lock().unwrap();
            let want = st.expected(p);
            let (a, b) = page_words(addr, p);
            if a != want || b != want {
                return Err(format!(
                    "page {p} of {what} holds {a:#x}/{b:#x}, want {want:#x} ({})",
                    if st.zero {
                        "zero: a hole was punched or the file truncated".to_string()
                    } else {
                        format!("generation {}", st.gen)
                    }
                ));
            }
        }
        Ok(())
    }
}

/// Writes a new generation into random pages through the fixed mapping.
fn trunc_writer(t: &Trunc, mut rng: Rng) {
    while t.ctl.running() {
        let p = rng.below(TPAGES);
        let mut st = t.pages[p].lock().unwrap();
        st.gen += 1;
        st.zero = false;
        let w = gen_word(p, st.gen);
        let a = t.w + p * page();
        poke(a, w);
        poke(a + page() - 8, w);
        drop(st);
        t.ops[0].fetch_add(1, Ordering::Relaxed);
        // Writes are cheap: leave the (two) CPUs to the DUPs.
        std::thread::yield_now();
    }
}

/// Holes of 1 to 4 random pages: fallocate(PUNCH_HOLE | KEEP_SIZE) or
/// MADV_REMOVE through the fixed mapping. Both zap the pages from every
/// mapping of the file (duplicates included); they read as zero after.
fn trunc_puncher(t: &Trunc, mut rng: Rng) {
    let p = page();
    while t.ctl.running() {
        let first = rng.below(TPAGES);
        let n = (1 + rng.below(4)).min(TPAGES - first);
        let mut locked = t.lock(first, first + n);
        let (what, r) = if rng.below(2) == 0 {
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            // SAFETY: fallocate() on the test's own file.
            let r = unsafe { libc::fallocate(t.fd, mode, (first * p) as i64, (n * p) as i64) };
            ("fallocate(PUNCH_HOLE)", r)
        } else {
            (
                "MADV_REMOVE",
                madvise(t.w + first * p, n * p, libc::MADV_REMOVE),
            )
        };
        if r != 0 {
            t.ctl.fail(format!(
                "{what} of pages {first}..{}: {}",
                first + n,
                errname(errno())
            ));
            return;
        }
        for st in &mut locked {
            st.zero = true;
        }
        drop(locked);
        t.ops[1].fetch_add(1, Ordering::Relaxed);
    }
}

/// ftruncate() down to `FLOOR` pages and back up: the pages above read as
/// zero after. Their locks are held throughout, so that nobody touches
/// them while they are beyond the end of the file (SIGBUS).
fn trunc_truncater(t: &Trunc, _rng: Rng) {
    let p = page();
    while t.ctl.running() {
        let mut locked = t.lock(FLOOR, TPAGES);
        for len in [FLOOR * p, TPAGES * p] {
            // SAFETY: ftruncate() of the test's own file.
            if unsafe { libc::ftruncate(t.fd, len as i64) } != 0 {
                t.ctl
                    .fail(format!("ftruncate to {len} bytes: {}", errname(errno())));
                return;
            }
        }
        for st in &mut locked {
            st.zero = true;
        }
        drop(locked);
        t.ops[2].fetch_add(1, Ordering::Relaxed);
        // Let the other threads have the upper pages' locks.
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// The source mapping moved (MREMAP_MAYMOVE | MREMAP_FIXED) to `alt` and
/// back, or its pages populated (MADV_POPULATE_READ), so that a DUP has
/// entries to copy while holes are punched and the file truncated. Pages
/// above `FLOOR` may be beyond the end of the file: EFAULT, and only there.
fn trunc_mover(t: &Trunc, mut rng: Rng) {
    let (p, len) = (page(), TPAGES * page());
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    let remap = |from: usize, to: usize| {
        // SAFETY: moves the test's own source mapping to its own
        // reservation; nothing holds a reference into either.
        unsafe { libc::mremap(from as *mut libc::c_void, len, len, flags, to) }
    };
    while t.ctl.running() {
        if rng.below(2) == 0 {
            t.moving.fetch_add(1, Ordering::SeqCst);
            for (from, to) in [(t.src, t.alt), (t.alt, t.src)] {
                if remap(from, to) as usize != to {
                    t.ctl.fail(format!(
                        "mremap move of the source {from:#x} -> {to:#x}: {}",
                        errname(errno())
                    ));
                    return;
                }
            }
            t.moving.fetch_add(1, Ordering::SeqCst);
        } else {
            let low = madvise(t.src, FLOOR * p, libc::MADV_POPULATE_READ);
            let low_errno = errno();
            let high = madvise(t.src + FLOOR * p, len - FLOOR * p, libc::MADV_POPULATE_READ);
            let high_errno = errno();
            if low != 0 || (high != 0 && high_errno != libc::EFAULT) {
                t.ctl.fail(format!(
                    "MADV_POPULATE_READ of the source: {}",
                    errname(if low != 0 { low_errno } else { high_errno })
                ));
                return;
            }
        }
        t.ops[3].fetch_add(1, Ordering::Relaxed);
    }
}

/// A DUP of the source, then fork(): the child reads the pages below
/// `FLOOR` through the duplicate (its copy of it) and exits 1 on a word
/// that is no generation of its page and not zero; the parent waits and
/// unmaps the duplicate.
fn trunc_forker(t: &Trunc, _rng: Rng) {
    while t.ctl.running() {
        let d = match t.dup_source() {
            Ok(Some(d)) => d,
            Ok(None) => {
                t.wait_for_source();
                continue;
            }
            Err(e) => return t.ctl.fail(format!("fork thread: {e}")),
        };
        // SAFETY: the child only reads memory and calls _exit(): nothing
        // that could wait for a lock another thread held at the fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let bad = (0..FLOOR).any(|p| {
                let (a, b) = page_words(d, p);
                !plausible(p, a) || !plausible(p, b)
            });
            // SAFETY: leaving the child without the parent's destructors.
            unsafe { libc::_exit(i32::from(bad)) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let waited = pid > 0 && unsafe { libc::waitpid(pid, &mut status, 0) } == pid;
        munmap(d, TPAGES * page());
        if !waited {
            return t.ctl.fail(format!("fork or waitpid: {}", errname(errno())));
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            return t.ctl.fail(format!(
                "the forked child read a page below the floor through a duplicate that holds \
                 neither a generation of it nor zero, or died (wait status {status:#x})"
            ));
        }
        t.ops[4].fetch_add(1, Ordering::Relaxed);
    }
}

/// The test's file: a memfd, or an unlinked file on tmpfs (None: no tmpfs).
fn trunc_file(backing: Backing) -> Result<Option<(OwnedFd, String)>, String> {
    let len = TPAGES * page();
    match backing {
        Backing::Memfd => Ok(Some((memfd(len)?, "memfd".into()))),
        Backing::Tmpfs => {
            let dirs = ["/dev/shm", "/tmp", "/run"];
            let Some(dir) = dirs.iter().find(|d| {
                nix::sys::statfs::statfs(**d)
                    .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
            }) else {
                return Ok(None);
            };
            let path = format!("{dir}/mremap-dup-stress-{}", std::process::id());
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| format!("{path}: {e}"))?;
            fs::remove_file(&path).map_err(|e| format!("unlink {path}: {e}"))?;
            f.set_len(len as u64).map_err(|e| format!("{path}: {e}"))?;
            Ok(Some((f.into(), format!("tmpfs file {path}"))))
        }
    }
}

/// DUP racing hole punching, truncation, moves of the source and fork(),
/// on a memfd or a tmpfs file. The main thread DUPs the source where the
/// kernel picks and compares every page of the duplicate exactly with what
/// it must hold (under the page's lock: the generation last written, or
/// zero after a hole or a truncation, never a page a hole or a truncation
/// removed); EFAULT only while the source was moved away. The other
/// threads: writes of new generations, holes (fallocate, MADV_REMOVE),
/// ftruncate() down to `FLOOR` and up, the source moved away and back or
/// populated, and DUP + fork() with the child reading through its copy of
/// the duplicate. Afterwards every page is checked once more, and no fd or
/// mapping may be left.
fn race_truncate(seconds: u64, seed: u64, backing: Backing) -> Result<String, String> {
    let (p, len) = (page(), TPAGES * page());
    let leftovers = Leftovers::read()?;
    let Some((fd, what)) = trunc_file(backing)? else {
        return Ok("SKIP no tmpfs among /dev/shm, /tmp, /run".into());
    };
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let w = mmap(0, len, rw, libc::MAP_SHARED, fd.as_raw_fd(), 0)
        .map_err(|e| format!("mmap {what}: {}", errname(e)))?;
    // The source and the place it moves to, below 2 GiB: a duplicate the
    // kernel places (top-down from mmap_base) never lands in the hole the
    // moved source leaves, which the move back would replace.
    let arena = reserve_at(0, 2 * len, libc::PROT_NONE, libc::MAP_32BIT)?;
    let fixed = libc::MAP_SHARED | libc::MAP_FIXED;
    let src = mmap(arena, len, rw, fixed, fd.as_raw_fd(), 0)
        .map_err(|e| format!("mmap {what}: {}", errname(e)))?;
    let t = Trunc {
        ctl: Control::new(),
        pages: (0..TPAGES)
            .map(|_| {
                Mutex::new(PageState {
                    gen: 1,
                    zero: false,
                })
            })
            .collect(),
        fd: fd.as_raw_fd(),
        w,
        src,
        alt: arena + len,
        moving: AtomicU64::new(0),
        ops: Default::default(),
    };
    for q in 0..TPAGES {
        poke(w + q * p, gen_word(q, 1));
        poke(w + q * p + p - 8, gen_word(q, 1));
    }
    let threads: [fn(&Trunc, Rng); 5] = [
        trunc_writer,
        trunc_puncher,
        trunc_truncater,
        trunc_mover,
        trunc_forker,
    ];
    let (mut dups, mut efaults) = (0u64, 0u64);
    std::thread::scope(|s| {
        let handles: Vec<_> = threads
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let t = &t;
                s.spawn(move || f(t, Rng::new(seed ^ ((i as u64 + 1) << 32))))
            })
            .collect();
        let start = Instant::now();
        while t.ctl.running() && start.elapsed() < Duration::from_secs(seconds) {
            match t.dup_source() {
                Ok(Some(d)) => {
                    let r = t.check_all(d, "a duplicate");
                    munmap(d, len);
                    match r {
                        Ok(()) => dups += 1,
                        Err(e) => t.ctl.fail(e),
                    }
                }
                Ok(None) => {
                    efaults += 1;
                    t.wait_for_source();
                }
                Err(e) => t.ctl.fail(e),
            }
        }
        t.ctl.stop.store(true, Ordering::SeqCst);
        for h in handles {
            if h.join().is_err() {
                t.ctl.fail("a thread panicked".into());
            }
        }
    });
    let ops: Vec<u64> = t.ops.iter().map(|o| o.load(Ordering::Relaxed)).collect();
    let stats = format!(
        "{what}: {dups} DUPs checked, {efaults} EFAULT while the source was moved away; \
         {} writes, {} holes, {} truncations, {} moves or populates, {} DUP+fork",
        ops[0], ops[1], ops[2], ops[3], ops[4]
    );
    if let Some(e) = t.ctl.error() {
        return Err(format!("{e} (seed {seed}; {stats})"));
    }
    t.check_all(w, "the file's fixed mapping")
        .map_err(|e| format!("after the race: {e}"))?;
    if dups == 0 || ops[4] == 0 {
        return Err(format!("nothing was checked: {stats}"));
    }
    munmap(w, len);
    munmap(arena, 2 * len);
    drop(fd);
    leftovers.check()?;
    Ok(format!("{stats} in {seconds} s (seed {seed})"))
}

/// Mounts debugfs if it is not (the guest's init may not have).
fn mount_debugfs() {
    if fs::read_dir(DEBUGFS).is_ok_and(|mut d| d.next().is_some()) {
        return;
    }
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

/// Shmem pages in use, in kB (where vgem's buffers live).
fn shmem_kb() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("Shmem:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The DRM files open on the vgem device: the lines of debugfs
/// `dri/N/clients` after its header (None without debugfs).
fn vgem_clients() -> Option<usize> {
    for e in fs::read_dir(format!("{DEBUGFS}/dri")).ok()?.flatten() {
        let name = fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if name.starts_with("vgem ") {
            let clients = fs::read_to_string(e.path().join("clients")).ok()?;
            return Some(clients.lines().count().saturating_sub(1));
        }
    }
    None
}

/// The vgem race's buffer: 512 x 512 x 32 bpp, 1 MiB, so that one buffer
/// left behind stands out in /proc/meminfo's Shmem.
const VGEM_SIDE: u32 = 512;

/// One round of the vgem race: a fresh card fd, buffer and mapping, which
/// the closer thread tears down while the main thread DUPs the mapping.
struct VgemRound {
    card: OwnedFd,
    handle: u32,
    addr: usize,
    len: usize,
    /// The teardown's order, 0..3 (see `vgem_closer`).
    order: usize,
    /// Busy-wait before the teardown.
    delay: usize,
}

struct Vgem {
    ctl: Control,
    round: Mutex<Option<VgemRound>>,
    /// Start and end of a round, for both threads.
    barrier: std::sync::Barrier,
    /// Set just before the original is unmapped.
    unmapping: AtomicBool,
}

fn spin(n: usize) {
    for _ in 0..n {
        std::hint::spin_loop();
    }
}

/// Tears each round's buffer down: DRM_IOCTL_GEM_CLOSE of the handle,
/// close() of the card fd (after the GEM_CLOSE, which needs it) and
/// munmap() of the original, in one of the three orders that allows.
fn vgem_closer(v: &Vgem) {
    loop {
        v.barrier.wait();
        let Some(r) = v.round.lock().unwrap().take() else {
            break;
        };
        spin(r.delay);
        let orders = [
            ["gem_close", "close", "munmap"],
            ["gem_close", "munmap", "close"],
            ["munmap", "gem_close", "close"],
        ];
        let mut card = Some(r.card);
        for op in orders[r.order] {
            let res = match op {
                "gem_close" => {
                    let fd = card.as_ref().expect("closed after GEM_CLOSE").as_fd();
                    drm_ffi::gem::close(fd, r.handle)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                "close" => {
                    let fd = std::os::fd::IntoRawFd::into_raw_fd(card.take().expect("closed once"));
                    // SAFETY: closing the fd this round owned, once.
                    match unsafe { libc::close(fd) } {
                        0 => Ok(()),
                        _ => Err(errname(errno())),
                    }
                }
                _ => {
                    v.unmapping.store(true, Ordering::SeqCst);
                    match munmap(r.addr, r.len) {
                        0 => Ok(()),
                        _ => Err(errname(errno())),
                    }
                }
            };
            if let Err(e) = res {
                v.ctl.fail(format!("{op} of the round's buffer: {e}"));
            }
        }
        v.barrier.wait();
    }
}

/// DUP of a vgem dumb buffer's whole mapping (the kernel picks the
/// address) racing GEM_CLOSE of its handle, close() of the card fd and
/// munmap() of the original, a fresh buffer each round. A duplicate made
/// before the munmap holds the buffer: once handle, fd and original are
/// gone it must still read the buffer's contents and take writes; a DUP
/// after the munmap fails with EFAULT, nothing else. Afterwards every
/// buffer is freed (/proc/meminfo Shmem back within half a buffer), no DRM
/// file is left open on vgem (debugfs `clients`), and no fd or mapping of
/// the process is left.
fn race_vgem(seconds: u64, seed: u64) -> Result<String, String> {
    mount_debugfs();
    if let Err(e) = card::open_card("vgem") {
        return Ok(format!("SKIP {e} (CONFIG_DRM_VGEM)"));
    }
    let leftovers = Leftovers::read()?;
    let (shmem0, clients0) = (shmem_kb(), vgem_clients());
    let v = Vgem {
        ctl: Control::new(),
        round: Mutex::new(None),
        barrier: std::sync::Barrier::new(2),
        unmapping: AtomicBool::new(false),
    };
    let mut rng = Rng::new(seed);
    let (mut rounds, mut dups, mut efaults, mut bytes) = (0u64, 0u64, 0u64, 0usize);
    std::thread::scope(|s| {
        let closer = s.spawn(|| vgem_closer(&v));
        let start = Instant::now();
        while v.ctl.running() && start.elapsed() < Duration::from_secs(seconds) {
            let round = || -> Result<VgemRound, String> {
                let card = card::open_card("vgem")?;
                let (handle, addr, len) = card::map_dumb(&card, VGEM_SIDE, VGEM_SIDE)?;
                Ok(VgemRound {
                    card,
                    handle,
                    addr,
                    len,
                    order: 0,
                    delay: 0,
                })
            };
            let mut r = match round() {
                Ok(r) => r,
                Err(e) => {
                    v.ctl.fail(e);
                    break;
                }
            };
            let pattern = seed ^ (rounds << 20);
            let pages = r.len / page();
            fill(r.addr, 0..pages, pattern);
            let (src, len) = (r.addr, r.len);
            r.order = rng.below(3);
            r.delay = rng.below(20_000);
            let delay = rng.below(20_000);
            v.unmapping.store(false, Ordering::SeqCst);
            *v.round.lock().unwrap() = Some(r);
            v.barrier.wait();
            spin(delay);
            let res = dup(src, len, None);
            let unmapped = v.unmapping.load(Ordering::SeqCst);
            v.barrier.wait();
            rounds += 1;
            bytes = len;
            match res {
                Ok(d) => {
                    let bad = mismatch(d, 0..pages, pattern).map(|p| {
                        format!("page {p} of a duplicate does not hold the buffer's contents after its handle, fd and original went")
                    });
                    let bad = bad.or_else(|| {
                        fill(d, 0..pages, pattern + 1);
                        mismatch(d, 0..pages, pattern + 1).map(|p| {
                            format!(
                                "page {p} of a duplicate does not keep what was written through it"
                            )
                        })
                    });
                    munmap(d, len);
                    match bad {
                        Some(m) => v.ctl.fail(m),
                        None => dups += 1,
                    }
                }
                Err(libc::EFAULT) if unmapped => efaults += 1,
                Err(e) => v.ctl.fail(format!(
                    "DUP of the buffer's mapping: {}{}",
                    errname(e),
                    if unmapped {
                        ", want EFAULT (original unmapped)"
                    } else {
                        " before the original was unmapped"
                    }
                )),
            }
        }
        v.ctl.stop.store(true, Ordering::SeqCst);
        v.barrier.wait();
        if closer.join().is_err() {
            v.ctl.fail("the closer thread panicked".into());
        }
    });
    let stats = format!("{rounds} rounds: {dups} duplicates outlived handle, fd and original, {efaults} EFAULT after the munmap");
    if let Some(e) = v.ctl.error() {
        return Err(format!("{e} (seed {seed}; {stats})"));
    }
    if dups == 0 {
        return Err(format!("no DUP won the race: {stats}"));
    }
    // The buffers are freed by the last munmap(); give deferred fput()s
    // a moment.
    let mut freed = String::new();
    for _ in 0..50 {
        let (shmem, clients) = (shmem_kb(), vgem_clients());
        let shmem_back = match (shmem0, shmem) {
            (Some(a), Some(b)) => b < a + (bytes as u64 / 1024) / 2,
            _ => true,
        };
        freed =
            format!("Shmem {shmem0:?} -> {shmem:?} kB, vgem clients {clients0:?} -> {clients:?}");
        if shmem_back && clients == clients0 {
            freed.clear();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !freed.is_empty() {
        return Err(format!(
            "buffers or DRM files left after the race: {freed} ({stats})"
        ));
    }
    leftovers.check()?;
    Ok(format!(
        "{stats} in {seconds} s; Shmem and vgem clients back as before (seed {seed})"
    ))
}

/// What the QXL eviction race's threads share.
struct Qxl {
    ctl: Control,
    card: OwnedFd,
    /// Pages of each BO: more than half of VRAM, so that a second BO
    /// evicts the first.
    pages: usize,
    /// Whether the evictor runs this round (false ends it).
    go: AtomicBool,
    /// Start and end of a round, for both threads.
    barrier: std::sync::Barrier,
    /// Times of the race, from here.
    epoch: Instant,
    /// When the evictor's allocation started and ended this round, which
    /// evicts the main thread's BO (ns from `epoch`).
    alloc_start: AtomicU64,
    alloc_end: AtomicU64,
    /// The evictor's BO of the round (handle, address), filled with
    /// [`QXL_OTHER`]; the main thread unmaps and closes it.
    other: Mutex<Option<(u32, usize)>>,
}

/// The pattern the evictor writes into its BO, which takes the VRAM the
/// duplicated BO had: a stale entry to that VRAM reads it.
const QXL_OTHER: u64 = 0x0e71c7ed;

/// Maps `pages` pages of the QXL BO at `off` on `card`, shared, where the
/// kernel picks.
fn qxl_map(card: &OwnedFd, pages: usize, off: u64) -> Result<usize, String> {
    mmap(
        0,
        pages * page(),
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
        card.as_raw_fd(),
        off as usize,
    )
    .map_err(|e| format!("mmap of a QXL VRAM BO: {}", errname(e)))
}

/// Maps the BO `(handle, offset)` just allocated; closes its handle if that
/// fails.
fn qxl_map_bo(card: &OwnedFd, pages: usize, (h, off): (u32, u64)) -> Result<(u32, usize), String> {
    qxl_map(card, pages, off).map(|a| (h, a)).inspect_err(|_| {
        let _ = drm_ffi::gem::close(card.as_fd(), h);
    })
}

fn ns_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Each round: a BO more than half of VRAM's size, allocated (and so
/// evicting) while the main thread DUPs the other BO's mapping.
fn qxl_evictor(q: &Qxl) {
    loop {
        q.barrier.wait();
        if !q.go.load(Ordering::SeqCst) {
            break;
        }
        q.alloc_start.store(ns_since(q.epoch), Ordering::SeqCst);
        let bo = card::qxl_alloc_vram(&q.card, q.pages * page());
        q.alloc_end.store(ns_since(q.epoch), Ordering::SeqCst);
        match bo.and_then(|b| qxl_map_bo(&q.card, q.pages, b)) {
            Ok((h, addr)) => {
                fill(addr, 0..q.pages, QXL_OTHER);
                *q.other.lock().unwrap() = Some((h, addr));
            }
            Err(e) => q.ctl.fail(format!("the evicting BO: {e}")),
        }
        q.barrier.wait();
    }
}

/// DUP of a QXL VRAM BO's whole mapping (VM_PFNMAP | VM_IO over the PCI BAR,
/// every page present) racing TTM's eviction of the BO, which another
/// thread's allocation of a second BO more than half of VRAM's size forces:
/// TTM moves the BO to system memory and zaps its mappings through the
/// file's i_mmap tree (ttm_bo_unmap_virtual()), the duplicate's included
/// once copy_vma() linked it, while MREMAP_DUP copies the original's
/// entries. The second BO takes the VRAM and is filled with another
/// pattern. A fresh BO each round. Each duplicate must read the BO's own
/// contents on every page (an entry copied to the VRAM after the zap would
/// read the other BO's pattern) and share writes with the original.
/// Afterwards QXL lists as many buffer objects as before (debugfs
/// `qxl_buffers`), and no fd or mapping of the process is left.
fn race_qxl_eviction(seconds: u64, seed: u64) -> Result<String, String> {
    mount_debugfs();
    let leftovers = Leftovers::read()?;
    let card = match card::open_card("qxl") {
        Ok(c) => c,
        Err(e) => return Ok(format!("SKIP {e} (CONFIG_DRM_QXL)")),
    };
    let (total, _) = card::qxl_vram_pages()?;
    let bos0 = card::qxl_buffers();
    let q = Qxl {
        ctl: Control::new(),
        card,
        pages: total / 2 + 1,
        go: AtomicBool::new(true),
        barrier: std::sync::Barrier::new(2),
        epoch: Instant::now(),
        alloc_start: AtomicU64::new(0),
        alloc_end: AtomicU64::new(0),
        other: Mutex::new(None),
    };
    let (pages, len) = (q.pages, q.pages * page());
    let mut rng = Rng::new(seed);
    // Rounds whose DUP ended before the evicting allocation started, began
    // after it ended, or ran while it did; the last allocation's duration,
    // over which the DUP's start is spread.
    let (mut rounds, mut before, mut after, mut during) = (0u64, 0u64, 0u64, 0u64);
    let mut alloc_ns = 1_000_000u64;
    std::thread::scope(|s| {
        let evictor = s.spawn(|| qxl_evictor(&q));
        let start = Instant::now();
        while q.ctl.running() && start.elapsed() < Duration::from_secs(seconds) {
            let pattern = seed ^ (rounds << 24);
            let bo = card::qxl_alloc_vram(&q.card, len).and_then(|b| qxl_map_bo(&q.card, pages, b));
            let (handle, orig) = match bo {
                Ok(b) => b,
                Err(e) => {
                    q.ctl.fail(format!("the duplicated BO: {e}"));
                    break;
                }
            };
            fill(orig, 0..pages, pattern);
            let at = ns_since(q.epoch) + rng.below(alloc_ns as usize + 1) as u64;
            q.barrier.wait();
            while ns_since(q.epoch) < at {
                std::hint::spin_loop();
            }
            let dup_start = ns_since(q.epoch);
            let res = dup(orig, len, None);
            let dup_end = ns_since(q.epoch);
            q.barrier.wait();
            rounds += 1;
            let (a0, a1) = (
                q.alloc_start.load(Ordering::SeqCst),
                q.alloc_end.load(Ordering::SeqCst),
            );
            alloc_ns = a1.saturating_sub(a0).max(1);
            if dup_end < a0 {
                before += 1;
            } else if dup_start > a1 {
                after += 1;
            } else {
                during += 1;
            }
            let bad = match res {
                Ok(d) => {
                    let bad = mismatch(d, 0..pages, pattern)
                        .map(|p| format!("page {p} of the duplicate does not hold the BO's contents after its eviction"))
                        .or_else(|| {
                            mismatch(orig, 0..pages, pattern).map(|p| {
                                format!("page {p} of the original does not hold the BO's contents after its eviction")
                            })
                        })
                        .or_else(|| {
                            fill(d, 0..pages, pattern + 1);
                            mismatch(orig, 0..pages, pattern + 1).map(|p| {
                                format!("page {p}: a write through the duplicate is not seen through the original")
                            })
                        });
                    munmap(d, len);
                    bad
                }
                Err(e) => Some(format!("DUP of the BO's mapping: {}", errname(e))),
            };
            munmap(orig, len);
            let _ = drm_ffi::gem::close(q.card.as_fd(), handle);
            if let Some((h, a)) = q.other.lock().unwrap().take() {
                munmap(a, len);
                let _ = drm_ffi::gem::close(q.card.as_fd(), h);
            }
            if let Some(m) = bad {
                q.ctl.fail(m);
            }
        }
        q.go.store(false, Ordering::SeqCst);
        q.barrier.wait();
        if evictor.join().is_err() {
            q.ctl.fail("the evictor thread panicked".into());
        }
    });
    let stats = format!(
        "{rounds} rounds of {len} bytes ({total} pages of VRAM): DUP before the evicting allocation {before}, during it {during}, after it {after}"
    );
    if let Some(e) = q.ctl.error() {
        return Err(format!("{e} (seed {seed}; {stats})"));
    }
    if rounds == 0 {
        return Err(format!("no round ran: {stats}"));
    }
    // The race's BOs evict other clients' BOs (fbdev's) for good, so VRAM
    // use may go down; its BOs are counted instead.
    let bos = card::qxl_buffers();
    if bos != bos0 {
        return Err(format!(
            "QXL buffer objects {bos0:?} -> {bos:?} after the race ({stats})"
        ));
    }
    drop(q);
    leftovers.check()?;
    Ok(format!(
        "{stats} in {seconds} s; QXL buffer objects back to {bos0:?} (seed {seed})"
    ))
}

/// The writeback race's source, in pages, mapped at file offset 1 (page 0
/// is the neighbour's): eight PMDs, source and duplicate PMD-aligned, so the
/// copy takes eight extents, all with present entries.
const WB_PAGES: usize = 8 * 512;
/// Its pages that are written and written back each round: in the last
/// extent, which the copy reaches last.
const WB_FIRST: usize = 7 * 512;
const WB_DIRTY: usize = 64;
/// Mappings of the source's file range made before the source, which an rmap
/// walk visits between the merged duplicate and the source: the writeback's
/// walks then take most of its time, most of it between those two visits.
const WB_FILLERS: usize = 1000;

/// DUP of an ext4 file's mapping racing its writeback, with a duplicate
/// that merges with a neighbour mapping of the file's previous page: the
/// merged VMA starts at a lower file offset than the source, so rmap walks
/// (the file's i_mmap tree, in file offset order) visit it before the
/// source, and `WB_FILLERS` other mappings of the range in between. The
/// writeback (fsync() in another thread) write-protects and cleans each
/// dirty folio's entries through such a walk (folio_mkclean()) before it
/// writes the folio out. MREMAP_DUP copies the source's entries under the
/// file's i_mmap_rwsem: a walk then sees the duplicate's copied entry, or
/// the copy sees the entry the walk cleaned. Without that lock, a walk that
/// visited the duplicate before the copy and the source after it leaves the
/// duplicate a writable entry of a clean folio, and what is written through
/// it never reaches the file.
///
/// Every page of the source is present. Each round: `WB_DIRTY` pages of its
/// last extent are written (dirty), the writeback starts, the DUP|FIXED next
/// to the neighbour starts at a random point of the last writeback's
/// duration. The copy reaches the last extent after seven others, while the
/// writeback walks one of its folios, past the duplicate: the window the
/// lock closes. Then a new word is written through the duplicate into those
/// pages, fsync(), and the file is read with O_DIRECT (from the disk, not
/// the page cache): every page must hold that word.
fn race_writeback(seconds: u64, seed: u64) -> Result<String, String> {
    let leftovers = Leftovers::read()?;
    let (p, len) = (page(), WB_PAGES * page());
    let fs = match ext4::Ext4::mount("stress-ext4") {
        Ok(fs) => fs,
        Err(e) => return Ok(format!("SKIP no ext4 on a loop device: {e}")),
    };
    let path = fs.path("file");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))?;
    file.set_len((p + len) as u64)
        .map_err(|e| format!("{path}: {e}"))?;
    let direct = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|e| format!("{path} (O_DIRECT): {e}"))?;
    let fd = file.as_raw_fd();
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let shared = |addr: usize, len: usize, off: usize, flags: i32| {
        mmap(addr, len, rw, libc::MAP_SHARED | flags, fd, off)
            .map_err(|e| format!("mmap {path}: {}", errname(e)))
    };
    let mut fillers = Vec::new();
    for _ in 0..WB_FILLERS {
        fillers.push(shared(0, len, p, 0)?);
    }
    // Made after the fillers: among mappings of the same offset, the i_mmap
    // tree keeps the order of insertion, so walks visit the source last.
    // The source 2 MiB-aligned, then a gap ending in the neighbour's page,
    // then the destination, 2 MiB-aligned.
    const PMD: usize = 2 << 20;
    let arena = reserve_at(0, 2 * len + 2 * PMD, libc::PROT_NONE, libc::MAP_32BIT)?;
    let base = (arena + PMD - 1) & !(PMD - 1);
    let src = shared(base, len, p, libc::MAP_FIXED)?;
    let dst = base + len + PMD;
    let nb = shared(dst - p, p, 0, libc::MAP_FIXED)?;
    // Every page present (read faults: clean, read-only entries).
    for q in 0..WB_PAGES {
        peek(src + q * p);
    }
    let buf = reserve_at(0, WB_DIRTY * p, rw, 0)?;
    let mut rng = Rng::new(seed);
    let (mut rounds, mut wb_ns) = (0u64, 1_000_000u64);
    let ctl = Control::new();
    let barrier = std::sync::Barrier::new(2);
    let go = AtomicBool::new(true);
    let (wb_start, wb_end) = (AtomicU64::new(0), AtomicU64::new(0));
    let epoch = Instant::now();
    std::thread::scope(|s| {
        let writeback = s.spawn(|| loop {
            barrier.wait();
            if !go.load(Ordering::SeqCst) {
                break;
            }
            wb_start.store(ns_since(epoch), Ordering::SeqCst);
            // SAFETY: fsync of an open file.
            if unsafe { libc::fsync(fd) } != 0 {
                ctl.fail(format!("fsync (writeback thread): {}", errname(errno())));
            }
            wb_end.store(ns_since(epoch), Ordering::SeqCst);
            barrier.wait();
        });
        let start = Instant::now();
        while ctl.running() && start.elapsed() < Duration::from_secs(seconds) {
            let gen = seed ^ (rounds << 24);
            fill(src, WB_FIRST..WB_FIRST + WB_DIRTY, gen);
            let at = ns_since(epoch) + rng.below(wb_ns as usize + 1) as u64;
            barrier.wait();
            while ns_since(epoch) < at {
                std::hint::spin_loop();
            }
            let res = dup(src, len, Some(dst));
            barrier.wait();
            rounds += 1;
            wb_ns = wb_end
                .load(Ordering::SeqCst)
                .saturating_sub(wb_start.load(Ordering::SeqCst))
                .max(1);
            if let Err(e) = res {
                ctl.fail(format!("DUP|FIXED next to the neighbour: {}", errname(e)));
                break;
            }
            if let Err(e) = wb_check_round(nb, dst, src, fd, &direct, buf, gen + 1) {
                ctl.fail(format!("round {rounds}: {e}"));
            }
            // Back to the neighbour alone (the merged VMA is cut again).
            if reserve_at(dst, len, libc::PROT_NONE, libc::MAP_FIXED).is_err() {
                ctl.fail("mmap over the duplicate failed".into());
            }
        }
        go.store(false, Ordering::SeqCst);
        barrier.wait();
        if writeback.join().is_err() {
            ctl.fail("the writeback thread panicked".into());
        }
    });
    munmap(buf, WB_DIRTY * p);
    munmap(arena, 2 * len + 2 * PMD);
    for f in fillers {
        munmap(f, len);
    }
    drop(direct);
    drop(file);
    // umount fails if a reference to the file is left (a duplicate's VMA
    // that was never freed).
    let umount = fs.unmount();
    let stats =
        format!("{rounds} rounds of {WB_DIRTY} of {WB_PAGES} pages, last writeback {wb_ns} ns");
    if let Some(e) = ctl.error() {
        return Err(format!("{e} (seed {seed}; {stats})"));
    }
    umount.map_err(|e| format!("after the race: {e}"))?;
    if rounds == 0 {
        return Err(format!("no round ran: {stats}"));
    }
    leftovers.check()?;
    Ok(format!(
        "{stats}, {WB_FILLERS} fillers, in {seconds} s (seed {seed})"
    ))
}

/// After a round's DUP: the duplicate merged with the neighbour and holds
/// the source's contents; `gen` written through it reaches the disk.
fn wb_check_round(
    nb: usize,
    dst: usize,
    src: usize,
    fd: i32,
    direct: &File,
    buf: usize,
    gen: u64,
) -> Result<(), String> {
    let len = WB_PAGES * page();
    let maps = Maps::read(nb, dst + len)?;
    if maps.inside.len() != 1 || maps.inside[0].start != nb || maps.inside[0].end != dst + len {
        return Err(format!(
            "the duplicate did not merge with the neighbour: {:?}",
            maps.inside
        ));
    }
    let dirty = WB_FIRST..WB_FIRST + WB_DIRTY;
    if let Some(q) = mismatch(dst, dirty.clone(), gen - 1) {
        return Err(format!(
            "page {q} of the duplicate does not hold the source's contents"
        ));
    }
    fill(dst, dirty.clone(), gen);
    if let Some(q) = mismatch(src, dirty.clone(), gen) {
        return Err(format!(
            "page {q}: a write through the duplicate is not seen through the source"
        ));
    }
    // SAFETY: fsync of an open file.
    if unsafe { libc::fsync(fd) } != 0 {
        return Err(format!("fsync: {}", errname(errno())));
    }
    // The written pages from the disk: file offset 1 + WB_FIRST on.
    let want = WB_DIRTY * page();
    // SAFETY: buf is this process's writable mapping of WB_DIRTY pages, page
    // aligned as O_DIRECT needs.
    let n = unsafe {
        libc::pread(
            direct.as_raw_fd(),
            buf as *mut libc::c_void,
            want,
            ((1 + WB_FIRST) * page()) as i64,
        )
    };
    if n != want as isize {
        return Err(format!("O_DIRECT read: {n} bytes ({})", errname(errno())));
    }
    match dirty.clone().find(|&q| peek(buf + (q - WB_FIRST) * page()) != word(gen, q)) {
        Some(q) => Err(format!(
            "page {q}: the word written through the duplicate is not in the file after fsync() (read {:#x}): the duplicate kept a writable entry of a folio the writeback had cleaned",
            peek(buf + (q - WB_FIRST) * page())
        )),
        None => Ok(()),
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
        (
            "fail_nth_page_tables_freed",
            Box::new(|| page_tables_freed(false)),
        ),
        (
            "fail_nth_and_later_page_tables_freed",
            Box::new(|| page_tables_freed(true)),
        ),
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
    tests.push((
        "race_dup_truncate_punch_move_fork_memfd",
        Box::new(move || race_truncate(seconds, seed, Backing::Memfd)),
    ));
    tests.push((
        "race_dup_truncate_punch_move_fork_tmpfs",
        Box::new(move || race_truncate(seconds, seed, Backing::Tmpfs)),
    ));
    tests.push((
        "race_dup_vgem_handle_close",
        Box::new(move || race_vgem(seconds, seed)),
    ));
    tests.push((
        "race_dup_qxl_vram_eviction",
        Box::new(move || race_qxl_eviction(seconds, seed)),
    ));
    tests.push((
        "race_dup_ext4_writeback_merged",
        Box::new(move || race_writeback(seconds, seed)),
    ));
    let keep = |name: &str| only.is_none() || only.is_some_and(|w| name.contains(w.as_str()));
    let injection = tests[..injection].iter().filter(|t| keep(t.0)).count();
    tests.retain(|t| keep(t.0));

    println!("KTAP version 1");
    println!("1..{}", tests.len());
    let supported = mremap_dup::is_supported();
    let mut fi = None;
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (i, (name, body)) in tests.into_iter().enumerate() {
        let n = i + 1;
        if !supported {
            skipped += 1;
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
            Ok(msg) if msg.starts_with("SKIP") => {
                skipped += 1;
                println!("ok {n} {name} # {msg}");
            }
            Ok(msg) => {
                passed += 1;
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
    // As selftests/src/harness.rs closes its KTAP: parse-results.py checks
    // it against the results above.
    println!("# Totals: pass:{passed} fail:{failed} skip:{skipped}");
    std::process::exit(i32::from(failed > 0));
}
