// SPDX-License-Identifier: GPL-2.0

//! Finding a DRM card by its driver's name, for the selftests (`drm.rs`)
//! and the demo (`demo.rs`, which includes this file with `#[path]`).

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
