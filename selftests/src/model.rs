// SPDX-License-Identifier: GPL-2.0

//! A seeded random-operation model of MREMAP_DUP, run inside the guest.
//! Prints KTAP: test 1 is the run, test 2 the leak check after it (with
//! `--jobs N`: tests 1 to N the workers' runs, N + 1 the leak check).
//!
//! Usage: `mremap-dup-model [--seed N] [--ops N] [--seconds S] [--pages N]
//! [--check-every N] [--rules auto|linear|whole] [--no-dup] [--jobs N]
//! [--verbose]`
//!
//! - `--seed N`: the run's seed (printed; default: from the clock). The same
//!   seed replays the same operations with the same arguments.
//! - `--ops N`, `--seconds S`: stop after N operations or S seconds,
//!   whichever comes first (default: 20 s, no op limit).
//! - `--pages N`: the arena's size (default 96 pages, plus 8 pages of margin
//!   on either side that edge-case ranges reach into).
//! - `--check-every N`: compare the contents of every readable page of the
//!   arena with the model every N operations (default 16; /proc/self/maps
//!   is compared after every operation).
//! - `--rules linear|whole`: whether the test device's `FAULT_PFN` flavour
//!   (`VM_LINEAR_PGOFF`) may be duplicated in part (`linear`, the series
//!   now) or whole only (`whole`, the first series). `auto` (default): by
//!   the test device's flavour count (6 or more, FAULT_REL among them:
//!   `linear`).
//! - `--no-dup`: no MREMAP_DUP calls (to check the rest of the model on a
//!   kernel without it).
//! - `--jobs N`: N worker processes at once, each with its own arena and
//!   objects, seeds `seed` to `seed + N - 1`, `--ops` shared out between
//!   them and `--seconds` bounding each; their output is printed in
//!   order. Only worker 1 maps the test device, whose memory is one for
//!   every opener. The leak check is taken before the first starts and after the
//!   last ends. A worker killed by a signal is a failed test.
//!
//! Soak by hand, in a guest booted as for the test run (the test device
//! loaded with its `pat_base`, debugfs mounted, vgem present):
//!
//! ```text
//! mremap-dup-model --seed $RANDOM --ops 1000000 --seconds 100000
//! ```
//!
//! # The model
//!
//! The arena is a `PROT_NONE` reservation at a random address below 4 GiB.
//! For every page the model knows the VMA holding it: the backing object
//! (three memfds, shared or private; a file on tmpfs, shared or private;
//! `MAP_SHARED | MAP_ANONYMOUS` shmem, one object per mmap(); private
//! anonymous memory; each flavour of the test device, `FLAVOURS` below; a
//! vgem dumb buffer), the page's offset in it, the protection, the
//! anon_vma of a private mapping (which decides VMA merges), and so every
//! VMA boundary the kernel must show and every page's expected contents
//! (a tag per object page, written as the pattern of `util::fill`).
//!
//! Operations, chosen at random with edge-case addresses and sizes (0,
//! unaligned, one page, a whole VMA, spanning VMAs, into the margins,
//! overlapping): mmap(MAP_FIXED), munmap, mprotect, MREMAP_DUP in every
//! flag combination (with DONTUNMAP and unknown bits, old_len != new_len,
//! old_len 0), writes through any writable mapping, fork (the child checks
//! its view), ftruncate of a memfd (the model knows which pages are beyond
//! EOF and never touches them) and madvise(MADV_DONTNEED).
//!
//! After each DUP that succeeds every page of the duplicate is checked and
//! a write through it must be seen through the source; after each that
//! fails the errno is the one the model predicts and /proc/self/maps is
//! byte-identical to before. After every operation the arena's maps lines
//! (boundaries, protections, offsets, inodes) must be the model's. A
//! mismatch prints the seed, the operation's number, the operation and
//! the expected and actual state, and the program exits 1.
//!
//! The model does not follow what a split of a mapping whose faults take
//! the offset into the VMA (FAULT_REL, vgem) maps in its later pieces: it
//! neither reads nor writes those pieces (the kernel duplicates such
//! mappings whole only, and that split is the reason).
//!
//! The leak check, after everything is unmapped and closed: the number of
//! open fds and of VMAs of the process back to the start; `Shmem` of
//! /proc/meminfo back to its start value exactly, after
//! /proc/sys/vm/stat_refresh folded the per-CPU counters (the memfds, the
//! tmpfs file, shmem and the vgem BO are all shmem pages, freed when the
//! last fd or mapping goes); the slab's `vm_area_struct` active objects,
//! after `/sys/kernel/slab/vm_area_struct/shrink` gave the per-CPU caches
//! and KASAN's quarantine of freed objects back to the slab, within one
//! slab per CPU, plus one, of the start (what other processes of the guest
//! may map meanwhile; a leak of one VMA per DUP would be hundreds; polled
//! for up to 5 s); every flavour's `vm_ops->open`
//! count grown as much as its `->close` count; the x86 PAT memtype list's
//! entries for the test device's PAT_WC memory unchanged.

mod card;
#[allow(dead_code)]
mod harness;
#[allow(dead_code)]
mod util;

#[path = "../../kernel-rust/testdev_abi.rs"]
mod abi;

use std::cell::UnsafeCell;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use mremap_dup::RemapFlags as F;
use util::{dup_raw, fill, in_child, page, peek, verify, vma_at};

const PG: usize = 4096;
/// x86-64 TASK_SIZE with 4-level page tables (the guest boots with no5lvl).
const TASK_SIZE: usize = (1 << 47) - PG;
const NONE: i32 = libc::PROT_NONE;
const R: i32 = libc::PROT_READ;
const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
/// Pages of each memfd at most (ftruncate between 0 and this).
const MEMFD_PAGES: usize = 16;
const MEMFDS: usize = 3;
/// Margin pages on either side of the arena, inside the reservation.
const MARGIN: usize = 8;
/// The vgem dumb buffer: 32 x 128 x 32 bpp = 4 pages.
const VGEM_W: u32 = 32;
const VGEM_H: u32 = 128;

/// How each test device flavour behaves, for the model: one table.
struct Flavour {
    id: usize,
    name: &'static str,
    /// A part may be duplicated (`None`: by `--rules`, VM_LINEAR_PGOFF).
    part: Option<bool>,
    /// VM_DONTCOPY: no duplicate, not in a fork child.
    dontcopy: bool,
    /// vm_ops->mremap: no duplicate (moves and fork copies are fine).
    mremap_hook: bool,
    /// VM_PFNMAP: MADV_DONTNEED is EINVAL.
    pfnmap: bool,
    /// Faults map the page at the offset into the VMA.
    rel_fault: bool,
    /// The memory of PAT_WC (its own pages), not the shared four.
    pat: bool,
}

const FLAVOURS: [Flavour; abi::FLAVOURS] = [
    Flavour {
        id: abi::REMAP_PFN,
        name: "REMAP_PFN",
        part: Some(false),
        dontcopy: false,
        mremap_hook: false,
        pfnmap: true,
        rel_fault: false,
        pat: false,
    },
    Flavour {
        id: abi::FAULT_PFN,
        name: "FAULT_PFN",
        part: None,
        dontcopy: false,
        mremap_hook: false,
        pfnmap: true,
        rel_fault: false,
        pat: false,
    },
    Flavour {
        id: abi::MIXED,
        name: "MIXED",
        part: Some(false),
        dontcopy: false,
        mremap_hook: false,
        pfnmap: false,
        rel_fault: false,
        pat: false,
    },
    Flavour {
        id: abi::DONTCOPY,
        name: "DONTCOPY",
        part: Some(false),
        dontcopy: true,
        mremap_hook: false,
        pfnmap: true,
        rel_fault: false,
        pat: false,
    },
    Flavour {
        id: abi::PAT_WC,
        name: "PAT_WC",
        part: Some(false),
        dontcopy: false,
        mremap_hook: false,
        pfnmap: true,
        rel_fault: false,
        pat: true,
    },
    Flavour {
        id: abi::FAULT_REL,
        name: "FAULT_REL",
        part: Some(false),
        dontcopy: false,
        mremap_hook: false,
        pfnmap: true,
        rel_fault: true,
        pat: false,
    },
    Flavour {
        id: abi::MREMAP_HOOK,
        name: "MREMAP_HOOK",
        part: Some(false),
        dontcopy: false,
        mremap_hook: true,
        pfnmap: true,
        rel_fault: false,
        pat: false,
    },
];

