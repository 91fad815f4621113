// SPDX-License-Identifier: GPL-2.0

//! KUnit tests of mremap() MREMAP_DUP that check, inside the kernel, what
//! userspace cannot see: the duplicate VMA's file, flags and vm_pgoff, its
//! PFNs, the owner's open/close calls, the x86 PAT tracking context it
//! shares (one more kref, the same context), and that a refused call leaves
//! the VMA tree and the counts as they were.
//!
//! The tests run in KUnit's kthread with a user mm attached by
//! `kunit_vm_mmap()`, and call mremap() there through `kunit_mremap()`, which
//! the series exports to KUnit tests (`EXPORTED_FOR_KUNIT_TESTING`). The
//! device flavours come from `mremap_dup_testdev`, which must be loaded first.

use kernel::prelude::*;

module! {
    type: MremapDupKunit,
    name: "mremap_dup_kunit",
    authors: ["MREMAP_DUP developers"],
    description: "KUnit tests of mremap() MREMAP_DUP",
    license: "GPL",
    imports_ns: ["EXPORTED_FOR_KUNIT_TESTING"],
}

struct MremapDupKunit;

impl kernel::Module for MremapDupKunit {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(Self)
    }
}

#[kunit_tests(mremap_dup)]
mod tests {
    use kernel::{
        bindings,
        mm::{virt::VmaRef, MmWithUser},
        page::PAGE_SIZE,
        prelude::*,
        uaccess::{UserPtr, UserSlice},
    };

    unsafe extern "C" {
        /// mremap() of current->mm (mm/mremap.c, EXPORT_SYMBOL_IF_KUNIT).
        fn kunit_mremap(
            addr: usize,
            old_len: usize,
            new_len: usize,
            flags: usize,
            new_addr: usize,
        ) -> usize;
    }

    const PROT_RW: usize = 0x1 | 0x2;
    const PROT_NONE: usize = 0;
    const MAP_SHARED: usize = 0x01;
    const MAP_PRIVATE: usize = 0x02;
    const MAP_ANONYMOUS: usize = 0x20;
    const MREMAP_FIXED: usize = 2;
    const MREMAP_DUP: usize = 8;
    const EINVAL: usize = 22;
    /// Flags a duplicate may differ in: mlock state and soft-dirty.
    const VM_LOCKED: usize = 0x2000;
    const DUP_DIFFERS: usize = VM_LOCKED | bindings::VM_LOCKONFAULT | bindings::VM_SOFTDIRTY;

    /// The test device's flavours and ioctls (kernel-rust/mremap_dup_testdev.rs).
    const TESTDEV_PAGES: usize = 4;
    const FLAVOUR_STRIDE: usize = 256;
    const GET_OPENS: u32 = kernel::ioctl::_IO('D' as u32, 1);
    const GET_CLOSES: u32 = kernel::ioctl::_IO('D' as u32, 2);
    const REMAP_PFN: usize = 0;
    const DONTCOPY: usize = 3;
    const PAT_WC: usize = 4;

    fn is_err(v: usize) -> bool {
        v >= (-4095isize) as usize
    }

    /// mmap() into the test's user mm; errors come back as addresses.
    fn vm_mmap(
        file: *mut bindings::file,
        len: usize,
        prot: usize,
        flags: usize,
        off: usize,
    ) -> usize {
        // SAFETY: kunit_get_current_test() is the running test; kunit_vm_mmap()
        // attaches a user mm to this kthread on first use and unmaps at the end.
        unsafe {
            bindings::kunit_vm_mmap(
                bindings::kunit_get_current_test(),
                file,
                0,
                len,
                prot,
                flags,
                off,
            ) as usize
        }
    }

    /// Anonymous memory in the test's user mm (an address or an errno).
    fn map_anon(len: usize, prot: usize, flags: usize) -> usize {
        vm_mmap(core::ptr::null_mut(), len, prot, flags | MAP_ANONYMOUS, 0)
    }

