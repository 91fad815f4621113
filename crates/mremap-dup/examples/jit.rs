// SPDX-License-Identifier: MIT OR Apache-2.0

//! A W^X JIT with `MREMAP_DUP` (what libffi's closures and ART's JIT want):
//! the code is written through a read-write view of shared memory and run
//! through a read-execute duplicate of it, so no page is ever writable and
//! executable at once, and no file is needed.
//!
//! Run with `cargo run --release --example jit` on a kernel with
//! `MREMAP_DUP` (x86-64).

use core::ffi::c_void;
use core::ptr::NonNull;

use mremap_dup::{dup_range, RangePlacement};

/// Writes `mov eax, imm32; ret` at `code`.
///
/// # Safety
///
/// `code` is writable for 6 bytes.
unsafe fn emit(code: *mut u8, imm: u32) {
    let mut insn = [0xb8, 0, 0, 0, 0, 0xc3];
    insn[1..5].copy_from_slice(&imm.to_le_bytes());
    // SAFETY: see `# Safety`; volatile, so that the compiler does not
    // reorder the stores after the call that executes them.
    for (i, b) in insn.into_iter().enumerate() {
        unsafe { code.add(i).write_volatile(b) };
    }
}

/// Generates a function returning `first`, runs it through the
/// executable duplicate, rewrites it through the writable view to return
/// `second` and runs it again. Returns what the two calls returned.
#[cfg(target_arch = "x86_64")]
pub fn run(first: u32, second: u32) -> Result<(u32, u32), String> {
    let page = mremap_dup::page_size();
    let rw_prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
    // SAFETY: a fresh mapping where the kernel picks.
    let rw = unsafe { libc::mmap(core::ptr::null_mut(), page, rw_prot, flags, -1, 0) };
    let rw = NonNull::new(rw)
        .filter(|p| p.as_ptr() != libc::MAP_FAILED)
        .ok_or("mmap of the code buffer failed")?;
    let result = (|| {
        let code = rw.as_ptr() as *mut u8;
        // SAFETY: rw is a writable page of ours.
        unsafe { emit(code, first) };
        let rx = dup_range(rw, page, RangePlacement::Anywhere)
            .map_err(|e| format!("MREMAP_DUP: {e}"))?;
        let exec = libc::PROT_READ | libc::PROT_EXEC;
        // SAFETY: the duplicate is rx's own mapping.
        if unsafe { libc::mprotect(rx.base().as_ptr(), rx.size(), exec) } != 0 {
            return Err(format!(
                "mprotect(PROT_READ | PROT_EXEC) of the duplicate: {}",
                nix::Error::last()
            ));
        }
        // SAFETY: rx maps the code just written: a complete function of
        // the C ABI that takes nothing and returns eax.
        let f: extern "C" fn() -> u32 =
            unsafe { core::mem::transmute::<*mut c_void, _>(rx.as_ptr().as_ptr()) };
        let a = f();
        // x86 keeps instruction fetch coherent with stores to the same
        // physical page, through any mapping; the call is a branch.
        // SAFETY: as above.
        unsafe { emit(code, second) };
        let b = f();
        Ok((a, b))
    })();
    // SAFETY: rw is ours; the duplicate is gone (rx was dropped).
    unsafe { libc::munmap(rw.as_ptr(), page) };
    result
}

#[cfg(target_arch = "x86_64")]
fn main() {
    if !mremap_dup::is_supported() {
        eprintln!("this kernel has no MREMAP_DUP");
        std::process::exit(2);
    }
    match run(42, 0x1234_5678) {
        Ok((a, b)) => println!("JIT through a read-execute duplicate: returned {a}, then {b:#x} after a rewrite through the read-write view"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("this example generates x86-64 code");
}