/// The test device's per-flavour counts (`GET_OPENS`, `GET_CLOSES`: `nr`)
/// from a module of `n` flavours (the request code names the size), or None
/// if the module has another number of flavours.
fn read_counts(fd: &OwnedFd, nr: u8, n: usize) -> Option<Vec<u64>> {
    let mut v = vec![0u64; n];
    let req = nix::request_code_read!(abi::IOCTL_TYPE, nr, n * std::mem::size_of::<u64>());
    // SAFETY: the device writes at most the size the request names, which
    // is the size of `v`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, v.as_mut_ptr()) };
    (r == 0).then_some(v)
}
nix::ioctl_read!(get_pat_base, abi::IOCTL_TYPE, abi::NR_GET_PAT_BASE, u64);

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pct(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn pick<T: Copy>(&mut self, s: &[T]) -> T {
        s[self.below(s.len())]
    }

    /// A nonzero tag.
    fn tag(&mut self) -> u64 {
        self.next() | 1
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Memfd,
    Tmpfs,
    Shmem,
    Anon,
    Dev(usize),
    Vgem,
}

/// A backing object.
struct Obj {
    kind: Kind,
    name: String,
    fd: Option<OwnedFd>,
    /// The mmap() offset of its first page, in bytes.
    mmap_off: usize,
    /// Size in pages (a memfd's changes with ftruncate).
    pages: usize,
    /// Index into `World::mems` of its contents.
    mem: usize,
    /// Learned from the first mapping: inode and the maps offset (pages) of
    /// its first page.
    ino: Option<u64>,
    shown0: Option<usize>,
    part_ok: bool,
    dup_ok: bool,
    pfnmap: bool,
    /// VM_MIXEDMAP without a fault handler: a zapped page is SIGBUS.
    no_fault: bool,
    rel_fault: bool,
    /// VM_SPECIAL: never merged.
    special: bool,
    /// Device flavour's index into its opens/closes counts.
    flavour: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Vma {
    /// Region page indices.
    start: usize,
    end: usize,
    obj: usize,
    /// Object page of `start` (private anonymous: the absolute page number,
    /// which is the kernel's vm_pgoff).
    pgoff: usize,
    prot: i32,
    shared: bool,
    anon: Option<u32>,
    /// A later piece of a split rel_fault mapping: not modelled.
    tainted: bool,
}

/// What a read of a page must give.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Unmapped,
    NoRead,
    Unknown,
    Sigbus,
    Tag(u64),
}

#[derive(Default)]
struct Stats {
    ops: u64,
    by_kind: std::collections::BTreeMap<&'static str, (u64, u64)>,
    dup_ok_by_obj: std::collections::BTreeMap<String, u64>,
    dup_err: std::collections::BTreeMap<i32, u64>,
    pages_checked: u64,
    forks: u64,
}

/// The text of the operation under way, for the SIGSEGV/SIGBUS handler.
struct OpText(UnsafeCell<[u8; 600]>, UnsafeCell<usize>);
// SAFETY: written by the only thread between operations, read by the
// signal handler of that thread.
unsafe impl Sync for OpText {}
static OP_TEXT: OpText = OpText(UnsafeCell::new([0; 600]), UnsafeCell::new(0));

/// This process's KTAP test number (its worker's, with `--jobs`), for the
/// handler's result line.
static TEST_NO: AtomicUsize = AtomicUsize::new(1);

fn set_op_text(s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(600);
    // SAFETY: see OpText; the handler reads at most the length set last.
    unsafe {
        *OP_TEXT.1.get() = 0;
        std::ptr::copy_nonoverlapping(b.as_ptr(), OP_TEXT.0.get().cast::<u8>(), n);
        *OP_TEXT.1.get() = n;
    }
}

extern "C" fn on_fault(sig: i32) {
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the text is the
    // one set before the operation began.
    unsafe {
        // All to fd 1 (with --jobs, the worker's pipe), in order.
        let head = b"\n# unexpected signal (SIGSEGV 11, SIGBUS 7): ";
        libc::write(1, head.as_ptr().cast(), head.len());
        let d = [b'0' + (sig / 10) as u8, b'0' + (sig % 10) as u8, b'\n'];
        libc::write(1, d.as_ptr().cast(), 3);
        let n = *OP_TEXT.1.get();
        libc::write(1, OP_TEXT.0.get().cast::<libc::c_void>(), n);
        let mut n = TEST_NO.load(Ordering::Relaxed);
        let mut num = [0u8; 20];
        let mut i = num.len();
        loop {
            i -= 1;
            num[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        libc::write(1, b"not ok ".as_ptr().cast(), 7);
        libc::write(1, num[i..].as_ptr().cast(), num.len() - i);
        let tail = b" model: killed by a signal the model did not expect\n";
        libc::write(1, tail.as_ptr().cast(), tail.len());
        libc::_exit(1);
    }
}

fn errno_of(r: i64) -> Result<usize, Errno> {
    if r == -1 {
        Err(Errno::last())
    } else {
        Ok(r as usize)
    }
}

fn page_align(n: usize) -> usize {
    n.wrapping_add(PG - 1) & !(PG - 1)
}

fn perms(prot: i32, shared: bool) -> String {
    format!(
        "{}{}-{}",
        if prot & R != 0 { 'r' } else { '-' },
        if prot & libc::PROT_WRITE != 0 {
            'w'
        } else {
            '-'
        },
        if shared { 's' } else { 'p' }
    )
}

/// Reads /proc/self/maps into `buf` without allocating (its capacity is
/// reserved once).
fn read_maps(buf: &mut Vec<u8>) {
    buf.clear();
    // SAFETY: a NUL-terminated path; reads into the spare capacity.
    unsafe {
        let fd = libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return;
        }
        loop {
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(1 << 16);
            }
            let spare = buf.capacity() - buf.len();
            let n = libc::read(fd, buf.as_mut_ptr().add(buf.len()).cast(), spare);
            if n <= 0 {
                break;
            }
            buf.set_len(buf.len() + n as usize);
        }
        libc::close(fd);
    }
}

/// (start, end, perms, offset, inode) of each maps line intersecting
/// [start, end).
fn maps_lines(text: &str, start: usize, end: usize) -> Vec<String> {
    let mut out = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let (s, e) = f[0].split_once('-').unwrap_or(("0", "0"));
        let s = usize::from_str_radix(s, 16).unwrap_or(0);
        let e = usize::from_str_radix(e, 16).unwrap_or(0);
        if s < end && e > start {
            let off = usize::from_str_radix(f[2], 16).unwrap_or(usize::MAX);
            out.push(format!("{s:x}-{e:x} {} {off:x} {}", f[1], f[4]));
        }
    }
    out
}

/// One field of /proc/meminfo, kB.
fn meminfo_kb(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

/// (active_objs, objperslab) of the vm_area_struct slab.
fn vma_slab() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/slabinfo").ok()?;
    let l = text.lines().find(|l| l.starts_with("vm_area_struct "))?;
    let f: Vec<u64> = l
        .split_whitespace()
        .skip(1)
        .take(4)
        .filter_map(|v| v.parse().ok())
        .collect();
    Some((*f.first()?, *f.get(3)?))
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The lines of /proc/self/maps that map a file or a device (a path, not
/// `[heap]` and the like, nor anonymous memory).
fn file_mappings() -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(5)
                .is_some_and(|p| !p.starts_with('['))
        })
        .map(str::to_string)
        .collect()
}

/// The number of VMAs of the process.
fn maps_count() -> usize {
    std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count())
}

fn ncpus() -> u64 {
    // SAFETY: sysconf() has no memory-safety preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) as u64 }
}

/// The test device: its fd and which of its flavours this kernel has.
struct Dev {
    fd: OwnedFd,
    flavours: usize,
    pat: bool,
}

impl Dev {
    fn open() -> Option<Dev> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(abi::DEV_PATH.to_str().ok()?)
            .ok()?;
        let fd: OwnedFd = f.into();
        // This tree's module, or one of an earlier series (5 flavours: no
        // FAULT_REL, FAULT_PFN whole only; 6: no MREMAP_HOOK).
        let flavours = [abi::FLAVOURS, 6, 5]
            .into_iter()
            .find(|&n| read_counts(&fd, abi::NR_GET_OPENS, n).is_some())?;
        let mut base = 0u64;
        // SAFETY: the device writes one u64.
        let pat = unsafe { get_pat_base(fd.as_raw_fd(), &mut base) }.is_ok();
        if pat {
            PAT_BASE.store(base, std::sync::atomic::Ordering::Relaxed);
        }
        Some(Dev { fd, flavours, pat })
    }

    /// (opens, closes) per flavour.
    fn counts(&self) -> (Vec<u64>, Vec<u64>) {
        let read = |nr| read_counts(&self.fd, nr, self.flavours).unwrap_or_default();
        (read(abi::NR_GET_OPENS), read(abi::NR_GET_CLOSES))
    }
}

/// A vgem dumb buffer: the card and the BO's handle.
struct Vgem {
    card: OwnedFd,
    handle: u32,
}

struct World {
    seed: u64,
    rng: Rng,
    /// Region start address and size in pages (arena plus margins).
    base: usize,
    npages: usize,
    vmas: Vec<Vma>,
    overlay: Vec<Option<u64>>,
    dead: Vec<bool>,
    objs: Vec<Obj>,
    mems: Vec<Vec<u64>>,
    next_anon: u32,
    anon_obj: usize,
    dev: Option<Dev>,
    vgem: Option<Vgem>,
    tmpfs_path: Option<std::path::PathBuf>,
    dup: bool,
    verbose: bool,
    op: u64,
    op_text: String,
    maps_a: Vec<u8>,
    maps_b: Vec<u8>,
    stats: Stats,
}

type Res = Result<(), String>;

impl World {
    fn addr(&self, p: usize) -> usize {
        self.base + p * PG
    }

    fn base_page(&self) -> usize {
        self.base / PG
    }

    fn find(&self, p: usize) -> Option<usize> {
        self.vmas.iter().position(|v| v.start <= p && p < v.end)
    }

    fn new_obj(&mut self, kind: Kind, name: String, fd: Option<OwnedFd>, pages: usize) -> usize {
        let mem = self.mems.len();
        self.mems.push(vec![0; pages.max(MEMFD_PAGES)]);
        let regular = matches!(kind, Kind::Memfd | Kind::Tmpfs | Kind::Shmem);
        self.objs.push(Obj {
            kind,
            name,
            fd,
            mmap_off: 0,
            pages,
            mem,
            ino: if kind == Kind::Anon { Some(0) } else { None },
            shown0: if regular || kind == Kind::Anon {
                Some(0)
            } else {
                None
            },
            part_ok: regular,
            dup_ok: kind != Kind::Anon,
            pfnmap: false,
            no_fault: false,
            rel_fault: false,
            special: !regular && kind != Kind::Anon,
            flavour: None,
        });
        self.objs.len() - 1
    }

