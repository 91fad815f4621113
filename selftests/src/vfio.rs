// SPDX-License-Identifier: GPL-2.0

//! MREMAP_DUP of a VFIO BAR mapping: QEMU's case (qemu-devel, November 2025,
//! "virtio-gpu-dmabuf: Create dmabuf for blobs associated with VFIO
//! devices"): parts of BAR mappings it holds only by address, stitched side
//! by side into one reservation.
//!
//! The device is QEMU's `ivshmem-plain` (BAR 2: 8 MiB of shared memory, so
//! that PMD-sized faults happen), which scripts/guest-test.sh binds to
//! vfio-pci in no-IOMMU mode and names in `$MREMAP_DUP_VFIO_BDF`. Its BAR is
//! mapped through the legacy container/group API. vfio-pci declares its BAR
//! mappings `VM_LINEAR_PGOFF` (patch 11), so parts may be duplicated; without
//! that patch a part is EINVAL. A missing device is a failure: every test
//! run brings it up.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::check;
use crate::harness::{Context, Failure, Test, TestResult};
use crate::util::*;
use mremap_dup::RemapFlags as F;

/// Where scripts/guest-test.sh says the ivshmem device is.
const BDF_ENV: &str = "MREMAP_DUP_VFIO_BDF";
/// `VFIO_TYPE` of include/uapi/linux/vfio.h.
const VFIO_TYPE: u8 = b';';
/// `VFIO_NOIOMMU_IOMMU`.
const VFIO_NOIOMMU_IOMMU: libc::c_ulong = 8;
/// `VFIO_GROUP_FLAGS_VIABLE`.
const GROUP_VIABLE: u32 = 1;
/// `VFIO_REGION_INFO_FLAG_MMAP`.
const REGION_MMAP: u32 = 1 << 2;
/// ivshmem's shared memory BAR.
const BAR: u32 = 2;

/// `struct vfio_group_status`.
#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(Default)]
struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

nix::ioctl_none!(get_api_version, VFIO_TYPE, 100);
nix::ioctl_write_int_bad!(set_iommu, nix::request_code_none!(VFIO_TYPE, 102));
nix::ioctl_readwrite_bad!(
    group_get_status,
    nix::request_code_none!(VFIO_TYPE, 103),
    GroupStatus
);
nix::ioctl_write_ptr_bad!(
    group_set_container,
    nix::request_code_none!(VFIO_TYPE, 104),
    libc::c_int
);
nix::ioctl_write_ptr_bad!(
    group_get_device_fd,
    nix::request_code_none!(VFIO_TYPE, 106),
    libc::c_char
);
nix::ioctl_readwrite_bad!(
    device_get_region_info,
    nix::request_code_none!(VFIO_TYPE, 108),
    RegionInfo
);

/// The open VFIO objects behind a BAR mapping, kept for its lifetime.
struct VfioBar {
    _container: OwnedFd,
    _group: OwnedFd,
    device: OwnedFd,
    /// Offset of the BAR in the device fd.
    offset: usize,
    /// Size of the BAR.
    size: usize,
}

fn open_rw(path: &str) -> Result<OwnedFd, Failure> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .ctx(&format!("open {path}"))?;
    Ok(f.into())
}

