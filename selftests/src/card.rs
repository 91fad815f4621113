// SPDX-License-Identifier: GPL-2.0

//! Finding a DRM card by its driver's name, mapping a dumb buffer, and
//! QXL's VRAM buffers, for the selftests (`drm.rs`) and the programs that
//! include this file with `#[path]` (demo, bench, stress, model).
//!
//! QXL dumb buffers live in TTM's system domain; VRAM (a PCI BAR, as on
//! amdgpu or nouveau) takes QXL's own ioctls, `DRM_IOCTL_QXL_ALLOC` (always
//! the VRAM domain) and `DRM_IOCTL_QXL_MAP`, which `drm-ffi` does not carry:
//! they are declared here from `include/uapi/drm/qxl_drm.h` with nix's ioctl
//! macros.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// Opens the card whose DRM driver is called `driver`.
pub fn open_card(driver: &str) -> Result<OwnedFd, String> {
    let mut seen = Vec::new();
    let mut cards: Vec<_> = std::fs::read_dir("/dev/dri")
        .map_err(|e| format!("/dev/dri: {e}"))?
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
    Err(format!(
        "no DRM card with driver {driver} (found: {})",
        seen.join(", ")
    ))
}

/// A `width` x `height` x 32 bpp dumb buffer on `card`, mapped shared
/// read-write where the kernel picks: (handle, address, length).
#[allow(dead_code)] // not every program that includes this file maps one
pub fn map_dumb(card: &OwnedFd, width: u32, height: u32) -> Result<(u32, usize, usize), String> {
    let db = drm_ffi::mode::dumbbuffer::create(card.as_fd(), width, height, 32, 0)
        .map_err(|e| format!("DRM_IOCTL_MODE_CREATE_DUMB: {e}"))?;
    let off = drm_ffi::mode::dumbbuffer::map(card.as_fd(), db.handle, 0, 0)
        .map_err(|e| format!("DRM_IOCTL_MODE_MAP_DUMB: {e}"))?
        .offset;
    let len = db.size as usize;
    // SAFETY: maps the dumb buffer just created where the kernel picks.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            card.as_raw_fd(),
            off as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!(
            "mmap of the dumb buffer: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok((db.handle, p as usize, len))
}

/// `struct drm_qxl_alloc` (include/uapi/drm/qxl_drm.h).
#[repr(C)]
struct QxlAlloc {
    size: u32,
    handle: u32,
}

/// `struct drm_qxl_map` (include/uapi/drm/qxl_drm.h).
#[repr(C)]
struct QxlMap {
    offset: u64,
    handle: u32,
    pad: u32,
}

// DRM_IOCTL_BASE 'd', DRM_COMMAND_BASE 0x40, DRM_QXL_ALLOC 0, DRM_QXL_MAP 1.
nix::ioctl_readwrite!(qxl_alloc_ioctl, b'd', 0x40, QxlAlloc);
nix::ioctl_readwrite!(qxl_map_ioctl, b'd', 0x41, QxlMap);

/// A QXL BO of `size` bytes in the VRAM domain, where `DRM_IOCTL_QXL_ALLOC`
/// always places it (evicting other unpinned BOs if it must): (handle, mmap
/// offset on `card`).
#[allow(dead_code)] // not every program that includes this file uses QXL
pub fn qxl_alloc_vram(card: &OwnedFd, size: usize) -> Result<(u32, u64), String> {
    let mut alloc = QxlAlloc {
        size: u32::try_from(size).map_err(|_| format!("QXL BO of {size} bytes"))?,
        handle: 0,
    };
    // SAFETY: DRM_IOCTL_QXL_ALLOC reads and writes a struct drm_qxl_alloc.
    unsafe { qxl_alloc_ioctl(card.as_raw_fd(), &mut alloc) }
        .map_err(|e| format!("DRM_IOCTL_QXL_ALLOC of {size} bytes of VRAM: {e}"))?;
    let mut map = QxlMap {
        offset: 0,
        handle: alloc.handle,
        pad: 0,
    };
    // SAFETY: DRM_IOCTL_QXL_MAP reads and writes a struct drm_qxl_map.
    if let Err(e) = unsafe { qxl_map_ioctl(card.as_raw_fd(), &mut map) } {
        let _ = drm_ffi::gem::close(card.as_fd(), alloc.handle);
        return Err(format!("DRM_IOCTL_QXL_MAP: {e}"));
    }
    Ok((alloc.handle, map.offset))
}

/// QXL's VRAM manager, from debugfs `qxl_mem_mm`: (total, used) in pages.
#[allow(dead_code)] // not every program that includes this file uses QXL
pub fn qxl_vram_pages() -> Result<(usize, usize), String> {
    let dir = std::fs::read_dir("/sys/kernel/debug/dri")
        .map_err(|e| format!("/sys/kernel/debug/dri: {e}"))?;
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path().join("qxl_mem_mm")) else {
            continue;
        };
        // drm_mm_print(): "total: T, used U free F"
        let line = text.lines().find(|l| l.starts_with("total:"));
        let nums: Vec<usize> = line
            .unwrap_or_default()
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        if let [total, used, _free] = nums[..] {
            return Ok((total, used));
        }
        return Err(format!("qxl_mem_mm: no totals in {text:?}"));
    }
    Err("no qxl_mem_mm in /sys/kernel/debug/dri".into())
}

/// How many buffer objects QXL lists in debugfs (`qxl_buffers`).
#[allow(dead_code)] // not every program that includes this file uses QXL
pub fn qxl_buffers() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/kernel/debug/dri").ok()?;
    for e in dir.flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path().join("qxl_buffers")) {
            return Some(text.lines().filter(|l| l.contains("size")).count());
        }
    }
    None
}
