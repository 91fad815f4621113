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
//! that patch a part is EINVAL (whole duplicates work either way). A missing
//! device is a failure: every test run brings it up.
//!
//! `madvise(MADV_DONTNEED)` is EINVAL on a `VM_PFNMAP` mapping
//! (madvise_dontneed_free_valid_vma()), so the tests make vfio-pci zap its
//! mappings itself: clearing `PCI_COMMAND_MEMORY` through the config region
//! calls vfio_pci_zap_bars(), an unmap_mapping_range() of the device fd's
//! file, which reaches a duplicate through the i_mmap tree at its file
//! offsets; accesses then SIGBUS until memory is enabled again, and fault
//! back in through vfio-pci's handler with the duplicate's `vm_pgoff`.
//!
//! The same BAR is also mapped through its sysfs resource file: a device
//! mapping of a regular file, without `VM_LINEAR_PGOFF`, duplicated whole
//! only.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use nix::sys::signal::Signal;

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
/// `VFIO_PCI_CONFIG_REGION_INDEX`.
const CONFIG_REGION: u32 = 7;
/// `PCI_COMMAND` in config space, and its memory-enable bit.
const PCI_COMMAND: usize = 4;
const PCI_COMMAND_MEMORY: u16 = 2;
/// A PMD's worth of bytes on x86-64.
const PMD_SIZE: usize = 2 << 20;

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
    device: File,
    /// The device's PCI address, as in `$MREMAP_DUP_VFIO_BDF`.
    bdf: String,
    /// Offset of the BAR in the device fd.
    offset: usize,
    /// Size of the BAR.
    size: usize,
    /// Offset of the config space in the device fd.
    config: usize,
}

