// SPDX-License-Identifier: GPL-2.0

//! MREMAP_DUP of DRM dumb buffers on the four drivers the guest brings up:
//! vgem, virtio-gpu and bochs (GEM shmem helpers: fault-driven VM_PFNMAP over
//! system RAM) and qxl (TTM: VM_PFNMAP | VM_IO).
//!
//! The DRM ioctls go through the `drm-ffi` crate (Smithay's drm-rs), which
//! carries the uapi structures and ioctl numbers, rather than hand-written
//! numbers. A card that is missing is a failure, not a skip: the test run
//! always brings all four up.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;

use crate::check;
use crate::harness::{Context, Failure, Test, TestResult};
use crate::util::*;
use mremap_dup::RemapFlags as F;

/// Opens the card whose DRM driver is called `driver`.
fn open_card(driver: &str) -> Result<OwnedFd, Failure> {
    let mut seen = Vec::new();
    let mut cards: Vec<_> = std::fs::read_dir("/dev/dri")
        .ctx("/dev/dri")?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("card"))
        })
        .collect();
    cards.sort();
    for path in cards {
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        else {
            continue;
        };
        let mut name: Vec<i8> = Vec::new();
        if drm_ffi::get_version(file.as_fd(), Some(&mut name), None, None).is_err() {
            continue;
        }
        let name: String = name.iter().map(|&c| c as u8 as char).collect();
        if name == driver {
            return Ok(file.into());
        }
        seen.push(format!("{}={name}", path.display()));
    }
    Err(Failure::Fail(format!(
        "no DRM card with driver {driver} (found: {})",
        seen.join(", ")
    )))
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

fn map_dumb(fd: &OwnedFd, bo: &DumbBuffer) -> Result<Mapping, Failure> {
    map(
        0,
        bo.size,
        RW,
        libc::MAP_SHARED,
        fd.as_raw_fd(),
        bo.offset as usize,
    )
    .ctx("mmap of the dumb buffer")
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
    let dir = std::fs::read_dir("/sys/kernel/debug/dri").ok()?;
    for e in dir.flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path().join("qxl_buffers")) {
            return Some(text.lines().filter(|l| l.contains("size")).count());
        }
    }
    None
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

/// The tests of this module.
pub const TESTS: &[Test] = crate::tests![
    drm_vgem_dumb_buffer,
    drm_virtio_gpu_dumb_buffer,
    drm_bochs_dumb_buffer,
    drm_qxl_dumb_buffer,
];
