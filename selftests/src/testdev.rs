// SPDX-License-Identifier: GPL-2.0

//! MREMAP_DUP of each device mapping flavour of the Rust test device
//! (kernel-rust/mremap_dup_testdev.rs): PTE content and vm_ops open/close
//! balance, VM_DONTCOPY and vm_ops->mremap refused, and x86 PAT tracking of a write-combining
//! remap_pfn_range() of non-RAM shared by the duplicate, not taken twice
//! and not dropped early: `/sys/kernel/debug/x86/pat_memtype_list` has one
//! entry for both mappings and none after both are unmapped, in either
//! order. Also the device's own contract: no private mappings, and a
//! module that cannot be unloaded while a file or a mapping (a duplicate
//! included) of it exists.
//!
//! The tests that unload the module (`testdev_rmmod_*`,
//! `testdev_pat_base_*`) come last in [`TESTS`] and load it again, from
//! `$MREMAP_DUP_TESTDEV_KO` (set by scripts/guest-test.sh), with the
//! `pat_base` it had, before they end, also when they fail.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};

use nix::errno::Errno;

use crate::check;
use crate::harness::{Context, Failure, Test, TestResult};
use crate::util::*;
use mremap_dup::RemapFlags as F;

#[path = "../../kernel-rust/testdev_abi.rs"]
mod abi;
use abi::{
    flavour_offset, Counts, PatBase, DEV_PATH, DONTCOPY, FAULT_PFN, FAULT_REL, FLAVOURS,
    IOCTL_TYPE, MAGIC, MIXED, MREMAP_HOOK, NAME, NR_GET_CLOSES, NR_GET_OPENS, NR_GET_PAT_BASE,
    PAGES, PAT_WC, REMAP_PFN,
};

const PAT_LIST: &str = "/sys/kernel/debug/x86/pat_memtype_list";
/// The test device's module in sysfs, present while it is loaded.
const SYS_MODULE: &str = "/sys/module/mremap_dup_testdev";
/// Where scripts/guest-test.sh says the module's .ko is.
const KO_ENV: &str = "MREMAP_DUP_TESTDEV_KO";

nix::ioctl_read!(get_opens, IOCTL_TYPE, NR_GET_OPENS, Counts);
nix::ioctl_read!(get_closes, IOCTL_TYPE, NR_GET_CLOSES, Counts);
nix::ioctl_read!(get_pat_base, IOCTL_TYPE, NR_GET_PAT_BASE, PatBase);

fn dev_path() -> &'static str {
    DEV_PATH.to_str().unwrap_or_default()
}

fn open_dev() -> Result<OwnedFd, Failure> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_path())
        .map_err(|e| {
            Failure::Fail(format!(
                "{}: {e} (is mremap_dup_testdev.ko loaded?)",
                dev_path()
            ))
        })?;
    Ok(f.into())
}

/// The opens and closes counted by the device, one per flavour.
fn all_counts(fd: &OwnedFd) -> Result<(Counts, Counts), Failure> {
    let (mut opens, mut closes) = (Counts::default(), Counts::default());
    // SAFETY: the device writes one Counts to the pointer, a live local.
    unsafe { get_opens(fd.as_raw_fd(), &mut opens) }.ctx("GET_OPENS ioctl")?;
    // SAFETY: as above.
    unsafe { get_closes(fd.as_raw_fd(), &mut closes) }.ctx("GET_CLOSES ioctl")?;
    Ok((opens, closes))
}

/// (opens, closes) counted by the device for `flavour`.
fn counts(fd: &OwnedFd, flavour: usize) -> Result<(u64, u64), Failure> {
    let (opens, closes) = all_counts(fd)?;
    Ok((opens[flavour], closes[flavour]))
}

/// The physical address of the PAT_WC flavour's memory (`GET_PAT_BASE`):
/// `ENODEV` when the module has none.
fn pat_base(fd: &OwnedFd) -> Result<u64, Errno> {
    let mut base: PatBase = 0;
    // SAFETY: the device writes one PatBase to the pointer, a live local.
    unsafe { get_pat_base(fd.as_raw_fd(), &mut base) }?;
    Ok(base)
}

