// SPDX-License-Identifier: GPL-2.0

//! A misc device whose mmap offers the device mapping flavours MREMAP_DUP
//! must handle, for the selftests.
//!
//! `/dev/mremap_dup_testdev` maps [`PAGES`] pages of vmalloc'ed memory. The
//! mmap offset selects the flavour, in units of [`FLAVOUR_STRIDE`] pages:
//!
//! | flavour | how | flags |
//! | --- | --- | --- |
//! | 0 `REMAP_PFN` | `remap_pfn_range()` at mmap time, no fault handler | `VM_PFNMAP \| VM_IO` |
//! | 1 `FAULT_PFN` | `vmf_insert_pfn()` from `->fault` | `VM_PFNMAP \| VM_IO` |
//! | 2 `MIXED` | `vm_insert_page()` at mmap time, no fault handler | `VM_MIXEDMAP` |
//! | 3 `DONTCOPY` | as `REMAP_PFN`, plus `VM_DONTCOPY` | |
//! | 4 `PAT_WC` | one `remap_pfn_range()` of the whole VMA onto non-RAM, write-combining | `VM_PFNMAP \| VM_IO` |
//!
//! Every mapping has `vm_ops->open`/`->close`, counted per flavour; the
//! `GET_OPENS`/`GET_CLOSES` ioctls (argument: the flavour) return the counts,
//! and page `i` of the memory starts with the word `MAGIC + i`.
//!
//! `PAT_WC` is the mapping x86 PAT really tracks (a `pfnmap_track_ctx` that
//! the VMA and its copies share by kref, and an entry in
//! `/sys/kernel/debug/x86/pat_memtype_list`): `remap_pfn_range()` covering
//! the whole VMA, of memory that is not System RAM. Its memory is
//! [`PAGES`] pages at physical address `pat_base`, which the boot reserves
//! with `memmap=<size>$<pat_base>`; without the parameter that flavour's
//! mmap fails with `ENODEV`. The `GET_PAT_BASE` ioctl returns `pat_base`
//! (`ENODEV` without it), so that tests find the region's PAT entries.
//!
//! `VmaNew` offers `VM_MIXEDMAP` and `vm_insert_page()` but nothing for
//! `VM_PFNMAP`, `remap_pfn_range()`, `vmf_insert_pfn()`, `vm_private_data`
//! or `vm_operations_struct`: those are raw bindings here, each behind a
//! small function whose safety comment argues from the mmap hook's contract.

use core::sync::atomic::{AtomicUsize, Ordering};

use kernel::{
    alloc::{flags::GFP_KERNEL, VVec},
    bindings,
    error::to_result,
    fs::File,
    ioctl::_IO,
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    mm::virt::{flags, VmaNew},
    page::PAGE_SIZE,
    prelude::*,
};

/// Pages of memory behind every mapping.
const PAGES: usize = 4;
/// The mmap offset of flavour `f` is `f * FLAVOUR_STRIDE` pages.
const FLAVOUR_STRIDE: usize = 256;
/// Page `i` starts with the word `MAGIC + i`.
const MAGIC: u64 = 0x6d72_656d_6170_0000;

const REMAP_PFN: usize = 0;
const FAULT_PFN: usize = 1;
const MIXED: usize = 2;
const DONTCOPY: usize = 3;
const PAT_WC: usize = 4;
const FLAVOURS: usize = 5;

const GET_OPENS: u32 = _IO('D' as u32, 1);
const GET_CLOSES: u32 = _IO('D' as u32, 2);
const GET_PAT_BASE: u32 = _IO('D' as u32, 3);

static OPENS: [AtomicUsize; FLAVOURS] = [const { AtomicUsize::new(0) }; FLAVOURS];
static CLOSES: [AtomicUsize; FLAVOURS] = [const { AtomicUsize::new(0) }; FLAVOURS];

