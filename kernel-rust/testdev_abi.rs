// SPDX-License-Identifier: GPL-2.0

//! The interface of `/dev/mremap_dup_testdev`, written once.
//!
//! The test device (`mremap_dup_testdev.rs`), its KUnit suite
//! (`mremap_dup_kunit.rs`) and the userspace selftests
//! (`selftests/src/testdev.rs`) all include this file as a module with
//! `#[path]`, so it holds constants only and imports nothing: it compiles in
//! the kernel crate and in a std crate alike.
//!
//! The ioctl request codes are built from [`IOCTL_TYPE`], the `NR_*` numbers
//! and the payload types below by each side's own `_IOR()` (the kernel's
//! `kernel::ioctl::_IOR`, `nix::ioctl_read!` in userspace), as C code does
//! with one uapi header and the `_IOR()` macro.

// Each includer uses a different part.
#![allow(dead_code)]

/// The module's name, and the name of its misc device.
pub(crate) const NAME: &core::ffi::CStr = c"mremap_dup_testdev";
/// The device node of [`NAME`] (devtmpfs).
pub(crate) const DEV_PATH: &core::ffi::CStr = c"/dev/mremap_dup_testdev";

/// Pages of memory behind every mapping; a mapping covers at most this many.
pub(crate) const PAGES: usize = 4;
/// Page `i` of the memory starts with the `u64` word `MAGIC + i`.
pub(crate) const MAGIC: u64 = 0x6d72_656d_6170_0000;

/// The mmap offset selects the flavour: flavour `f` is mapped at file offset
/// `f * FLAVOUR_STRIDE` pages ([`flavour_offset`]); page `i` of a mapping at
/// offset `f * FLAVOUR_STRIDE + i` pages is page `i` of the memory.
pub(crate) const FLAVOUR_STRIDE: usize = 256;

/// `remap_pfn_range()` at mmap time, no fault handler (`VM_PFNMAP | VM_IO`).
pub(crate) const REMAP_PFN: usize = 0;
/// `vmf_insert_pfn()` from `->fault` of the page at the fault's file offset
/// (`VM_PFNMAP | VM_IO`), declared with `VM_LINEAR_PGOFF`: any part of it may
/// be duplicated.
pub(crate) const FAULT_PFN: usize = 1;
/// `vm_insert_page()` at mmap time, no fault handler (`VM_MIXEDMAP`).
pub(crate) const MIXED: usize = 2;
/// As [`REMAP_PFN`], plus `VM_DONTCOPY`.
pub(crate) const DONTCOPY: usize = 3;
/// One write-combining `remap_pfn_range()` of the whole VMA onto memory that
/// is not System RAM (`pat_base=`), which x86 PAT tracks.
pub(crate) const PAT_WC: usize = 4;
/// `vmf_insert_pfn()` from `->fault` of the page at the fault's offset into
/// the VMA, ignoring the file offset, as drm_gem_shmem does
/// (`VM_PFNMAP | VM_IO`, not `VM_LINEAR_PGOFF`): duplicated whole only.
pub(crate) const FAULT_REL: usize = 5;
/// As [`REMAP_PFN`], plus a `vm_ops->mremap` hook (which accepts every
/// move): a driver that tracks its mapping's address, as resctrl's
/// pseudo-locked region device does, without `VM_DONTCOPY`.
pub(crate) const MREMAP_HOOK: usize = 6;
/// The number of flavours.
pub(crate) const FLAVOURS: usize = 7;

/// The mmap offset, in bytes, of `flavour` for pages of `page_size` bytes.
pub(crate) const fn flavour_offset(flavour: usize, page_size: usize) -> usize {
    flavour * FLAVOUR_STRIDE * page_size
}

/// The ioctl type ("magic"): `'Y'`, which
/// `Documentation/userspace-api/ioctl/ioctl-number.rst` (7.2) does not list.
pub(crate) const IOCTL_TYPE: u8 = b'Y';

/// What `GET_OPENS` and `GET_CLOSES` write: one count per flavour.
pub(crate) type Counts = [u64; FLAVOURS];
/// `_IOR(IOCTL_TYPE, NR_GET_OPENS, Counts)`: how often each flavour's
/// `vm_ops->open` ran, the first mapping of an mmap() included.
pub(crate) const NR_GET_OPENS: u8 = 1;
/// `_IOR(IOCTL_TYPE, NR_GET_CLOSES, Counts)`: how often each flavour's
/// `vm_ops->close` ran.
pub(crate) const NR_GET_CLOSES: u8 = 2;

/// What `GET_PAT_BASE` writes: a physical address.
pub(crate) type PatBase = u64;
/// `_IOR(IOCTL_TYPE, NR_GET_PAT_BASE, PatBase)`: the physical address of
/// the [`PAT_WC`] flavour's memory; fails with `ENODEV` when the module has
/// none (no valid, claimable `pat_base=`).
pub(crate) const NR_GET_PAT_BASE: u8 = 3;