fn map_flavour(fd: &OwnedFd, flavour: usize) -> Result<Mapping, Failure> {
    map(
        0,
        PAGES * page(),
        RW,
        libc::MAP_SHARED,
        fd.as_raw_fd(),
        flavour_offset(flavour, page()),
    )
    .ctx(&format!("mmap of flavour {flavour}"))
}

/// Checks that the `PAGES` pages at `addr` are the memory's, in order.
fn check_magic(what: &str, addr: usize) -> TestResult {
    let pages: Vec<usize> = (0..PAGES).collect();
    check_pages(what, addr, &pages)
}

/// DUP of a whole mapping of `flavour`: same PFNs (content both ways),
/// ->open once for the duplicate, ->close once when it goes.
fn flavour_dup(flavour: usize, name: &str) -> TestResult {
    require_dup()?;
    let fd = open_dev()?;
    let orig = map_flavour(&fd, flavour)?;
    check_magic(&format!("{name}: original"), orig.addr)?;
    let (o0, c0) = counts(&fd, flavour)?;
    let res = reserve(PAGES, true)?;
    let dup = dup_raw(orig.addr, orig.len, orig.len, F::DUP | F::FIXED, res.addr)
        .ctx(&format!("{name}: DUP|FIXED"))?;
    let (o1, c1) = counts(&fd, flavour)?;
    check!(
        o1 == o0 + 1 && c1 == c0,
        "{name}: open/close {o0}/{c0} -> {o1}/{c1} after DUP, expected one open"
    );
    check_magic(&format!("{name}: duplicate"), dup)?;
    poke(orig.addr + 8, 0x1234);
    // Write-combining (PAT_WC) stores may sit in a WC buffer: flush them.
    fence(Ordering::SeqCst);
    check!(
        peek(dup + 8) == 0x1234,
        "{name}: write via original not seen via duplicate"
    );
    poke(dup + page() + 8, 0x5678);
    fence(Ordering::SeqCst);
    check!(
        peek(orig.addr + page() + 8) == 0x5678,
        "{name}: write via duplicate not seen via original"
    );
    drop(res);
    let (o2, c2) = counts(&fd, flavour)?;
    check!(o2 == o1 && c2 == c1 + 1, "{name}: open/close {o1}/{c1} -> {o2}/{c2} after munmap of the duplicate, expected one close");
    check_magic(
        &format!("{name}: original after the duplicate is gone"),
        orig.addr,
    )?;
    Ok(())
}

fn testdev_remap_pfn_copied() -> TestResult {
    flavour_dup(REMAP_PFN, "remap_pfn_range, no fault handler")
}

fn testdev_fault_pfn() -> TestResult {
    flavour_dup(FAULT_PFN, "vmf_insert_pfn from ->fault")
}

fn testdev_fault_rel() -> TestResult {
    flavour_dup(
        FAULT_REL,
        "vmf_insert_pfn from ->fault, offset into the VMA",
    )
}

/// Checks that page `i` at `addr` starts with the magic word of memory page
/// `pages[i]`.
fn check_pages(what: &str, addr: usize, pages: &[usize]) -> TestResult {
    for (i, &p) in pages.iter().enumerate() {
        let got = peek(addr + i * page());
        check!(
            got == MAGIC + p as u64,
            "{what}: page {i} starts with {got:#x}, expected memory page {p} ({:#x})",
            MAGIC + p as u64
        );
    }
    Ok(())
}

