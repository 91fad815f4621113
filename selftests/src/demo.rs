// SPDX-License-Identifier: GPL-2.0

//! Demo: duplicate a memfd mapping below 4 GiB with MREMAP_DUP and show a
//! write through each mapping seen through the other.

use std::ffi::CString;

use mremap_dup::{dup, is_supported, page_size, Placement};

fn main() {
    if !is_supported() {
        eprintln!("this kernel has no MREMAP_DUP (the detection call gave EINVAL, not EFAULT)");
        std::process::exit(1);
    }
    let len = 4 * page_size();
    let name = CString::new("demo").unwrap();
    // SAFETY: plain system calls on a fresh memfd; every mapping below is ours.
    unsafe {
        let fd = libc::memfd_create(name.as_ptr(), 0);
        assert!(fd >= 0 && libc::ftruncate(fd, len as libc::off_t) == 0);
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let orig = libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0);
        assert!(orig != libc::MAP_FAILED);
        // A PROT_NONE reservation below 4 GiB, as WoW64 keeps for 32-bit code.
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_32BIT;
        let low = libc::mmap(std::ptr::null_mut(), len, libc::PROT_NONE, flags, -1, 0);
        assert!(low != libc::MAP_FAILED);
        let dup = match dup(orig, len, Placement::Fixed(low as usize)) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("MREMAP_DUP failed: {e}");
                std::process::exit(1);
            }
        };
        println!("memfd mapping (original):   {orig:p}");
        println!(
            "MREMAP_DUP|FIXED duplicate: {dup:p} (below 4 GiB: {})",
            (dup as usize) < (1 << 32)
        );
        let (o, d) = (orig as *mut u64, dup as *mut u64);
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
        let ok = d.read_volatile() == 0x1111_2222_3333_4444
            && o.add(1).read_volatile() == 0x5555_6666_7777_8888;
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
}
