// SPDX-License-Identifier: GPL-2.0

//! Benchmarks of MREMAP_DUP, run in the guest by scripts/bench.sh, which
//! turns what this prints into ratios (scripts/bench-report.py): every
//! number reported is a ratio to an alternative measured in the same run.
//!
//! `mremap-dup-bench run [OPTIONS]` measures, for each memory kind (memfd,
//! shmem, a file on ext4, a vgem BO, a QXL VRAM BO, each flavour of the test
//! device) and each size, with the original mapping fully present:
//!
//! - `dup`: MREMAP_DUP|MREMAP_FIXED into a PROT_NONE reservation below 4 GiB;
//! - `dup_read`, `dup_write`: the same, then one read (write) of a word of
//!   every page through the duplicate;
//! - `mmap_read`, `mmap_write`: a second mmap(fd) at the same place
//!   (MAP_FIXED over the reservation), then the same touch;
//! - `populate_read`: mmap(fd, MAP_POPULATE), then a read of every page;
//! - `legacy_read`: mremap(old, 0, len, MREMAP_MAYMOVE|MREMAP_FIXED), then a
//!   read of every page (where the kernel allows it);
//! - `copy_in`: one memcpy of the buffer into a shadow buffer (private
//!   anonymous memory, pre-faulted); `copy_cycle`: into it and back, what
//!   WoW64 does today per map/unmap;
//! - `munmap_dup`, `munmap_mmap`: munmap of a touched duplicate, of a
//!   touched second mmap(fd);
//! - `pass_dup`, `pass_orig`: a second read pass over every page, through
//!   the duplicate after its first touch, and through the original;
//! - `dup_empty`, `mmap`: DUP of a mapping with no present entries (a fresh
//!   mmap(fd), or shmem after MADV_DONTNEED), and a second mmap(fd) alone;
//! - `steady_dup`, `steady_shadow`: the WoW64 steady state, per cycle over
//!   `--cycles` map/use/unmap cycles of a persistent driver mapping (use:
//!   write a word of every page): one duplicate made once and reused, vs a
//!   copy into the shadow buffer and back every cycle;
//!
//! and, for a 64 KiB memfd, `dup` and `mmap` against the number of VMAs in
//! the process (`--vmas`).
//!
//! The methods on one object run in rounds, each once per round, in an
//! order shuffled anew for each round (from a fixed seed). The rounds come
//! in groups, so that no method pays for work another leaves behind that
//! it does not leave itself: `mmap` and `dup_empty`, the syscalls alone
//! (deferred frees of page tables and VMA tree nodes); `dup` of the
//! present original; the methods that touch every page; for ext4, the
//! methods that start from clean pages (which leave the original's entries
//! read-only).
//! Output, one line each, tab-separated: `R kind size method median p25 p75
//! min max n faults` (nanoseconds; the median number of page faults in the
//! timed part), `T kind size method t1,t2,...` (the times in round order),
//! the same with kind `vmas` and the number of extra VMAs for size,
//! `S kind size method reason` for what could not be measured, `#` comments.
//!
//! `mremap-dup-bench lockhold [--size SIZE] [--seconds N]`: how long a
//! DUP of a large, fully present vgem buffer keeps other users of the DRM
//! device's address space waiting. Every GEM mmap of a device shares one
//! `address_space` (the device's anonymous inode), whose `i_mmap_rwsem` the
//! copy of the entries takes for writing, one PTE table at a time. A second
//! process loops mmap() + munmap() of a small buffer of the same device,
//! which take the same lock for writing (link and unlink of its VMA), and
//! records each pair's latency, while the first process: sleeps (idle);
//! copies memory without the lock (cpu, the CPU contention alone); loops
//! DUP + munmap of the large buffer (dup). Printed: the victim's latency
//! percentiles and maximum per scenario, and the DUP's own median time
//! (with the lock held for the whole copy, the victim's maximum would be
//! about one DUP; held per PTE table, about one table's copy).
//!
//! `mremap-dup-bench fork`: fork() of a process with 64 MiB of populated
//! private memory (the loop the series threads a destination address
//! through), for a patched/unpatched comparison (`scripts/bench.sh --fork`).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mremap_dup::{mremap_raw, RemapFlags as F};
use nix::errno::Errno;

#[path = "../../kernel-rust/testdev_abi.rs"]
mod abi;
#[path = "card.rs"]
mod card;

const FORK_SHARED: usize = 16 << 20;
const FORK_PRIVATE: usize = 64 << 20;
const FORK_ROUNDS: usize = 21;
const MOVE_LEN: usize = 16 << 20;
const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;

fn page() -> usize {
    mremap_dup::page_size()
}

/// mmap(2); `Err` with the errno.
fn mmap(addr: usize, len: usize, prot: i32, flags: i32, fd: i32, off: u64) -> Result<usize, Errno> {
    // SAFETY: callers pass MAP_FIXED only over ranges the benchmark owns.
    let p = unsafe { libc::mmap(addr as *mut _, len, prot, flags, fd, off as libc::off_t) };
    if p == libc::MAP_FAILED {
        Err(Errno::last())
    } else {
        Ok(p as usize)
    }
}