impl VfioBar {
    /// Opens the device of `$MREMAP_DUP_VFIO_BDF` in no-IOMMU mode.
    fn open() -> Result<Self, Failure> {
        let bdf = std::env::var(BDF_ENV).map_err(|_| {
            Failure::Fail(format!(
                "${BDF_ENV} is not set: scripts/guest-test.sh did not bind the ivshmem device to vfio-pci"
            ))
        })?;
        let link = std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/iommu_group"))
            .ctx(&format!("{bdf}: no IOMMU group"))?;
        let group_nr = link
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Failure::Fail(format!("{bdf}: bad iommu_group link")))?
            .to_string();
        let container = open_rw("/dev/vfio/vfio")?;
        // SAFETY: VFIO_GET_API_VERSION takes no argument.
        let version =
            unsafe { get_api_version(container.as_raw_fd()) }.ctx("VFIO_GET_API_VERSION")?;
        check!(version == 0, "VFIO API version {version}, expected 0");
        let group = open_rw(&format!("/dev/vfio/noiommu-{group_nr}"))?;
        let mut status = GroupStatus {
            argsz: std::mem::size_of::<GroupStatus>() as u32,
            ..Default::default()
        };
        // SAFETY: the kernel fills a vfio_group_status of argsz bytes.
        unsafe { group_get_status(group.as_raw_fd(), &mut status) }.ctx("VFIO_GROUP_GET_STATUS")?;
        check!(
            status.flags & GROUP_VIABLE != 0,
            "VFIO group {group_nr} not viable"
        );
        let cfd = container.as_raw_fd();
        // SAFETY: the argument points to the container's fd.
        unsafe { group_set_container(group.as_raw_fd(), &cfd) }.ctx("VFIO_GROUP_SET_CONTAINER")?;
        // SAFETY: VFIO_SET_IOMMU takes the IOMMU type by value.
        unsafe { set_iommu(cfd, VFIO_NOIOMMU_IOMMU as libc::c_int) }
            .ctx("VFIO_SET_IOMMU(NOIOMMU)")?;
        let name = CString::new(bdf.clone()).map_err(|e| Failure::Fail(e.to_string()))?;
        // SAFETY: the argument is a NUL-terminated device name.
        let dfd = unsafe { group_get_device_fd(group.as_raw_fd(), name.as_ptr()) }
            .ctx("VFIO_GROUP_GET_DEVICE_FD")?;
        // SAFETY: a new fd that the ioctl returned and nobody else owns.
        let device = unsafe { OwnedFd::from_raw_fd(dfd) };
        let mut info = RegionInfo {
            argsz: std::mem::size_of::<RegionInfo>() as u32,
            index: BAR,
            ..Default::default()
        };
        // SAFETY: the kernel fills a vfio_region_info of argsz bytes.
        unsafe { device_get_region_info(device.as_raw_fd(), &mut info) }
            .ctx("VFIO_DEVICE_GET_REGION_INFO")?;
        check!(
            info.flags & REGION_MMAP != 0 && info.size >= (4 << 20),
            "BAR {BAR}: flags {:#x} size {:#x}: not an mmap-able BAR of 4 MiB or more",
            info.flags,
            info.size
        );
        Ok(Self {
            _container: container,
            _group: group,
            device,
            offset: info.offset as usize,
            size: info.size as usize,
        })
    }

    /// A MAP_SHARED mapping of the whole BAR.
    fn map(&self) -> Result<Mapping, Failure> {
        map(
            0,
            self.size,
            RW,
            libc::MAP_SHARED,
            self.device.as_raw_fd(),
            self.offset,
        )
        .ctx("mmap of the BAR through the VFIO device fd")
    }
}

/// The word at the start of page `p` of the BAR in the pattern of `seed`.
fn pattern(seed: u64, p: usize) -> u64 {
    (seed.wrapping_mul(0x9e37_79b9) ^ ((p as u64) << 16)) | 0x7f1f0
}

/// Writes the pattern through a mapping of the whole BAR.
fn fill(addr: usize, size: usize, seed: u64) {
    for p in 0..size / page() {
        poke(addr + p * page(), pattern(seed, p));
    }
}

/// Checks `pages` pages at `addr` against BAR pages from `first`.
fn check_view(what: &str, addr: usize, first: usize, pages: usize, seed: u64) -> TestResult {
    for i in 0..pages {
        let (got, want) = (peek(addr + i * page()), pattern(seed, first + i));
        check!(
            got == want,
            "{what}: page {i} (BAR page {}) reads {got:#x}, expected {want:#x}",
            first + i
        );
    }
    Ok(())
}

/// A PROT_NONE reservation of `len` bytes below 4 GiB, aligned to 2 MiB.
fn reserve_low_aligned(len: usize) -> Result<(Mapping, usize), Failure> {
    let align = 2 << 20;
    let res = reserve((len + align) / page(), true)?;
    let start = (res.addr + align - 1) & !(align - 1);
    check!(
        start + len <= 1 << 32,
        "reservation at {start:#x} not below 4 GiB"
    );
    Ok((res, start))
}

