// SPDX-License-Identifier: GPL-2.0

//! MREMAP_DUP of DRM dumb buffers on the four drivers the guest brings up:
//! vgem, virtio-gpu and bochs (GEM shmem helpers: fault-driven VM_PFNMAP over
//! system RAM) and qxl (TTM: VM_PFNMAP | VM_IO).
//!
//! The DRM ioctls go through the `drm-ffi` crate (Smithay's drm-rs), which
//! carries the uapi structures and ioctl numbers, rather than hand-written
//! numbers. A card that is missing is a failure, not a skip: the test run
//! always brings all four up.
//!
//! QXL dumb buffers live in TTM's system domain; VRAM (a PCI BAR, as on
//! amdgpu or nouveau) takes QXL's own ioctls (`card.rs`). The VRAM test overcommits VRAM so that TTM must evict the
//! duplicated BO, and checks that both mappings were zapped and refault to
//! the BO's new place with its contents.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};

use nix::errno::Errno;

use crate::check;
use crate::harness::{Context, Failure, Test, TestResult};
use crate::util::*;
use mremap_dup::RemapFlags as F;

/// Opens the card whose DRM driver is called `driver`.
fn open_card(driver: &str) -> Result<OwnedFd, Failure> {
    crate::card::open_card(driver).map_err(Failure::Fail)
}

/// A dumb buffer: its handle, size and mmap offset on `fd`.
struct DumbBuffer {
    handle: u32,
    size: usize,
    offset: u64,
}

fn create_dumb(fd: &OwnedFd, width: u32, height: u32) -> Result<DumbBuffer, Failure> {
    let db = drm_ffi::mode::dumbbuffer::create(fd.as_fd(), width, height, 32, 0)
        .ctx("DRM_IOCTL_MODE_CREATE_DUMB")?;
    let map = drm_ffi::mode::dumbbuffer::map(fd.as_fd(), db.handle, 0, 0)
        .ctx("DRM_IOCTL_MODE_MAP_DUMB")?;
    Ok(DumbBuffer {
        handle: db.handle,
        size: db.size as usize,
        offset: map.offset,
    })
}

/// A shared read-write mapping of the BO at mmap offset `offset` of `fd`.
fn map_bo(fd: &OwnedFd, size: usize, offset: u64, what: &str) -> Result<Mapping, Failure> {
    map(
        0,
        size,
        RW,
        libc::MAP_SHARED,
        fd.as_raw_fd(),
        offset as usize,
    )
    .ctx(&format!("mmap of {what}"))
}

fn map_dumb(fd: &OwnedFd, bo: &DumbBuffer) -> Result<Mapping, Failure> {
    map_bo(fd, bo.size, bo.offset, "the dumb buffer")
}

/// Shmem pages in use, in kB (where shmem-helper BOs live).
fn shmem_kb() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Shmem:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// How many buffer objects QXL lists in debugfs.
fn qxl_buffers() -> Option<usize> {
    crate::card::qxl_buffers()
}

/// A QXL BO in the VRAM domain: (handle, mmap offset).
fn qxl_alloc_vram(fd: &OwnedFd, size: usize) -> Result<(u32, u64), Failure> {
    crate::card::qxl_alloc_vram(fd, size).map_err(Failure::Fail)
}

/// QXL's VRAM manager, from debugfs `qxl_mem_mm`: (total, used) in pages.
fn qxl_vram_pages() -> Result<(usize, usize), Failure> {
    crate::card::qxl_vram_pages().map_err(Failure::Fail)
}

