// SPDX-License-Identifier: GPL-2.0

//! A mapped vgem dumb buffer, for the demo (`demo.rs`) and the helper's
//! tests (`helper_tests.rs`).

use std::os::fd::OwnedFd;

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
        let (_, addr, len) = crate::card::map_dumb(&card, width, height)?;
        Ok(Self {
            addr,
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
