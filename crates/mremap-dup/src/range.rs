// SPDX-License-Identifier: MIT OR Apache-2.0

//! [`dup_range`]: duplicate the memory behind a pointer, whatever mapping
//! it lies in, without knowing that mapping.

use core::ffi::c_void;
use core::ops::BitOr;
use core::ptr::NonNull;

use nix::errno::Errno;

use crate::procmap::{Maps, VMA_SHARED};
use crate::{mremap_raw, page_size, RemapFlags};

/// Flags of [`dup_range_flags`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DupRangeFlags(u32);

impl DupRangeFlags {
    /// Duplicate the whole mapping holding the range right away, without
    /// first trying the smallest range (for a caller that knows it holds a
    /// device mapping: saves one system call).
    pub const WHOLE: Self = Self(1);
    /// Never fall back to the whole mapping: a mapping that may only be
    /// duplicated whole gives `EINVAL`, as the kernel does.
    pub const NO_WHOLE: Self = Self(2);

    const ALL: u32 = Self::WHOLE.0 | Self::NO_WHOLE.0;

    /// No flag.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The flags with these bits, or `None` if a bit is unknown.
    pub const fn from_bits(bits: u32) -> Option<Self> {
        if bits & !Self::ALL == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }

    /// Are all flags of `other` set?
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for DupRangeFlags {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// A `PROT_NONE` region `[base, base + size)` that the caller reserved
/// (as Wine reserves the low 4 GiB of a WoW64 process) and in which
/// [`dup_range`] may place duplicates.
///
/// Its free parts are its private anonymous `PROT_NONE` mappings. Make it
/// with `mmap(PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)`: a
/// released duplicate is put back as such a mapping, which then merges
/// with its neighbours again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    base: NonNull<c_void>,
    size: usize,
}

// SAFETY: a Reservation only names an address range; it holds no reference
// into it.
unsafe impl Send for Reservation {}
// SAFETY: as for Send.
unsafe impl Sync for Reservation {}

impl Reservation {
    /// Names the reservation `[base, base + size)`.
    ///
    /// # Safety
    ///
    /// The caller owns the range: [`dup_range`] replaces free (`PROT_NONE`)
    /// parts of it with duplicates, and a dropped [`DupRange`] replaces its
    /// duplicate with `PROT_NONE` memory again. No other code may map or
    /// unmap in the range meanwhile, and calls of [`dup_range`] placing
    /// into one reservation must not run concurrently.
    pub const unsafe fn new(base: NonNull<c_void>, size: usize) -> Self {
        Self { base, size }
    }

    /// The first address.
    pub fn base(&self) -> NonNull<c_void> {
        self.base
    }

    /// The size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    fn start(&self) -> usize {
        self.base.as_ptr() as usize
    }

    fn end(&self) -> usize {
        self.start().saturating_add(self.size)
    }
}

/// Where [`dup_range`] places the duplicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangePlacement {
    /// Where the kernel picks (`MREMAP_DUP` without `MREMAP_FIXED`).
    Anywhere,
    /// Entirely below this address (e.g. `1 << 32`), in the highest free
    /// hole that fits, as `mmap()` searches top-down. The hole is taken
    /// with `MAP_FIXED_NOREPLACE` before the duplicate replaces it, so a
    /// mapping made by another thread meanwhile is never replaced (the
    /// search starts again, a few times, then `EAGAIN`). No hole: `ENOMEM`.
    Below(usize),
    /// In the lowest free part of the reservation that fits (aligned to
    /// the mapping's page size). No room: `ENOMEM`.
    InReservation(Reservation),
    /// Starting exactly at this address of the reservation: the duplicated
    /// range (which begins at or before the pointer, see [`dup_range`])
    /// starts there. An address not aligned to the mapping's page size:
    /// `EINVAL`; a range that does not fit in the reservation: `ENOMEM`;
    /// one that is not all free reservation: `EEXIST`.
    AtInReservation(Reservation, NonNull<c_void>),
}

// SAFETY: as for Reservation: addresses only.
unsafe impl Send for RangePlacement {}
// SAFETY: as for Send.
unsafe impl Sync for RangePlacement {}

/// A duplicate made by [`dup_range`]. Dropping it removes the duplicate:
/// it is unmapped, or, when it was placed in a [`Reservation`], replaced
/// by `PROT_NONE` memory again. The original mapping is never touched.
#[derive(Debug)]
#[must_use = "dropping a DupRange removes the duplicate"]
pub struct DupRange {
    ptr: NonNull<c_void>,
    base: NonNull<c_void>,
    size: usize,
    whole: bool,
    reserved: bool,
}

