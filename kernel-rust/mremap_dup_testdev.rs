// SPDX-License-Identifier: GPL-2.0

//! A misc device whose mmap offers the device mapping flavours MREMAP_DUP
//! must handle, for the selftests and the KUnit suite.
//!
//! `/dev/mremap_dup_testdev` maps [`PAGES`] pages of vmalloc'ed memory. The
//! mmap offset selects the flavour, in units of [`FLAVOUR_STRIDE`] pages
//! (`testdev_abi.rs`, shared with the tests, is the interface):
//!
//! | flavour | how | flags |
//! | --- | --- | --- |
//! | 0 `REMAP_PFN` | `remap_pfn_range()` at mmap time, no fault handler | `VM_PFNMAP \| VM_IO` |
//! | 1 `FAULT_PFN` | `vmf_insert_pfn()` from `->fault`, page at the file offset | `VM_PFNMAP \| VM_IO \| VM_LINEAR_PGOFF` |
//! | 2 `MIXED` | `vm_insert_page()` at mmap time, no fault handler | `VM_MIXEDMAP` |
//! | 3 `DONTCOPY` | as `REMAP_PFN`, plus `VM_DONTCOPY` | |
//! | 4 `PAT_WC` | one `remap_pfn_range()` of the whole VMA onto non-RAM, write-combining | `VM_PFNMAP \| VM_IO` |
//! | 5 `FAULT_REL` | `vmf_insert_pfn()` from `->fault`, page at the offset into the VMA | `VM_PFNMAP \| VM_IO` |
//! | 6 `MREMAP_HOOK` | as `REMAP_PFN`, plus `vm_ops->mremap` | |
//!
//! Only shared mappings are offered (`MAP_PRIVATE` gets `EINVAL`), as DRM's
//! GEM shmem and TTM helpers do: a private mapping of PFNs is a
//! copy-on-write mapping, on which `vmf_insert_pfn()` hits a `BUG_ON()` and
//! `remap_pfn_range()` rewrites `vm_pgoff`.
//!
//! Every mapping has `vm_ops->open`/`->close`, counted per flavour and read
//! with the `GET_OPENS`/`GET_CLOSES` ioctls; page `i` of the memory starts
//! with the word `MAGIC + i`.
//!
//! `PAT_WC` is the mapping x86 PAT really tracks (a `pfnmap_track_ctx` that
//! the VMA and its copies share by kref, and an entry in
//! `/sys/kernel/debug/x86/pat_memtype_list`): `remap_pfn_range()` covering
//! the whole VMA, of memory that is not System RAM. Its memory is [`PAGES`]
//! pages at physical address `pat_base`, which the boot reserves with
//! `memmap=<size>$<pat_base>` and the module claims with
//! `request_mem_region()`. Without a page-aligned, claimable `pat_base`
//! that flavour's mmap and the `GET_PAT_BASE` ioctl fail with `ENODEV`.
//!
//! # Lifetimes
//!
//! The memory is reference counted ([`Memory`]): the module holds one
//! reference, every open file one and every VMA one (taken at mmap and in
//! `vm_ops->open`, dropped in `vm_ops->close`, the `drm_gem_vm_open()`
//! pattern), so it lives until the last mapping, a duplicate included, is
//! gone. The module itself is pinned by every open file (see
//! [`pin_module`]), and every VMA holds its file, so the module's code
//! (`vm_ops`, the fault handler) outlives every mapping too.

use kernel::{
    alloc::{flags::GFP_KERNEL, VVec},
    bindings, container_of,
    error::to_result,
    fs::File,
    ioctl::{_IOC_SIZE, _IOR},
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    mm::virt::{flags, vm_flags_t, VmaNew, VmaRef},
    new_mutex,
    page::{AsPageIter, PAGE_SHIFT, PAGE_SIZE},
    prelude::*,
    sync::{
        atomic::{Atomic, Relaxed},
        Arc, ArcBorrow, Mutex,
    },
    types::ForeignOwnable,
    uaccess::{UserPtr, UserSlice},
};

#[path = "testdev_abi.rs"]
mod abi;
use abi::{
    Counts, PatBase, DONTCOPY, FAULT_PFN, FAULT_REL, FLAVOURS, FLAVOUR_STRIDE, IOCTL_TYPE, MAGIC,
    MIXED, MREMAP_HOOK, NAME, NR_GET_CLOSES, NR_GET_OPENS, NR_GET_PAT_BASE, PAGES, PAT_WC,
    REMAP_PFN,
};