    /// A whole shared mapping of the test device's `flavour`.
    fn map_flavour(file: *mut bindings::file, flavour: usize) -> usize {
        let len = TESTDEV_PAGES * PAGE_SIZE;
        vm_mmap(
            file,
            len,
            PROT_RW,
            MAP_SHARED,
            flavour * FLAVOUR_STRIDE * PAGE_SIZE,
        )
    }

    fn mremap(addr: usize, len: usize, flags: usize, new_addr: usize) -> usize {
        // SAFETY: acts on current->mm, the test's own user mm.
        unsafe { kunit_mremap(addr, len, len, flags, new_addr) }
    }

    /// Runs `f` on the user mm that kunit_vm_mmap() attached to this kthread.
    fn with_mm<R>(f: impl FnOnce(&MmWithUser) -> R) -> R {
        kernel::current!()
            .mm()
            .map(f)
            .expect("the test has a user mm")
    }

    /// (start, end, flags, file, pgoff) of every VMA of the test's mm.
    fn vma_tree() -> KVec<(usize, usize, usize, usize, usize)> {
        with_mm(vma_tree_of)
    }

    fn vma_tree_of(mm: &MmWithUser) -> KVec<(usize, usize, usize, usize, usize)> {
        let mut out = KVec::new();
        let _guard = mm.mmap_read_lock();
        let mut addr = 0;
        loop {
            // SAFETY: the mmap lock is held (guard), mm is current's live mm.
            let vma = unsafe { bindings::find_vma(mm.as_raw(), addr) };
            if vma.is_null() {
                break;
            }
            // SAFETY: a VMA found under the mmap lock, which is held for as
            // long as this reference is used.
            let v = unsafe { VmaRef::from_raw(vma) };
            // SAFETY: as above; vm_file and vm_pgoff are stable under it.
            let (file, pgoff) = unsafe { ((*vma).vm_file as usize, (*vma).vm_pgoff as usize) };
            let _ = out.push((v.start(), v.end(), v.flags(), file, pgoff), GFP_KERNEL);
            addr = v.end();
        }
        out
    }

    fn vma_at(addr: usize) -> Option<(usize, usize, usize, usize, usize)> {
        vma_tree().into_iter().find(|v| v.0 <= addr && addr < v.1)
    }

    /// The PFN mapped at `addr` of a VM_PFNMAP/VM_IO VMA, if any.
    fn pfn_at(addr: usize) -> Option<usize> {
        with_mm(|mm| pfn_at_in(mm, addr))
    }

    fn pfn_at_in(mm: &MmWithUser, addr: usize) -> Option<usize> {
        let guard = mm.mmap_read_lock();
        let vma = guard.vma_lookup(addr)?;
        let mut args = bindings::follow_pfnmap_args {
            vma: vma.as_ptr(),
            address: addr,
            ..Default::default()
        };
        // SAFETY: the mmap lock is held; args names a VMA of this mm.
        if unsafe { bindings::follow_pfnmap_start(&mut args) } != 0 {
            return None;
        }
        let pfn = args.pfn;
        // SAFETY: pairs with the successful follow_pfnmap_start() above.
        unsafe { bindings::follow_pfnmap_end(&mut args) };
        Some(pfn)
    }

    /// Reads `len` bytes of user memory, faulting it in.
    fn read_user(addr: usize, len: usize) -> KVec<u8> {
        let mut buf = KVec::new();
        let _ = UserSlice::new(UserPtr::from_addr(addr), len).read_all(&mut buf, GFP_KERNEL);
        buf
    }

    #[test]
    fn shmem_dup_same_file_flags_offset() {
        let len = 8 * PAGE_SIZE;
        let addr = map_anon(len, PROT_RW, MAP_SHARED);
        assert!(!is_err(addr));
        let dup = mremap(addr + 2 * PAGE_SIZE, 3 * PAGE_SIZE, MREMAP_DUP, 0);
        assert!(!is_err(dup));
        let a = vma_at(addr).expect("source VMA");
        let d = vma_at(dup).expect("duplicate VMA");
        assert_eq!(a.0, addr);
        assert_eq!(a.1, addr + len);
        assert_eq!(d.3, a.3);
        assert_eq!(d.4, a.4 + 2);
        assert_eq!(d.2 & !DUP_DIFFERS, a.2 & !DUP_DIFFERS);
        // SAFETY: unmapping the duplicate made by this test.
        unsafe { bindings::vm_munmap(dup, 3 * PAGE_SIZE) };
    }