// SAFETY: a DupRange owns an address range, not memory the Rust program
// references; releasing it from any thread is the same system call.
unsafe impl Send for DupRange {}
// SAFETY: its methods only read its fields.
unsafe impl Sync for DupRange {}

impl DupRange {
    /// The duplicate of the caller's pointer: the same byte, seen through
    /// the duplicate.
    pub fn as_ptr(&self) -> NonNull<c_void> {
        self.ptr
    }

    /// The start of the duplicated range (at or before [`Self::as_ptr`]).
    pub fn base(&self) -> NonNull<c_void> {
        self.base
    }

    /// The size of the duplicated range in bytes: the requested bytes
    /// rounded out to pages (huge pages for hugetlb), or the whole mapping.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Does the duplicate cover the whole mapping that held the range?
    pub fn is_whole_mapping(&self) -> bool {
        self.whole
    }

    /// Keeps the duplicate mapped and returns its range: the caller now
    /// removes it (`munmap()`).
    pub fn into_raw(self) -> (NonNull<c_void>, usize) {
        let range = (self.base, self.size);
        core::mem::forget(self);
        range
    }
}

impl Drop for DupRange {
    fn drop(&mut self) {
        let base = self.base.as_ptr();
        if self.reserved {
            // SAFETY: the duplicate is this guard's own range of a
            // reservation the caller handed over (Reservation::new).
            unsafe { reserve(base, self.size, libc::MAP_FIXED) };
        } else {
            // SAFETY: the duplicate is this guard's own mapping.
            unsafe { libc::munmap(base, self.size) };
        }
    }
}

/// `mmap(PROT_NONE)` of `len` bytes at `addr` with `how` (`MAP_FIXED` or
/// `MAP_FIXED_NOREPLACE`).
///
/// # Safety
///
/// With `MAP_FIXED`, the caller owns `[addr, addr + len)`.
unsafe fn reserve(addr: *mut c_void, len: usize, how: i32) -> *mut c_void {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | how;
    // SAFETY: see `# Safety`; MAP_FIXED_NOREPLACE never replaces anything.
    unsafe { libc::mmap(addr, len, libc::PROT_NONE, flags, -1, 0) }
}

/// Duplicates the memory at `[ptr, ptr + len)` as [`dup_range_flags`] does
/// without flags: the smallest range the kernel allows, else the whole
/// mapping.
///
/// ```no_run
/// use core::ptr::NonNull;
/// use mremap_dup::{dup_range, RangePlacement};
///
/// # fn driver_pointer() -> NonNull<core::ffi::c_void> { unimplemented!() }
/// // A pointer a GL or Vulkan driver returned, somewhere in its mapping.
/// let ptr: NonNull<core::ffi::c_void> = driver_pointer();
/// let low = dup_range(ptr, 4096, RangePlacement::Below(1 << 32))?;
/// assert!((low.as_ptr().as_ptr() as usize) < 1 << 32);
/// // 32-bit code uses low.as_ptr(); dropping `low` unmaps the duplicate.
/// # Ok::<(), nix::Error>(())
/// ```
pub fn dup_range(
    ptr: NonNull<c_void>,
    len: usize,
    placement: RangePlacement,
) -> nix::Result<DupRange> {
    dup_range_flags(ptr, len, placement, DupRangeFlags::empty())
}