const GET_OPENS: u32 = _IOR::<Counts>(IOCTL_TYPE as u32, NR_GET_OPENS as u32);
const GET_CLOSES: u32 = _IOR::<Counts>(IOCTL_TYPE as u32, NR_GET_CLOSES as u32);
const GET_PAT_BASE: u32 = _IOR::<PatBase>(IOCTL_TYPE as u32, NR_GET_PAT_BASE as u32);

/// Bytes of memory behind every mapping.
const LEN: usize = PAGES * PAGE_SIZE;

/// `VM_MAYSHARE`, from its bit number. Not `mm::virt::flags::MAYSHARE`: in
/// 7.2, rust/bindings/bindings_helper.h defines `RUST_CONST_HELPER_VM_MAYSHARE`
/// as `VM_MAYEXEC`, so that constant is `VM_MAYEXEC` (0x40, not 0x80), and a
/// `MAP_PRIVATE` mapping passed a check with it.
const VM_MAYSHARE: vm_flags_t = 1 << bindings::VMA_MAYSHARE_BIT;

/// `PAGES` pages of physical memory at `base`, claimed for this module.
///
/// # Invariants
///
/// `[base, base + LEN)` is page aligned, not 0, and claimed (busy in
/// `iomem_resource`, so neither System RAM nor anyone else's) by this value
/// from [`PatRegion::claim`] until it is dropped.
struct PatRegion {
    base: u64,
}

impl PatRegion {
    /// Claims `[base, base + LEN)`, or says why it cannot be used.
    fn claim(base: u64) -> core::result::Result<Self, &'static str> {
        if base == 0 {
            return Err("no pat_base= given");
        }
        if !base.is_multiple_of(PAGE_SIZE as u64) {
            return Err("pat_base= is not page aligned");
        }
        let len = LEN as u64;
        if base.checked_add(len).is_none() {
            return Err("pat_base= + size overflows");
        }
        // SAFETY: NAME is a 'static NUL-terminated string, which the resource
        // keeps as its name; the range is checked and released by the
        // kernel's resource code, which fails (NULL) on any conflict: busy
        // System RAM, or a range someone else claimed.
        let res = unsafe { bindings::request_mem_region(base, len, NAME.as_char_ptr()) };
        if res.is_null() {
            return Err("pat_base= range is busy (System RAM or claimed)");
        }
        // INVARIANT: checked above, claimed just now.
        Ok(Self { base })
    }

    /// The first PFN of the region.
    fn pfn(&self) -> usize {
        (self.base >> PAGE_SHIFT) as usize
    }

    /// Writes `MAGIC + i` at the start of page `i`, through a write-combining
    /// mapping as every user mapping of it.
    fn fill(&self) -> Result {
        // SAFETY: maps LEN bytes of physical memory that this module claimed
        // (type invariant) and that is not System RAM.
        let io = unsafe { bindings::ioremap_wc(self.base, LEN) };
        if io.is_null() {
            return Err(ENOMEM);
        }
        for i in 0..PAGES {
            // SAFETY: page i < PAGES of the live mapping just made, 8-aligned.
            unsafe {
                io.cast::<u8>()
                    .add(i * PAGE_SIZE)
                    .cast::<u64>()
                    .write_volatile(MAGIC + i as u64)
            };
        }
        // SAFETY: io came from ioremap_wc() above and is not used after this.
        unsafe { bindings::iounmap(io) };
        Ok(())
    }
}

impl Drop for PatRegion {
    fn drop(&mut self) {
        // SAFETY: the region was claimed in `claim` with these bounds (type
        // invariant) and is released once, here.
        unsafe { bindings::release_mem_region(self.base, LEN as u64) };
    }
}

/// The memory behind every mapping, and the open/close counts.
///
/// Shared by reference count (`Arc`): the module holds one reference, every
/// open file one (its private data), and every VMA one (its
/// `vm_private_data`, see [`install_vm_ops`]).
#[pin_data]
struct Memory {
    /// [`PAGES`] vmalloc'ed pages: order-0 pages with a reference each, as
    /// `vm_insert_page()` requires. Locked only to borrow its pages
    /// (`page_iter()` takes `&mut`); never resized.
    #[pin]
    pages: Mutex<VVec<u8>>,
    /// The PFN of each page of `pages`.
    pfns: [usize; PAGES],
    /// The `PAT_WC` flavour's memory, if `pat_base` named a usable region.
    pat: Option<PatRegion>,
    opens: [Atomic<u64>; FLAVOURS],
    closes: [Atomic<u64>; FLAVOURS],
}