    #[test]
    fn refused_dup_leaves_vma_tree_unchanged() {
        let len = 4 * PAGE_SIZE;
        let private = map_anon(len, PROT_RW, MAP_PRIVATE);
        let dst = map_anon(len, PROT_NONE, MAP_PRIVATE);
        let shared = map_anon(2 * len, PROT_RW, MAP_SHARED);
        assert!(!is_err(private) && !is_err(dst) && !is_err(shared));
        let before = vma_tree();
        assert_eq!(
            mremap(private, len, MREMAP_DUP | MREMAP_FIXED, dst),
            EINVAL.wrapping_neg()
        );
        assert_eq!(
            mremap(shared, len, MREMAP_DUP | MREMAP_FIXED, shared + PAGE_SIZE),
            EINVAL.wrapping_neg()
        );
        assert_eq!(
            mremap(shared, len, MREMAP_DUP | MREMAP_FIXED, shared + len),
            EINVAL.wrapping_neg()
        );
        assert!(vma_tree()[..] == before[..]);
    }

    /// Calls one of the test device's count ioctls through the file.
    fn testdev_count(file: *mut bindings::file, cmd: u32, flavour: usize) -> isize {
        // SAFETY: file is the open test device; its f_op has unlocked_ioctl.
        unsafe {
            let ioctl = (*(*file).f_op)
                .unlocked_ioctl
                .expect("test device has ioctl");
            ioctl(file, cmd, flavour)
        }
    }

    /// Opens the test device (kernel-rust/mremap_dup_testdev.rs).
    fn open_testdev() -> *mut bindings::file {
        // SAFETY: a NUL-terminated path; the result is checked below.
        let file = unsafe {
            bindings::filp_open(
                c"/dev/mremap_dup_testdev".as_ptr().cast(),
                bindings::O_RDWR as i32,
                0,
            )
        };
        assert!(!is_err(file as usize));
        file
    }

    /// The x86 PAT tracking context of the VMA at `addr` and its reference
    /// count (null and 0 when the VMA has none).
    fn pfnmap_track_at(addr: usize) -> (usize, u32) {
        with_mm(|mm| {
            let guard = mm.mmap_read_lock();
            let vma = guard.vma_lookup(addr).expect("a VMA at addr");
            // SAFETY: the mmap lock is held (guard), so the VMA is live and
            // its tracking context, set at mmap and shared by copies, holds
            // a reference for it and is live too.
            unsafe {
                let ctx = (*vma.as_ptr()).pfnmap_track_ctx;
                if ctx.is_null() {
                    return (0, 0);
                }
                let refs = core::ptr::addr_of!((*ctx).kref.refcount.refs.counter).read_volatile();
                (ctx as usize, refs as u32)
            }
        })
    }

    #[test]
    fn testdev_pat_tracking_shared_by_kref() {
        let file = open_testdev();
        let len = TESTDEV_PAGES * PAGE_SIZE;
        let addr = map_flavour(file, PAT_WC);
        assert!(!is_err(addr));
        // remap_pfn_range() of the whole VMA: tracked, one reference.
        let (ctx, refs) = pfnmap_track_at(addr);
        assert_ne!(ctx, 0);
        assert_eq!(refs, 1);
        let dup = mremap(addr, len, MREMAP_DUP, 0);
        assert!(!is_err(dup));
        // The duplicate shares the tracking (vm_area_dup()), one more reference.
        assert_eq!(pfnmap_track_at(dup), (ctx, 2));
        assert_eq!(pfnmap_track_at(addr), (ctx, 2));
        // A refused DUP (part of a device mapping) takes no reference.
        let dst = map_anon(PAGE_SIZE, PROT_NONE, MAP_PRIVATE);
        assert!(!is_err(dst));
        assert_eq!(
            mremap(addr, PAGE_SIZE, MREMAP_DUP | MREMAP_FIXED, dst),
            EINVAL.wrapping_neg()
        );
        assert_eq!(pfnmap_track_at(addr), (ctx, 2));
        // SAFETY: unmapping the duplicate made by this test.
        unsafe { bindings::vm_munmap(dup, len) };
        assert_eq!(pfnmap_track_at(addr), (ctx, 1));
        // SAFETY: drops the reference filp_open() returned; the mapping keeps
        // its own.
        unsafe { bindings::fput(file) };
    }