fn munmap(addr: usize, len: usize) {
    // SAFETY: the range is a mapping owned by the benchmark.
    unsafe { libc::munmap(addr as *mut _, len) };
}

/// A PROT_NONE reservation, below 4 GiB (where WoW64 needs the second view).
fn reserve(len: usize) -> usize {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let addr = mmap(1 << 30, len, libc::PROT_NONE, flags, -1, 0).expect("reservation");
    assert!(
        addr + len <= 1 << 32,
        "reservation at {addr:#x} is not below 4 GiB"
    );
    addr
}

/// Puts the reservation back over `[addr, addr + len)` (after a second view
/// replaced it, or was unmapped).
fn rereserve(addr: usize, len: usize) {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED;
    mmap(addr, len, libc::PROT_NONE, flags, -1, 0).expect("re-reservation");
}

/// MREMAP_DUP|MREMAP_FIXED of `[src, src + len)` onto `dst`.
fn dup_fixed(src: usize, len: usize, dst: usize) -> Result<usize, Errno> {
    // SAFETY: dst is a reservation the benchmark owns.
    unsafe { mremap_raw(src, len, len, F::DUP | F::FIXED, dst) }
}

/// Reads one word of every page.
fn touch_read(addr: usize, len: usize) -> u64 {
    let mut sum = 0u64;
    for off in (0..len).step_by(page()) {
        // SAFETY: [addr, addr + len) is a readable mapping.
        sum = sum.wrapping_add(unsafe { ((addr + off) as *const u64).read_volatile() });
    }
    sum
}

/// Writes one word of every page.
fn touch_write(addr: usize, len: usize, v: u64) {
    for off in (0..len).step_by(page()) {
        // SAFETY: [addr, addr + len) is a writable mapping.
        unsafe { ((addr + off) as *mut u64).write_volatile(v) };
    }
}

fn copy(from: usize, to: usize, len: usize) {
    // SAFETY: both are mappings of len bytes that do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(from as *const u8, to as *mut u8, len) };
}

/// Page faults (minor and major) of the process so far.
fn faults() -> u64 {
    // SAFETY: getrusage() fills the struct it is given.
    let ru = unsafe {
        let mut ru = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    (ru.ru_minflt + ru.ru_majflt) as u64
}

/// Page faults during the last [`time`].
static LAST_FAULTS: AtomicU64 = AtomicU64::new(0);

/// The time `f` takes; the page faults it took go to [`LAST_FAULTS`].
fn time(f: impl FnOnce()) -> Duration {
    let f0 = faults();
    let t = Instant::now();
    f();
    let d = t.elapsed();
    LAST_FAULTS.store(faults() - f0, Ordering::Relaxed);
    d
}

/// How many times to repeat a measurement.
#[derive(Clone, Copy)]
struct Reps {
    /// At least this many timed runs ...
    min: usize,
    /// ... and more until this much time was spent, up to `max` runs.
    budget: Duration,
    max: usize,
}

/// A memory object and its original mapping, fully present.
struct Object {
    /// What to mmap for a second mapping: (fd, offset); None for shmem.
    fd: Option<(OwnedFd, u64)>,
    /// The original mapping.
    orig: usize,
    len: usize,
    /// Run when the object goes (BO handles, files).
    cleanup: Option<Box<dyn FnOnce()>>,
    /// A file whose pages are written back (ext4): fdatasync() makes every
    /// page clean.
    writeback: bool,
}

impl Drop for Object {
    fn drop(&mut self) {
        munmap(self.orig, self.len);
        if let Some(f) = self.cleanup.take() {
            f();
        }
    }
}

impl Object {
    fn new(fd: Option<(OwnedFd, u64)>, len: usize) -> Result<Self, String> {
        let orig = match &fd {
            Some((fd, off)) => mmap(0, len, RW, libc::MAP_SHARED, fd.as_raw_fd(), *off),
            None => mmap(0, len, RW, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0),
        }
        .map_err(|e| format!("mmap of the original: {e}"))?;
        Ok(Self {
            fd,
            orig,
            len,
            cleanup: None,
            writeback: false,
        })
    }

    /// A second mmap of the object at `addr` (MAP_FIXED), if it has an fd.
    fn map_at(&self, addr: usize, extra: i32) -> Option<usize> {
        let (fd, off) = self.fd.as_ref()?;
        let flags = libc::MAP_SHARED | libc::MAP_FIXED | extra;
        Some(mmap(addr, self.len, RW, flags, fd.as_raw_fd(), *off).expect("second mmap"))
    }
}

fn memfd(len: usize) -> Result<OwnedFd, String> {
    let name = CString::new("bench").unwrap();
    // SAFETY: name is a valid C string.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", Errno::last()));
    }
    // SAFETY: a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    ftruncate(&fd, len)?;
    Ok(fd)
}

fn ftruncate(fd: &OwnedFd, len: usize) -> Result<(), String> {
    // SAFETY: a plain system call on an open fd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(format!("ftruncate: {}", Errno::last()));
    }
    Ok(())
}

/// The memory kinds, by name.
#[derive(Clone)]
enum Kind {
    Memfd,
    Shmem,
    /// A file in this directory (a page-cache filesystem: ext4).
    File(String),
    Vgem,
    QxlVram,
    Testdev(usize),
}