impl Memory {
    fn new(pat_base: u64) -> Result<Arc<Self>> {
        let mut buf = VVec::<u8>::with_capacity(LEN, GFP_KERNEL)?;
        buf.resize(LEN, 0, GFP_KERNEL)?;
        for (i, page) in buf.chunks_exact_mut(PAGE_SIZE).enumerate() {
            page[..8].copy_from_slice(&(MAGIC + i as u64).to_ne_bytes());
        }
        let mut pfns = [0; PAGES];
        for (i, pfn) in pfns.iter_mut().enumerate() {
            // SAFETY: byte i * PAGE_SIZE < LEN of buf, a live vmalloc area.
            *pfn = unsafe { bindings::vmalloc_to_pfn(buf.as_ptr().add(i * PAGE_SIZE).cast()) }
                as usize;
        }
        let pat = match PatRegion::claim(pat_base) {
            Ok(pat) => {
                pat.fill()?;
                Some(pat)
            }
            Err(why) => {
                pr_info!("PAT_WC flavour unavailable: {why} (pat_base={pat_base:#x})\n");
                None
            }
        };
        Arc::pin_init(
            try_pin_init!(Self {
                pages <- new_mutex!(buf),
                pfns,
                pat,
                opens: [const { Atomic::new(0) }; FLAVOURS],
                closes: [const { Atomic::new(0) }; FLAVOURS],
            }),
            GFP_KERNEL,
        )
    }

    fn counts(counts: &[Atomic<u64>; FLAVOURS]) -> Counts {
        core::array::from_fn(|f| counts[f].load(Relaxed))
    }
}

/// The flavour of one of our VMAs. `vm_pgoff` is `flavour * FLAVOUR_STRIDE`
/// plus less than `PAGES` (mmap checks it; splitting adds the offset of the
/// piece; `VM_DONTEXPAND` keeps mremap from growing it), so this is below
/// `FLAVOURS`.
///
/// # Safety
///
/// `vma` must be live, with the mmap lock or its VMA lock held, or be
/// undergoing setup.
unsafe fn flavour_of(vma: *const bindings::vm_area_struct) -> usize {
    // SAFETY: the caller's lock keeps vm_pgoff stable (it changes only with
    // the VMA write-locked).
    unsafe { (*vma).vm_pgoff / FLAVOUR_STRIDE }
}

/// `vm_operations_struct::open` of every flavour: the new VMA (a split
/// piece, a moved or duplicated copy, a fork child's copy) takes its own
/// reference to the memory, and is counted.
///
/// # Safety
///
/// Called by the kernel with a live VMA copied from one of ours: its
/// `vm_private_data` is the pointer [`install_vm_ops`] stored, whose
/// reference the VMA it was copied from still holds.
unsafe extern "C" fn vm_open(vma: *mut bindings::vm_area_struct) {
    // SAFETY: per the function's contract, vm_private_data came from
    // Arc::into_foreign() and a live VMA holds that reference meanwhile.
    let mem = unsafe { <Arc<Memory> as ForeignOwnable>::borrow((*vma).vm_private_data) };
    // SAFETY: a live VMA, with the mmap lock held by whoever copies it.
    if let Some(c) = mem.opens.get(unsafe { flavour_of(vma) }) {
        c.add(1, Relaxed);
    }
    // The copy shares vm_private_data with its original; this reference is
    // the copy's, and its vm_close() drops it.
    let _ = Arc::from(mem).into_foreign();
}

/// `vm_operations_struct::close` of every flavour: counts the unmap and drops
/// the VMA's reference to the memory. The kernel calls it after the VMA's
/// page table entries are gone (`unmap_vmas()` before `remove_vma()`), so no
/// entry points at the memory when it is freed.
///
/// # Safety
///
/// Called by the kernel, once, with a live VMA set up by
/// [`install_vm_ops`] or [`vm_open`], which is not used after this.
unsafe extern "C" fn vm_close(vma: *mut bindings::vm_area_struct) {
    // SAFETY: the VMA owns the reference in vm_private_data (taken when it
    // was set up, or in vm_open()), and ->close is its last use.
    let mem = unsafe { <Arc<Memory> as ForeignOwnable>::from_foreign((*vma).vm_private_data) };
    // SAFETY: a live VMA being removed under the mmap lock.
    if let Some(c) = mem.closes.get(unsafe { flavour_of(vma) }) {
        c.add(1, Relaxed);
    }
}