    /// Creates the objects; returns what is not available and why.
    fn setup_objects(
        &mut self,
        linear: Option<bool>,
        with_dev: bool,
    ) -> Result<Vec<String>, String> {
        let mut notes = Vec::new();
        self.anon_obj = self.new_obj(Kind::Anon, "private anon".into(), None, 0);
        for i in 0..MEMFDS {
            let fd = util::memfd(MEMFD_PAGES * PG, 0).map_err(|e| format!("{e:?}"))?;
            self.new_obj(Kind::Memfd, format!("memfd{i}"), Some(fd), MEMFD_PAGES);
        }
        // A file on tmpfs.
        let dirs = ["/dev/shm", "/tmp", "/run"];
        let tmpfs = dirs.iter().find(|d| {
            nix::sys::statfs::statfs(**d)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        });
        match tmpfs {
            Some(d) => {
                let path = std::path::Path::new(d)
                    .join(format!("mremap-dup-model-{}", std::process::id()));
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                f.set_len((MEMFD_PAGES * PG) as u64)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let fd: OwnedFd = f.into();
                self.new_obj(
                    Kind::Tmpfs,
                    format!("tmpfs:{}", path.display()),
                    Some(fd),
                    MEMFD_PAGES,
                );
                self.tmpfs_path = Some(path);
            }
            None => notes.push(format!("no tmpfs among {dirs:?}: no tmpfs file")),
        }
        // The test device: the four pages every flavour but PAT_WC maps, and
        // PAT_WC's own. Its memory is one for every opener: with --jobs,
        // only the first worker maps it (the others' writes would change
        // what the model expects there).
        self.dev = if with_dev { Dev::open() } else { None };
        match &self.dev {
            None if !with_dev => notes.push(
                "no test device: with --jobs only worker 1 maps its memory, one for all openers"
                    .into(),
            ),
            None => notes
                .push("no test device (mremap_dup_testdev not loaded): no device flavours".into()),
            Some(d) => {
                let (flavours, pat) = (d.flavours, d.pat);
                let linear = linear.unwrap_or(flavours >= 6);
                notes.push(format!(
                    "test device: {flavours} flavours, PAT_WC {}, FAULT_PFN parts {}",
                    if pat {
                        "available"
                    } else {
                        "unavailable (no pat_base)"
                    },
                    if linear {
                        "allowed (VM_LINEAR_PGOFF)"
                    } else {
                        "whole only"
                    }
                ));
                let td_mem = self.mems.len();
                self.mems.push(vec![0; abi::PAGES]);
                let pat_mem = self.mems.len();
                self.mems.push(vec![0; abi::PAGES]);
                for fl in FLAVOURS
                    .iter()
                    .filter(|f| f.id < flavours && (!f.pat || pat))
                {
                    let fd = self
                        .dev
                        .as_ref()
                        .unwrap()
                        .fd
                        .try_clone()
                        .map_err(|e| e.to_string())?;
                    let o =
                        self.new_obj(Kind::Dev(fl.id), fl.name.to_string(), Some(fd), abi::PAGES);
                    // The clone is one more fd: keep the device's only (dup(2)
                    // of it is the same file, which is what mappings see).
                    let ob = &mut self.objs[o];
                    ob.mmap_off = abi::flavour_offset(fl.id, PG);
                    ob.mem = if fl.pat { pat_mem } else { td_mem };
                    ob.part_ok = fl.part.unwrap_or(linear);
                    ob.dup_ok = !fl.dontcopy && !fl.mremap_hook;
                    ob.pfnmap = fl.pfnmap;
                    ob.no_fault = !fl.pfnmap && !fl.rel_fault;
                    ob.rel_fault = fl.rel_fault;
                    ob.flavour = Some(fl.id);
                }
                // Give the memory known contents.
                for (mem, fl) in [(td_mem, abi::REMAP_PFN), (pat_mem, abi::PAT_WC)] {
                    if fl == abi::PAT_WC && !pat {
                        continue;
                    }
                    let m = util::map(
                        0,
                        abi::PAGES * PG,
                        RW,
                        libc::MAP_SHARED,
                        self.dev.as_ref().unwrap().fd.as_raw_fd(),
                        abi::flavour_offset(fl, PG),
                    )
                    .map_err(|e| format!("mmap of the test device: {e}"))?;
                    for i in 0..abi::PAGES {
                        let t = self.rng.tag();
                        fill(m.addr + i * PG, 1, t);
                        self.mems[mem][i] = t;
                    }
                    fence(Ordering::SeqCst);
                }
            }
        }
        match card::open_card("vgem") {
            Err(e) => notes.push(format!("no vgem BO: {e}")),
            Ok(card) => {
                let db = drm_ffi::mode::dumbbuffer::create(card.as_fd(), VGEM_W, VGEM_H, 32, 0)
                    .map_err(|e| format!("DRM_IOCTL_MODE_CREATE_DUMB: {e}"))?;
                let off = drm_ffi::mode::dumbbuffer::map(card.as_fd(), db.handle, 0, 0)
                    .map_err(|e| format!("DRM_IOCTL_MODE_MAP_DUMB: {e}"))?
                    .offset;
                let pages = db.size as usize / PG;
                let fd = card.try_clone().map_err(|e| e.to_string())?;
                let o = self.new_obj(Kind::Vgem, "vgem BO".into(), Some(fd), pages);
                let ob = &mut self.objs[o];
                ob.mmap_off = off as usize;
                ob.pfnmap = true;
                ob.rel_fault = true;
                self.vgem = Some(Vgem {
                    card,
                    handle: db.handle,
                });
            }
        }
        Ok(notes)
    }

    /// What reading page `p` must give.
    fn expect(&self, p: usize) -> Expect {
        let Some(i) = self.find(p) else {
            return Expect::Unmapped;
        };
        let v = &self.vmas[i];
        if v.prot & R == 0 {
            return Expect::NoRead;
        }
        if v.tainted {
            return Expect::Unknown;
        }
        if self.dead[p] {
            return Expect::Sigbus;
        }
        let o = &self.objs[v.obj];
        let off = v.pgoff + (p - v.start);
        if o.kind == Kind::Anon {
            return Expect::Tag(self.overlay[p].unwrap_or(0));
        }
        if off >= o.pages {
            return Expect::Sigbus;
        }
        if !v.shared {
            if let Some(t) = self.overlay[p] {
                return Expect::Tag(t);
            }
        }
        Expect::Tag(self.mems[o.mem][off])
    }

    fn writable(&self, p: usize) -> bool {
        self.find(p).is_some_and(|i| self.vmas[i].prot == RW)
            && matches!(self.expect(p), Expect::Tag(_))
    }

    /// Checks the pattern of tag `t` at `addr`.
    fn check_addr(&mut self, what: &str, addr: usize, t: u64) -> Res {
        self.stats.pages_checked += 1;
        if t == 0 {
            for w in [0, PG / 16, PG / 8 - 1] {
                let got = peek(addr + w * 8);
                if got != 0 {
                    return Err(format!("{what} at {addr:#x}: word {w} is {got:#x}, expected 0 (a page never written)"));
                }
            }
            return Ok(());
        }
        verify(what, addr, 1, t, 0).map_err(|e| match e {
            harness::Failure::Fail(m) | harness::Failure::Skip(m) => m,
        })
    }

    fn check_page(&mut self, p: usize) -> Res {
        if let Expect::Tag(t) = self.expect(p) {
            let what = format!("page {p} ({})", self.describe_page(p));
            self.check_addr(&what, self.addr(p), t)?;
        }
        Ok(())
    }

    fn describe_page(&self, p: usize) -> String {
        match self.find(p) {
            None => "unmapped".into(),
            Some(i) => {
                let v = &self.vmas[i];
                format!(
                    "{} page {} {}{}",
                    self.objs[v.obj].name,
                    v.pgoff + p - v.start,
                    perms(v.prot, v.shared),
                    if self.overlay[p].is_some() && !v.shared {
                        " (private copy)"
                    } else {
                        ""
                    }
                )
            }
        }
    }

    fn check_all_pages(&mut self) -> Res {
        for p in 0..self.npages {
            self.check_page(p)?;
        }
        Ok(())
    }

    /// The maps lines the model expects in the region.
    fn expected_maps(&self) -> Vec<String> {
        self.vmas
            .iter()
            .map(|v| {
                let o = &self.objs[v.obj];
                let off = if o.kind == Kind::Anon {
                    0
                } else {
                    (o.shown0.unwrap_or(0) + v.pgoff) * PG
                };
                format!(
                    "{:x}-{:x} {} {off:x} {}",
                    self.addr(v.start),
                    self.addr(v.end),
                    perms(v.prot, v.shared),
                    o.ino.unwrap_or(0)
                )
            })
            .collect()
    }