fn testdev_name(f: usize) -> &'static str {
    match f {
        abi::REMAP_PFN => "testdev-remap_pfn",
        abi::FAULT_PFN => "testdev-fault_pfn",
        abi::MIXED => "testdev-mixed",
        abi::DONTCOPY => "testdev-dontcopy",
        abi::PAT_WC => "testdev-pat_wc",
        abi::FAULT_REL => "testdev-fault_rel",
        abi::MREMAP_HOOK => "testdev-mremap_hook",
        _ => "testdev-unknown",
    }
}

impl Kind {
    fn name(&self) -> String {
        match self {
            Kind::Memfd => "memfd".into(),
            Kind::Shmem => "shmem".into(),
            Kind::File(_) => "ext4".into(),
            Kind::Vgem => "vgem".into(),
            Kind::QxlVram => "qxl-vram".into(),
            Kind::Testdev(f) => testdev_name(*f).into(),
        }
    }

    /// The object of `len` bytes with its original mapping, every page
    /// written once (present, and dirty where that matters).
    fn create(&self, len: usize) -> Result<Object, String> {
        let obj = match self {
            Kind::Memfd => Object::new(Some((memfd(len)?, 0)), len)?,
            Kind::Shmem => Object::new(None, len)?,
            Kind::File(dir) => {
                let path = format!("{dir}/bench-{len}");
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(|e| format!("{path}: {e}"))?;
                let fd: OwnedFd = f.into();
                ftruncate(&fd, len)?;
                let mut o = Object::new(Some((fd, 0)), len)?;
                o.cleanup = Some(Box::new(move || {
                    let _ = std::fs::remove_file(&path);
                }));
                o.writeback = true;
                o
            }
            Kind::Vgem => {
                let card = card::open_card("vgem")?;
                // 1024 pixels of 4 bytes: one page per row.
                let rows = (len / 4096).max(1) as u32;
                let db = drm_ffi::mode::dumbbuffer::create(card.as_fd(), 1024, rows, 32, 0)
                    .map_err(|e| format!("vgem CREATE_DUMB: {e}"))?;
                if db.size as usize != len {
                    return Err(format!("vgem dumb buffer of {} bytes", db.size));
                }
                let map = drm_ffi::mode::dumbbuffer::map(card.as_fd(), db.handle, 0, 0)
                    .map_err(|e| format!("vgem MAP_DUMB: {e}"))?;
                let handle = db.handle;
                let keep = card.try_clone().map_err(|e| e.to_string())?;
                let mut o = Object::new(Some((card, map.offset)), len)?;
                o.cleanup = Some(Box::new(move || {
                    let _ = drm_ffi::mode::dumbbuffer::destroy(keep.as_fd(), handle);
                }));
                o
            }
            Kind::QxlVram => {
                let card = card::open_card("qxl")?;
                let (total, used) = card::qxl_vram_pages()?;
                let bo = (len <= total * page())
                    .then(|| card::qxl_alloc_vram(&card, len).ok())
                    .flatten();
                let Some((handle, offset)) = bo else {
                    return Err(format!(
                        "QXL VRAM too small: {} KiB, {} KiB in use",
                        (total * page()) >> 10,
                        (used * page()) >> 10
                    ));
                };
                let keep = card.try_clone().map_err(|e| e.to_string())?;
                let mut o = Object::new(Some((card, offset)), len)?;
                o.cleanup = Some(Box::new(move || {
                    let _ = drm_ffi::gem::close(keep.as_fd(), handle);
                }));
                o
            }
            Kind::Testdev(f) => {
                if len > abi::PAGES * page() {
                    return Err(format!("the test device maps at most {} pages", abi::PAGES));
                }
                let dev = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(abi::DEV_PATH.to_str().unwrap_or_default())
                    .map_err(|e| format!("test device: {e} (module not loaded?)"))?;
                let off = abi::flavour_offset(*f, page()) as u64;
                Object::new(Some((dev.into(), off)), len)?
            }
        };
        touch_write(obj.orig, len, 0x5a5a);
        Ok(obj)
    }
}

struct Opts {
    sizes: Vec<usize>,
    kinds: Vec<Kind>,
    reps: Reps,
    cycles: usize,
    steady_max: usize,
    vmas: Vec<usize>,
}