/// Inserts the PFN of page `index` of the memory at the faulting address.
///
/// # Safety
///
/// `vmf` is the valid `vm_fault` of a fault on a `FAULT_PFN` or `FAULT_REL`
/// VMA of ours, under the mmap or VMA lock.
unsafe fn insert_page(vmf: *mut bindings::vm_fault, index: usize) -> bindings::vm_fault_t {
    // SAFETY: a valid vm_fault (the function's safety requirement).
    let (vma, address) = unsafe {
        let f = &(*vmf).__bindgen_anon_1;
        (f.vma, f.address)
    };
    // SAFETY: the VMA is live and holds the reference in vm_private_data.
    let mem = unsafe { <Arc<Memory> as ForeignOwnable>::borrow((*vma).vm_private_data) };
    let Some(&pfn) = mem.pfns.get(index) else {
        return bindings::vm_fault_reason_VM_FAULT_SIGBUS;
    };
    // SAFETY: vmf_insert_pfn()'s BUG_ON()s do not fire: the VMA was set up
    // by VmaPfnMap::new() (VM_PFNMAP without VM_MIXEDMAP, shared, so not a
    // copy-on-write mapping; its copies keep those flags). `address` is the
    // faulting address inside it, under the lock the fault path holds. The
    // PFN is memory that the VMA keeps alive by its reference.
    unsafe { bindings::vmf_insert_pfn(vma, address, pfn) }
}

/// `vm_operations_struct::fault` of `FAULT_PFN`: the page at the fault's file
/// offset within the flavour, whichever VMA maps it (`VM_LINEAR_PGOFF`).
///
/// # Safety
///
/// Called by the kernel with a valid `vm_fault` for a `FAULT_PFN` VMA of
/// ours, under the mmap or VMA lock.
unsafe extern "C" fn vm_fault(vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
    // SAFETY: the kernel calls ->fault with a valid vm_fault.
    let pgoff = unsafe { (*vmf).__bindgen_anon_1.pgoff };
    // SAFETY: as this function's own safety requirement.
    unsafe { insert_page(vmf, pgoff % FLAVOUR_STRIDE) }
}

/// `vm_operations_struct::fault` of `FAULT_REL`: the page at the fault's
/// offset into the VMA, as drm_gem_shmem finds it, whatever `vm_pgoff` says.
/// A VMA mapping part of the memory would see its first page: such a mapping
/// is what `MREMAP_DUP` must refuse.
///
/// # Safety
///
/// Called by the kernel with a valid `vm_fault` for a `FAULT_REL` VMA of
/// ours, under the mmap or VMA lock.
unsafe extern "C" fn vm_fault_rel(vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
    // SAFETY: the kernel calls ->fault with a valid vm_fault, for a VMA that
    // stays valid, with the mmap or VMA lock held, during this call.
    let index = unsafe {
        let f = &(*vmf).__bindgen_anon_1;
        (f.address - VmaRef::from_raw(f.vma).start()) / PAGE_SIZE
    };
    // SAFETY: as this function's own safety requirement.
    unsafe { insert_page(vmf, index) }
}

/// `vm_operations_struct::mremap` of `MREMAP_HOOK`: accepts the move. A
/// driver that keeps the mapping's address (resctrl's pseudo-locked region,
/// the aio ring) would update it here; MREMAP_DUP must refuse such a
/// mapping, whose owner can follow a move but not a second mapping.
extern "C" fn vm_mremap(_vma: *mut bindings::vm_area_struct) -> c_int {
    0
}

/// `vm_operations_struct` made of function pointers only.
struct VmOps(bindings::vm_operations_struct);
// SAFETY: immutable, and made of function pointers and None: sharing it
// between threads is what the kernel does with every vm_operations_struct.
unsafe impl Sync for VmOps {}

/// A `vm_operations_struct::fault` handler.
type FaultFn = unsafe extern "C" fn(*mut bindings::vm_fault) -> bindings::vm_fault_t;