/// The module's memory: vmalloc'ed, so page aligned and made of order-0
/// pages with a reference each, as `vm_insert_page()` requires.
///
/// # Invariants
///
/// Set once in `init` before the device is registered, never changed, and
/// freed (with the module's `_memory`) only when the module is unloaded,
/// which no mapping can outlive: a mapping holds its file, whose
/// `f_op->owner` pins the module.
static mut MEMORY: *mut u8 = core::ptr::null_mut();

fn memory() -> *mut u8 {
    // SAFETY: MEMORY is written only in init, before the device (the only
    // reader) is registered; see its invariants.
    unsafe { MEMORY }
}

/// The PFN of page `i` of the memory.
fn pfn(i: usize) -> usize {
    // SAFETY: page i < PAGES of a live vmalloc area (MEMORY's invariants).
    unsafe { bindings::vmalloc_to_pfn(memory().add(i * PAGE_SIZE).cast()) as usize }
}

/// The flavour recorded in a mapping's `vm_private_data`.
///
/// # Safety
///
/// `vma` must be a live VMA set up by [`TestDev::mmap`].
unsafe fn flavour_of(vma: *const bindings::vm_area_struct) -> usize {
    // SAFETY: the caller passes a live VMA; mmap stored the flavour there.
    unsafe { (*vma).vm_private_data as usize }
}

/// `vm_operations_struct::open` of every flavour: counts the mapping.
///
/// # Safety
///
/// Called by the kernel with a live VMA that has our vm_ops (so
/// `vm_private_data` holds its flavour).
unsafe extern "C" fn vm_open(vma: *mut bindings::vm_area_struct) {
    // SAFETY: the kernel calls ->open with a live VMA that has our vm_ops.
    let f = unsafe { flavour_of(vma) };
    OPENS[f].fetch_add(1, Ordering::Relaxed);
}

/// `vm_operations_struct::close` of every flavour: counts the unmap.
///
/// # Safety
///
/// As for [`vm_open`].
unsafe extern "C" fn vm_close(vma: *mut bindings::vm_area_struct) {
    // SAFETY: the kernel calls ->close with a live VMA that has our vm_ops.
    let f = unsafe { flavour_of(vma) };
    CLOSES[f].fetch_add(1, Ordering::Relaxed);
}

/// `vm_operations_struct::fault` of `FAULT_PFN`: inserts the PFN of the
/// faulting page.
///
/// # Safety
///
/// Called by the kernel with a valid `vm_fault` for a VMA that has our
/// vm_ops, under the mmap or VMA lock.
unsafe extern "C" fn vm_fault(vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
    // SAFETY: the kernel calls ->fault with a valid vm_fault for our VMA.
    let (vma, pgoff, address) = unsafe {
        let f = &(*vmf).__bindgen_anon_1;
        (f.vma, f.pgoff, f.address)
    };
    // The page of the object: the offset into the VMA, as DRM computes it.
    // SAFETY: vma is the live VMA being faulted.
    let idx = pgoff - unsafe { (*vma).vm_pgoff };
    if idx >= PAGES {
        return bindings::vm_fault_reason_VM_FAULT_SIGBUS;
    }
    // SAFETY: a VM_PFNMAP VMA of ours, faulting at `address` inside it, with
    // the mmap lock or VMA lock held by the fault path; the PFN is RAM that
    // outlives the mapping (MEMORY's invariants).
    unsafe { bindings::vmf_insert_pfn(vma, address, pfn(idx)) }
}

/// `vm_operations_struct` made of function pointers only.
struct VmOps(bindings::vm_operations_struct);
// SAFETY: immutable, and made of function pointers and None: sharing it
// between threads is what the kernel does with every vm_operations_struct.
unsafe impl Sync for VmOps {}

const fn vm_ops(fault: bool) -> VmOps {
    // SAFETY: all-zeroes is a valid vm_operations_struct (every hook None).
    let mut ops: bindings::vm_operations_struct = unsafe { core::mem::zeroed() };
    ops.open = Some(vm_open);
    ops.close = Some(vm_close);
    if fault {
        ops.fault = Some(vm_fault);
    }
    VmOps(ops)
}