    fn check_maps(&mut self) -> Res {
        let mut buf = std::mem::take(&mut self.maps_a);
        read_maps(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        self.maps_a = buf;
        let actual = maps_lines(&text, self.addr(0), self.addr(self.npages));
        let want = self.expected_maps();
        if actual != want {
            return Err(format!(
                "/proc/self/maps of the arena differs from the model\n# expected:\n#   {}\n# actual:\n#   {}\n# model VMAs:\n#   {}",
                want.join("\n#   "),
                actual.join("\n#   "),
                self.vmas.iter().map(|v| format!("{v:?} {}", self.objs[v.obj].name)).collect::<Vec<_>>().join("\n#   ")
            ));
        }
        Ok(())
    }

    // ---- model updates ----

    /// Splits the VMA holding `p` strictly inside at `p`.
    fn split_at(&mut self, p: usize) {
        if let Some(i) = self.find(p) {
            if self.vmas[i].start < p {
                let mut right = self.vmas[i].clone();
                right.pgoff += p - right.start;
                right.start = p;
                if self.objs[right.obj].rel_fault {
                    right.tainted = true;
                }
                self.vmas[i].end = p;
                self.vmas.insert(i + 1, right);
            }
        }
    }

    fn remove_range(&mut self, a: usize, b: usize) {
        self.split_at(a);
        self.split_at(b);
        self.vmas.retain(|v| v.end <= a || v.start >= b);
        for p in a..b {
            self.overlay[p] = None;
            self.dead[p] = false;
        }
    }

    fn insert(&mut self, v: Vma) -> usize {
        let i = self
            .vmas
            .iter()
            .position(|x| x.start >= v.end)
            .unwrap_or(self.vmas.len());
        self.vmas.insert(i, v);
        i
    }

    fn mergeable(&self, a: &Vma, b: &Vma) -> bool {
        a.end == b.start
            && a.obj == b.obj
            && a.prot == b.prot
            && a.shared == b.shared
            && !self.objs[a.obj].special
            && b.pgoff == a.pgoff + (a.end - a.start)
            && match (a.anon, b.anon) {
                (Some(x), Some(y)) => x == y,
                _ => true,
            }
    }

    /// Merges VMA `i` with its neighbours where the kernel would.
    fn try_merge(&mut self, mut i: usize) {
        if i > 0 && self.mergeable(&self.vmas[i - 1], &self.vmas[i]) {
            let v = self.vmas.remove(i);
            let l = &mut self.vmas[i - 1];
            l.end = v.end;
            l.anon = l.anon.or(v.anon);
            i -= 1;
        }
        if i + 1 < self.vmas.len() && self.mergeable(&self.vmas[i], &self.vmas[i + 1]) {
            let v = self.vmas.remove(i + 1);
            let l = &mut self.vmas[i];
            l.end = v.end;
            l.anon = l.anon.or(v.anon);
        }
    }

    /// A write to a private page needs the VMA's anon_vma: that of a
    /// compatible neighbour (next first), as find_mergeable_anon_vma(), or a
    /// new one.
    fn anon_prepare(&mut self, i: usize) {
        if self.vmas[i].anon.is_some() {
            return;
        }
        let compatible = |a: &Vma, b: &Vma| {
            a.end == b.start
                && a.obj == b.obj
                && a.shared == b.shared
                && b.pgoff == a.pgoff + (a.end - a.start)
        };
        let v = &self.vmas[i];
        let mut anon = None;
        if let Some(n) = self.vmas.get(i + 1) {
            if compatible(v, n) {
                anon = n.anon;
            }
        }
        if anon.is_none() && i > 0 {
            let pv = &self.vmas[i - 1];
            if compatible(pv, v) {
                anon = pv.anon;
            }
        }
        self.vmas[i].anon = Some(anon.unwrap_or_else(|| {
            self.next_anon += 1;
            self.next_anon
        }));
    }

    /// Writes a fresh tag to page `p` (writable) at `addr` (`p`'s address
    /// or that of another mapping of the same memory).
    fn write_page(&mut self, p: usize, addr: usize) -> u64 {
        let t = self.rng.tag();
        fill(addr, 1, t);
        let i = self.find(p).unwrap();
        let v = self.vmas[i].clone();
        let o = &self.objs[v.obj];
        if v.shared {
            let mem = o.mem;
            self.mems[mem][v.pgoff + p - v.start] = t;
        } else {
            self.overlay[p] = Some(t);
            self.anon_prepare(i);
        }
        t
    }

    fn learn(&mut self, obj: usize, addr: usize, pgoff: usize) {
        let o = &self.objs[obj];
        if o.ino.is_some() && o.shown0.is_some() {
            return;
        }
        if let Some(line) = maps_lines(
            &std::fs::read_to_string("/proc/self/maps").unwrap_or_default(),
            addr,
            addr + 1,
        )
        .first()
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            let off = usize::from_str_radix(f[2], 16).unwrap_or(0) / PG;
            let o = &mut self.objs[obj];
            o.ino = o.ino.or(f[3].parse().ok());
            o.shown0 = o.shown0.or(Some(off.saturating_sub(pgoff)));
        }
    }

    // ---- random choices ----

    /// A page index in the region, often at a VMA boundary.
    fn pick_page(&mut self) -> usize {
        let n = self.npages;
        match self.rng.below(10) {
            0..=4 if !self.vmas.is_empty() => {
                let v = self.vmas[self.rng.below(self.vmas.len())].clone();
                let p = if self.rng.pct(50) { v.start } else { v.end };
                match self.rng.below(4) {
                    0 => p.saturating_sub(1),
                    1 => (p + 1).min(n - 1),
                    _ => p.min(n - 1),
                }
            }
            5 => self.rng.pick(&[0, MARGIN, n - MARGIN - 1, n - 1]),
            _ => MARGIN + self.rng.below(n - 2 * MARGIN),
        }
    }

    /// A length in pages from page `p`, within the region.
    fn pick_pages(&mut self, p: usize) -> usize {
        let room = self.npages - p;
        let n = match self.rng.below(10) {
            0 => 1,
            1..=3 => 1 + self.rng.below(4),
            4..=5 => match self.find(p) {
                Some(i) => self.vmas[i].end - p,
                None => 1 + self.rng.below(8),
            },
            6 => match self.find(p) {
                Some(i) if i + 1 < self.vmas.len() => {
                    let j = i + 1 + self.rng.below(2).min(self.vmas.len() - i - 2);
                    self.vmas[j].end - p
                }
                _ => 2,
            },
            7 => room,
            _ => 1 + self.rng.below(12),
        };
        n.clamp(1, room)
    }

    /// (page, length, address) of a range in the region: the address
    /// sometimes unaligned, the length sometimes 0 or unaligned.
    fn pick_range(&mut self) -> (usize, usize, usize) {
        let p = self.pick_page();
        let pages = self.pick_pages(p);
        let len = self.bytes(pages);
        let mut addr = self.addr(p);
        if self.rng.pct(3) {
            addr += 1 + self.rng.below(PG - 1);
        }
        (p, len, addr)
    }

    /// Bytes for `pages`, sometimes 0 or not a multiple of the page size.
    fn bytes(&mut self, pages: usize) -> usize {
        match self.rng.below(20) {
            0 => 0,
            1 => pages * PG - 1 - self.rng.below(PG - 1),
            2 => 1,
            _ => pages * PG,
        }
    }

    // ---- operations ----

    fn op_mmap(&mut self) -> Res {
        let (p, mut len, addr) = self.pick_range();
        let prot = self.rng.pick(&[NONE, R, R, RW, RW, RW]);
        let mut cands: Vec<usize> = (0..self.objs.len())
            .filter(|&o| self.objs[o].kind != Kind::Shmem)
            .collect();
        // usize::MAX: a new shared anonymous (shmem) object.
        cands.push(usize::MAX);
        cands.push(usize::MAX);
        let pick = self.rng.pick(&cands);
        let obj = if pick == usize::MAX {
            self.anon_obj
        } else {
            pick
        };
        let kind = if pick == usize::MAX {
            Kind::Shmem
        } else {
            self.objs[obj].kind
        };
        let mut shared = match kind {
            Kind::Anon => false,
            Kind::Memfd | Kind::Tmpfs => self.rng.pct(75),
            _ => true,
        };
        let mut objp = obj;
        let mut fd = self.objs[obj].fd.as_ref().map_or(-1, |f| f.as_raw_fd());
        let mut off_pages = 0;
        match kind {
            Kind::Memfd | Kind::Tmpfs => off_pages = self.rng.below(MEMFD_PAGES),
            Kind::Dev(_) | Kind::Vgem => {
                // The device and DRM map from the start of the memory, at
                // most all of it.
                let max = self.objs[obj].pages;
                let n = 1 + self.rng.below(max);
                len = n * PG;
                if p + n > self.npages {
                    return Ok(());
                }
            }
            _ => {}
        }
        let mut flags = libc::MAP_FIXED | libc::MAP_NORESERVE;
        flags |= if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        if kind == Kind::Shmem {
            // A new shared anonymous object.
            flags = libc::MAP_FIXED | libc::MAP_NORESERVE | libc::MAP_SHARED | libc::MAP_ANONYMOUS;
            shared = true;
            fd = -1;
            objp = usize::MAX;
        } else if kind == Kind::Anon {
            flags |= libc::MAP_ANONYMOUS;
        }
        let off = self.objs[obj].mmap_off + off_pages * PG;
        let pred = if len == 0 || addr % PG != 0 {
            Err(Errno::EINVAL)
        } else {
            Ok(())
        };
        let npages = page_align(len) / PG;
        self.begin(format!(
            "mmap({addr:#x}, {len:#x}, {}, {}{}, {}, {off:#x})",
            perms(prot, shared),
            if flags & libc::MAP_ANONYMOUS != 0 {
                "ANON|"
            } else {
                ""
            },
            if shared { "SHARED" } else { "PRIVATE" },
            if objp == usize::MAX {
                "shmem (new)".to_string()
            } else {
                self.objs[obj].name.clone()
            }
        ));
        // MAP_FIXED inside this program's own reservation, which nothing
        // references; the model owns what is mapped.
        let r = util::map(addr, len, prot, flags, fd, off).map(util::Mapping::forget);
        self.expect_result("mmap", r.map(|_| ()), pred)?;
        if r.is_err() {
            return Ok(());
        }
        if objp == usize::MAX {
            objp = self.new_shmem(npages);
        }
        self.remove_range(p, p + npages);
        let pgoff = if self.objs[objp].kind == Kind::Anon {
            self.base_page() + p
        } else {
            off_pages
        };
        let i = self.insert(Vma {
            start: p,
            end: p + npages,
            obj: objp,
            pgoff,
            prot,
            shared,
            anon: None,
            tainted: false,
        });
        self.try_merge(i);
        self.learn(objp, addr, pgoff);
        Ok(())
    }