/// A `vm_operations_struct::mremap` hook.
type MremapFn = unsafe extern "C" fn(*mut bindings::vm_area_struct) -> c_int;

const fn vm_ops(fault: Option<FaultFn>, mremap: Option<MremapFn>) -> VmOps {
    VmOps(bindings::vm_operations_struct {
        open: Some(vm_open),
        close: Some(vm_close),
        fault,
        mremap,
        ..pin_init::zeroed()
    })
}

static OPS_NOFAULT: VmOps = vm_ops(None, None);
static OPS_FAULT: VmOps = vm_ops(Some(vm_fault), None);
static OPS_FAULT_REL: VmOps = vm_ops(Some(vm_fault_rel), None);
// vm_mremap() needs no precondition: a safe function is a valid hook.
static OPS_MREMAP_HOOK: VmOps = vm_ops(None, Some(vm_mremap as MremapFn));

/// Completes the setup of a VMA of `flavour`: our vm_ops, and the VMA's own
/// reference to the memory in `vm_private_data`; counts the mapping as
/// opened (mmap does not call ->open for the first mapping). Called last,
/// when nothing can fail any more: on an mmap error the kernel frees the VMA
/// without calling ->close.
fn install_vm_ops(vma: &VmaNew, flavour: usize, ops: &'static VmOps, mem: ArcBorrow<'_, Memory>) {
    if let Some(c) = mem.opens.get(flavour) {
        c.add(1, Relaxed);
    }
    let data = Arc::from(mem).into_foreign();
    // SAFETY: the VMA is undergoing initialisation in our mmap hook
    // (VmaNew's invariant), so nobody else reads these fields yet; ops is
    // 'static; the reference in `data` is dropped by vm_close().
    unsafe {
        (*vma.as_ptr()).vm_ops = &ops.0;
        (*vma.as_ptr()).vm_private_data = data;
    }
}

/// A VMA being set up in an mmap hook that maps PFNs without `struct page`.
///
/// `VmaNew` offers `VM_MIXEDMAP` and `vm_insert_page()` but nothing for
/// `VM_PFNMAP` and `remap_pfn_range()`: this is the smallest typestate for
/// them, in the manner of `VmaMixedMap`.
///
/// # Invariants
///
/// The VMA is undergoing initialisation in an `f_ops->mmap()` hook (as for
/// `VmaNew`), is shared (`VM_MAYSHARE`, so not a copy-on-write mapping), and
/// has `VM_PFNMAP | VM_IO` set and `VM_MIXEDMAP` clear.
#[repr(transparent)]
struct VmaPfnMap {
    vma: VmaNew,
}

impl VmaPfnMap {
    /// Sets `VM_PFNMAP | VM_IO | VM_DONTEXPAND | VM_DONTDUMP` (what
    /// `remap_pfn_range()` sets) on a shared VMA being set up.
    fn new(vma: &VmaNew) -> Result<&Self> {
        if vma.flags() & VM_MAYSHARE == 0 || vma.flags() & flags::MIXEDMAP != 0 {
            return Err(EINVAL);
        }
        vma.set_io();
        vma.set_dontexpand();
        vma.set_dontdump();
        // SAFETY: the VMA is undergoing initialisation (VmaNew's invariant),
        // so nobody else reads its flags yet; VM_MIXEDMAP is clear, so
        // VM_PFNMAP is a valid addition.
        unsafe { (*vma.as_ptr()).__bindgen_anon_2.vm_flags |= flags::PFNMAP };
        // SAFETY: VmaPfnMap is a transparent wrapper of VmaNew.
        // INVARIANT: set up and checked just above.
        Ok(unsafe { &*core::ptr::from_ref(vma).cast::<Self>() })
    }

    /// The VMA's page protection.
    fn page_prot(&self) -> bindings::pgprot_t {
        // SAFETY: the VMA is being set up (type invariant); nobody writes it.
        unsafe { (*self.vma.as_ptr()).vm_page_prot }
    }