/// Parses 4K, 16M, 1G, 4096.
fn parse_size(s: &str) -> usize {
    let (num, shift) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    num.parse::<usize>().expect("size") << shift
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

const USAGE: &str = "usage: mremap-dup-bench run [--sizes 4K,16K,..] [--max SIZE] \
[--kinds memfd,shmem,ext4,vgem,qxl,testdev] [--file-dir DIR] [--min-reps N] \
[--max-reps N] [--budget-ms MS] [--cycles N] [--steady-max SIZE] [--vmas 10,1000,30000] | \
lockhold [--size SIZE] [--seconds N] | fork";

fn parse_opts(args: &[String]) -> Opts {
    let mut o = Opts {
        sizes: Vec::new(),
        kinds: Vec::new(),
        reps: Reps {
            min: 7,
            budget: Duration::from_millis(300),
            max: 41,
        },
        cycles: 16,
        steady_max: 256 << 20,
        vmas: vec![10, 1000, 30000],
    };
    let mut max = 1usize << 30;
    let mut kinds = list("memfd,shmem,ext4,vgem,qxl,testdev");
    let mut sizes = None;
    let mut dir = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| panic!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--sizes" => sizes = Some(list(val()).iter().map(|s| parse_size(s)).collect()),
            "--max" => max = parse_size(val()),
            "--kinds" => kinds = list(val()),
            "--file-dir" => dir = Some(val().clone()),
            "--min-reps" => o.reps.min = val().parse().expect("--min-reps"),
            "--max-reps" => o.reps.max = val().parse().expect("--max-reps"),
            "--budget-ms" => o.reps.budget = Duration::from_millis(val().parse().expect("ms")),
            "--cycles" => o.cycles = val().parse().expect("--cycles"),
            "--steady-max" => o.steady_max = parse_size(val()),
            "--vmas" => {
                o.vmas = list(val())
                    .iter()
                    .map(|s| s.parse().expect("--vmas"))
                    .collect()
            }
            _ => panic!("unknown option {a}\n{USAGE}"),
        }
    }
    // Powers of 4 from one page.
    o.sizes = sizes.unwrap_or_else(|| {
        std::iter::successors(Some(page()), |s| Some(s * 4))
            .take_while(|&s| s <= max)
            .collect()
    });
    for k in kinds {
        match k.as_str() {
            "memfd" => o.kinds.push(Kind::Memfd),
            "shmem" => o.kinds.push(Kind::Shmem),
            "ext4" => match &dir {
                Some(d) => o.kinds.push(Kind::File(d.clone())),
                None => println!("S\text4\t0\t-\tno --file-dir"),
            },
            "vgem" => o.kinds.push(Kind::Vgem),
            "qxl" => o.kinds.push(Kind::QxlVram),
            "testdev" => o.kinds.extend((0..abi::FLAVOURS).map(Kind::Testdev)),
            _ => panic!("unknown kind {k}\n{USAGE}"),
        }
    }
    o
}

/// One method: its name and a run of it, which returns the time of its
/// timed part.
type Method<'a> = (&'static str, Box<dyn FnMut() -> Duration + 'a>);

/// The order of the methods in each round: a Fisher-Yates shuffle driven by
/// xorshift64*, from a fixed seed so that a run can be repeated.
struct RoundOrder(u64);

impl RoundOrder {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn shuffled(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
        order
    }
}

/// Runs `methods` in rounds, each method once per round, so that whatever
/// slows the machine down for a while (the host is shared) weighs on all
/// of them alike: one round untimed to warm up, then at least `reps.min`
/// rounds and more until `reps.budget` per method was spent, at most
/// `reps.max`. Prints per method an `R` line (statistics, the median number
/// of page faults) and a `T` line (the times in round order, for ratios of
/// pairs from the same round).
fn measure_rounds(reps: Reps, prefix: &str, mut methods: Vec<Method>) {
    for (_, f) in methods.iter_mut() {
        f();
    }
    let start = Instant::now();
    let budget = reps.budget * methods.len() as u32;
    let mut t: Vec<Vec<u64>> = vec![Vec::new(); methods.len()];
    let mut nf: Vec<Vec<u64>> = vec![Vec::new(); methods.len()];
    let mut rounds = 0;
    let mut order = RoundOrder(0x9e37_79b9_7f4a_7c15);
    while rounds < reps.max && (rounds < reps.min || start.elapsed() < budget) {
        // Each round runs the methods in an order of its own. What a method
        // leaves behind weighs on the one after it: frees deferred to RCU,
        // and under TCG the host's caches and QEMU's TLB, which a method that
        // copies the buffer several times fills. In one fixed order (a
        // rotation keeps it), a method always follows the same one: DUP +
        // read of a 16 MiB memfd, always after steady_shadow, took 2.4 ms
        // (median), and 1.2 ms in a run without the steady-state methods.
        for i in order.shuffled(methods.len()) {
            t[i].push((methods[i].1)().as_nanos() as u64);
            nf[i].push(LAST_FAULTS.load(Ordering::Relaxed));
        }
        rounds += 1;
    }
    for (i, (name, _)) in methods.iter().enumerate() {
        let times: Vec<String> = t[i].iter().map(u64::to_string).collect();
        println!("T\t{prefix}\t{name}\t{}", times.join(","));
        let mut v = t[i].clone();
        v.sort_unstable();
        nf[i].sort_unstable();
        let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
        println!(
            "R\t{prefix}\t{name}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            q(0.5),
            q(0.25),
            q(0.75),
            v[0],
            v[v.len() - 1],
            v.len(),
            nf[i][nf[i].len() / 2]
        );
    }
}