/// Duplicates the memory at `[ptr, ptr + len)`, placed as `placement`
/// says, and returns the duplicate of `ptr` in a guard that removes the
/// duplicate when dropped.
///
/// The mapping holding the range is found with the `PROCMAP_QUERY` ioctl
/// of `/proc/self/maps` (Linux 6.11+). The kernel duplicates any
/// page-aligned part of a mapping of a regular file (page cache,
/// shmem/memfd, `MAP_SHARED | MAP_ANONYMOUS`; hugetlbfs at huge page
/// alignment), but other shared mappings (DRM buffer objects, device
/// memory) only whole, unless their driver declared that its faults
/// follow the file offset; a part of those gives `EINVAL`. So this
/// duplicates first the range rounded out to the mapping's page size (its
/// huge page size for hugetlb, as `PROCMAP_QUERY` reports it) and, if the
/// kernel refuses that with `EINVAL`, the whole mapping. [`DupRangeFlags`]
/// skips either step.
///
/// Errors: `EFAULT` if the range is not mapped or not within one mapping;
/// `EINVAL` if `len` is 0, the mapping is private, or the kernel refuses
/// the duplicate (e.g. a kernel without `MREMAP_DUP`: see
/// [`crate::is_supported`]); `ENOTTY` on a kernel without `PROCMAP_QUERY`;
/// the placement's own errors (see [`RangePlacement`]); and those of
/// `mremap(2)` with `MREMAP_DUP`.
///
/// ```no_run
/// use core::ptr::NonNull;
/// use mremap_dup::{dup_range_flags, DupRangeFlags, RangePlacement, Reservation};
///
/// # fn wow64_reservation() -> (NonNull<core::ffi::c_void>, usize) { unimplemented!() }
/// # fn driver_pointer() -> NonNull<core::ffi::c_void> { unimplemented!() }
/// let (base, size) = wow64_reservation(); // PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
/// // SAFETY: the reservation is ours and only this thread places into it.
/// let res = unsafe { Reservation::new(base, size) };
/// let dup = dup_range_flags(driver_pointer(), 64, RangePlacement::InReservation(res),
///                           DupRangeFlags::empty())?;
/// let start = base.as_ptr() as usize;
/// assert!((start..start + size).contains(&(dup.as_ptr().as_ptr() as usize)));
/// drop(dup); // that part of the reservation is PROT_NONE again
/// # Ok::<(), nix::Error>(())
/// ```
pub fn dup_range_flags(
    ptr: NonNull<c_void>,
    len: usize,
    placement: RangePlacement,
    flags: DupRangeFlags,
) -> nix::Result<DupRange> {
    if len == 0 || flags.contains(DupRangeFlags::WHOLE | DupRangeFlags::NO_WHOLE) {
        return Err(Errno::EINVAL);
    }
    let maps = Maps::open()?;
    let addr = ptr.as_ptr() as usize;
    let end = addr.checked_add(len).ok_or(Errno::EFAULT)?;
    let vma = maps.covering(addr)?.ok_or(Errno::EFAULT)?;
    if end > vma.end {
        return Err(Errno::EFAULT);
    }
    if vma.flags & VMA_SHARED == 0 {
        return Err(Errno::EINVAL);
    }
    let align = vma.page_size.max(page_size());
    let whole = (vma.start, vma.end);
    let part = (
        align_down(addr, align).max(vma.start),
        align_up(end, align).min(vma.end),
    );
    let first = if flags.contains(DupRangeFlags::WHOLE) {
        whole
    } else {
        part
    };
    let (range, dst) = match place(&maps, first, align, placement) {
        Err(Errno::EINVAL) if first != whole && !flags.contains(DupRangeFlags::NO_WHOLE) => {
            (whole, place(&maps, whole, align, placement)?)
        }
        res => (first, res?),
    };
    let at = |a: usize| NonNull::new(a as *mut c_void).ok_or(Errno::EFAULT);
    Ok(DupRange {
        ptr: at(dst + (addr - range.0))?,
        base: at(dst)?,
        size: range.1 - range.0,
        whole: range == whole,
        reserved: matches!(
            placement,
            RangePlacement::InReservation(_) | RangePlacement::AtInReservation(..)
        ),
    })
}

fn align_down(x: usize, align: usize) -> usize {
    x & !(align - 1)
}

fn align_up(x: usize, align: usize) -> usize {
    align_down(x.saturating_add(align - 1), align)
}

/// `MREMAP_DUP` of `[start, start + len)`, at `dst` (`MREMAP_FIXED`) or
/// where the kernel picks.
///
/// # Safety
///
/// With `dst`, the caller owns `[dst, dst + len)`.
unsafe fn dup_to(start: usize, len: usize, dst: Option<usize>) -> nix::Result<usize> {
    let (flags, new) = match dst {
        Some(d) => (RemapFlags::DUP | RemapFlags::FIXED, d),
        None => (RemapFlags::DUP, 0),
    };
    // SAFETY: MREMAP_DUP leaves the source alone; the destination is the
    // caller's (see `# Safety`).
    unsafe { mremap_raw(start, len, len, flags, new) }
}

/// Duplicates `range` as `placement` says; returns where.
fn place(
    maps: &Maps,
    range: (usize, usize),
    align: usize,
    placement: RangePlacement,
) -> nix::Result<usize> {
    let (start, len) = (range.0, range.1 - range.0);
    match placement {
        // SAFETY: no destination is given.
        RangePlacement::Anywhere => unsafe { dup_to(start, len, None) },
        RangePlacement::Below(limit) => below(maps, start, len, align, limit),
        RangePlacement::InReservation(res) => {
            let dst = first_fit(maps, &res, len, align)?;
            // SAFETY: dst is a free part of the caller's reservation.
            unsafe { dup_to(start, len, Some(dst)) }
        }
        RangePlacement::AtInReservation(res, at) => {
            let dst = at.as_ptr() as usize;
            check_free(maps, &res, dst, len, align)?;
            // SAFETY: dst is a free part of the caller's reservation.
            unsafe { dup_to(start, len, Some(dst)) }
        }
    }
}

