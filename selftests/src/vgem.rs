// SPDX-License-Identifier: GPL-2.0

//! A mapped vgem dumb buffer, for the demo (`demo.rs`) and the helper's
//! tests (`helper_tests.rs`).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// A vgem dumb buffer mapped `MAP_SHARED` read-write (a DRM GEM mmap,
/// `VM_PFNMAP | VM_DONTEXPAND`: what a GPU driver hands Wine); unmapped on
/// drop.
pub struct VgemBo {
    /// Start of the mapping.
    pub addr: usize,
    /// Its length.
    pub len: usize,
    _card: OwnedFd,
}

impl VgemBo {
    /// Creates a `width` x `height` x 32 bpp dumb buffer on the vgem card
    /// and maps it where the kernel picks (above 4 GiB on x86-64).
    pub fn new(width: u32, height: u32) -> Result<Self, String> {
        let card = crate::card::open_card("vgem")?;
        let db = drm_ffi::mode::dumbbuffer::create(card.as_fd(), width, height, 32, 0)
            .map_err(|e| format!("DRM_IOCTL_MODE_CREATE_DUMB: {e}"))?;
        let off = drm_ffi::mode::dumbbuffer::map(card.as_fd(), db.handle, 0, 0)
            .map_err(|e| format!("DRM_IOCTL_MODE_MAP_DUMB: {e}"))?
            .offset;
        let len = db.size as usize;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: maps the dumb buffer just created where the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                card.as_raw_fd(),
                off as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap of the vgem BO: {}", nix::Error::last()));
        }
        Ok(Self {
            addr: p as usize,
            len,
            _card: card,
        })
    }
}

impl Drop for VgemBo {
    fn drop(&mut self) {
        // SAFETY: the mapping is this value's own.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}