/// A QXL VRAM BO, duplicated below 4 GiB, evicted by overcommitting VRAM:
/// TTM zaps both mappings (the duplicate is in the file's i_mmap like the
/// original) and both refault to the BO's system-memory copy.
fn drm_qxl_vram_eviction() -> TestResult {
    require_dup()?;
    let fd = open_card("qxl")?;
    let (total, used0) = qxl_vram_pages()?;
    // Two BOs of more than half of VRAM cannot be resident together.
    let pages = total / 2 + 1;
    let size = pages * page();
    let (a, a_off) = qxl_alloc_vram(&fd, size)?;
    let orig = map_bo(&fd, size, a_off, "the QXL VRAM BO")?;
    let res = reserve(pages, true)?;
    let dup = dup_raw(orig.addr, size, size, F::DUP | F::FIXED, res.addr)
        .ctx("qxl: DUP|FIXED of a VRAM BO")?;
    fill(orig.addr, pages, 31);
    fence(Ordering::SeqCst);
    verify(
        "qxl VRAM: write via original, read via duplicate",
        dup,
        pages,
        31,
        0,
    )?;
    // QXL_ALLOC places BOs in VRAM only (no fallback domain), evicting
    // other unpinned BOs if it must (the delta from used0 may be smaller).
    let (_, used_a) = qxl_vram_pages()?;
    check!(
        used_a >= pages,
        "qxl: the BO is not in VRAM ({used0} -> {used_a} of {total} pages used, BO {pages} pages)"
    );

    // A second such BO: TTM must evict the first (VRAM only, no fallback).
    let (b, b_off) = qxl_alloc_vram(&fd, size)?;
    let (_, used_b) = qxl_vram_pages()?;
    check!(
        used_b < used_a + pages,
        "qxl: the first BO was not evicted ({used_a} -> {used_b} of {total} pages used)"
    );
    // The second BO now holds the VRAM the first one had: fill it, so that a
    // stale entry left in either mapping would read the wrong pattern.
    let other = map_bo(&fd, size, b_off, "the second QXL VRAM BO")?;
    fill(other.addr, pages, 33);
    fence(Ordering::SeqCst);
    verify("qxl VRAM after eviction: duplicate", dup, pages, 31, 0)?;
    verify("qxl VRAM after eviction: original", orig.addr, pages, 31, 0)?;
    fill(dup, pages, 32);
    fence(Ordering::SeqCst);
    verify(
        "qxl VRAM after eviction: write via duplicate, read via original",
        orig.addr,
        pages,
        32,
        0,
    )?;
    verify("qxl VRAM: the second BO", other.addr, pages, 33, 0)?;
    drop(other);
    drop(res);
    drop(orig);
    drm_ffi::gem::close(fd.as_fd(), b).ctx("DRM_IOCTL_GEM_CLOSE")?;
    drm_ffi::gem::close(fd.as_fd(), a).ctx("DRM_IOCTL_GEM_CLOSE")?;
    Ok(())
}

/// How the test sees that a BO was freed.
#[derive(Clone, Copy)]
enum Freed {
    /// /proc/meminfo Shmem drops by the BO's size.
    Shmem,
    /// QXL's debugfs qxl_buffers list shrinks.
    QxlBuffers,
}

fn usage(freed: Freed) -> usize {
    match freed {
        Freed::Shmem => shmem_kb() * 1024,
        Freed::QxlBuffers => qxl_buffers().unwrap_or(0),
    }
}

/// The whole life of a duplicated dumb buffer on one driver.
fn dumb_buffer_lifecycle(driver: &str, freed: Freed) -> TestResult {
    require_dup()?;
    let fd = open_card(driver)?;
    // Large enough for the Shmem drop to stand out from noise.
    let (w, h) = match freed {
        Freed::Shmem => (1024, 1024),
        Freed::QxlBuffers => (256, 256),
    };
    let before_alloc = usage(freed);
    let bo = create_dumb(&fd, w, h)?;
    let orig = map_dumb(&fd, &bo)?;
    let pages = bo.size / page();

    // DUP into a PROT_NONE reservation below 4 GiB; writes both ways.
    let res = reserve(pages, true)?;
    let dup = dup_raw(orig.addr, bo.size, bo.size, F::DUP | F::FIXED, res.addr)
        .ctx(&format!("{driver}: DUP|FIXED of dumb buffer"))?;
    check!(
        dup == res.addr && dup < 1 << 32,
        "{driver}: duplicate at {dup:#x}"
    );
    fill(orig.addr, pages, 21);
    verify(
        &format!("{driver}: write via original, read via duplicate"),
        dup,
        pages,
        21,
        0,
    )?;
    fill(dup, pages, 22);
    verify(
        &format!("{driver}: write via duplicate, read via original"),
        orig.addr,
        pages,
        22,
        0,
    )?;

    // Device mappings are duplicated whole.
    let sub = reserve(1, true)?;
    let snap = snapshot(&[(orig.addr, orig.len, true), (sub.addr, sub.len, false)]);
    expect_errno(
        &format!("{driver}: DUP of part of the BO mapping"),
        dup_raw(
            orig.addr + page(),
            page(),
            page(),
            F::DUP | F::FIXED,
            sub.addr,
        ),
        Errno::EINVAL,
    )?;
    check!(
        snapshot(&[(orig.addr, orig.len, true), (sub.addr, sub.len, false)]) == snap,
        "{driver}: changed by the refused DUP"
    );

    // Destroy the handle, close the fd, unmap the original: the duplicate
    // keeps the BO and its contents alive.
    drm_ffi::mode::dumbbuffer::destroy(fd.as_fd(), bo.handle).ctx("DRM_IOCTL_MODE_DESTROY_DUMB")?;
    drop(fd);
    drop(orig);
    verify(
        &format!("{driver}: duplicate after handle destroy, close and munmap of the original"),
        dup,
        pages,
        22,
        0,
    )?;
    fill(dup, pages, 23);
    verify(
        &format!("{driver}: duplicate still writable"),
        dup,
        pages,
        23,
        0,
    )?;

    // A duplicate of the duplicate; fork shares both.
    let res2 = reserve(pages, true)?;
    let dup2 = dup_raw(dup, bo.size, bo.size, F::DUP | F::FIXED, res2.addr)
        .ctx(&format!("{driver}: DUP of the duplicate"))?;
    verify(
        &format!("{driver}: duplicate of the duplicate"),
        dup2,
        pages,
        23,
        0,
    )?;
    let code = in_child(|| {
        poke(dup2, 0xfeed);
        i32::from(peek(dup) != 0xfeed)
    });
    check!(
        code == 0,
        "{driver}: child did not see its write through the other duplicate"
    );
    check!(
        peek(dup) == 0xfeed,
        "{driver}: parent did not see the child's write"
    );

    // Still allocated while a mapping exists; freed after the last unmap.
    let held = usage(freed);
    check!(
        held > before_alloc,
        "{driver}: BO not accounted while mapped ({before_alloc} -> {held})"
    );
    drop(res2);
    drop(res);
    // Some drivers free asynchronously (virtio-gpu waits for the host, TTM
    // may delay destruction): give the release up to 10 s.
    let bo_gone = |after: usize| match freed {
        Freed::Shmem => held.saturating_sub(after) >= bo.size * 3 / 4,
        Freed::QxlBuffers => after < held,
    };
    let mut after = usage(freed);
    for _ in 0..100 {
        if bo_gone(after) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        after = usage(freed);
    }
    check!(
        bo_gone(after),
        "{driver}: BO not freed after the last unmap (usage {held} -> {after}, BO {} bytes)",
        bo.size
    );
    Ok(())
}