    /// A new shmem object of `pages` pages, in the slot of one that no VMA
    /// maps any more (the kernel freed it) if there is one.
    fn new_shmem(&mut self, pages: usize) -> usize {
        let free = (0..self.objs.len())
            .find(|&o| self.objs[o].kind == Kind::Shmem && !self.vmas.iter().any(|v| v.obj == o));
        match free {
            Some(o) => {
                let ob = &mut self.objs[o];
                ob.pages = pages;
                ob.ino = None;
                let mem = ob.mem;
                self.mems[mem] = vec![0; pages];
                o
            }
            None => self.new_obj(
                Kind::Shmem,
                format!("shmem{}", self.objs.len()),
                None,
                pages,
            ),
        }
    }

    fn op_munmap(&mut self) -> Res {
        let (p, len, addr) = self.pick_range();
        let pred = if len == 0 || addr % PG != 0 {
            Err(Errno::EINVAL)
        } else {
            Ok(())
        };
        self.begin(format!("munmap({addr:#x}, {len:#x})"));
        // SAFETY: inside this program's own reservation.
        let r = errno_of(unsafe { libc::munmap(addr as *mut libc::c_void, len) } as i64);
        self.expect_result("munmap", r.map(|_| ()), pred)?;
        if r.is_ok() {
            self.remove_range(p, p + page_align(len) / PG);
        }
        Ok(())
    }