    /// `remap_pfn_range()` of `[addr, addr + size)`, which must lie inside
    /// the VMA, page aligned, onto the PFNs from `pfn`.
    ///
    /// # Safety
    ///
    /// The `size / PAGE_SIZE` frames from `pfn` must stay allocated to the
    /// caller until the VMA and every copy of it are closed.
    unsafe fn remap_pfn_range(
        &self,
        addr: usize,
        pfn: usize,
        size: usize,
        prot: bindings::pgprot_t,
    ) -> Result {
        let end = addr.checked_add(size).ok_or(EINVAL)?;
        if addr < self.vma.start()
            || end > self.vma.end()
            || !addr.is_multiple_of(PAGE_SIZE)
            || !size.is_multiple_of(PAGE_SIZE)
        {
            return Err(EINVAL);
        }
        // SAFETY: the VMA is being set up in an mmap hook, with the mmap lock
        // held for writing, and is VM_PFNMAP and not copy-on-write (type
        // invariants); the range lies inside it (checked); the frames outlive
        // it (the caller's contract).
        to_result(unsafe { bindings::remap_pfn_range(self.vma.as_ptr(), addr, pfn, size, prot) })
    }
}

/// The misc device's file operations with `owner` set to this module.
///
/// `MiscDeviceOptions::into_raw()` leaves `file_operations::owner` NULL
/// (rust/kernel/miscdevice.rs in 7.2), so `misc_open()`'s `fops_get()` pins
/// nothing. [`pin_module`] gives each open file these instead.
struct FileOps(bindings::file_operations);
// SAFETY: immutable, made of function pointers and the module pointer, as
// every file_operations shared by all the files of a device.
unsafe impl Sync for FileOps {}

static FOPS: FileOps = FileOps(bindings::file_operations {
    owner: THIS_MODULE.as_ptr(),
    // SAFETY: into_raw() returns a miscdevice whose fops points to the
    // 'static vtable of TestDev.
    ..unsafe { *MiscDeviceOptions { name: NAME }.into_raw::<TestDev>().fops }
});

/// Makes the file being opened hold a reference to this module until its
/// final `fput()`, as a C driver's `.owner = THIS_MODULE` does.
///
/// The reference is taken here and dropped by the VFS: the file's `f_op`
/// becomes [`FOPS`], and `__fput()` calls `fops_put(file->f_op)` after
/// `->release` has returned. Dropping it with `module_put()` in our own
/// `release` instead would leave this module's code running after the
/// reference that keeps it loaded is gone.
fn pin_module(file: &File) -> Result {
    // SAFETY: THIS_MODULE is this module. It cannot be gone meanwhile:
    // misc_open() calls us with misc_mtx held, and module exit deregisters
    // the device, which takes misc_mtx, before the module is freed. If the
    // exit has begun, try_module_get() fails.
    if !unsafe { bindings::try_module_get(THIS_MODULE.as_ptr()) } {
        return Err(ENODEV);
    }
    // SAFETY: the file is being opened: misc_open() has just set its f_op to
    // the misc vtable (owner NULL, so it holds no module reference) with
    // replace_fops() and called this ->open, and nobody else reads f_op
    // before ->open returns. FOPS has the same functions, and the reference
    // taken above is the one fops_put(file->f_op) drops in __fput(), which
    // is replace_fops()'s contract.
    unsafe { (*file.as_ptr()).f_op = &FOPS.0 };
    Ok(())
}

struct TestDev;

#[vtable]
impl MiscDevice for TestDev {
    type Ptr = Arc<Memory>;

    fn open(file: &File, misc: &MiscDeviceRegistration<Self>) -> Result<Arc<Memory>> {
        // SAFETY: the only registration of TestDev is the `miscdev` field of
        // the module's TestDevModule, written after its `memory` field, and
        // it stays registered during this call (misc_open() holds misc_mtx).
        // Only the `memory` field is borrowed.
        let mem = unsafe {
            let module = container_of!(core::ptr::from_ref(misc), TestDevModule, miscdev);
            (*module).memory.clone()
        };
        pin_module(file)?;
        Ok(mem)
    }

