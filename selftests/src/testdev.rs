// SPDX-License-Identifier: GPL-2.0

//! MREMAP_DUP of each device mapping flavour of the Rust test device
//! (kernel-rust/mremap_dup_testdev.rs): PTE content and vm_ops open/close
//! balance, and VM_DONTCOPY refused.

use std::os::fd::{AsRawFd, OwnedFd};

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

fn open_dev() -> Result<OwnedFd, Failure> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(DEV)
        .map_err(|e| Failure::Fail(format!("{DEV}: {e} (is mremap_dup_testdev.ko loaded?)")))?;
    Ok(f.into())
}

/// (opens, closes) counted by the device for `flavour`.
fn counts(fd: &OwnedFd, flavour: usize) -> (isize, isize) {
    let get = |nr: u64| {
        // SAFETY: the device's count ioctls take an integer and write nothing.
        unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                nix::request_code_none!(b'D', nr) as _,
                flavour,
            ) as isize
        }
    };
    (get(1), get(2))
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
    check!(
        peek(dup + 8) == 0x1234,
        "{name}: write via original not seen via duplicate"
    );
    poke(dup + page() + 8, 0x5678);
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
    testdev_dontcopy_refused,
    testdev_subrange_refused,
];