/// Every method on one object of one kind and size.
fn bench_object(o: &Opts, kind: &str, obj: &Object, shadow: usize, res: usize) {
    let len = obj.len;
    let orig = obj.orig;
    let skip = |m: &str, why: &str| println!("S\t{kind}\t{len}\t{m}\t{why}");

    // Can it be duplicated at all?
    if let Err(e) = dup_fixed(orig, len, res) {
        skip("dup", &format!("MREMAP_DUP: {e}"));
        return;
    }
    rereserve(res, len);

    // DUP and mmap() alone (`calls`) run in rounds of their own, before the
    // methods that touch every page (`m`): those leave work behind, page
    // tables and VMA tree nodes freed by RCU, whose callbacks then run in
    // softirqs during whatever syscall comes next, and would be counted as
    // part of a DUP or an mmap() of a few microseconds (16 cycles of
    // steady_dup made a later DUP of 256 KiB 4 times slower). A DUP of the
    // fully present original leaves the same work (the page tables of the
    // duplicate it unmaps): it runs in rounds of its own too (`dup_m`), or
    // the no-entries DUP or the mmap() after it would pay for it (at 1 GiB,
    // about 100 us against 10-25).
    let mut calls: Vec<Method> = Vec::new();
    let mut dup_m: Vec<Method> = Vec::new();
    let mut m: Vec<Method> = Vec::new();
    let mut clean_m: Vec<Method> = Vec::new();
    dup_m.push((
        "dup",
        Box::new(|| {
            let t = time(|| {
                dup_fixed(orig, len, res).expect("DUP");
            });
            rereserve(res, len);
            t
        }),
    ));
    m.push((
        "dup_read",
        Box::new(|| {
            let t = time(|| {
                dup_fixed(orig, len, res).expect("DUP");
                touch_read(res, len);
            });
            rereserve(res, len);
            t
        }),
    ));
    m.push((
        "dup_write",
        Box::new(|| {
            let t = time(|| {
                dup_fixed(orig, len, res).expect("DUP");
                touch_write(res, len, 1);
            });
            rereserve(res, len);
            t
        }),
    ));
    m.push((
        "munmap_dup",
        Box::new(|| {
            dup_fixed(orig, len, res).expect("DUP");
            touch_read(res, len);
            let t = time(|| munmap(res, len));
            rereserve(res, len);
            t
        }),
    ));
    if obj.fd.is_some() {
        m.push((
            "mmap_read",
            Box::new(|| {
                let t = time(|| {
                    obj.map_at(res, 0);
                    touch_read(res, len);
                });
                rereserve(res, len);
                t
            }),
        ));
        m.push((
            "mmap_write",
            Box::new(|| {
                let t = time(|| {
                    obj.map_at(res, 0);
                    touch_write(res, len, 2);
                });
                rereserve(res, len);
                t
            }),
        ));
        m.push((
            "populate_read",
            Box::new(|| {
                let t = time(|| {
                    obj.map_at(res, libc::MAP_POPULATE);
                    touch_read(res, len);
                });
                rereserve(res, len);
                t
            }),
        ));
        m.push((
            "munmap_mmap",
            Box::new(|| {
                obj.map_at(res, 0);
                touch_read(res, len);
                let t = time(|| munmap(res, len));
                rereserve(res, len);
                t
            }),
        ));
        calls.push((
            "mmap",
            Box::new(|| {
                let t = time(|| {
                    obj.map_at(res, 0);
                });
                rereserve(res, len);
                t
            }),
        ));
    } else {
        for m in [
            "mmap_read",
            "mmap_write",
            "populate_read",
            "munmap_mmap",
            "mmap",
        ] {
            skip(m, "no fd to mmap (anonymous shared memory)");
        }
    }
    // SAFETY: the destination is our reservation.
    let legacy = move || unsafe { mremap_raw(orig, 0, len, F::MAYMOVE | F::FIXED, res) };
    match legacy() {
        Err(e) => skip(
            "legacy_read",
            &format!("mremap(old, 0, len, MAYMOVE|FIXED): {e}"),
        ),
        Ok(_) => {
            rereserve(res, len);
            m.push((
                "legacy_read",
                Box::new(move || {
                    let t = time(|| {
                        legacy().expect("legacy mremap");
                        touch_read(res, len);
                    });
                    rereserve(res, len);
                    t
                }),
            ));
        }
    }
    m.push(("copy_in", Box::new(|| time(|| copy(orig, shadow, len)))));
    m.push((
        "copy_cycle",
        Box::new(|| {
            time(|| {
                copy(orig, shadow, len);
                copy(shadow, orig, len);
            })
        }),
    ));
    // A second pass over a duplicate already touched once, and over the
    // original.
    m.push((
        "pass_dup",
        Box::new(|| {
            dup_fixed(orig, len, res).expect("DUP");
            touch_read(res, len);
            let t = time(|| {
                std::hint::black_box(touch_read(res, len));
            });
            rereserve(res, len);
            t
        }),
    ));
    m.push((
        "pass_orig",
        Box::new(|| {
            // A first pass too: other methods' munmaps flushed the TLB
            // (QEMU's TLB too, which pass_dup's first touch filled).
            touch_read(orig, len);
            time(|| {
                std::hint::black_box(touch_read(orig, len));
            })
        }),
    ));
    // A file with writeback: once a page is written back, it is clean and
    // the filesystem wants to hear of the next write to it (->page_mkwrite),
    // so every mapping of it maps it read-only, the original too, and a
    // duplicate copies the original's entries as they are. Which pages of
    // the original are clean depends on when writeback ran; fdatasync()
    // first makes them all clean. Then writing every page through the
    // duplicate, through the original itself and through a second mmap(),
    // each from that same state, in rounds of their own: these leave the
    // original's entries read-only (the methods in `m` start from every
    // page written through the original).
    // Each run writes the whole file back first: up to 256 MiB (at 1 GiB
    // that is tens of seconds a run under TCG, through the loop device).
    let clean_max = 256 << 20;
    if obj.writeback && len > clean_max {
        for m in ["clean_dup_write", "clean_orig_write", "clean_mmap_write"] {
            skip(
                m,
                "above 256 MiB: fdatasync() of the whole file before each run",
            );
        }
    }
    if let (true, true, Some((fd, _))) = (obj.writeback, len <= clean_max, &obj.fd) {
        let fd = fd.as_raw_fd();
        let clean = move || {
            // SAFETY: a plain system call on an open fd.
            assert_eq!(unsafe { libc::fdatasync(fd) }, 0, "fdatasync");
        };
        clean_m.push((
            "clean_dup_write",
            Box::new(move || {
                clean();
                let t = time(|| {
                    dup_fixed(orig, len, res).expect("DUP");
                    touch_write(res, len, 4);
                });
                rereserve(res, len);
                t
            }),
        ));
        clean_m.push((
            "clean_orig_write",
            Box::new(move || {
                clean();
                time(|| touch_write(orig, len, 5))
            }),
        ));
        clean_m.push((
            "clean_mmap_write",
            Box::new(move || {
                clean();
                let t = time(|| {
                    obj.map_at(res, 0);
                    touch_write(res, len, 6);
                });
                rereserve(res, len);
                t
            }),
        ));
    }
    // The first pass over the original after a TLB flush (the unmap of a
    // touched duplicate of the same size): what a first touch costs that
    // the duplicate's entries do not explain. The original's entries are
    // young and dirty; the duplicate's are copied old (and clean, for a
    // shared mapping) as fork()'s are, which under TCG costs nothing
    // measurable (an A/B with a kernel that kept the bits, README).
    m.push((
        "first_pass_orig",
        Box::new(|| {
            dup_fixed(orig, len, res).expect("DUP");
            touch_read(res, len);
            rereserve(res, len);
            time(|| {
                std::hint::black_box(touch_read(orig, len));
            })
        }),
    ));
    // The WoW64 steady state, per cycle.
    let n = o.cycles;
    if len <= o.steady_max {
        m.push((
            "steady_dup",
            Box::new(move || {
                let t = time(|| {
                    dup_fixed(orig, len, res).expect("DUP");
                    for i in 0..n {
                        touch_write(res, len, i as u64);
                    }
                    rereserve(res, len);
                });
                t / n as u32
            }),
        ));
        m.push((
            "steady_shadow",
            Box::new(move || {
                let t = time(|| {
                    for i in 0..n {
                        copy(orig, shadow, len);
                        touch_write(shadow, len, i as u64);
                        copy(shadow, orig, len);
                    }
                });
                t / n as u32
            }),
        ));
    } else {
        for m in ["steady_dup", "steady_shadow"] {
            skip(m, &format!("above --steady-max {}", o.steady_max));
        }
    }
    // No present entries in the source: a fresh mapping of the object, or
    // (shmem, which has no fd) the original after MADV_DONTNEED, refaulted
    // afterwards for the other methods.
    match &obj.fd {
        Some((fd, off)) => calls.push((
            "dup_empty",
            Box::new(move || {
                let src = mmap(0, len, RW, libc::MAP_SHARED, fd.as_raw_fd(), *off).expect("mmap");
                let t = time(|| {
                    dup_fixed(src, len, res).expect("DUP");
                });
                munmap(src, len);
                rereserve(res, len);
                t
            }),
        )),
        // shmem: the refault of every page afterwards belongs with the
        // methods that touch every page.
        None => m.push((
            "dup_empty",
            Box::new(move || {
                // SAFETY: zaps the entries of our own shared mapping; the
                // shmem pages stay.
                unsafe { libc::madvise(orig as *mut _, len, libc::MADV_DONTNEED) };
                let t = time(|| {
                    dup_fixed(orig, len, res).expect("DUP");
                });
                rereserve(res, len);
                touch_write(orig, len, 3);
                t
            }),
        )),
    }
    // A round of 256 MiB or more takes tens of seconds under TCG, and varies
    // less: five rounds at least there.
    let mut reps = o.reps;
    if len >= 256 << 20 {
        reps.min = reps.min.min(5);
    }
    // A pause first, in which the previous object's RCU callbacks run.
    std::thread::sleep(Duration::from_millis(200));
    for group in [calls, dup_m, m, clean_m] {
        if !group.is_empty() {
            measure_rounds(reps, &format!("{kind}\t{len}"), group);
        }
    }
}

