// SPDX-License-Identifier: GPL-2.0

//! MREMAP_DUP of each device mapping flavour of the Rust test device
//! (kernel-rust/mremap_dup_testdev.rs): PTE content and vm_ops open/close
//! balance, VM_DONTCOPY refused, and x86 PAT tracking of a write-combining
//! remap_pfn_range() of non-RAM shared by the duplicate, not taken twice
//! and not dropped early: `/sys/kernel/debug/x86/pat_memtype_list` has one
//! entry for both mappings and none after both are unmapped, in either
//! order.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};

use nix::errno::Errno;

use crate::check;
use crate::harness::{Context, Failure, Test, TestResult};
use crate::util::*;
use mremap_dup::RemapFlags as F;

const DEV: &str = "/dev/mremap_dup_testdev";
const PAGES: usize = 4;
const FLAVOUR_STRIDE: usize = 256;
const MAGIC: u64 = 0x6d72_656d_6170_0000;
const REMAP_PFN: usize = 0;
const FAULT_PFN: usize = 1;
const MIXED: usize = 2;
const DONTCOPY: usize = 3;
const PAT_WC: usize = 4;
const PAT_LIST: &str = "/sys/kernel/debug/x86/pat_memtype_list";

fn open_dev() -> Result<OwnedFd, Failure> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(DEV)
        .map_err(|e| Failure::Fail(format!("{DEV}: {e} (is mremap_dup_testdev.ko loaded?)")))?;
    Ok(f.into())
}

/// The device's `_IO('D', nr)` ioctl with integer `arg`: its result (-1 on
/// error). The raw syscall, since ioctl(3) truncates the result to an int
/// and `GET_PAT_BASE` returns a physical address.
fn ioctl_none(fd: &OwnedFd, nr: u64, arg: usize) -> isize {
    // SAFETY: the device's ioctls take an integer and write nothing.
    unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            fd.as_raw_fd(),
            nix::request_code_none!(b'D', nr),
            arg,
        ) as isize
    }
}

/// (opens, closes) counted by the device for `flavour`.
fn counts(fd: &OwnedFd, flavour: usize) -> (isize, isize) {
    (ioctl_none(fd, 1, flavour), ioctl_none(fd, 2, flavour))
}

fn map_flavour(fd: &OwnedFd, flavour: usize) -> Result<Mapping, Failure> {
    map(
        0,
        PAGES * page(),
        RW,
        libc::MAP_SHARED,
        fd.as_raw_fd(),
        flavour * FLAVOUR_STRIDE * page(),
    )
    .ctx(&format!("mmap of flavour {flavour}"))
}

fn check_magic(what: &str, addr: usize) -> TestResult {
    for i in 0..PAGES {
        let got = peek(addr + i * page());
        check!(
            got == MAGIC + i as u64,
            "{what}: page {i} starts with {got:#x}, expected {:#x}",
            MAGIC + i as u64
        );
    }
    Ok(())
}

/// DUP of a whole mapping of `flavour`: same PFNs (content both ways),
/// ->open once for the duplicate, ->close once when it goes.
fn flavour_dup(flavour: usize, name: &str) -> TestResult {
    require_dup()?;
    let fd = open_dev()?;
    let orig = map_flavour(&fd, flavour)?;
    check_magic(&format!("{name}: original"), orig.addr)?;
    let (o0, c0) = counts(&fd, flavour);
    let res = reserve(PAGES, true)?;
    let dup = dup_raw(orig.addr, orig.len, orig.len, F::DUP | F::FIXED, res.addr)
        .ctx(&format!("{name}: DUP|FIXED"))?;
    let (o1, c1) = counts(&fd, flavour);
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
    let (o2, c2) = counts(&fd, flavour);
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
    let base = ioctl_none(fd, 3, 0);
    check!(
        base > 0,
        "GET_PAT_BASE: {base}: the test device has no PAT_WC memory (pat_base= not given)"
    );
    Ok((base as u64, base as u64 + (PAGES * page()) as u64))
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
    let before = counts(&fd, flavour);
    let ranges = [(orig.addr, orig.len, true), (res.addr, res.len, false)];
    let snap = snapshot(&ranges);
    let call = dup_raw(orig.addr + offset, len, len, F::DUP | F::FIXED, res.addr);
    expect_errno(case, call, Errno::EINVAL)?;
    check!(
        snapshot(&ranges) == snap,
        "{case}: source or destination changed"
    );
    check!(
        counts(&fd, flavour) == before,
        "{case}: open/close counts changed by a refused DUP"
    );
    Ok((fd, orig, res))
}

fn testdev_dontcopy_refused() -> TestResult {
    require_dup()?;
    refused("VM_DONTCOPY device mapping", DONTCOPY, 0, PAGES * page())?;
    Ok(())
}

fn testdev_subrange_refused() -> TestResult {
    require_dup()?;
    let (_fd, orig, res) = refused("part of a device mapping", REMAP_PFN, page(), page())?;
    // The whole mapping duplicates fine.
    dup_raw(orig.addr, orig.len, orig.len, F::DUP | F::FIXED, res.addr)
        .ctx("DUP of the whole mapping")?;
    check_magic("whole duplicate", res.addr)
}

/// The tests of this module.
pub const TESTS: &[Test] = crate::tests![
    testdev_remap_pfn_copied,
    testdev_fault_pfn,
    testdev_mixedmap_copied,
    testdev_pat_wc,
    testdev_pat_untracked_original_first,
    testdev_pat_untracked_duplicate_first,
    testdev_dontcopy_refused,
    testdev_subrange_refused,
];