/// How often [`RangePlacement::Below`] looks for a hole again after
/// another thread took the one it found.
const RACE_RETRIES: usize = 8;

/// The highest address user space maps at without a hint: 128 TiB (47 bits)
/// minus a page, as x86-64 and arm64 with 48-bit VAs.
const TASK_SIZE_47: usize = (1 << 47) - 4096;

fn below(maps: &Maps, start: usize, len: usize, align: usize, limit: usize) -> nix::Result<usize> {
    for _ in 0..RACE_RETRIES {
        let hole = highest_hole(maps, len, align, limit.min(TASK_SIZE_47))?;
        // SAFETY: MAP_FIXED_NOREPLACE replaces nothing.
        let got = unsafe { reserve(hole as *mut c_void, len, libc::MAP_FIXED_NOREPLACE) };
        if got == libc::MAP_FAILED {
            match Errno::last() {
                Errno::EEXIST => continue,
                e => return Err(e),
            }
        }
        if got as usize != hole {
            // A kernel that took the flag as a hint (before 4.17).
            // SAFETY: got is the mapping just made.
            unsafe { libc::munmap(got, len) };
            return Err(Errno::EEXIST);
        }
        // SAFETY: [hole, hole + len) is the reservation just made.
        return unsafe { dup_to(start, len, Some(hole)) }.inspect_err(|_| {
            // SAFETY: as above; on failure it is still ours (or unmapped).
            unsafe { libc::munmap(hole as *mut c_void, len) };
        });
    }
    Err(Errno::EAGAIN)
}

/// The lowest address `mmap()` may map (`vm.mmap_min_addr`).
fn mmap_min_addr() -> usize {
    std::fs::read_to_string("/proc/sys/vm/mmap_min_addr")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65536)
        .max(page_size())
}

/// The highest `align`-aligned start of `len` free bytes below `limit`.
fn highest_hole(maps: &Maps, len: usize, align: usize, limit: usize) -> nix::Result<usize> {
    let mut cur = mmap_min_addr();
    let mut best = None;
    while cur < limit {
        let next = maps.covering_or_next(cur)?;
        let gap_end = next.map_or(limit, |v| v.start.min(limit));
        if let Some(top) = gap_end.checked_sub(len) {
            let s = align_down(top, align);
            if s >= cur && top >= cur {
                best = Some(s);
            }
        }
        match next {
            Some(v) => cur = v.end,
            None => break,
        }
    }
    best.ok_or(Errno::ENOMEM)
}

/// The lowest `align`-aligned start of `len` free bytes of `res`.
fn first_fit(maps: &Maps, res: &Reservation, len: usize, align: usize) -> nix::Result<usize> {
    let mut cur = res.start();
    let mut run: Option<(usize, usize)> = None;
    while cur < res.end() {
        let Some(v) = maps.covering_or_next(cur)? else {
            break;
        };
        if v.start >= res.end() {
            break;
        }
        run = if v.is_reservation() {
            let run_start = match run {
                Some((s, e)) if e == v.start => s,
                _ => v.start.max(res.start()),
            };
            let run_end = v.end.min(res.end());
            let s = align_up(run_start, align);
            if s.checked_add(len).is_some_and(|e| e <= run_end) {
                return Ok(s);
            }
            Some((run_start, run_end))
        } else {
            None
        };
        cur = v.end;
    }
    Err(Errno::ENOMEM)
}

/// Checks that `[at, at + len)` is an aligned, free part of `res`.
fn check_free(
    maps: &Maps,
    res: &Reservation,
    at: usize,
    len: usize,
    align: usize,
) -> nix::Result<()> {
    if at % align != 0 {
        return Err(Errno::EINVAL);
    }
    let end = at.checked_add(len).ok_or(Errno::ENOMEM)?;
    if at < res.start() || end > res.end() {
        return Err(Errno::ENOMEM);
    }
    let mut cur = at;
    while cur < end {
        match maps.covering(cur)? {
            Some(v) if v.is_reservation() => cur = v.end,
            _ => return Err(Errno::EEXIST),
        }
    }
    Ok(())
}