/// Parts of a `VM_LINEAR_PGOFF` mapping (FAULT_PFN) stitched into one
/// reservation, in another order: the last two pages, then the first. Done
/// before the original is touched, so that the duplicates' pages come from
/// the fault handler with the duplicates' file offsets (madvise() cannot zap
/// a VM_PFNMAP mapping to make them refault later). Each part is one more
/// open, and one more close when it goes.
fn testdev_linear_subranges_stitched() -> TestResult {
    require_dup()?;
    let fd = open_dev()?;
    let orig = map_flavour(&fd, FAULT_PFN)?;
    let (o0, c0) = counts(&fd, FAULT_PFN)?;
    let res = reserve(3, true)?;
    let p = page();
    dup_raw(orig.addr + 2 * p, 2 * p, 2 * p, F::DUP | F::FIXED, res.addr)
        .ctx("DUP|FIXED of pages 2-3")?;
    dup_raw(orig.addr, p, p, F::DUP | F::FIXED, res.addr + 2 * p).ctx("DUP|FIXED of page 0")?;
    let (o1, c1) = counts(&fd, FAULT_PFN)?;
    check!(
        o1 == o0 + 2 && c1 == c0,
        "open/close {o0}/{c0} -> {o1}/{c1} after two DUPs, expected two opens"
    );
    let stitched = [2, 3, 0];
    check_pages("stitched, faulted through the parts", res.addr, &stitched)?;
    poke(res.addr + 8, 0xabcd);
    check!(
        peek(orig.addr + 2 * p + 8) == 0xabcd,
        "write via the stitched view not seen via the original"
    );
    check_magic("original", orig.addr)?;
    drop(res);
    let (o2, c2) = counts(&fd, FAULT_PFN)?;
    check!(
        o2 == o1 && c2 == c1 + 2,
        "open/close {o1}/{c1} -> {o2}/{c2} after munmap of the parts, expected two closes"
    );
    Ok(())
}

/// A part of a populated `VM_LINEAR_PGOFF` mapping: its entries are copied,
/// and are the pages at the part's offsets.
fn testdev_linear_subrange_copied() -> TestResult {
    require_dup()?;
    let fd = open_dev()?;
    let orig = map_flavour(&fd, FAULT_PFN)?;
    check_magic("original", orig.addr)?;
    let res = reserve(2, true)?;
    let p = page();
    dup_raw(orig.addr + p, 2 * p, 2 * p, F::DUP | F::FIXED, res.addr)
        .ctx("DUP|FIXED of pages 1-2")?;
    check_pages("part of a populated mapping", res.addr, &[1, 2])
}

fn testdev_mixedmap_copied() -> TestResult {
    flavour_dup(MIXED, "vm_insert_page (VM_MIXEDMAP)")
}

fn testdev_pat_wc() -> TestResult {
    flavour_dup(
        PAT_WC,
        "remap_pfn_range of the whole VMA, non-RAM, write-combining",
    )
}

/// The physical range of the PAT_WC flavour's memory, as the device reports
/// it (`GET_PAT_BASE`: the `memmap=` region scripts/boot.sh reserves).
fn pat_region(fd: &OwnedFd) -> Result<(u64, u64), Failure> {
    let base = pat_base(fd).ctx(
        "GET_PAT_BASE: the test device has no PAT_WC memory (pat_base= not given or not usable)",
    )?;
    Ok((base, base + (PAGES * page()) as u64))
}

/// The entries of the PAT memtype list inside the PAT_WC region (the rest
/// of the list changes with other drivers' ioremap()s).
fn pat_entries((start, end): (u64, u64)) -> Result<Vec<String>, Failure> {
    let text =
        std::fs::read_to_string(PAT_LIST).ctx(&format!("{PAT_LIST} (debugfs, CONFIG_X86_PAT)"))?;
    Ok(text
        .lines()
        .filter(|l| {
            let from = l.split("[mem 0x").nth(1).and_then(|r| r.split('-').next());
            from.and_then(|a| u64::from_str_radix(a, 16).ok())
                .is_some_and(|a| start <= a && a < end)
        })
        .map(String::from)
        .collect())
}

