// SPDX-License-Identifier: GPL-2.0

//! Demo: duplicate a memfd mapping and a vgem DRM buffer object's mapping
//! below 4 GiB with MREMAP_DUP and show a write through each mapping seen
//! through the other; then the WoW64 case end to end with the helper
//! `dup_range()`: a pointer into the middle of a GPU buffer mapped high.

#[path = "card.rs"]
mod card;
mod vgem;

use std::ffi::CString;
use std::ptr::NonNull;

use mremap_dup::{dup, dup_range, is_supported, page_size, Placement, RangePlacement};

/// Duplicates the `len` bytes mapped at `orig` into a PROT_NONE reservation
/// below 4 GiB (as WoW64 keeps for 32-bit code) and shows writes both ways.
///
/// # Safety
///
/// `orig` must be a shared read-write mapping of `len` bytes, at least two
/// words long, that nothing else uses.
unsafe fn show(what: &str, orig: *mut libc::c_void, len: usize) -> bool {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_32BIT;
    // SAFETY: a fresh anonymous reservation.
    let low = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_NONE, flags, -1, 0) };
    assert!(low != libc::MAP_FAILED);
    // SAFETY: orig maps len bytes (the caller's contract); low is ours.
    let dup = match unsafe { dup(orig, len, Placement::Fixed(low as usize)) } {
        Ok(p) => p,
        Err(e) => {
            eprintln!("MREMAP_DUP of the {what} failed: {e}");
            return false;
        }
    };
    println!("{what} (original):   {orig:p}");
    println!(
        "MREMAP_DUP|FIXED duplicate: {dup:p} (below 4 GiB: {})",
        (dup as usize) < (1 << 32)
    );
    // SAFETY: both map the same len >= 16 writable bytes.
    unsafe { both_ways(orig as *mut u64, dup as *mut u64) }
}

/// Writes a word through `o` and reads it through `d`, then the next word
/// the other way; prints both and says whether they matched.
///
/// # Safety
///
/// `o` and `d` map the same 16 writable bytes.
unsafe fn both_ways(o: *mut u64, d: *mut u64) -> bool {
    // SAFETY: see `# Safety`.
    unsafe {
        o.write_volatile(0x1111_2222_3333_4444);
        println!(
            "wrote {:#x} via original,  read {:#x} via duplicate",
            o.read_volatile(),
            d.read_volatile()
        );
        d.add(1).write_volatile(0x5555_6666_7777_8888);
        println!(
            "wrote {:#x} via duplicate, read {:#x} via original",
            d.add(1).read_volatile(),
            o.add(1).read_volatile()
        );
        d.read_volatile() == 0x1111_2222_3333_4444
            && o.add(1).read_volatile() == 0x5555_6666_7777_8888
    }
}

/// A memfd mapping, the simplest shared memory.
fn memfd() -> bool {
    let len = 4 * page_size();
    let name = CString::new("demo").unwrap();
    // SAFETY: plain system calls on a fresh memfd; the mapping is ours.
    unsafe {
        let fd = libc::memfd_create(name.as_ptr(), 0);
        assert!(fd >= 0 && libc::ftruncate(fd, len as libc::off_t) == 0);
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let orig = libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0);
        assert!(orig != libc::MAP_FAILED);
        show("memfd mapping", orig, len)
    }
}

/// A vgem dumb buffer: a DRM GEM mmap (VM_PFNMAP | VM_DONTEXPAND), what a
/// GPU driver hands Wine.
fn vgem() -> bool {
    match vgem::VgemBo::new(256, 256) {
        // SAFETY: the BO's mapping is shared, read-write and ours.
        Ok(bo) => unsafe {
            show(
                "vgem dumb buffer mapping",
                bo.addr as *mut libc::c_void,
                bo.len,
            )
        },
        Err(e) => {
            eprintln!("vgem: {e}");
            false
        }
    }
}

/// What a WoW64 layer does with the helper: it holds a pointer into the
/// middle of a GPU buffer the driver mapped high, and gets the same bytes
/// below 4 GiB without knowing the mapping. A DRM buffer can only be
/// duplicated whole, so `dup_range()` duplicates the whole BO and returns
/// the pointer at the same offset in it.
fn wow64() -> bool {
    let bo = match vgem::VgemBo::new(256, 256) {
        Ok(bo) => bo,
        Err(e) => {
            eprintln!("vgem: {e}");
            return false;
        }
    };
    let ptr = bo.addr + bo.len / 2 + 0x40;
    println!(
        "WoW64: vgem BO mapped at {:#x}-{:#x}, driver pointer {ptr:#x}",
        bo.addr,
        bo.addr + bo.len
    );
    let nn = NonNull::new(ptr as *mut libc::c_void).expect("mapped");
    let d = match dup_range(nn, 64, RangePlacement::Below(1 << 32)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("dup_range of the vgem BO failed: {e}");
            return false;
        }
    };
    let low = d.as_ptr().as_ptr() as usize;
    println!(
        "dup_range(ptr, 64, Below(4 GiB)): {low:#x} (below 4 GiB: {}), whole BO duplicated at {:p} (+{:#x})",
        low < 1 << 32,
        d.base(),
        low - d.base().as_ptr() as usize
    );
    // SAFETY: ptr and its duplicate map the same 64 writable bytes.
    low < 1 << 32 && unsafe { both_ways(ptr as *mut u64, low as *mut u64) }
}

fn main() {
    if !is_supported() {
        eprintln!("this kernel has no MREMAP_DUP (a DUP of a shared anonymous page gave EINVAL)");
        std::process::exit(1);
    }
    let ok = memfd() & vgem() & wow64();
    println!(
        "MREMAP_DUP demo: {}",
        if ok {
            "shared both ways, OK"
        } else {
            "MISMATCH"
        }
    );
    std::process::exit(i32::from(!ok));
}