static OPS_NOFAULT: VmOps = vm_ops(false);
static OPS_FAULT: VmOps = vm_ops(true);

/// Installs our vm_ops for `flavour` on a VMA being set up, and counts the
/// mapping as opened (mmap does not call ->open for the first mapping).
fn set_vm_ops(vma: &VmaNew, flavour: usize, ops: &'static VmOps) {
    // SAFETY: the VMA is undergoing initialisation in our mmap hook (VmaNew's
    // invariant), so nobody else reads these fields yet; ops is 'static.
    unsafe {
        (*vma.as_ptr()).vm_ops = &ops.0;
        (*vma.as_ptr()).vm_private_data = flavour as *mut core::ffi::c_void;
    }
    OPENS[flavour].fetch_add(1, Ordering::Relaxed);
}

/// `remap_pfn_range()` of the whole VMA onto the memory, page by page.
fn remap_pfns(vma: &VmaNew) -> Result {
    for i in 0..(vma.end() - vma.start()) / PAGE_SIZE {
        // SAFETY: the VMA is being set up in our mmap hook with the mmap lock
        // held; [addr, addr + PAGE_SIZE) lies inside it; the PFN is RAM that
        // outlives the mapping (MEMORY's invariants).
        to_result(unsafe {
            bindings::remap_pfn_range(
                vma.as_ptr(),
                vma.start() + i * PAGE_SIZE,
                pfn(i),
                PAGE_SIZE,
                (*vma.as_ptr()).vm_page_prot,
            )
        })?;
    }
    Ok(())
}

/// The first PFN of the `PAT_WC` flavour's memory, if the module has one.
fn pat_pfn() -> Option<usize> {
    let base = *module_parameters::pat_base.value();
    (base != 0).then_some((base >> bindings::PAGE_SHIFT) as usize)
}

/// One `remap_pfn_range()` of the whole VMA onto the `PAT_WC` memory,
/// write-combining: covering the whole VMA is what makes the kernel track the
/// range (and its memory type) for the life of the VMA and its copies.
fn remap_pat_wc(vma: &VmaNew, pfn: usize) -> Result {
    // SAFETY: the VMA is being set up in our mmap hook with the mmap lock
    // held and [start, end) is all of it; the PFNs are PAGES pages reserved
    // by the boot (memmap=) for this module alone, which outlive every
    // mapping; pgprot_writecombine() only changes the cache bits of the
    // VMA's own protection.
    to_result(unsafe {
        bindings::remap_pfn_range(
            vma.as_ptr(),
            vma.start(),
            pfn,
            vma.end() - vma.start(),
            bindings::pgprot_writecombine((*vma.as_ptr()).vm_page_prot),
        )
    })
}

