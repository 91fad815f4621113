// SPDX-License-Identifier: MIT OR Apache-2.0

//! `MREMAP_DUP`: map a shared mapping a second time, leaving the original.
//!
//! ```text
//! mremap(old, len, len, MREMAP_DUP | MREMAP_FIXED, new)
//! ```
//!
//! creates a second mapping of the memory mapped at `old`, placed at `new`,
//! and leaves the original mapping as it is. Writes through either mapping
//! are seen through the other. This crate calls the raw `mremap` system call
//! (the C library's wrapper is not a reliable way to pass a new flag) and
//! returns errors as [`nix::Error`] values.
//!
//! Detect support with [`is_supported`]. To duplicate the memory behind a
//! pointer without knowing the mapping it lies in (a GPU driver's buffer,
//! a memfd, shared anonymous memory), use [`dup_range`]: it finds the
//! mapping with the `PROCMAP_QUERY` ioctl, duplicates the smallest range the
//! kernel allows and places the duplicate anywhere, below an address (4 GiB
//! for a WoW64 layer) or in a reservation, returning a guard that removes
//! it when dropped. `include/mremap_dup.h` at the top of the repository is
//! the same helper for C, header-only.
//!
//! The crate is `MIT OR Apache-2.0`, so that LGPL projects (Wine) and
//! others can use or copy it.

use core::ffi::c_void;
use core::ops::BitOr;
use std::sync::OnceLock;

use nix::errno::Errno;

mod procmap;
mod range;

pub use range::{dup_range, dup_range_flags, DupRange, DupRangeFlags, RangePlacement, Reservation};

/// Flags of `mremap(2)`, including `MREMAP_DUP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemapFlags(u32);

impl RemapFlags {
    /// No flag.
    pub const NONE: Self = Self(0);
    /// `MREMAP_MAYMOVE`.
    pub const MAYMOVE: Self = Self(1);
    /// `MREMAP_FIXED`.
    pub const FIXED: Self = Self(2);
    /// `MREMAP_DONTUNMAP`.
    pub const DONTUNMAP: Self = Self(4);
    /// `MREMAP_DUP`: map the range a second time, keep the original.
    pub const DUP: Self = Self(8);

    /// A value with arbitrary bits, to test how unknown flags are refused.
    pub const fn from_bits_retain(bits: u32) -> Self {
        Self(bits)
    }

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }
}

impl BitOr for RemapFlags {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// Where the duplicate goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The kernel picks an address, as `mmap(NULL, ...)` does.
    Anywhere,
    /// Exactly at this address, replacing what is mapped there (`MAP_FIXED`).
    Fixed(usize),
}

/// The raw `mremap(2)` system call.
///
/// Returns the address of the resulting mapping.
///
/// # Safety
///
/// Depending on `flags`, the call unmaps or replaces memory at `old_addr` and
/// `new_addr`: the caller must own those ranges and hold no references into
/// memory the call removes.
pub unsafe fn mremap_raw(
    old_addr: usize,
    old_len: usize,
    new_len: usize,
    flags: RemapFlags,
    new_addr: usize,
) -> nix::Result<usize> {
    // SAFETY: the system call itself only reads its integer arguments; what it
    // does to the address space is the caller's contract (see `# Safety`).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mremap,
            old_addr,
            old_len,
            new_len,
            flags.bits() as libc::c_ulong,
            new_addr,
        )
    };
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret as usize)
    }
}

/// Maps `len` bytes at `src` a second time and leaves the original mapping
/// as it is. Returns the address of the duplicate.
///
/// # Safety
///
/// With [`Placement::Fixed`], whatever is mapped at `[addr, addr + len)` is
/// replaced: the caller must own that range (typically a `PROT_NONE`
/// reservation) and hold no references into it.
pub unsafe fn dup(
    src: *const c_void,
    len: usize,
    placement: Placement,
) -> nix::Result<*mut c_void> {
    let (flags, new_addr) = match placement {
        Placement::Anywhere => (RemapFlags::DUP, 0),
        Placement::Fixed(addr) => (RemapFlags::DUP | RemapFlags::FIXED, addr),
    };
    // SAFETY: MREMAP_DUP never unmaps the source; the destination, for
    // Placement::Fixed, is the caller's to replace (see `# Safety`).
    unsafe { mremap_raw(src as usize, len, len, flags, new_addr) }.map(|a| a as *mut c_void)
}

/// Does the running kernel know `MREMAP_DUP`?
///
/// Duplicates a fresh one-page `MAP_SHARED | MAP_ANONYMOUS` mapping where
/// the kernel picks (an older kernel refuses the unknown flag with
/// `EINVAL`), unmaps both and remembers the answer for the process.
///
/// ```no_run
/// if !mremap_dup::is_supported() {
///     eprintln!("no MREMAP_DUP: fall back to a shadow copy");
/// }
/// ```
pub fn is_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(probe)
}

fn probe() -> bool {
    let page = page_size();
    let flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
    // SAFETY: a fresh mapping where the kernel picks.
    let p = unsafe { libc::mmap(core::ptr::null_mut(), page, libc::PROT_READ, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        return false;
    }
    // SAFETY: MREMAP_DUP without MREMAP_FIXED replaces nothing.
    let dup = unsafe { mremap_raw(p as usize, page, page, RemapFlags::DUP, 0) };
    // SAFETY: both mappings were made here and nothing references them.
    unsafe {
        if let Ok(q) = dup {
            libc::munmap(q as *mut c_void, page);
        }
        libc::munmap(p, page);
    }
    dup.is_ok()
}

/// The base page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf() has no memory-safety preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}