    #[test]
    fn refused_device_dup_leaves_vma_tree_and_counts_unchanged() {
        let file = open_testdev();
        let len = TESTDEV_PAGES * PAGE_SIZE;
        let dontcopy = map_flavour(file, DONTCOPY);
        let remap = map_flavour(file, REMAP_PFN);
        let dst = map_anon(len, PROT_NONE, MAP_PRIVATE);
        assert!(!is_err(dontcopy) && !is_err(remap) && !is_err(dst));
        let counts = |f| {
            (
                testdev_count(file, GET_OPENS, f),
                testdev_count(file, GET_CLOSES, f),
            )
        };
        let (c_dontcopy, c_remap) = (counts(DONTCOPY), counts(REMAP_PFN));
        let before = vma_tree();
        // VM_DONTCOPY, and part of a device mapping (vm_pgoff-derived faults).
        assert_eq!(
            mremap(dontcopy, len, MREMAP_DUP | MREMAP_FIXED, dst),
            EINVAL.wrapping_neg()
        );
        assert_eq!(
            mremap(remap + PAGE_SIZE, PAGE_SIZE, MREMAP_DUP | MREMAP_FIXED, dst),
            EINVAL.wrapping_neg()
        );
        assert_eq!(
            mremap(remap, PAGE_SIZE, MREMAP_DUP, 0),
            EINVAL.wrapping_neg()
        );
        assert!(vma_tree()[..] == before[..]);
        assert_eq!(counts(DONTCOPY), c_dontcopy);
        assert_eq!(counts(REMAP_PFN), c_remap);
        // SAFETY: drops the reference filp_open() returned; the mappings keep
        // their own.
        unsafe { bindings::fput(file) };
    }

    #[test]
    fn testdev_flavours_pfns_and_open_close() {
        let file = open_testdev();
        let len = TESTDEV_PAGES * PAGE_SIZE;
        for flavour in 0..3usize {
            let addr = map_flavour(file, flavour);
            assert!(!is_err(addr));
            let orig = read_user(addr, len);
            let opens = testdev_count(file, GET_OPENS, flavour);
            let closes = testdev_count(file, GET_CLOSES, flavour);
            let dup = mremap(addr, len, MREMAP_DUP, 0);
            assert!(!is_err(dup));
            assert_eq!(testdev_count(file, GET_OPENS, flavour), opens + 1);
            assert_eq!(testdev_count(file, GET_CLOSES, flavour), closes);
            // Same flags (less mlock, soft-dirty), file and vm_pgoff: whole VMA.
            let a = vma_at(addr).expect("source VMA");
            let d = vma_at(dup).expect("duplicate VMA");
            assert_eq!(d.2 & !DUP_DIFFERS, a.2 & !DUP_DIFFERS);
            assert_eq!(d.3, a.3);
            assert_eq!(d.4, a.4);
            // Entries copied where they cannot be refaulted: the same PFNs,
            // before any fault on the duplicate (flavours 0 and 1 are VM_PFNMAP).
            if flavour < 2 {
                for i in 0..TESTDEV_PAGES {
                    let pa = pfn_at(addr + i * PAGE_SIZE);
                    assert!(pa.is_some());
                    assert_eq!(pfn_at(dup + i * PAGE_SIZE), pa);
                }
            }
            assert!(read_user(dup, len)[..] == orig[..]);
            // SAFETY: unmapping the duplicate made by this test.
            unsafe { bindings::vm_munmap(dup, len) };
            assert_eq!(testdev_count(file, GET_CLOSES, flavour), closes + 1);
        }
        // SAFETY: drops the reference filp_open() returned.
        unsafe { bindings::fput(file) };
    }
}