/// Writes `MAGIC + i` at the start of page `i` of the `PAT_WC` memory.
fn init_pat_memory() -> Result {
    let Some(pfn) = pat_pfn() else {
        return Ok(());
    };
    let phys = (pfn << bindings::PAGE_SHIFT) as bindings::resource_size_t;
    // SAFETY: maps PAGES pages of physical memory that the boot reserved for
    // this module (memmap=), write-combining as every user mapping of it.
    let io = unsafe { bindings::ioremap_wc(phys, PAGES * PAGE_SIZE) };
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

struct TestDev;

#[vtable]
impl MiscDevice for TestDev {
    type Ptr = ();

    fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<Self::Ptr> {
        Ok(())
    }

    fn mmap(_device: (), _file: &File, vma: &VmaNew) -> Result {
        // SAFETY: reading vm_pgoff of the VMA being set up.
        let pgoff = unsafe { (*vma.as_ptr()).vm_pgoff };
        let flavour = pgoff / FLAVOUR_STRIDE;
        if !pgoff.is_multiple_of(FLAVOUR_STRIDE)
            || flavour >= FLAVOURS
            || vma.end() - vma.start() > PAGES * PAGE_SIZE
        {
            return Err(EINVAL);
        }
        match flavour {
            REMAP_PFN | DONTCOPY => {
                set_vm_ops(vma, flavour, &OPS_NOFAULT);
                if flavour == DONTCOPY {
                    vma.set_dontcopy();
                }
                remap_pfns(vma)
            }
            FAULT_PFN => {
                set_vm_ops(vma, flavour, &OPS_FAULT);
                vma.set_io();
                vma.set_dontexpand();
                // SAFETY: the VMA is being set up (VmaNew's invariant) and is
                // not VM_MIXEDMAP, so VM_PFNMAP is a valid addition.
                unsafe { (*vma.as_ptr()).__bindgen_anon_2.vm_flags |= flags::PFNMAP };
                Ok(())
            }
            MIXED => {
                set_vm_ops(vma, flavour, &OPS_NOFAULT);
                let mixed = vma.set_mixedmap();
                for i in 0..(vma.end() - vma.start()) / PAGE_SIZE {
                    // SAFETY: page i of the vmalloc area (MEMORY's invariants).
                    let page =
                        unsafe { bindings::vmalloc_to_page(memory().add(i * PAGE_SIZE).cast()) };
                    // SAFETY: VM_MIXEDMAP was set just above, the VMA is
                    // being set up, and the page is an order-0 page with a
                    // reference held by the vmalloc area.
                    to_result(unsafe {
                        bindings::vm_insert_page(mixed.as_ptr(), vma.start() + i * PAGE_SIZE, page)
                    })?;
                }
                Ok(())
            }
            PAT_WC => {
                let pfn = pat_pfn().ok_or(ENODEV)?;
                set_vm_ops(vma, flavour, &OPS_NOFAULT);
                remap_pat_wc(vma, pfn)
            }
            _ => Err(EINVAL),
        }
    }

    fn ioctl(_device: (), _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        let counts = match cmd {
            GET_OPENS => &OPENS,
            GET_CLOSES => &CLOSES,
            GET_PAT_BASE => {
                let pfn = pat_pfn().ok_or(ENODEV)?;
                return Ok((pfn << bindings::PAGE_SHIFT) as isize);
            }
            _ => return Err(ENOTTY),
        };
        let c = counts.get(arg).ok_or(EINVAL)?;
        Ok(c.load(Ordering::Relaxed) as isize)
    }
}

struct TestDevModule {
    /// Taken in `drop` so the device is gone before its memory.
    miscdev: Option<Pin<KBox<MiscDeviceRegistration<TestDev>>>>,
    /// The memory behind every mapping (see [`MEMORY`]).
    _memory: VVec<u8>,
}

impl kernel::Module for TestDevModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let mut buf = VVec::<u8>::with_capacity(PAGES * PAGE_SIZE, GFP_KERNEL)?;
        buf.resize(PAGES * PAGE_SIZE, 0, GFP_KERNEL)?;
        let ptr = buf.as_mut_ptr();
        for i in 0..PAGES {
            // SAFETY: ptr points to PAGES * PAGE_SIZE bytes just allocated.
            unsafe { ptr.add(i * PAGE_SIZE).cast::<u64>().write(MAGIC + i as u64) };
        }
        // SAFETY: no device is registered yet, so nothing reads MEMORY.
        unsafe { MEMORY = ptr };
        init_pat_memory()?;
        let miscdev = KBox::pin_init(
            MiscDeviceRegistration::register(MiscDeviceOptions {
                name: c"mremap_dup_testdev",
            }),
            GFP_KERNEL,
        )?;
        Ok(Self {
            miscdev: Some(miscdev),
            _memory: buf,
        })
    }
}

impl Drop for TestDevModule {
    fn drop(&mut self) {
        // Deregister before `_memory` is freed; no mapping is left by now
        // (each one pins the module through its file).
        drop(self.miscdev.take());
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
            description: "Physical address of PAGES pages reserved with memmap= for the PAT_WC flavour",
        },
    },
}