    fn mmap(mem: ArcBorrow<'_, Memory>, _file: &File, vma: &VmaNew) -> Result {
        // Private mappings of PFNs would be copy-on-write mappings: not
        // supported (see the crate documentation).
        if vma.flags() & VM_MAYSHARE == 0 {
            return Err(EINVAL);
        }
        // SAFETY: the VMA being set up: vm_pgoff is stable.
        let pgoff = unsafe { (*vma.as_ptr()).vm_pgoff };
        let flavour = pgoff / FLAVOUR_STRIDE;
        if !pgoff.is_multiple_of(FLAVOUR_STRIDE)
            || flavour >= FLAVOURS
            || vma.end() - vma.start() > LEN
        {
            return Err(EINVAL);
        }
        // Nothing may map past the memory, and a grown VMA's split pieces
        // would have offsets of other flavours.
        vma.set_dontexpand();
        let pages = (vma.end() - vma.start()) / PAGE_SIZE;
        let ops = match flavour {
            REMAP_PFN | DONTCOPY | MREMAP_HOOK => {
                let pfnmap = VmaPfnMap::new(vma)?;
                if flavour == DONTCOPY {
                    vma.set_dontcopy();
                }
                for (i, &pfn) in mem.pfns.iter().take(pages).enumerate() {
                    // SAFETY: the memory's pages stay allocated while the
                    // VMA and its copies hold their references (taken by
                    // install_vm_ops() and vm_open(), dropped by vm_close()).
                    unsafe {
                        pfnmap.remap_pfn_range(
                            vma.start() + i * PAGE_SIZE,
                            pfn,
                            PAGE_SIZE,
                            pfnmap.page_prot(),
                        )
                    }?;
                }
                if flavour == MREMAP_HOOK {
                    &OPS_MREMAP_HOOK
                } else {
                    &OPS_NOFAULT
                }
            }
            FAULT_PFN => {
                VmaPfnMap::new(vma)?;
                // vm_fault() finds the page from the file offset alone.
                vma.set_linear_pgoff();
                &OPS_FAULT
            }
            FAULT_REL => {
                VmaPfnMap::new(vma)?;
                &OPS_FAULT_REL
            }
            MIXED => {
                let mixed = vma.set_mixedmap();
                let mut buf = mem.pages.lock();
                for (i, page) in buf.page_iter().take(pages).enumerate() {
                    mixed.vm_insert_page(vma.start() + i * PAGE_SIZE, &page)?;
                }
                &OPS_NOFAULT
            }
            PAT_WC => {
                let pat = mem.pat.as_ref().ok_or(ENODEV)?;
                let pfnmap = VmaPfnMap::new(vma)?;
                // One call covering the whole VMA is what makes the kernel
                // track the range (and its memory type) for the life of the
                // VMA and its copies.
                // SAFETY: pgprot_writecombine() only changes the cache bits.
                let prot = unsafe { bindings::pgprot_writecombine(pfnmap.page_prot()) };
                // SAFETY: the region stays claimed for this module while the
                // VMA and its copies hold their references to the memory,
                // which owns the claim.
                unsafe {
                    pfnmap.remap_pfn_range(vma.start(), pat.pfn(), vma.end() - vma.start(), prot)
                }?;
                &OPS_NOFAULT
            }
            _ => return Err(EINVAL),
        };
        install_vm_ops(vma, flavour, ops, mem);
        Ok(())
    }

    fn ioctl(mem: ArcBorrow<'_, Memory>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        let mut out = UserSlice::new(UserPtr::from_addr(arg), _IOC_SIZE(cmd)).writer();
        match cmd {
            GET_OPENS => out.write(&Memory::counts(&mem.opens))?,
            GET_CLOSES => out.write(&Memory::counts(&mem.closes))?,
            GET_PAT_BASE => out.write::<PatBase>(&mem.pat.as_ref().ok_or(ENODEV)?.base)?,
            _ => return Err(ENOTTY),
        }
        Ok(0)
    }
}

#[pin_data]
struct TestDevModule {
    /// Declared (so dropped) first: the device is gone before the module's
    /// reference to the memory.
    #[pin]
    miscdev: MiscDeviceRegistration<TestDev>,
    /// The module's reference to the memory; open files take theirs from it.
    memory: Arc<Memory>,
}

impl kernel::InPlaceModule for TestDevModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        // `memory` is initialised before `miscdev` registers the device,
        // whose open() reads it.
        try_pin_init!(Self {
            memory: Memory::new(*module_parameters::pat_base.value())?,
            miscdev <- MiscDeviceRegistration::register(MiscDeviceOptions { name: NAME }),
        })
    }
}

module! {
    type: TestDevModule,
    name: "mremap_dup_testdev",
    authors: ["MREMAP_DUP developers"],
    description: "Device mappings (PFNMAP, MIXEDMAP, DONTCOPY, PAT WC) for MREMAP_DUP selftests",
    license: "GPL",
    params: {
        pat_base: u64 {
            default: 0,
            description: "Physical address of 4 pages reserved with memmap= for the PAT_WC flavour",
        },
    },
}