    fn op_mprotect(&mut self) -> Res {
        let (p, len, addr) = self.pick_range();
        let prot = self.rng.pick(&[NONE, R, RW]);
        self.begin(format!(
            "mprotect({addr:#x}, {len:#x}, {})",
            perms(prot, false)
        ));
        let end = p + page_align(len) / PG;
        // Model first: what do_mprotect_pkey() does, VMA by VMA.
        let pred = if let Some(r) = unaligned_or_empty(addr, len) {
            r
        } else {
            let mut err = Ok(());
            let mut q = p;
            if self.find(p).is_none() {
                err = Err(Errno::ENOMEM);
            }
            while err.is_ok() && q < end {
                let Some(i) = self.find(q) else {
                    err = Err(Errno::ENOMEM);
                    break;
                };
                let vend = self.vmas[i].end.min(end);
                if self.vmas[i].prot != prot {
                    self.split_at(q);
                    self.split_at(vend);
                    let i = self.find(q).unwrap();
                    self.vmas[i].prot = prot;
                    self.try_merge(i);
                }
                q = vend;
            }
            err
        };
        // SAFETY: inside this program's own reservation.
        let r = errno_of(unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) } as i64);
        self.expect_result("mprotect", r.map(|_| ()), pred)
    }

    fn op_madvise(&mut self) -> Res {
        let (p, len, addr) = self.pick_range();
        self.begin(format!("madvise({addr:#x}, {len:#x}, MADV_DONTNEED)"));
        let end = p + page_align(len) / PG;
        let pred = if let Some(r) = unaligned_or_empty(addr, len) {
            r
        } else {
            // madvise_walk_vmas(): holes are ENOMEM at the end, a VM_PFNMAP
            // VMA stops the walk with EINVAL.
            let mut err = Ok(());
            let mut q = p;
            while q < end {
                let Some(i) = self.find(q) else {
                    err = Err(Errno::ENOMEM);
                    q += 1;
                    continue;
                };
                let v = self.vmas[i].clone();
                let o = &self.objs[v.obj];
                if o.pfnmap {
                    err = Err(Errno::EINVAL);
                    break;
                }
                let vend = v.end.min(end);
                for x in q..vend {
                    if !v.shared {
                        self.overlay[x] = None;
                    }
                    if o.no_fault {
                        self.dead[x] = true;
                    }
                }
                q = vend;
            }
            err
        };
        // SAFETY: inside this program's own reservation; MADV_DONTNEED only
        // drops pages the model then expects to be refaulted.
        let r =
            errno_of(
                unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) }
                    as i64,
            );
        self.expect_result("madvise", r.map(|_| ()), pred)
    }

    fn op_write(&mut self) -> Res {
        let cands: Vec<usize> = (0..self.npages).filter(|&p| self.writable(p)).collect();
        if cands.is_empty() {
            return Ok(());
        }
        let p = self.rng.pick(&cands);
        let n = 1 + self.rng.below(4);
        self.begin(format!(
            "write {n} pages from page {p} ({})",
            self.describe_page(p)
        ));
        for q in p..(p + n).min(self.npages) {
            if self.writable(q) {
                self.write_page(q, self.addr(q));
            }
        }
        fence(Ordering::SeqCst);
        for q in p..(p + n).min(self.npages) {
            self.check_page(q)?;
        }
        Ok(())
    }

    fn op_ftruncate(&mut self) -> Res {
        let memfds: Vec<usize> = (0..self.objs.len())
            .filter(|&o| self.objs[o].kind == Kind::Memfd)
            .collect();
        let o = self.rng.pick(&memfds);
        let pages = match self.rng.below(4) {
            0 => 0,
            1 => MEMFD_PAGES,
            _ => self.rng.below(MEMFD_PAGES + 1),
        };
        self.begin(format!(
            "ftruncate({}, {pages} pages), was {}",
            self.objs[o].name, self.objs[o].pages
        ));
        util::truncate(self.objs[o].fd.as_ref().unwrap(), pages * PG)
            .map_err(|e| format!("{e:?}"))?;
        let old = self.objs[o].pages;
        let mem = self.objs[o].mem;
        if pages < old {
            for x in pages..old {
                self.mems[mem][x] = 0;
            }
            // Truncation zaps private copies beyond EOF too.
            for v in self.vmas.clone() {
                if v.obj == o && !v.shared {
                    for x in v.start..v.end {
                        if v.pgoff + x - v.start >= pages {
                            self.overlay[x] = None;
                        }
                    }
                }
            }
        }
        self.objs[o].pages = pages;
        Ok(())
    }

    fn op_fork(&mut self) -> Res {
        let mut cands: Vec<(usize, u64)> = Vec::new();
        for p in 0..self.npages {
            if let Expect::Tag(t) = self.expect(p) {
                let v = &self.vmas[self.find(p).unwrap()];
                if self.objs[v.obj].dup_ok || self.objs[v.obj].kind == Kind::Anon {
                    cands.push((self.addr(p), t));
                }
            }
        }
        let mut pick = Vec::new();
        for _ in 0..8.min(cands.len()) {
            pick.push(self.rng.pick(&cands));
        }
        self.begin(format!("fork, child checks {} pages", pick.len()));
        self.stats.forks += 1;
        let code = in_child(|| {
            // SAFETY: the child's own signal dispositions: a fault kills it
            // and the parent reports it.
            unsafe {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::signal(libc::SIGBUS, libc::SIG_DFL);
            }
            for &(a, t) in &pick {
                let ok = if t == 0 {
                    peek(a) == 0
                } else {
                    verify("child", a, 1, t, 0).is_ok()
                };
                if !ok {
                    eprintln!(
                        "# fork child: {a:#x} reads {:#x}, expected tag {t:#x}",
                        peek(a)
                    );
                    return 1;
                }
            }
            0
        });
        if code != 0 {
            return Err(format!("fork child's view differs (exit {code})"));
        }
        Ok(())
    }

    fn op_dup(&mut self) -> Res {
        // Source: half the time a page of a shared VMA (what may succeed),
        // else any page; usually aligned.
        let shared: Vec<usize> = (0..self.vmas.len())
            .filter(|&i| self.vmas[i].shared)
            .collect();
        let sp = if !shared.is_empty() && self.rng.pct(50) {
            let v = &self.vmas[self.rng.pick(&shared)];
            let (s, e) = (v.start, v.end);
            s + self.rng.below(e - s)
        } else {
            self.pick_page()
        };
        let pages = match self.find(sp) {
            Some(i) if self.rng.pct(40) => {
                let v = &self.vmas[i];
                if self.rng.pct(70) {
                    // The whole VMA.
                    let (s, e) = (v.start, v.end);
                    return self.dup_call(self.addr(s), (e - s) * PG);
                }
                v.end - sp
            }
            _ => self.pick_pages(sp),
        };
        let mut old = self.addr(sp);
        if self.rng.pct(3) {
            old += 1 + self.rng.below(PG - 1);
        }
        let len = self.bytes(pages);
        self.dup_call(old, len)
    }

    fn dup_call(&mut self, old: usize, old_len: usize) -> Res {
        let flags = match self.rng.below(20) {
            0 => F::DUP,
            1 => F::DUP | F::MAYMOVE,
            2..=9 => F::DUP | F::FIXED,
            10..=14 => F::DUP | F::FIXED | F::MAYMOVE,
            15 => {
                F::DUP | F::DONTUNMAP | self.rng.pick(&[F::NONE, F::MAYMOVE, F::FIXED | F::MAYMOVE])
            }
            16 => {
                F::from_bits_retain(F::DUP.bits() | self.rng.pick(&[16, 32, 1 << 20, 1 << 31]))
                    | F::FIXED
            }
            _ => F::DUP | F::FIXED,
        };
        let new_len = match self.rng.below(16) {
            0 => 0,
            1 => old_len + PG,
            2 => old_len.saturating_sub(PG),
            3 => page_align(old_len),
            _ => old_len,
        };
        let nl = page_align(new_len).max(PG) / PG;
        let new = match self.rng.below(16) {
            0 => 1 << 63,
            1 => {
                let p = self.pick_page();
                self.addr(p) + 1 + self.rng.below(PG - 1)
            }
            // Overlapping the source.
            2 => (old & !(PG - 1)).saturating_sub(PG * self.rng.below(2)),
            _ => {
                let max = self.npages.saturating_sub(nl);
                let p = if self.rng.pct(50) {
                    self.pick_page().min(max)
                } else {
                    self.rng.below(max + 1)
                };
                self.addr(p)
            }
        };
        let pred = self.predict_dup(old, old_len, new_len, flags.bits(), new);
        self.begin(format!(
            "mremap({old:#x}, {old_len:#x}, {new_len:#x}, {}, {new:#x}) of {}",
            flag_names(flags.bits()),
            self.describe_page(
                ((old & !(PG - 1)).saturating_sub(self.base) / PG).min(self.npages - 1)
            )
        ));
        if let Ok(Some(d)) = pred {
            let e = d + page_align(old_len);
            if d < self.addr(0) || e > self.addr(self.npages) {
                // Never replace anything outside the region.
                return Ok(());
            }
        }
        if !self.dup {
            return Ok(());
        }
        let mut before = std::mem::take(&mut self.maps_b);
        read_maps(&mut before);
        let r = dup_raw(old, old_len, new_len, flags, new);
        let res = self.dup_result(old, old_len, pred, r, &before);
        self.maps_b = before;
        let kind = self.stats.by_kind.entry("dup").or_default();
        match r {
            Ok(_) => kind.0 += 1,
            Err(e) => {
                kind.1 += 1;
                *self.stats.dup_err.entry(e as i32).or_default() += 1;
            }
        }
        res
    }

    fn predict_dup(
        &self,
        old: usize,
        old_len: usize,
        new_len: usize,
        flags: u32,
        new: usize,
    ) -> Result<Option<usize>, Errno> {
        let fixed = flags & F::FIXED.bits() != 0;
        if flags & !0xf != 0 || old % PG != 0 {
            return Err(Errno::EINVAL);
        }
        let (ol, nl) = (page_align(old_len), page_align(new_len));
        if nl == 0 || nl > TASK_SIZE || flags & F::DONTUNMAP.bits() != 0 || ol == 0 || ol != nl {
            return Err(Errno::EINVAL);
        }
        if fixed && (new > TASK_SIZE - nl || new % PG != 0 || (old + ol > new && new + nl > old)) {
            return Err(Errno::EINVAL);
        }
        let sp = (old - self.base) / PG;
        let Some(i) = self.find(sp) else {
            return Err(Errno::EFAULT);
        };
        let v = &self.vmas[i];
        if ol > self.addr(v.end) - old {
            return Err(Errno::EFAULT);
        }
        let o = &self.objs[v.obj];
        let whole = sp == v.start && sp + ol / PG == v.end;
        if !v.shared || !o.dup_ok || !(whole || o.part_ok) {
            return Err(Errno::EINVAL);
        }
        if fixed && new < self.addr(v.end) && new + nl > self.addr(v.start) {
            return Err(Errno::EINVAL);
        }
        Ok(fixed.then_some(new))
    }

    fn dup_result(
        &mut self,
        old: usize,
        old_len: usize,
        pred: Result<Option<usize>, Errno>,
        r: Result<usize, Errno>,
        before: &[u8],
    ) -> Res {
        match (pred, r) {
            (Err(want), Err(got)) if want == got => {
                let mut after = std::mem::take(&mut self.maps_a);
                read_maps(&mut after);
                let same = after == before;
                let diff = if same {
                    String::new()
                } else {
                    format!(
                        "/proc/self/maps changed by a failed call\n# before:\n{}\n# after:\n{}",
                        String::from_utf8_lossy(before),
                        String::from_utf8_lossy(&after)
                    )
                };
                self.maps_a = after;
                if same {
                    Ok(())
                } else {
                    Err(diff)
                }
            }
            (Err(want), Err(got)) => Err(format!(
                "errno {} ({got}), the model predicts {} ({want})",
                got as i32, want as i32
            )),
            (Err(want), Ok(a)) => Err(format!(
                "succeeded at {a:#x}, the model predicts {} ({want})",
                want as i32
            )),
            (Ok(_), Err(got)) => Err(format!(
                "failed with {} ({got}), the model predicts success",
                got as i32
            )),
            (Ok(d), Ok(a)) => {
                if d.is_some_and(|d| d != a) {
                    return Err(format!("placed at {a:#x}, not at the MREMAP_FIXED address"));
                }
                self.dup_apply(old, page_align(old_len), a)
            }
        }
    }

    /// Updates the model for a duplicate of [old, old + len) at `at` and
    /// checks it: every page against the model, a write through it seen
    /// through the source.
    fn dup_apply(&mut self, old: usize, len: usize, at: usize) -> Res {
        let sp = (old - self.base) / PG;
        let n = len / PG;
        let v = self.vmas[self.find(sp).unwrap()].clone();
        *self
            .stats
            .dup_ok_by_obj
            .entry(
                self.objs[v.obj]
                    .name
                    .trim_end_matches(char::is_numeric)
                    .to_string(),
            )
            .or_default() += 1;
        let inside = at >= self.addr(0) && at + len <= self.addr(self.npages);
        if inside {
            let dp = (at - self.base) / PG;
            let dead: Vec<bool> = (sp..sp + n).map(|x| self.dead[x]).collect();
            self.remove_range(dp, dp + n);
            for (k, d) in dead.into_iter().enumerate() {
                self.dead[dp + k] = d;
            }
            let mut nv = v.clone();
            nv.start = dp;
            nv.end = dp + n;
            nv.pgoff = v.pgoff + (sp - v.start);
            nv.anon = None;
            let i = self.insert(nv);
            self.try_merge(i);
            // Source page sp + k is duplicate page dp + k: same expectation.
            for k in 0..n {
                self.check_page(dp + k)?;
            }
            let w: Vec<usize> = (0..n).filter(|&k| self.writable(dp + k)).collect();
            if !w.is_empty() {
                let k = self.rng.pick(&w);
                let t = self.write_page(dp + k, self.addr(dp + k));
                fence(Ordering::SeqCst);
                self.check_addr(
                    "source after a write through the duplicate",
                    self.addr(sp + k),
                    t,
                )?;
            }
            return Ok(());
        }
        // Outside the region: check it against its source, write through
        // it, and unmap it.
        let line = vma_at(at);
        let o = &self.objs[v.obj];
        let want_off = (o.shown0.unwrap_or(0) + v.pgoff + sp - v.start) * PG;
        let ok = line.as_ref().is_some_and(|l| {
            l.start == at
                && l.end == at + len
                && l.perms == perms(v.prot, true)
                && l.offset == want_off
        });
        let mut res = if ok {
            Ok(())
        } else {
            Err(format!("duplicate at {at:#x}: maps says {line:?}, expected {:x}-{:x} {} offset {want_off:#x}", at, at + len, perms(v.prot, true)))
        };
        for k in 0..n {
            if res.is_err() {
                break;
            }
            if let Expect::Tag(t) = self.expect(sp + k) {
                res = self.check_addr("duplicate (kernel-placed)", at + k * PG, t);
            }
        }
        if res.is_ok() {
            let w: Vec<usize> = (0..n).filter(|&k| self.writable(sp + k)).collect();
            if !w.is_empty() {
                let k = self.rng.pick(&w);
                let t = self.write_page(sp + k, at + k * PG);
                fence(Ordering::SeqCst);
                res = self.check_addr(
                    "source after a write through the duplicate",
                    self.addr(sp + k),
                    t,
                );
            }
        }
        // SAFETY: the duplicate this call just made, outside the region.
        unsafe { libc::munmap(at as *mut libc::c_void, len) };
        res
    }

    /// Starts operation `op_text`.
    fn begin(&mut self, text: String) {
        self.op_text = text;
        if self.verbose {
            println!("# op {}: {}", self.op, self.op_text);
        }
        set_op_text(&format!(
            "# seed={} op {}: {}\n",
            self.seed, self.op, self.op_text
        ));
    }

    fn expect_result(
        &mut self,
        what: &'static str,
        r: Result<(), Errno>,
        pred: Result<(), Errno>,
    ) -> Res {
        let kind = self.stats.by_kind.entry(what).or_default();
        if r.is_ok() {
            kind.0 += 1;
        } else {
            kind.1 += 1;
        }
        if r != pred {
            return Err(format!("{what} gave {r:?}, the model predicts {pred:?}"));
        }
        Ok(())
    }

    fn step(&mut self, check_every: u64) -> Res {
        self.op_text.clear();
        let r = match self.rng.below(100) {
            0..=17 => self.op_mmap(),
            18..=25 => self.op_munmap(),
            26..=35 => self.op_mprotect(),
            36..=67 => self.op_dup(),
            68..=84 => self.op_write(),
            85..=89 => self.op_madvise(),
            90..=91 => self.op_fork(),
            _ => self.op_ftruncate(),
        };
        r?;
        self.check_maps()?;
        if check_every > 0 && self.op % check_every == 0 {
            self.check_all_pages()?;
        }
        Ok(())
    }
}