fn drm_vgem_dumb_buffer() -> TestResult {
    dumb_buffer_lifecycle("vgem", Freed::Shmem)
}

fn drm_virtio_gpu_dumb_buffer() -> TestResult {
    dumb_buffer_lifecycle("virtio_gpu", Freed::Shmem)
}

fn drm_bochs_dumb_buffer() -> TestResult {
    dumb_buffer_lifecycle("bochs-drm", Freed::Shmem)
}

fn drm_qxl_dumb_buffer() -> TestResult {
    dumb_buffer_lifecycle("qxl", Freed::QxlBuffers)
}

/// The fbdev emulation of the DRM drivers (/dev/fb0, deferred I/O) is a
/// character device mapping without device flags: its fault handler returns
/// pages (`fb_deferred_io_fault()`), and no VM_PFNMAP, VM_MIXEDMAP or VM_IO
/// says it is a device mapping. Only regular files may be duplicated in part
/// (a driver's fault handler may read `vm_pgoff` as anything, as UIO's reads
/// a region index), so a part of it is EINVAL, with both mappings as they
/// were, and the whole mapping duplicates and shares its pages.
fn drm_fbdev_char_device_subrange_refused() -> TestResult {
    require_dup()?;
    let fb = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fb0")
        .map_err(|e| Failure::Fail(format!("/dev/fb0: {e} (DRM fbdev emulation is configured)")))?;
    let p = page();
    let orig = map(0, 2 * p, RW, libc::MAP_SHARED, fb.as_raw_fd(), 0).ctx("mmap of /dev/fb0")?;
    poke(orig.addr, 0x0fb0_0000);
    poke(orig.addr + p, 0x0fb0_0001);
    let flags = vm_flags_at(orig.addr);
    check!(
        !flags.iter().any(|f| ["io", "pf", "mm"].contains(&f.as_str())),
        "premise: /dev/fb0's mapping has device flags {flags:?}, so it cannot show the rule for character devices"
    );
    let res = reserve(2, true)?;
    let ranges = [(orig.addr, orig.len, true), (res.addr, res.len, false)];
    let snap = snapshot(&ranges);
    expect_errno(
        "DUP of part of a /dev/fb0 mapping",
        dup_raw(orig.addr + p, p, p, F::DUP | F::FIXED, res.addr),
        Errno::EINVAL,
    )?;
    check!(snapshot(&ranges) == snap, "source or destination changed");
    dup_raw(orig.addr, 2 * p, 2 * p, F::DUP | F::FIXED, res.addr)
        .ctx("DUP of the whole mapping")?;
    check!(
        peek(res.addr + p) == 0x0fb0_0001,
        "whole duplicate of /dev/fb0: page 1 differs from the original's"
    );
    poke(res.addr, 0x0fb0_1111);
    check!(
        peek(orig.addr) == 0x0fb0_1111,
        "write via the duplicate of /dev/fb0 not seen via the original"
    );
    Ok(())
}

/// The tests of this module.
pub const TESTS: &[Test] = crate::tests![
    drm_vgem_dumb_buffer,
    drm_virtio_gpu_dumb_buffer,
    drm_bochs_dumb_buffer,
    drm_qxl_dumb_buffer,
    drm_qxl_vram_eviction,
    drm_fbdev_char_device_subrange_refused,
];