/// The whole BAR duplicated below 4 GiB: same bytes both ways.
fn vfio_bar_whole_dup_below_4g() -> TestResult {
    require_dup()?;
    let bar = VfioBar::open()?;
    let orig = bar.map()?;
    fill(orig.addr, bar.size, 1);
    let (_res, at) = reserve_low_aligned(bar.size)?;
    dup_raw(orig.addr, bar.size, bar.size, F::DUP | F::FIXED, at).ctx("DUP|FIXED of the BAR")?;
    check_view("whole duplicate", at, 0, bar.size / page(), 1)?;
    poke(at + 8, 0x5a5a);
    check!(
        peek(orig.addr + 8) == 0x5a5a,
        "write via the duplicate not seen via the BAR"
    );
    Ok(())
}

/// Two parts of the BAR, its second half (PMD-aligned, 2 MiB or more) and
/// its first quarter, stitched in that order into one reservation below
/// 4 GiB. Done before the source mapping is touched, so that the parts fault
/// through vfio-pci's handler with their own file offsets; then again from a
/// populated source, whose entries are copied.
fn vfio_bar_parts_stitched_below_4g() -> TestResult {
    require_dup()?;
    let bar = VfioBar::open()?;
    let (half, quarter) = (bar.size / 2, bar.size / 4);
    {
        let writer = bar.map()?;
        fill(writer.addr, bar.size, 2);
    }
    for populated in [false, true] {
        let src = bar.map()?;
        if populated {
            check_view("source", src.addr, 0, bar.size / page(), 2)?;
        }
        let (_res, at) = reserve_low_aligned(half + quarter)?;
        let case = if populated {
            "populated source"
        } else {
            "untouched source"
        };
        dup_raw(src.addr + half, half, half, F::DUP | F::FIXED, at)
            .ctx(&format!("{case}: DUP|FIXED of the BAR's second half"))?;
        dup_raw(src.addr, quarter, quarter, F::DUP | F::FIXED, at + half)
            .ctx(&format!("{case}: DUP|FIXED of the BAR's first quarter"))?;
        check_view(
            &format!("{case}: second half"),
            at,
            half / page(),
            half / page(),
            2,
        )?;
        check_view(
            &format!("{case}: first quarter"),
            at + half,
            0,
            quarter / page(),
            2,
        )?;
        poke(at + half + 16, 0xc0ffee);
        check!(
            peek(src.addr + 16) == 0xc0ffee,
            "{case}: write via the stitched view not seen via the BAR"
        );
    }
    Ok(())
}

/// Unmapping a duplicate of a part leaves the BAR mapping and its contents
/// as they were, and /proc/self/maps as before the duplicate.
fn vfio_dup_unmap_leaves_original() -> TestResult {
    require_dup()?;
    let bar = VfioBar::open()?;
    let orig = bar.map()?;
    fill(orig.addr, bar.size, 3);
    let quarter = bar.size / 4;
    // Read once first, so that reading it does not itself change the heap.
    let _ = std::fs::read_to_string("/proc/self/maps");
    let before = std::fs::read_to_string("/proc/self/maps").ctx("maps")?;
    let (res, at) = reserve_low_aligned(quarter)?;
    dup_raw(orig.addr + quarter, quarter, quarter, F::DUP | F::FIXED, at)
        .ctx("DUP|FIXED of the BAR's second quarter")?;
    check_view("part", at, quarter / page(), quarter / page(), 3)?;
    // The reservation, the duplicate inside it included.
    drop(res);
    let after = std::fs::read_to_string("/proc/self/maps").ctx("maps")?;
    check!(
        before == after,
        "maps differ after the duplicate is gone:\n{before}\n---\n{after}"
    );
    check_view(
        "BAR after the duplicate is gone",
        orig.addr,
        0,
        bar.size / page(),
        3,
    )
}

/// The tests of this module.
pub const TESTS: &[Test] = crate::tests![
    vfio_bar_whole_dup_below_4g,
    vfio_bar_parts_stitched_below_4g,
    vfio_dup_unmap_leaves_original,
];