/// mprotect() and madvise(): EINVAL for an unaligned start, nothing to do
/// for a zero length.
fn unaligned_or_empty(addr: usize, len: usize) -> Option<Result<(), Errno>> {
    if addr % PG != 0 {
        Some(Err(Errno::EINVAL))
    } else if len == 0 {
        Some(Ok(()))
    } else {
        None
    }
}

fn flag_names(bits: u32) -> String {
    let mut v = Vec::new();
    for (b, n) in [(8, "DUP"), (1, "MAYMOVE"), (2, "FIXED"), (4, "DONTUNMAP")] {
        if bits & b != 0 {
            v.push(n.to_string());
        }
    }
    if bits & !0xf != 0 {
        v.push(format!("{:#x}", bits & !0xf));
    }
    v.join("|")
}

/// Reserves `pages` PROT_NONE pages at a random address below 4 GiB with
/// a free page on either side.
fn reserve_region(rng: &mut Rng, pages: usize) -> Result<usize, String> {
    for _ in 0..64 {
        let a = (1 << 30) + rng.below(2 << 30) / PG * PG;
        let len = (pages + 2) * PG;
        // MAP_FIXED_NOREPLACE maps nothing over an existing mapping.
        let flags = libc::MAP_PRIVATE
            | libc::MAP_ANONYMOUS
            | libc::MAP_NORESERVE
            | libc::MAP_FIXED_NOREPLACE;
        match util::map(a, len, NONE, flags, -1, 0) {
            Ok(m) if m.addr == a => m.forget(),
            Ok(_) | Err(_) => continue,
        }
        // Keep the inner part; the pages on either side stay free.
        // SAFETY: the two end pages of the mapping just made.
        unsafe {
            libc::munmap(a as *mut libc::c_void, PG);
            libc::munmap((a + len - PG) as *mut libc::c_void, PG);
        }
        return Ok(a + PG);
    }
    Err("no free range for the arena below 4 GiB".into())
}

struct Args {
    seed: u64,
    ops: u64,
    seconds: u64,
    pages: usize,
    check_every: u64,
    rules: Option<bool>,
    dup: bool,
    verbose: bool,
    jobs: usize,
}

fn args() -> Args {
    let a: Vec<String> = std::env::args().collect();
    let val = |n: &str| {
        a.iter()
            .position(|x| x == n)
            .and_then(|i| a.get(i + 1))
            .cloned()
    };
    let num = |n: &str, d: u64| val(n).and_then(|v| v.parse().ok()).unwrap_or(d);
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007);
    let ops = num("--ops", u64::MAX);
    Args {
        seed: num("--seed", clock),
        ops,
        seconds: num("--seconds", if ops == u64::MAX { 20 } else { u64::MAX / 2 }),
        pages: num("--pages", 96).clamp(16, 4096) as usize,
        check_every: num("--check-every", 16),
        rules: match val("--rules").as_deref() {
            Some("linear") => Some(true),
            Some("whole") => Some(false),
            _ => None,
        },
        dup: !a.iter().any(|x| x == "--no-dup"),
        verbose: a.iter().any(|x| x == "--verbose"),
        jobs: num("--jobs", 1).clamp(1, 64) as usize,
    }
}

/// What the leak check compares.
struct Levels {
    fds: usize,
    maps: usize,
    slab: Option<(u64, u64)>,
    shmem: Option<u64>,
    pat: Option<String>,
}

fn levels() -> Levels {
    // Fold the per-CPU vmstat counters into the global ones (Shmem), and
    // give the VMA slab's per-CPU caches and KASAN's quarantine of freed
    // objects back to it (kmem_cache_shrink()): then its active objects are
    // the VMAs in use, not the ones freed last.
    let _ = std::fs::write("/proc/sys/vm/stat_refresh", "1");
    let _ = std::fs::write("/sys/kernel/slab/vm_area_struct/shrink", "1");
    Levels {
        fds: open_fds(),
        maps: maps_count(),
        slab: vma_slab(),
        shmem: meminfo_kb("Shmem"),
        pat: pat_lines(),
    }
}

/// The test device's PAT_WC memory (its GET_PAT_BASE), once known: 0 before.
static PAT_BASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The lines of the x86 PAT memtype list for the test device's PAT_WC
/// memory, the only memory the arena maps that PAT lists (vgem and the
/// other flavours map RAM). Other drivers' MMIO mappings come and go in the
/// list meanwhile (ioremap()s of the QXL, bochs, VFIO BARs).
fn pat_lines() -> Option<String> {
    let base = PAT_BASE.load(std::sync::atomic::Ordering::Relaxed);
    if base == 0 {
        return None;
    }
    let end = base + (abi::PAGES * PG) as u64;
    let list = std::fs::read_to_string("/sys/kernel/debug/x86/pat_memtype_list").ok()?;
    let ours = list.lines().filter(|l| {
        l.split("[mem ")
            .nth(1)
            .and_then(|r| r.split('-').next())
            .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
            .is_some_and(|a| a >= base && a < end)
    });
    Some(ours.map(|l| format!("{l}\n")).collect())
}