/// The ivshmem device's PCI address, from `$MREMAP_DUP_VFIO_BDF`.
fn ivshmem_bdf() -> Result<String, Failure> {
    std::env::var(BDF_ENV)
        .ok()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| {
            Failure::Fail(format!(
                "${BDF_ENV} is not set or empty: scripts/guest-test.sh found no ivshmem device (1af4:1110, QEMU's -device ivshmem-plain of boot.sh) to bind to vfio-pci"
            ))
        })
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
        let bdf = ivshmem_bdf()?;
        let link = std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/iommu_group")).ctx(
            &format!("{bdf}: no IOMMU group (not bound to vfio-pci in no-IOMMU mode?)"),
        )?;
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
        let device = File::from(unsafe { OwnedFd::from_raw_fd(dfd) });
        let info = region_info(&device, BAR)?;
        check!(
            info.flags & REGION_MMAP != 0 && info.size >= (4 << 20),
            "BAR {BAR}: flags {:#x} size {:#x}: not an mmap-able BAR of 4 MiB or more",
            info.flags,
            info.size
        );
        let config = region_info(&device, CONFIG_REGION)?.offset as usize;
        Ok(Self {
            _container: container,
            _group: group,
            device,
            bdf,
            offset: info.offset as usize,
            size: info.size as usize,
            config,
        })
    }

    /// The BAR's bus address, from sysfs.
    fn phys(&self) -> Result<u64, Failure> {
        let path = format!("/sys/bus/pci/devices/{}/resource", self.bdf);
        let res = std::fs::read_to_string(&path).ctx(&path)?;
        let start = res
            .lines()
            .nth(BAR as usize)
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok());
        start.ok_or_else(|| Failure::Fail(format!("{path}: no start of BAR {BAR}")))
    }

    /// `PCI_COMMAND`, read through the config region of the device fd.
    fn command(&self) -> Result<u16, Failure> {
        let mut v = [0u8; 2];
        self.device
            .read_exact_at(&mut v, (self.config + PCI_COMMAND) as u64)
            .ctx("read of PCI_COMMAND")?;
        Ok(u16::from_le_bytes(v))
    }

    /// Writes `PCI_COMMAND` through the config region: clearing the memory
    /// bit makes vfio-pci zap every mapping of its BARs.
    fn set_command(&self, cmd: u16) -> TestResult {
        self.device
            .write_all_at(&cmd.to_le_bytes(), (self.config + PCI_COMMAND) as u64)
            .ctx(&format!("write of PCI_COMMAND {cmd:#x}"))
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

/// VFIO_DEVICE_GET_REGION_INFO of region `index`.
fn region_info(device: &File, index: u32) -> Result<RegionInfo, Failure> {
    let mut info = RegionInfo {
        argsz: std::mem::size_of::<RegionInfo>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: the kernel fills a vfio_region_info of argsz bytes.
    unsafe { device_get_region_info(device.as_raw_fd(), &mut info) }
        .ctx(&format!("VFIO_DEVICE_GET_REGION_INFO({index})"))?;
    Ok(info)
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

/// Two parts of the BAR, its second half (2 MiB-aligned in the reservation
/// and in the BAR's bus addresses, and 4 MiB long, so that a PMD-sized fault
/// can map it) and its first quarter, stitched in that order into one
/// reservation below 4 GiB. From an untouched source the parts fault through
/// vfio-pci's handler with their own file offsets; from a populated source
/// their entries are copied. Either way, and again after vfio-pci zapped them
/// (memory disabled: an access is SIGBUS) and they faulted back in, each part
/// reads the BAR at its offset, and a write through it is seen through the
/// BAR.
fn vfio_bar_parts_stitched_below_4g() -> TestResult {
    require_dup()?;
    let bar = VfioBar::open()?;
    let (half, quarter) = (bar.size / 2, bar.size / 4);
    let phys = bar.phys()?;
    check!(
        phys % PMD_SIZE as u64 == 0 && half % PMD_SIZE == 0,
        "BAR {BAR} at {phys:#x}, {:#x} bytes: its second half cannot be mapped by PMDs",
        bar.size
    );
    {
        let writer = bar.map()?;
        fill(writer.addr, bar.size, 2);
    }
    let cmd = bar.command()?;
    check!(
        cmd & PCI_COMMAND_MEMORY != 0,
        "PCI_COMMAND {cmd:#x}: memory not enabled"
    );
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
        // Each part, and the word written through it (not a pattern word).
        let parts = [
            (
                "second half",
                at,
                half,
                half,
                0xc0ff_ee00 | u64::from(populated),
            ),
            (
                "first quarter",
                at + half,
                0,
                quarter,
                0xbeef_0000 | u64::from(populated),
            ),
        ];
        for (name, addr, off, len, _) in parts {
            check_view(
                &format!("{case}: {name}"),
                addr,
                off / page(),
                len / page(),
                2,
            )?;
        }
        for (name, addr, off, _, word) in parts {
            poke(addr + 16, word);
            check!(
                peek(src.addr + off + 16) == word,
                "{case}: write via the stitched view's {name} not seen via the BAR"
            );
        }
        // vfio-pci zaps every mapping of its BARs, the parts included.
        bar.set_command(cmd & !PCI_COMMAND_MEMORY)?;
        let zapped = parts.map(|(_, addr, ..)| {
            in_child_signal(|| {
                peek(addr + page());
            })
        });
        bar.set_command(cmd)?;
        for ((name, ..), sig) in parts.iter().zip(zapped) {
            check!(
                sig == Some(Signal::SIGBUS),
                "{case}: read via the stitched view's {name} with the device's memory disabled: {sig:?}, expected SIGBUS (not zapped?)"
            );
        }
        for (name, addr, off, len, word) in parts {
            check_view(
                &format!("{case}: {name}, faulted back in"),
                addr,
                off / page(),
                len / page(),
                2,
            )?;
            check!(
                peek(addr + 16) == word,
                "{case}: {name}, faulted back in: the word written through it is gone"
            );
        }
    }
    Ok(())
}

/// /proc/self/maps without the heap, which reading it may grow.
fn maps() -> Result<String, Failure> {
    let maps = std::fs::read_to_string("/proc/self/maps").ctx("maps")?;
    Ok(maps
        .lines()
        .filter(|l| !l.ends_with("[heap]"))
        .map(|l| format!("{l}\n"))
        .collect())
}

/// Unmapping duplicates of the whole BAR, one below 4 GiB in a reservation
/// and one where the kernel put it, leaves the BAR mapping and its contents
/// as they were, and /proc/self/maps as before the duplicates.
fn vfio_dup_unmap_leaves_original() -> TestResult {
    require_dup()?;
    let bar = VfioBar::open()?;
    let orig = bar.map()?;
    let pages = bar.size / page();
    fill(orig.addr, bar.size, 3);
    let before = maps()?;
    let (res, at) = reserve_low_aligned(bar.size)?;
    dup_raw(orig.addr, bar.size, bar.size, F::DUP | F::FIXED, at).ctx("DUP|FIXED of the BAR")?;
    let anywhere = dup_raw(orig.addr, bar.size, bar.size, F::DUP, 0).ctx("DUP of the BAR")?;
    check_view("duplicate below 4 GiB", at, 0, pages, 3)?;
    check_view("duplicate the kernel placed", anywhere, 0, pages, 3)?;
    drop(Mapping::adopt(anywhere, bar.size));
    check!(
        maps_in(anywhere, anywhere + bar.size).is_empty(),
        "the kernel-placed duplicate is still mapped after munmap"
    );
    check_view(
        "BAR after munmap of the kernel-placed duplicate",
        orig.addr,
        0,
        pages,
        3,
    )?;
    drop(Mapping::adopt(at, bar.size));
    check!(
        maps_in(at, at + bar.size).is_empty(),
        "the duplicate below 4 GiB is still mapped after munmap"
    );
    check_view(
        "BAR after munmap of the duplicate below 4 GiB",
        orig.addr,
        0,
        pages,
        3,
    )?;
    drop(res);
    let after = maps()?;
    check!(
        before == after,
        "maps differ after the duplicates are gone:\n{before}\n---\n{after}"
    );
    poke(orig.addr + 8, 0x1234_5678);
    check!(
        peek(orig.addr + 8) == 0x1234_5678,
        "the BAR mapping is no longer writable"
    );
    Ok(())
}

/// Pages of the BAR mapped through its sysfs resource file.
const SYSFS_PAGES: usize = 4;

/// The first [`SYSFS_PAGES`] pages of the BAR mapped through its sysfs
/// resource file, `/sys/bus/pci/devices/<bdf>/resource2`: a regular (kernfs)
/// file, whose mapping pci_mmap_resource() makes a device mapping with
/// io_remap_pfn_range() (`VM_IO | VM_PFNMAP`) and no `VM_LINEAR_PGOFF`.
/// Filled with the pattern of `seed`.
fn map_sysfs_resource(seed: u64) -> Result<(OwnedFd, Mapping), Failure> {
    let path = format!("/sys/bus/pci/devices/{}/resource{BAR}", ivshmem_bdf()?);
    let fd = open_rw(&path)?;
    let len = SYSFS_PAGES * page();
    let m = map(0, len, RW, libc::MAP_SHARED, fd.as_raw_fd(), 0).ctx(&format!("mmap {path}"))?;
    let flags = vm_flags_at(m.addr);
    check!(
        flags.iter().any(|f| f == "io") && flags.iter().any(|f| f == "pf"),
        "{path}: mapping is not VM_IO | VM_PFNMAP (VmFlags {flags:?})"
    );
    fill(m.addr, len, seed);
    Ok((fd, m))
}

/// Part of a device mapping of a regular file (a sysfs PCI resource file) is
/// refused with EINVAL, source and destination unchanged: its driver set the
/// VMA up as a whole, and nothing says that faults find the memory from the
/// part's file offset. The whole mapping is duplicated, see
/// [`pci_sysfs_resource_whole_duplicated`].
fn pci_sysfs_resource_part_refused() -> TestResult {
    require_dup()?;
    let (_fd, orig) = map_sysfs_resource(5)?;
    let res = reserve(SYSFS_PAGES, true)?;
    let ranges = [(orig.addr, orig.len, true), (res.addr, res.len, false)];
    let snap = snapshot(&ranges);
    for (first, pages) in [(1, 2), (0, SYSFS_PAGES - 1), (1, SYSFS_PAGES - 1)] {
        let case = format!(
            "DUP|FIXED of pages {first}..{} of a {SYSFS_PAGES}-page sysfs resource mapping",
            first + pages
        );
        let call = dup_raw(
            orig.addr + first * page(),
            pages * page(),
            pages * page(),
            F::DUP | F::FIXED,
            res.addr,
        );
        expect_errno(&case, call, nix::errno::Errno::EINVAL)?;
        check!(
            snapshot(&ranges) == snap,
            "{case}: source or destination changed"
        );
    }
    check_view(
        "the mapping after refused DUPs",
        orig.addr,
        0,
        SYSFS_PAGES,
        5,
    )
}

/// The whole sysfs resource mapping is duplicated below 4 GiB, and shares
/// the BAR's bytes both ways.
fn pci_sysfs_resource_whole_duplicated() -> TestResult {
    require_dup()?;
    let (_fd, orig) = map_sysfs_resource(6)?;
    let res = reserve(SYSFS_PAGES, true)?;
    dup_raw(orig.addr, orig.len, orig.len, F::DUP | F::FIXED, res.addr)
        .ctx("DUP|FIXED of the whole sysfs resource mapping")?;
    check_view("whole duplicate", res.addr, 0, SYSFS_PAGES, 6)?;
    poke(res.addr + page() + 8, 0x5a5a);
    check!(
        peek(orig.addr + page() + 8) == 0x5a5a,
        "write via the duplicate not seen via the sysfs resource mapping"
    );
    poke(orig.addr + 16, 0xa5a5);
    check!(
        peek(res.addr + 16) == 0xa5a5,
        "write via the sysfs resource mapping not seen via the duplicate"
    );
    Ok(())
}

/// The tests of this module.
pub const TESTS: &[Test] = crate::tests![
    vfio_bar_whole_dup_below_4g,
    vfio_bar_parts_stitched_below_4g,
    vfio_dup_unmap_leaves_original,
    pci_sysfs_resource_part_refused,
    pci_sysfs_resource_whole_duplicated,
];