/// `dup` and `mmap` of a 64 KiB memfd with `n` more VMAs in the process.
fn bench_vmas(o: &Opts) {
    let len = 64 << 10;
    let obj = match Kind::Memfd.create(len) {
        Ok(obj) => obj,
        Err(e) => return println!("S\tvmas\t{len}\t-\t{e}"),
    };
    let res = reserve(len);
    let (fd, _) = obj.fd.as_ref().unwrap();
    for &n in &o.vmas {
        // n one-page mappings, read-only and read-write in turn so that no
        // two neighbours merge.
        let fill = mmap(
            0,
            n * page(),
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
        .expect("mmap of the filler");
        for i in (0..n).step_by(2) {
            // SAFETY: a page of our own filler mapping.
            unsafe { libc::mprotect((fill + i * page()) as *mut _, page(), RW) };
        }
        let vmas = std::fs::read_to_string("/proc/self/maps")
            .map(|m| m.lines().count())
            .unwrap_or(0);
        println!("# vmas {n}: {vmas} VMAs in the process");
        let fdr = fd.as_raw_fd();
        let flags = libc::MAP_SHARED | libc::MAP_FIXED;
        let m: Vec<Method> = vec![
            (
                "dup",
                Box::new(|| {
                    let t = time(|| {
                        dup_fixed(obj.orig, len, res).expect("DUP");
                    });
                    rereserve(res, len);
                    t
                }),
            ),
            (
                "mmap",
                Box::new(|| {
                    let t = time(|| {
                        mmap(res, len, RW, flags, fdr, 0).expect("mmap");
                    });
                    rereserve(res, len);
                    t
                }),
            ),
        ];
        measure_rounds(o.reps, &format!("vmas\t{n}"), m);
        munmap(fill, n * page());
    }
    munmap(res, len);
}

fn run(args: &[String]) {
    let o = parse_opts(args);
    assert!(mremap_dup::is_supported(), "this kernel has no MREMAP_DUP");
    println!("# page {} sizes {:?}", page(), o.sizes);
    let biggest = *o.sizes.iter().max().unwrap_or(&page());
    // The shadow buffer: private anonymous memory, pre-faulted.
    let shadow = mmap(
        0,
        biggest,
        RW,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
        -1,
        0,
    )
    .expect("shadow buffer");
    for kind in &o.kinds {
        let name = kind.name();
        for &len in &o.sizes {
            let started = Instant::now();
            let obj = match kind.create(len) {
                Ok(obj) => obj,
                Err(e) => {
                    println!("S\t{name}\t{len}\t-\t{e}");
                    continue;
                }
            };
            let res = reserve(len);
            bench_object(&o, &name, &obj, shadow, res);
            munmap(res, len);
            drop(obj);
            println!("# {name} {len}: {:.1} s", started.elapsed().as_secs_f64());
        }
    }
    munmap(shadow, biggest);
    if !o.vmas.is_empty() {
        bench_vmas(&o);
    }
}

fn fork_cost() {
    let flags = libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
    // Shared memory, whose entries fork does not copy (refaultable) ...
    let shared = mmap(0, FORK_SHARED, RW, libc::MAP_SHARED | flags, -1, 0).expect("mmap");
    // ... and private anonymous memory, whose entries fork copies through
    // copy_pte_range() (the path given a destination address).
    // Small pages: a transparent huge page would be copied as one PMD entry
    // by copy_huge_pmd(), which the series does not change.
    let private = mmap(
        0,
        FORK_PRIVATE,
        RW,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    )
    .expect("mmap");
    // SAFETY: our own mapping, before it has any pages.
    unsafe { libc::madvise(private as *mut _, FORK_PRIVATE, libc::MADV_NOHUGEPAGE) };
    touch_write(shared, FORK_SHARED, 1);
    touch_write(private, FORK_PRIVATE, 1);
    // Only the parent's fork() call is timed (that is where the page tables
    // are copied); the child's exit and the wait, which add scheduling
    // noise, are not.
    let mut t: Vec<f64> = (0..FORK_ROUNDS)
        .map(|_| {
            let start = Instant::now();
            // SAFETY: the child only exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(0) };
            }
            let us = start.elapsed().as_secs_f64() * 1e6;
            let mut st = 0;
            // SAFETY: waits for the child just forked.
            unsafe { libc::waitpid(pid, &mut st, 0) };
            us
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // bench.sh reads the median (the field before "us").
    println!(
        "fork() in the parent, 64 MiB private (small pages) + 16 MiB shared populated: median {:.0} us (min {:.0}, max {:.0}, {FORK_ROUNDS} rounds)",
        t[FORK_ROUNDS / 2],
        t[0],
        t[FORK_ROUNDS - 1]
    );
    munmap(shared, FORK_SHARED);
    munmap(private, FORK_PRIVATE);
    move_cost();
}

/// mremap(MREMAP_MAYMOVE|MREMAP_FIXED) of a populated private anonymous
/// mapping of small pages back and forth between two places of a
/// reservation, one and two pages off a PMD boundary, so that
/// move_page_tables() moves PTEs (move_ptes()) rather than whole PMD
/// tables: the move path of mremap.c and copy_vma(), which the series
/// changes. Printed as fork_cost()'s line is.
fn move_cost() {
    let len = MOVE_LEN;
    let pmd = 2 << 20;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let area = mmap(0, 2 * len + 3 * pmd, libc::PROT_NONE, flags, -1, 0).expect("mmap");
    let a = area.div_ceil(pmd) * pmd + page();
    let b = a + len + pmd + page();
    let src = mmap(a, len, RW, flags | libc::MAP_FIXED, -1, 0).expect("mmap");
    // SAFETY: our own mapping; small pages, which move one PTE at a time.
    unsafe { libc::madvise(src as *mut _, len, libc::MADV_NOHUGEPAGE) };
    touch_write(src, len, 1);
    let mut t: Vec<f64> = (0..FORK_ROUNDS)
        .map(|i| {
            let (from, to) = if i % 2 == 0 { (a, b) } else { (b, a) };
            let start = Instant::now();
            // SAFETY: moves our own mapping onto our own reservation.
            let r = unsafe { mremap_raw(from, len, len, F::MAYMOVE | F::FIXED, to) };
            let us = start.elapsed().as_secs_f64() * 1e6;
            assert_eq!(r, Ok(to), "mremap move");
            us
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "mremap() move of {} MiB private populated, PTE by PTE: median {:.0} us (min {:.0}, max {:.0}, {FORK_ROUNDS} rounds)",
        len >> 20,
        t[FORK_ROUNDS / 2],
        t[0],
        t[FORK_ROUNDS - 1]
    );
    munmap(area, 2 * len + 3 * pmd);
}

/// A vgem dumb buffer of `len` bytes (one 4096-byte row a page), mapped
/// and written once; its handle stays open with `card`.
fn vgem_buffer(card: &OwnedFd, len: usize) -> Result<usize, String> {
    let (_, addr, _) = card::map_dumb(card, 1024, (len / 4096).max(1) as u32)?;
    touch_write(addr, len, 1);
    Ok(addr)
}

/// The victim of [`lockhold`]: mmap() + munmap() of its own 64 KiB buffer
/// of the device until `stop` says so; the latency of each pair, in µs.
fn lockhold_victim(card: &OwnedFd, stop: &AtomicU64) -> Vec<f64> {
    let len = 64 << 10;
    let (handle, buf, _) =
        card::map_dumb(card, 1024, (len / 4096) as u32).expect("victim's buffer");
    munmap(buf, len);
    let off = drm_ffi::mode::dumbbuffer::map(card.as_fd(), handle, 0, 0)
        .expect("MAP_DUMB")
        .offset;
    let mut lat = Vec::new();
    while stop.load(Ordering::Relaxed) == 0 {
        let t = Instant::now();
        let a = mmap(0, len, RW, libc::MAP_SHARED, card.as_raw_fd(), off).expect("victim mmap");
        munmap(a, len);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat
}

fn lockhold(args: &[String]) {
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let len = arg("--size").map_or(256 << 20, |s| parse_size(s));
    let seconds: u64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(10);
    assert!(mremap_dup::is_supported(), "this kernel has no MREMAP_DUP");
    let card = card::open_card("vgem").expect("vgem card");
    let big = vgem_buffer(&card, len).expect("the large buffer");
    let res = reserve(len);
    let scratch = mmap(
        0,
        2 << 20,
        RW,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
        -1,
        0,
    )
    .expect("scratch");
    println!(
        "# lockhold: vgem buffer {} MiB, {seconds} s a scenario",
        len >> 20
    );
    println!("scenario\tvictim pairs\tp50 us\tp99 us\tmax us\tDUP median us\tDUPs");
    for scenario in ["idle", "cpu", "dup", "idle"] {
        // The victim in a process of its own (its own mm: only the device's
        // i_mmap_rwsem is shared), reporting through a pipe.
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let stop =
            mmap(0, page(), RW, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0).expect("flag");
        // SAFETY: a page of shared memory that both processes only access
        // as one AtomicU64.
        let flag = unsafe { &*(stop as *const AtomicU64) };
        // SAFETY: the child runs the victim loop and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let lat = lockhold_victim(&card, flag);
            let bytes: Vec<u8> = lat.iter().flat_map(|v| v.to_ne_bytes()).collect();
            // SAFETY: the pipe's write end; then leave at once.
            unsafe {
                for chunk in bytes.chunks(4096) {
                    libc::write(fds[1], chunk.as_ptr().cast(), chunk.len());
                }
                libc::_exit(0);
            }
        }
        // SAFETY: the parent's copy of the write end.
        unsafe { libc::close(fds[1]) };
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut dups = Vec::new();
        while Instant::now() < end {
            match scenario {
                "cpu" => copy(big, scratch, 2 << 20),
                "dup" => {
                    let t = Instant::now();
                    dup_fixed(big, len, res).expect("DUP");
                    dups.push(t.elapsed().as_secs_f64() * 1e6);
                    rereserve(res, len);
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        flag.store(1, Ordering::Relaxed);
        // SAFETY: the read end, owned from here on.
        let mut out = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut bytes).expect("victim's latencies");
        let mut st = 0;
        // SAFETY: waits for the child just forked.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        munmap(stop, page());
        let mut lat: Vec<f64> = bytes
            .chunks_exact(8)
            .map(|c| f64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        dups.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let q = |v: &[f64], f: f64| {
            v.get(((v.len() as f64 - 1.0) * f) as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "{scenario}\t{}\t{:.0}\t{:.0}\t{:.0}\t{:.0}\t{}",
            lat.len(),
            q(&lat, 0.5),
            q(&lat, 0.99),
            q(&lat, 1.0),
            q(&dups, 0.5),
            dups.len()
        );
    }
    munmap(res, len);
    munmap(big, len);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("lockhold") => lockhold(&args[1..]),
        Some("fork") => fork_cost(),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}