/// The PAT_WC mapping is tracked once (one write-combining entry in the
/// PAT memtype list), the duplicate shares that tracking, unmapping
/// `first` of the two keeps it for the other, and unmapping both removes it.
fn pat_tracking(orig_first: bool) -> TestResult {
    require_dup()?;
    let fd = open_dev()?;
    let region = pat_region(&fd)?;
    let base = pat_entries(region)?;
    check!(
        base.is_empty(),
        "{PAT_LIST}: the PAT_WC region is tracked before the test maps it: {base:?}"
    );
    let orig = map_flavour(&fd, PAT_WC)?;
    let tracked = pat_entries(region)?;
    check!(
        tracked.len() == 1 && tracked[0].contains("write-combining"),
        "mmap of the PAT_WC flavour: expected one new write-combining entry, got {tracked:?}"
    );
    let res = reserve(PAGES, true)?;
    dup_raw(orig.addr, orig.len, orig.len, F::DUP | F::FIXED, res.addr)
        .ctx("DUP|FIXED of the PAT_WC mapping")?;
    let now = pat_entries(region)?;
    check!(
        now == tracked,
        "after DUP: new entries {now:?}, expected the original's {tracked:?} only (shared tracking)"
    );
    let (first, second, names) = if orig_first {
        (orig, res, ["original", "duplicate"])
    } else {
        (res, orig, ["duplicate", "original"])
    };
    drop(first);
    let now = pat_entries(region)?;
    check!(
        now == tracked,
        "after munmap of the {}: new entries {now:?}, expected {tracked:?} kept for the {}",
        names[0],
        names[1]
    );
    check_magic(
        &format!("{} after munmap of the {}", names[1], names[0]),
        second.addr,
    )?;
    drop(second);
    let now = pat_entries(region)?;
    check!(
        now.is_empty(),
        "after munmap of both mappings: {now:?} left in {PAT_LIST}"
    );
    Ok(())
}

fn testdev_pat_untracked_original_first() -> TestResult {
    pat_tracking(true)
}

fn testdev_pat_untracked_duplicate_first() -> TestResult {
    pat_tracking(false)
}

/// A DUP of `flavour` (`addr`, `len` within a fresh mapping of it) must fail
/// with EINVAL and change neither mapping nor the open/close counts.
/// Returns the mapping and the destination for further checks.
fn refused(
    case: &str,
    flavour: usize,
    offset: usize,
    len: usize,
) -> Result<(OwnedFd, Mapping, Mapping), Failure> {
    let fd = open_dev()?;
    let orig = map_flavour(&fd, flavour)?;
    let res = reserve(PAGES, true)?;
    let before = counts(&fd, flavour)?;
    let ranges = [(orig.addr, orig.len, true), (res.addr, res.len, false)];
    let snap = snapshot(&ranges);
    let call = dup_raw(orig.addr + offset, len, len, F::DUP | F::FIXED, res.addr);
    expect_errno(case, call, Errno::EINVAL)?;
    check!(
        snapshot(&ranges) == snap,
        "{case}: source or destination changed"
    );
    check!(
        counts(&fd, flavour)? == before,
        "{case}: open/close counts changed by a refused DUP"
    );
    Ok((fd, orig, res))
}

fn testdev_dontcopy_refused() -> TestResult {
    require_dup()?;
    refused("VM_DONTCOPY device mapping", DONTCOPY, 0, PAGES * page())?;
    Ok(())
}

/// A mapping whose driver has `vm_ops->mremap` (resctrl's pseudo-locked
/// region device; the aio ring and the BPF arena are VM_DONTCOPY too) is
/// refused: its owner can follow a move of the mapping, not a second one.
/// MREMAP_HOOK is otherwise a REMAP_PFN mapping, which is duplicated whole
/// (`testdev_remap_pfn_copied`), and its hook accepts moves: a move after
/// the refused DUP succeeds, and the moved mapping reads the memory.
fn testdev_mremap_hook_refused() -> TestResult {
    require_dup()?;
    let (_fd, orig, res) = refused(
        "device mapping with vm_ops->mremap",
        MREMAP_HOOK,
        0,
        PAGES * page(),
    )?;
    dup_raw(
        orig.addr,
        orig.len,
        orig.len,
        F::MAYMOVE | F::FIXED,
        res.addr,
    )
    .ctx("mremap() move of the mapping")?;
    orig.forget();
    check_magic("moved mapping", res.addr)
}

