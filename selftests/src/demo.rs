// SPDX-License-Identifier: GPL-2.0

//! Demo: duplicate a memfd mapping and a vgem DRM buffer object's mapping
//! below 4 GiB with MREMAP_DUP and show a write through each mapping seen
//! through the other.

#[path = "card.rs"]
mod card;

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};

use mremap_dup::{dup, is_supported, page_size, Placement};

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
    let (o, d) = (orig as *mut u64, dup as *mut u64);
    // SAFETY: both map the same len >= 16 writable bytes.
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
    let card = match card::open_card("vgem") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vgem: {e}");
            return false;
        }
    };
    let db = drm_ffi::mode::dumbbuffer::create(card.as_fd(), 256, 256, 32, 0)
        .expect("DRM_IOCTL_MODE_CREATE_DUMB");
    let off = drm_ffi::mode::dumbbuffer::map(card.as_fd(), db.handle, 0, 0)
        .expect("DRM_IOCTL_MODE_MAP_DUMB")
        .offset;
    let len = db.size as usize;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: maps the dumb buffer just created; the mapping is ours.
    unsafe {
        let orig = libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            card.as_raw_fd(),
            off as libc::off_t,
        );
        assert!(orig != libc::MAP_FAILED);
        show("vgem dumb buffer mapping", orig, len)
    }
}

fn main() {
    if !is_supported() {
        eprintln!("this kernel has no MREMAP_DUP (the detection call gave EINVAL, not EFAULT)");
        std::process::exit(1);
    }
    let ok = memfd() & vgem();
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