/// One run of the model with `seed`, at most `ops` operations: prints its
/// comment lines and its KTAP result line, numbered `number`; unmaps and
/// closes everything it made. Returns whether it failed.
fn run_model(args: &Args, seed: u64, ops: u64, number: usize) -> bool {
    let name = format!("model seed={seed}");
    TEST_NO.store(number, Ordering::Relaxed);
    let own = (args.jobs > 1).then(|| (open_fds(), file_mappings()));
    let mut rng = Rng(seed);
    let npages = args.pages + 2 * MARGIN;
    let base = match reserve_region(&mut rng, npages) {
        Ok(b) => b,
        Err(e) => {
            println!("# {e}");
            println!("not ok {number} {name}");
            return true;
        }
    };
    let mut w = World {
        seed,
        rng,
        base,
        npages,
        vmas: Vec::new(),
        overlay: vec![None; npages],
        dead: vec![false; npages],
        objs: Vec::new(),
        mems: Vec::new(),
        next_anon: 0,
        anon_obj: 0,
        dev: None,
        vgem: None,
        tmpfs_path: None,
        dup: args.dup,
        verbose: args.verbose,
        op: 0,
        op_text: String::new(),
        maps_a: Vec::with_capacity(1 << 20),
        maps_b: Vec::with_capacity(1 << 20),
        stats: Stats::default(),
    };
    let notes = match w.setup_objects(args.rules, number == 1) {
        Ok(n) => n,
        Err(e) => vec![format!("setup failed: {e}")],
    };
    let base_page = w.base_page();
    let anon = w.anon_obj;
    w.vmas.push(Vma {
        start: 0,
        end: npages,
        obj: anon,
        pgoff: base_page,
        prot: NONE,
        shared: false,
        anon: None,
        tainted: false,
    });
    println!(
        "# model: seed={seed} arena {:#x}-{:#x} ({} pages + {MARGIN} margin pages either side), objects: {}",
        w.addr(0),
        w.addr(npages),
        args.pages,
        w.objs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    for n in &notes {
        println!("# {n}");
    }
    // SAFETY: installs a handler that only writes and _exits.
    unsafe {
        libc::signal(libc::SIGSEGV, on_fault as *const () as libc::sighandler_t);
        libc::signal(libc::SIGBUS, on_fault as *const () as libc::sighandler_t);
    }
    let t0 = Instant::now();
    let limit = Duration::from_secs(args.seconds);
    let mut failure = None;
    if let Err(e) = w.check_maps() {
        failure = Some(format!("before the first operation: {e}"));
    }
    while failure.is_none() && w.op < ops && t0.elapsed() < limit {
        w.op += 1;
        w.stats.ops += 1;
        if let Err(e) = w.step(args.check_every) {
            failure = Some(format!(
                "seed={seed} op {}: {}\n# {}",
                w.op,
                w.op_text,
                e.replace('\n', "\n# ").replace("\n# # ", "\n# ")
            ));
        }
    }
    if failure.is_none() {
        w.begin("final check of every page".into());
        if let Err(e) = w.check_maps().and_then(|_| w.check_all_pages()) {
            failure = Some(format!("seed={seed} after op {}: {e}", w.op));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    // SAFETY: back to the default action: the model's memory goes now.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
    let s = &w.stats;
    println!(
        "# {} ops in {secs:.1} s ({:.0} ops/s), {} pages checked, {} forks",
        s.ops,
        s.ops as f64 / secs.max(1e-9),
        s.pages_checked,
        s.forks
    );
    println!(
        "# ok/failed: {}",
        s.by_kind
            .iter()
            .map(|(k, (a, b))| format!("{k} {a}/{b}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "# DUP successes by source: {}; DUP errors: {}",
        s.dup_ok_by_obj
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        s.dup_err
            .iter()
            .map(|(e, n)| format!("{} {n}", Errno::from_raw(*e)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ops_done = w.op;

    // Everything unmapped and closed, for the leak check.
    // SAFETY: the region is this program's; nothing references it now.
    unsafe { libc::munmap(w.base as *mut libc::c_void, npages * PG) };
    if let Some(v) = w.vgem.take() {
        let _ = drm_ffi::mode::dumbbuffer::destroy(v.card.as_fd(), v.handle);
    }
    if let Some(p) = w.tmpfs_path.take() {
        let _ = std::fs::remove_file(p);
    }
    drop(w);
    // A worker of --jobs checks its own fds and file mappings, which go with
    // it: the same fds open, the same mappings of files and devices (a
    // duplicate left outside the arena would be one). Anonymous mappings
    // are malloc()'s, which keeps what it took.
    let mut leak = None;
    if let Some((fds0, files0)) = own {
        let (fds1, files1) = (open_fds(), file_mappings());
        println!(
            "# worker leak check: open fds {fds0} -> {fds1}, mappings of files {} -> {}",
            files0.len(),
            files1.len()
        );
        if fds0 != fds1 || files0 != files1 {
            leak = Some(format!(
                "open fds {fds0} -> {fds1}; mappings of files before:\n{}\nafter:\n{}",
                files0.join("\n"),
                files1.join("\n")
            ));
        }
    }
    match (&failure, &leak) {
        (Some(f), _) => {
            println!("# FAILED: {f}");
            println!("not ok {number} {name} ops={ops_done}");
        }
        (None, Some(l)) => {
            println!("# LEAK: {}", l.replace('\n', "\n# "));
            println!("not ok {number} {name} ops={ops_done}");
        }
        (None, None) => println!("ok {number} {name} ops={ops_done}"),
    }
    failure.is_some() || leak.is_some()
}

/// `--jobs N`: N worker processes run the model at once, with seeds `seed`
/// to `seed + N - 1` and the operations shared out, each in its own arena;
/// their output is printed in order, each after its worker ends. Returns
/// how many failed (or ended without their result line).
fn run_workers(args: &Args) -> usize {
    let jobs = args.jobs as u64;
    let mut workers = Vec::new();
    for k in 0..args.jobs {
        let seed = args.seed.wrapping_add(k as u64);
        let ops = if args.ops == u64::MAX {
            u64::MAX
        } else {
            args.ops / jobs + u64::from((k as u64) < args.ops % jobs)
        };
        let (r, wr) = nix::unistd::pipe().expect("pipe");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        // SAFETY: the program has one thread; the child runs the model and
        // _exits.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                drop(r);
                // SAFETY: fd 1 becomes the pipe; Rust's stdout writes to fd 1.
                unsafe { libc::dup2(wr.as_raw_fd(), 1) };
                drop(wr);
                let failed = run_model(args, seed, ops, k + 1);
                let _ = std::io::Write::flush(&mut std::io::stdout());
                // SAFETY: leaves without the parent's exit handlers.
                unsafe { libc::_exit(i32::from(failed)) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(wr);
                workers.push((child, r, seed));
            }
        }
    }
    // Read in order: a later worker whose output outgrows the pipe (64 KiB:
    // --verbose) waits for the earlier ones to end, its clock running. No
    // reader threads: their stacks would count as VMAs of this process.
    let t0 = Instant::now();
    let mut failed = 0;
    let mut total = 0u64;
    for (k, (pid, r, seed)) in workers.into_iter().enumerate() {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut text);
        let status = nix::sys::wait::waitpid(pid, None);
        let clean = matches!(status, Ok(nix::sys::wait::WaitStatus::Exited(_, 0)));
        let ok_line = format!("ok {} model seed={seed} ops=", k + 1);
        let not_ok = format!("not ok {} ", k + 1);
        let result = text
            .lines()
            .find(|l| l.starts_with(&ok_line) || l.starts_with(&not_ok))
            .map(str::to_string);
        match result {
            Some(l) if l.starts_with(&ok_line) && clean => {
                total += l[ok_line.len()..].parse::<u64>().unwrap_or(0);
            }
            Some(l) if l.starts_with(&ok_line) => {
                // Its result line said ok, its end did not.
                text = text.replace(
                    &l,
                    &format!("not ok {} model seed={seed}: ended with {status:?}", k + 1),
                );
                failed += 1;
            }
            Some(_) => failed += 1,
            None => {
                text.push_str(&format!(
                    "not ok {} model seed={seed}: the worker ended with {status:?} and no result\n",
                    k + 1
                ));
                failed += 1;
            }
        }
        print!("{text}");
    }
    println!(
        "# {total} ops by {} workers in {:.1} s",
        args.jobs,
        t0.elapsed().as_secs_f64()
    );
    failed
}

fn main() {
    let args = args();
    assert_eq!(page(), PG, "the model assumes 4 KiB pages");
    let leak_no = args.jobs + 1;
    println!("KTAP version 1");
    println!("1..{leak_no}");
    if args.dup && !mremap_dup::is_supported() {
        for k in 1..=args.jobs {
            println!("ok {k} model # SKIP MREMAP_DUP not supported by this kernel");
        }
        println!("ok {leak_no} model leak check # SKIP MREMAP_DUP not supported by this kernel");
        println!("# Totals: pass:0 fail:0 skip:{leak_no}");
        return;
    }
    // Opening the test device records its PAT_WC memory (PAT_BASE), whose
    // PAT entries the leak check compares.
    drop(Dev::open());
    let start_levels = levels();
    let dev = Dev::open();
    let dev_counts0 = dev.as_ref().map(|d| d.counts());
    let failed_runs = if args.jobs == 1 {
        usize::from(run_model(&args, args.seed, args.ops, 1))
    } else {
        run_workers(&args)
    };
    let dev_counts1 = dev.as_ref().map(|d| d.counts());
    drop(dev);
    let mut leaks = Vec::new();
    let mut end_levels = levels();
    let tol = start_levels.slab.map_or(0, |(_, per)| per * (ncpus() + 1));
    for _ in 0..50 {
        let slab_ok = match (start_levels.slab, end_levels.slab) {
            (Some((a, _)), Some((b, _))) => b <= a + tol,
            _ => true,
        };
        if slab_ok && end_levels.shmem == start_levels.shmem {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        end_levels = levels();
    }
    let (a, b) = (&start_levels, &end_levels);
    println!(
        "# leak check: open fds {} -> {}, VMAs of the process {} -> {}",
        a.fds, b.fds, a.maps, b.maps
    );
    if a.fds != b.fds {
        leaks.push(format!("open fds {} -> {}", a.fds, b.fds));
    }
    if a.maps != b.maps {
        leaks.push(format!("VMAs of the process {} -> {}", a.maps, b.maps));
    }
    match (a.slab, b.slab) {
        (Some((x, per)), Some((y, _))) => {
            println!("# leak check: vm_area_struct active objects {x} -> {y} (tolerance +{tol}: {per} per slab x ({} CPUs + 1))", ncpus());
            if y > x + tol {
                leaks.push(format!(
                    "vm_area_struct active objects {x} -> {y}, over the tolerance {tol}"
                ));
            }
        }
        _ => {
            println!("# leak check: no vm_area_struct in /proc/slabinfo (not root?): not compared")
        }
    }
    match (a.shmem, b.shmem) {
        (Some(x), Some(y)) => {
            println!("# leak check: Shmem {x} kB -> {y} kB");
            if x != y {
                leaks.push(format!("Shmem {x} kB -> {y} kB"));
            }
        }
        _ => println!("# leak check: no Shmem in /proc/meminfo"),
    }
    match (dev_counts0, dev_counts1) {
        (Some((o0, c0)), Some((o1, c1))) => {
            let d: Vec<String> = (0..o0.len())
                .map(|f| {
                    format!(
                        "{}: +{} opens +{} closes",
                        FLAVOURS[f].name,
                        o1[f] - o0[f],
                        c1[f] - c0[f]
                    )
                })
                .collect();
            println!("# leak check: test device vm_ops {}", d.join(", "));
            for f in 0..o0.len() {
                if o1[f] - o0[f] != c1[f] - c0[f] {
                    leaks.push(format!(
                        "test device {}: {} opens, {} closes",
                        FLAVOURS[f].name,
                        o1[f] - o0[f],
                        c1[f] - c0[f]
                    ));
                }
            }
        }
        _ => println!("# leak check: no test device"),
    }
    match (&a.pat, &b.pat) {
        (Some(x), Some(y)) => {
            println!(
                "# leak check: PAT memtype list {} -> {} lines",
                x.lines().count(),
                y.lines().count()
            );
            if x != y {
                leaks.push(format!(
                    "PAT memtype list changed:\n# before:\n{x}\n# after:\n{y}"
                ));
            }
        }
        _ => println!("# leak check: no PAT_WC memory or no /sys/kernel/debug/x86/pat_memtype_list: not compared"),
    }
    let leaked = !leaks.is_empty();
    for l in &leaks {
        println!("# LEAK: {}", l.replace('\n', "\n# "));
    }
    let failed = failed_runs > 0;
    if failed {
        println!("ok {leak_no} model leak check # SKIP the model run failed");
    } else if leaked {
        println!("not ok {leak_no} model leak check");
    } else {
        println!("ok {leak_no} model leak check");
    }
    let leak_failed = usize::from(!failed && leaked);
    let fails = failed_runs + leak_failed;
    println!(
        "# Totals: pass:{} fail:{fails} skip:{}",
        args.jobs - failed_runs + usize::from(!failed && !leaked),
        usize::from(failed)
    );
    std::process::exit(i32::from(fails > 0));
}