/// FAULT_REL's fault handler maps the page at the offset into the VMA, as
/// drm_gem_shmem's does: a part would fault in the wrong pages, so only the
/// whole mapping is duplicated, before or after the original is touched.
fn testdev_fault_rel_subrange_refused() -> TestResult {
    require_dup()?;
    let (_fd, orig, res) = refused(
        "part of a mapping whose faults ignore the file offset",
        FAULT_REL,
        page(),
        page(),
    )?;
    dup_raw(orig.addr, orig.len, orig.len, F::DUP | F::FIXED, res.addr)
        .ctx("DUP of the whole mapping")?;
    check_magic("whole duplicate", res.addr)
}

fn testdev_subrange_refused() -> TestResult {
    require_dup()?;
    let (_fd, orig, res) = refused("part of a device mapping", REMAP_PFN, page(), page())?;
    // The whole mapping duplicates fine.
    dup_raw(orig.addr, orig.len, orig.len, F::DUP | F::FIXED, res.addr)
        .ctx("DUP of the whole mapping")?;
    check_magic("whole duplicate", res.addr)
}

/// A private mapping of any flavour is refused with `EINVAL`: for PFNs it
/// would be a copy-on-write mapping, on whose first fault `vmf_insert_pfn()`
/// hits a `BUG_ON()` (FAULT_PFN). Nothing is mapped and no open or close is
/// counted. The mappings are never touched, so a device that accepted one
/// fails here without crashing.
fn testdev_private_mapping_refused() -> TestResult {
    let fd = open_dev()?;
    let len = PAGES * page();
    // A free range, where a mapping left behind would show.
    let free = reserve(PAGES, false)?;
    let addr = free.addr;
    drop(free);
    let ranges = [(addr, len, false)];
    let snap = snapshot(&ranges);
    let before = all_counts(&fd)?;
    for flavour in 0..FLAVOURS {
        let res = map(
            addr,
            len,
            RW,
            libc::MAP_PRIVATE | libc::MAP_FIXED_NOREPLACE,
            fd.as_raw_fd(),
            flavour_offset(flavour, page()),
        )
        .map(|m| m.addr);
        let case = format!("MAP_PRIVATE mmap of flavour {flavour}");
        expect_errno(&case, res, Errno::EINVAL)?;
        check!(snapshot(&ranges) == snap, "{case}: the range changed");
    }
    let after = all_counts(&fd)?;
    check!(
        after == before,
        "open/close counts changed by refused mmaps: {before:?} -> {after:?}"
    );
    Ok(())
}

/// delete_module(2) of the test device's module, `O_NONBLOCK`: the kernel
/// answers `EWOULDBLOCK` while the module's reference count is not 0.
fn unload() -> Result<(), Errno> {
    // SAFETY: NAME is NUL-terminated; the kernel only reads it.
    Errno::result(unsafe {
        libc::syscall(libc::SYS_delete_module, NAME.as_ptr(), libc::O_NONBLOCK)
    })
    .map(drop)
}

/// finit_module(2) of `ko` with `params`.
fn load(ko: &Path, params: &str) -> TestResult {
    let f = std::fs::File::open(ko).ctx(&ko.display().to_string())?;
    let cparams = CString::new(params).ctx("module parameters")?;
    // SAFETY: f is an open file and cparams a NUL-terminated string, both
    // only read by the kernel.
    Errno::result(unsafe {
        libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), cparams.as_ptr(), 0)
    })
    .ctx(&format!("finit_module({}, {params:?})", ko.display()))?;
    Ok(())
}

fn loaded() -> bool {
    Path::new(SYS_MODULE).exists()
}

