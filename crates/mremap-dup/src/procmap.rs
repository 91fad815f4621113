// SPDX-License-Identifier: MIT OR Apache-2.0

//! The `PROCMAP_QUERY` ioctl on `/proc/self/maps` (Linux 6.11+): one VMA
//! at a time, without parsing text.
//!
//! `struct procmap_query` and the ioctl number are declared here from
//! `include/uapi/linux/fs.h`, so that the crate does not depend on the
//! C library's or the build machine's kernel headers.

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::errno::Errno;

/// `PROCMAP_QUERY_VMA_READABLE`.
pub const VMA_READABLE: u64 = 0x01;
/// `PROCMAP_QUERY_VMA_WRITABLE`.
pub const VMA_WRITABLE: u64 = 0x02;
/// `PROCMAP_QUERY_VMA_EXECUTABLE`.
pub const VMA_EXECUTABLE: u64 = 0x04;
/// `PROCMAP_QUERY_VMA_SHARED`.
pub const VMA_SHARED: u64 = 0x08;
/// `PROCMAP_QUERY_COVERING_OR_NEXT_VMA`.
const COVERING_OR_NEXT_VMA: u64 = 0x10;

/// `struct procmap_query`, with the uapi layout (104 bytes, no padding).
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

const _: () = assert!(core::mem::size_of::<ProcmapQuery>() == 104);

// #define PROCFS_IOCTL_MAGIC 'f'
// #define PROCMAP_QUERY _IOWR(PROCFS_IOCTL_MAGIC, 17, struct procmap_query)
nix::ioctl_readwrite!(procmap_query, b'f', 17, ProcmapQuery);

/// One VMA as `PROCMAP_QUERY` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vma {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// `PROCMAP_QUERY_VMA_*` bits.
    pub flags: u64,
    /// The VMA's page size: the huge page size of a hugetlb mapping.
    pub page_size: usize,
    /// The backing file's inode number, 0 for anonymous memory.
    pub inode: u64,
}

impl Vma {
    /// A private anonymous `PROT_NONE` mapping: a reservation.
    pub fn is_reservation(&self) -> bool {
        let busy = VMA_READABLE | VMA_WRITABLE | VMA_EXECUTABLE | VMA_SHARED;
        self.flags & busy == 0 && self.inode == 0
    }
}

/// An open `/proc/self/maps`, opened for each call (an fd kept across a
/// fork() would still describe the parent).
pub struct Maps(File);

impl Maps {
    /// Opens `/proc/self/maps`.
    pub fn open() -> nix::Result<Self> {
        File::open("/proc/self/maps")
            .map(Self)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    }

    fn query(&self, addr: usize, flags: u64) -> nix::Result<Option<Vma>> {
        let mut q = ProcmapQuery {
            size: core::mem::size_of::<ProcmapQuery>() as u64,
            query_flags: flags,
            query_addr: addr as u64,
            ..Default::default()
        };
        // SAFETY: q is a valid, writable procmap_query of the size it
        // declares; no name or build-id buffer is requested.
        match unsafe { procmap_query(self.0.as_raw_fd(), &mut q) } {
            Ok(_) => Ok(Some(Vma {
                start: q.vma_start as usize,
                end: q.vma_end as usize,
                flags: q.vma_flags,
                page_size: q.vma_page_size as usize,
                inode: q.inode,
            })),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The VMA holding `addr`, if any.
    pub fn covering(&self, addr: usize) -> nix::Result<Option<Vma>> {
        self.query(addr, 0)
    }

    /// The VMA holding `addr`, or else the first one above it.
    pub fn covering_or_next(&self, addr: usize) -> nix::Result<Option<Vma>> {
        self.query(addr, COVERING_OR_NEXT_VMA)
    }
}
