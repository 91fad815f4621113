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
//!
//! Every case returns a `Result`: under `#[kunit_tests]` only `assert!` and
//! `assert_eq!` become KUnit failures (and end the case), while a panic
//! (`unwrap()`, `expect()`, `assert_ne!`) would be a kernel BUG. Errors are
//! passed on with `?` (a case that returns an error fails) and logged with
//! what was being done.
//!
//! What a case holds is released however it ends: the test device's file
//! reference by a KUnit action (run after the case, also when an assertion
//! ended it); the mappings, duplicates included, with the user mm, which
//! `kunit_attach_mm()` made for this case's kthread alone and which goes
//! when that kthread exits (`exit_mm()`), before the actions run. An action
//! cannot unmap them: actions run in a second kthread
//! (`kunit_try_run_case_cleanup()`), which has no user mm.

use kernel::prelude::*;

#[path = "testdev_abi.rs"]
mod abi;

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
    use crate::abi::{
        flavour_offset, Counts, DEV_PATH, DONTCOPY, FAULT_PFN, IOCTL_TYPE, MAGIC, MIXED,
        NR_GET_CLOSES, NR_GET_OPENS, PAGES, PAT_WC, REMAP_PFN,
    };
    use kernel::{
        bindings,
        error::to_result,
        ioctl::_IOR,
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
    /// Flags a duplicate may differ in: mlock state and soft-dirty.
    const VM_LOCKED: usize = 0x2000;
    const DUP_DIFFERS: usize = VM_LOCKED | bindings::VM_LOCKONFAULT | bindings::VM_SOFTDIRTY;
    /// Bytes of one whole mapping of the test device.
    const DEV_LEN: usize = PAGES * PAGE_SIZE;
    const GET_OPENS: u32 = _IOR::<Counts>(IOCTL_TYPE as u32, NR_GET_OPENS as u32);
    const GET_CLOSES: u32 = _IOR::<Counts>(IOCTL_TYPE as u32, NR_GET_CLOSES as u32);

    /// (start, end, flags, file, pgoff) of a VMA.
    type VmaInfo = (usize, usize, usize, usize, usize);

    /// Logs what was being done when an error came, and passes it on.
    trait Ctx<T> {
        fn ctx(self, what: &str) -> Result<T>;
    }

    impl<T> Ctx<T> for Result<T> {
        fn ctx(self, what: &str) -> Result<T> {
            self.inspect_err(|e| pr_err!("{what}: {e:?}\n"))
        }
    }

    /// An address, or the errno that a kernel function returning an address
    /// encodes in it (`IS_ERR_VALUE()`).
    fn addr_or_err(v: usize) -> Result<usize> {
        if v > usize::MAX - bindings::MAX_ERRNO as usize {
            Err(Error::from_errno(v as isize as i32))
        } else {
            Ok(v)
        }
    }

    /// The running KUnit test.
    fn current_test() -> Result<*mut bindings::kunit> {
        // SAFETY: FFI call without preconditions.
        let test = unsafe { bindings::kunit_get_current_test() };
        if test.is_null() {
            Err(EINVAL)
        } else {
            Ok(test)
        }
    }

    /// mmap() into the test's user mm.
    fn vm_mmap(
        file: *mut bindings::file,
        len: usize,
        prot: usize,
        flags: usize,
        off: usize,
    ) -> Result<usize> {
        let test = current_test()?;
        // SAFETY: test is the running test; kunit_vm_mmap() attaches a user
        // mm to this kthread on first use; file is null (anonymous) or a
        // file this case holds a reference to.
        let ret = unsafe { bindings::kunit_vm_mmap(test, file, 0, len, prot, flags, off) };
        // kunit_vm_mmap() gives 0 when its KUnit resource fails (no user mm,
        // no memory: lib/kunit/user_alloc.c) and passes vm_mmap()'s errno
        // value on otherwise.
        if ret == 0 {
            return Err(ENOMEM);
        }
        addr_or_err(ret)
    }

    /// Anonymous memory in the test's user mm.
    fn map_anon(len: usize, prot: usize, flags: usize) -> Result<usize> {
        vm_mmap(core::ptr::null_mut(), len, prot, flags | MAP_ANONYMOUS, 0)
    }

    /// mremap() of the test's user mm, old and new length `len`.
    fn mremap(addr: usize, len: usize, flags: usize, new_addr: usize) -> Result<usize> {
        // SAFETY: acts on current->mm, the test's own user mm.
        addr_or_err(unsafe { kunit_mremap(addr, len, len, flags, new_addr) })
    }

    /// munmap() of the test's user mm.
    fn munmap(addr: usize, len: usize) -> Result {
        // SAFETY: acts on current->mm, the test's own user mm, on a range
        // this case mapped.
        to_result(unsafe { bindings::vm_munmap(addr, len) })
    }

    /// Runs `f` on the user mm that kunit_vm_mmap() attached to this kthread.
    fn with_mm<R>(f: impl FnOnce(&MmWithUser) -> Result<R>) -> Result<R> {
        kernel::current!()
            .mm()
            .ok_or(ENOENT)
            .ctx("no user mm")
            .and_then(f)
    }

    /// Every VMA of the test's mm.
    fn vma_tree() -> Result<KVec<VmaInfo>> {
        with_mm(vma_tree_of)
    }

    fn vma_tree_of(mm: &MmWithUser) -> Result<KVec<VmaInfo>> {
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
            let (file, pgoff) = unsafe { ((*vma).vm_file as usize, (*vma).vm_pgoff) };
            out.push((v.start(), v.end(), v.flags(), file, pgoff), GFP_KERNEL)?;
            addr = v.end();
        }
        Ok(out)
    }

    fn vma_at(addr: usize) -> Result<VmaInfo> {
        vma_tree()?
            .into_iter()
            .find(|v| v.0 <= addr && addr < v.1)
            .ok_or(ENOENT)
            .ctx("no VMA at the address")
    }

    /// The PFN mapped at `addr` of a VM_PFNMAP/VM_IO VMA, if any.
    fn pfn_at(addr: usize) -> Result<Option<usize>> {
        with_mm(|mm| {
            let guard = mm.mmap_read_lock();
            let vma = guard.vma_lookup(addr).ok_or(ENOENT)?;
            let mut args = bindings::follow_pfnmap_args {
                vma: vma.as_ptr(),
                address: addr,
                ..Default::default()
            };
            // SAFETY: the mmap lock is held; args names a VMA of this mm.
            if unsafe { bindings::follow_pfnmap_start(&mut args) } != 0 {
                return Ok(None);
            }
            let pfn = args.pfn;
            // SAFETY: pairs with the successful follow_pfnmap_start() above.
            unsafe { bindings::follow_pfnmap_end(&mut args) };
            Ok(Some(pfn))
        })
    }

    /// The first word of the user page at `addr`, faulting it in.
    fn read_word(addr: usize) -> Result<u64> {
        UserSlice::new(UserPtr::from_addr(addr), 8)
            .reader()
            .read::<u64>()
            .ctx("reading user memory")
    }

    /// Writes `v` as the first word of the user page at `addr`.
    fn write_word(addr: usize, v: u64) -> Result {
        UserSlice::new(UserPtr::from_addr(addr), 8)
            .writer()
            .write(&v)
            .ctx("writing user memory")
    }

    /// The first word of each of the `pages` pages from `addr`.
    fn words(addr: usize, pages: usize) -> Result<KVec<u64>> {
        let mut out = KVec::with_capacity(pages, GFP_KERNEL)?;
        for p in 0..pages {
            out.push(read_word(addr + p * PAGE_SIZE)?, GFP_KERNEL)?;
        }
        Ok(out)
    }

    /// The words `seed + p` for `p` in `from..to`, the pattern of pages
    /// `from..to` of a mapping whose page `p` starts with `seed + p`.
    fn pattern(seed: u64, from: usize, to: usize) -> Result<KVec<u64>> {
        let mut out = KVec::with_capacity(to - from, GFP_KERNEL)?;
        for p in from..to {
            out.push(seed + p as u64, GFP_KERNEL)?;
        }
        Ok(out)
    }

    /// KUnit action: drops a file reference.
    ///
    /// # Safety
    ///
    /// `file` must be a `struct file` pointer whose reference the caller
    /// hands over.
    unsafe extern "C" fn fput_action(file: *mut c_void) {
        // SAFETY: the reference is ours to drop (the function's contract).
        unsafe { bindings::fput(file.cast()) };
    }

    /// The test device (`kernel-rust/mremap_dup_testdev.rs`), open for this
    /// case, with a user page for its ioctls' results.
    struct TestDev {
        /// Valid until the case ends: a KUnit action drops the reference.
        file: *mut bindings::file,
        /// A page of the test's user mm.
        buf: usize,
    }

    impl TestDev {
        fn open() -> Result<Self> {
            let test = current_test()?;
            // SAFETY: a NUL-terminated path; the result is checked below.
            let file =
                unsafe { bindings::filp_open(DEV_PATH.as_char_ptr(), bindings::O_RDWR as i32, 0) };
            addr_or_err(file as usize).ctx("opening the test device (is it loaded?)")?;
            // SAFETY: test is the running test; the action takes over the
            // reference filp_open() returned (and runs at once if it cannot
            // be added).
            to_result(unsafe {
                bindings::kunit_add_action_or_reset(test, Some(fput_action), file.cast())
            })
            .ctx("adding the fput action")?;
            let buf = map_anon(PAGE_SIZE, PROT_RW, MAP_PRIVATE).ctx("mapping the ioctl buffer")?;
            Ok(Self { file, buf })
        }

        /// One of the count ioctls: one count per flavour.
        fn read_counts(&self, cmd: u32) -> Result<Counts> {
            // SAFETY: the file is open for the whole case (type invariant).
            let ioctl = unsafe { (*(*self.file).f_op).unlocked_ioctl }.ok_or(ENOTTY)?;
            // SAFETY: the test device's ioctl, called as the VFS does, with
            // a user address of this mm for its result.
            let ret = unsafe { ioctl(self.file, cmd, self.buf) };
            if ret < 0 {
                return Err(Error::from_errno(ret as i32)).ctx("test device ioctl");
            }
            UserSlice::new(UserPtr::from_addr(self.buf), size_of::<Counts>())
                .reader()
                .read::<Counts>()
                .ctx("reading the ioctl result")
        }

        /// (opens, closes) of `flavour`.
        fn counts(&self, flavour: usize) -> Result<(u64, u64)> {
            let opens = self.read_counts(GET_OPENS)?;
            let closes = self.read_counts(GET_CLOSES)?;
            Ok((opens[flavour], closes[flavour]))
        }

        /// A whole shared mapping of `flavour`.
        fn map(&self, flavour: usize) -> Result<usize> {
            vm_mmap(
                self.file,
                DEV_LEN,
                PROT_RW,
                MAP_SHARED,
                flavour_offset(flavour, PAGE_SIZE),
            )
            .inspect_err(|e| pr_err!("mmap of flavour {flavour}: {e:?}\n"))
        }
    }

    /// The x86 PAT tracking context of the VMA at `addr` and its reference
    /// count (0 and 0 when the VMA has none).
    fn pfnmap_track_at(addr: usize) -> Result<(usize, u32)> {
        with_mm(|mm| {
            let guard = mm.mmap_read_lock();
            let vma = guard.vma_lookup(addr).ok_or(ENOENT)?;
            // SAFETY: the mmap lock is held (guard), so the VMA is live and
            // its tracking context, set at mmap and shared by copies, holds
            // a reference for it and is live too.
            unsafe {
                let ctx = (*vma.as_ptr()).pfnmap_track_ctx;
                if ctx.is_null() {
                    return Ok((0, 0));
                }
                let refs = core::ptr::addr_of!((*ctx).kref.refcount.refs.counter).read_volatile();
                Ok((ctx as usize, refs as u32))
            }
        })
    }

    #[test]
    fn shmem_dup_same_file_flags_offset() -> Result {
        const SEED: u64 = 0x5eed_0000;
        let len = 8 * PAGE_SIZE;
        let addr = map_anon(len, PROT_RW, MAP_SHARED).ctx("mmap shared anon")?;
        for p in 0..8 {
            write_word(addr + p * PAGE_SIZE, SEED + p as u64)?;
        }
        let dup = mremap(addr + 2 * PAGE_SIZE, 3 * PAGE_SIZE, MREMAP_DUP, 0).ctx("DUP")?;
        let a = vma_at(addr)?;
        let d = vma_at(dup)?;
        assert_eq!(a.0, addr);
        assert_eq!(a.1, addr + len);
        assert_eq!(d.3, a.3);
        assert_eq!(d.4, a.4 + 2);
        assert_eq!(d.2 & !DUP_DIFFERS, a.2 & !DUP_DIFFERS);
        // Pages 2..5 of what was written, seen through the duplicate, and a
        // write through the duplicate seen through the original.
        assert!(words(dup, 3)?[..] == pattern(SEED, 2, 5)?[..]);
        write_word(dup + PAGE_SIZE, !SEED)?;
        assert_eq!(read_word(addr + 3 * PAGE_SIZE)?, !SEED);
        munmap(dup, 3 * PAGE_SIZE)
    }

    #[test]
    fn refused_dup_leaves_vma_tree_unchanged() -> Result {
        let len = 4 * PAGE_SIZE;
        let private = map_anon(len, PROT_RW, MAP_PRIVATE).ctx("mmap private anon")?;
        let dst = map_anon(len, PROT_NONE, MAP_PRIVATE).ctx("mmap destination")?;
        let shared = map_anon(2 * len, PROT_RW, MAP_SHARED).ctx("mmap shared anon")?;
        let before = vma_tree()?;
        assert_eq!(
            mremap(private, len, MREMAP_DUP | MREMAP_FIXED, dst),
            Err(EINVAL)
        );
        assert_eq!(
            mremap(shared, len, MREMAP_DUP | MREMAP_FIXED, shared + PAGE_SIZE),
            Err(EINVAL)
        );
        assert_eq!(
            mremap(shared, len, MREMAP_DUP | MREMAP_FIXED, shared + len),
            Err(EINVAL)
        );
        assert!(vma_tree()?[..] == before[..]);
        Ok(())
    }

    #[test]
    fn testdev_pat_tracking_shared_by_kref() -> Result {
        let dev = TestDev::open()?;
        let addr = dev.map(PAT_WC).ctx("PAT_WC unavailable? (pat_base=)")?;
        // remap_pfn_range() of the whole VMA: tracked, one reference.
        let (ctx, refs) = pfnmap_track_at(addr)?;
        assert!(ctx != 0);
        assert_eq!(refs, 1);
        let dup = mremap(addr, DEV_LEN, MREMAP_DUP, 0).ctx("DUP of PAT_WC")?;
        // The duplicate shares the tracking (vm_area_dup()), one more reference.
        assert_eq!(pfnmap_track_at(dup)?, (ctx, 2));
        assert_eq!(pfnmap_track_at(addr)?, (ctx, 2));
        // A refused DUP (part of a device mapping) takes no reference.
        let dst = map_anon(PAGE_SIZE, PROT_NONE, MAP_PRIVATE).ctx("mmap destination")?;
        assert_eq!(
            mremap(addr, PAGE_SIZE, MREMAP_DUP | MREMAP_FIXED, dst),
            Err(EINVAL)
        );
        assert_eq!(pfnmap_track_at(addr)?, (ctx, 2));
        munmap(dup, DEV_LEN)?;
        assert_eq!(pfnmap_track_at(addr)?, (ctx, 1));
        Ok(())
    }

    #[test]
    fn refused_device_dup_leaves_vma_tree_and_counts_unchanged() -> Result {
        let dev = TestDev::open()?;
        let dontcopy = dev.map(DONTCOPY)?;
        let remap = dev.map(REMAP_PFN)?;
        let dst = map_anon(DEV_LEN, PROT_NONE, MAP_PRIVATE).ctx("mmap destination")?;
        let c_dontcopy = dev.counts(DONTCOPY)?;
        let c_remap = dev.counts(REMAP_PFN)?;
        let before = vma_tree()?;
        // VM_DONTCOPY, and part of a device mapping (vm_pgoff-derived faults).
        assert_eq!(
            mremap(dontcopy, DEV_LEN, MREMAP_DUP | MREMAP_FIXED, dst),
            Err(EINVAL)
        );
        assert_eq!(
            mremap(remap + PAGE_SIZE, PAGE_SIZE, MREMAP_DUP | MREMAP_FIXED, dst),
            Err(EINVAL)
        );
        assert_eq!(mremap(remap, PAGE_SIZE, MREMAP_DUP, 0), Err(EINVAL));
        assert!(vma_tree()?[..] == before[..]);
        assert_eq!(dev.counts(DONTCOPY)?, c_dontcopy);
        assert_eq!(dev.counts(REMAP_PFN)?, c_remap);
        Ok(())
    }

    #[test]
    fn testdev_flavours_pfns_and_open_close() -> Result {
        let dev = TestDev::open()?;
        let magic = pattern(MAGIC, 0, PAGES)?;
        for flavour in [REMAP_PFN, FAULT_PFN, MIXED] {
            let addr = dev.map(flavour)?;
            // Also faults FAULT_PFN's pages in, so that there are entries to copy.
            assert!(words(addr, PAGES)?[..] == magic[..]);
            let (opens, closes) = dev.counts(flavour)?;
            let dup = mremap(addr, DEV_LEN, MREMAP_DUP, 0)
                .inspect_err(|e| pr_err!("DUP of flavour {flavour}: {e:?}\n"))?;
            assert_eq!(dev.counts(flavour)?, (opens + 1, closes));
            // Same flags (less mlock, soft-dirty), file and vm_pgoff: whole VMA.
            let a = vma_at(addr)?;
            let d = vma_at(dup)?;
            assert_eq!(d.2 & !DUP_DIFFERS, a.2 & !DUP_DIFFERS);
            assert_eq!(d.3, a.3);
            assert_eq!(d.4, a.4);
            // Entries copied where they cannot be refaulted: the same PFNs,
            // before any fault on the duplicate (VM_PFNMAP flavours).
            if flavour != MIXED {
                for i in 0..PAGES {
                    let pa = pfn_at(addr + i * PAGE_SIZE)?;
                    assert!(pa.is_some());
                    assert_eq!(pfn_at(dup + i * PAGE_SIZE)?, pa);
                }
            }
            assert!(words(dup, PAGES)?[..] == magic[..]);
            munmap(dup, DEV_LEN)?;
            assert_eq!(dev.counts(flavour)?, (opens + 1, closes + 1));
        }
        Ok(())
    }
}