/// The module's reference count, for messages.
fn refcnt() -> String {
    std::fs::read_to_string(format!("{SYS_MODULE}/refcnt"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("? ({e})"))
}

/// Whether `/proc/iomem` shows the module's claim of `[base, ...)`.
fn iomem_claimed(base: u64) -> Result<bool, Failure> {
    let name = NAME.to_str().unwrap_or_default();
    let text = std::fs::read_to_string("/proc/iomem").ctx("/proc/iomem")?;
    Ok(text.lines().any(|l| {
        let Some((range, owner)) = l.trim_start().split_once(" : ") else {
            return false;
        };
        let start = range.split('-').next().unwrap_or("");
        owner == name && u64::from_str_radix(start, 16) == Ok(base)
    }))
}

/// The start of a top-level System RAM range of `/proc/iomem` above 1 MiB
/// that holds the device's pages: a `pat_base` that cannot be claimed.
fn system_ram() -> Result<u64, Failure> {
    let text = std::fs::read_to_string("/proc/iomem").ctx("/proc/iomem")?;
    text.lines()
        .filter(|l| !l.starts_with(' ') && l.ends_with(" : System RAM"))
        .filter_map(|l| {
            let (s, e) = l.split(' ').next()?.split_once('-')?;
            let (s, e) = (
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            );
            (s >= 1 << 20 && e - s >= (PAGES * page()) as u64).then_some(s)
        })
        .next()
        .ok_or_else(|| Failure::Fail("no System RAM range in /proc/iomem".into()))
}

/// The module as the test found it, loaded again when the test ends,
/// however it ends (in `drop`), if it is not loaded as it was.
struct Reload {
    ko: PathBuf,
    params: String,
    pat: Option<u64>,
}

impl Reload {
    /// Records the module's `pat_base`; skips without `$MREMAP_DUP_TESTDEV_KO`.
    fn new() -> Result<Self, Failure> {
        let Some(ko) = std::env::var_os(KO_ENV) else {
            return Err(Failure::Skip(format!(
                "${KO_ENV} is not set: the test could not load the module again"
            )));
        };
        check!(
            loaded(),
            "{SYS_MODULE}: the test device's module is not loaded"
        );
        let fd = open_dev()?;
        let pat = match pat_base(&fd) {
            Ok(base) => Some(base),
            Err(Errno::ENODEV) => None,
            Err(e) => return Err(Failure::Fail(format!("GET_PAT_BASE: {e}"))),
        };
        let params = pat.map(|b| format!("pat_base={b:#x}")).unwrap_or_default();
        // Should this process die before its drop() runs, the harness's
        // parent loads the module again.
        crate::harness::journal_module(Path::new(&ko), &params);
        Ok(Self {
            ko: ko.into(),
            params,
            pat,
        })
    }

    /// Whether the module is loaded with the `pat_base` it had.
    fn as_it_was(&self) -> bool {
        loaded() && open_dev().is_ok_and(|fd| pat_base(&fd).ok() == self.pat)
    }

    /// Loads the module as it was, unloading it first if it is loaded; its
    /// PAT region must be claimable again (released at unload).
    fn restore(&self) -> TestResult {
        if loaded() {
            unload().ctx(&format!("delete_module (refcnt {})", refcnt()))?;
        }
        load(&self.ko, &self.params)?;
        let fd = open_dev()?;
        let now = pat_base(&fd).ok();
        check!(
            now == self.pat,
            "loaded again with {:?}: GET_PAT_BASE {now:?}, expected {:?}",
            self.params,
            self.pat
        );
        Ok(())
    }
}

impl Drop for Reload {
    fn drop(&mut self) {
        if !self.as_it_was() {
            let _ = self.restore();
        }
    }
}

/// The module cannot be unloaded while its device is open: each open file
/// holds a reference to it (what `.owner = THIS_MODULE` gives a C driver).
fn testdev_rmmod_busy_while_open() -> TestResult {
    let fd = open_dev()?;
    expect_errno(
        "delete_module(O_NONBLOCK) with the device open",
        unload(),
        Errno::EWOULDBLOCK,
    )?;
    check!(loaded(), "{SYS_MODULE} is gone");
    drop(fd);
    Ok(())
}

/// A duplicate alone (original unmapped, file closed) keeps the module
/// loaded and its memory alive: it holds the file, the file the module, and
/// the VMA a reference to the memory. Once it is unmapped, the module
/// unloads; it is then loaded again, as it was.
fn testdev_rmmod_busy_until_duplicate_unmapped() -> TestResult {
    require_dup()?;
    let reload = Reload::new()?;
    let fd = open_dev()?;
    // FAULT_PFN, not faulted in: the duplicate's pages come from the fault
    // handler, after the original and the file are gone.
    let orig = map_flavour(&fd, FAULT_PFN)?;
    let res = reserve(PAGES, false)?;
    dup_raw(orig.addr, orig.len, orig.len, F::DUP | F::FIXED, res.addr)
        .ctx("DUP|FIXED of the FAULT_PFN mapping")?;
    drop(orig);
    drop(fd);
    expect_errno(
        "delete_module(O_NONBLOCK) with only a duplicate mapped",
        unload(),
        Errno::EWOULDBLOCK,
    )?;
    check!(loaded(), "{SYS_MODULE} is gone");
    check_magic(
        "duplicate after the original and the file are gone",
        res.addr,
    )?;
    drop(res);
    unload().ctx(&format!(
        "delete_module(O_NONBLOCK) after the duplicate is unmapped (refcnt {})",
        refcnt()
    ))?;
    check!(!loaded(), "{SYS_MODULE} still there after delete_module");
    reload.restore()?;
    let fd = open_dev()?;
    let m = map_flavour(&fd, REMAP_PFN)?;
    check_magic("a mapping of the module loaded again", m.addr)
}

/// `pat_base` is used only if it is page aligned, not 0 and claimable
/// (`request_mem_region()`, shown in `/proc/iomem`, released at unload);
/// otherwise the PAT_WC flavour's mmap and `GET_PAT_BASE` fail with `ENODEV`
/// and the other flavours work.
fn testdev_pat_base_validated() -> TestResult {
    let reload = Reload::new()?;
    let Some(base) = reload.pat else {
        return Err(Failure::Fail(
            "the module has no PAT_WC memory: the boot gives it pat_base= (scripts/boot.sh)".into(),
        ));
    };
    check!(
        iomem_claimed(base)?,
        "/proc/iomem: no {:?} claim at {base:#x}",
        NAME
    );
    let ram = system_ram()?;
    let cases = [
        ("no pat_base", String::new()),
        (
            "pat_base not page aligned",
            format!("pat_base={:#x}", base + 8),
        ),
        ("pat_base in System RAM", format!("pat_base={ram:#x}")),
    ];
    for (case, params) in &cases {
        unload().ctx(&format!("{case}: delete_module (refcnt {})", refcnt()))?;
        check!(
            !iomem_claimed(base)?,
            "{case}: the claim at {base:#x} is still in /proc/iomem after unload"
        );
        load(&reload.ko, params)?;
        let fd = open_dev()?;
        let before = all_counts(&fd)?;
        expect_errno(
            &format!("{case}: GET_PAT_BASE"),
            pat_base(&fd),
            Errno::ENODEV,
        )?;
        let pat = map(
            0,
            PAGES * page(),
            RW,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            flavour_offset(PAT_WC, page()),
        )
        .map(|m| m.addr);
        expect_errno(&format!("{case}: mmap of PAT_WC"), pat, Errno::ENODEV)?;
        let after = all_counts(&fd)?;
        check!(
            after == before,
            "{case}: open/close counts changed by a refused mmap: {before:?} -> {after:?}"
        );
        let m = map_flavour(&fd, REMAP_PFN)?;
        check_magic(&format!("{case}: REMAP_PFN"), m.addr)?;
    }
    reload.restore()?;
    check!(
        iomem_claimed(base)?,
        "/proc/iomem: no claim at {base:#x} after loading the module as it was"
    );
    Ok(())
}

/// The tests of this module.
pub const TESTS: &[Test] = crate::tests![
    testdev_remap_pfn_copied,
    testdev_fault_pfn,
    testdev_fault_rel,
    testdev_linear_subranges_stitched,
    testdev_linear_subrange_copied,
    testdev_mixedmap_copied,
    testdev_pat_wc,
    testdev_pat_untracked_original_first,
    testdev_pat_untracked_duplicate_first,
    testdev_dontcopy_refused,
    testdev_mremap_hook_refused,
    testdev_subrange_refused,
    testdev_fault_rel_subrange_refused,
    testdev_private_mapping_refused,
    testdev_rmmod_busy_while_open,
    // Last: these unload the module, and load it again before they end.
    testdev_rmmod_busy_until_duplicate_unmapped,
    testdev_pat_base_validated,
];
