// SPDX-License-Identifier: GPL-2.0

//! Benchmarks, run in the guest by scripts/bench.sh. Every number is a ratio
//! against an alternative measured in the same run, never an absolute claim.
//!
//! 1. Making a 16 MiB shared buffer visible at a second address and reading
//!    it there: MREMAP_DUP vs mmap(fd, MAP_POPULATE) of the same memfd vs
//!    memcpy into a shadow buffer (what WoW64 does today).
//! 2. fork() of a process with 64 MiB of populated private memory, whose
//!    16384 PTEs fork copies with copy_pte_range() (the loop the series
//!    threads a destination address through), plus 16 MiB shared (not
//!    copied: refaulted): run on the patched and the unpatched kernel over
//!    several boots each, compared by bench.sh.

use std::ffi::CString;
use std::time::Instant;

use mremap_dup::{dup, Placement};

const LEN: usize = 16 << 20;
const ROUNDS: usize = 11;
const FORK_PRIVATE: usize = 64 << 20;
const FORK_ROUNDS: usize = 21;

fn page() -> usize {
    mremap_dup::page_size()
}

fn map(len: usize, prot: i32, flags: i32, fd: i32) -> *mut u8 {
    // SAFETY: a fresh mapping chosen by the kernel.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
    assert!(
        p != libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p.cast()
}

fn unmap(p: *mut u8, len: usize) {
    // SAFETY: p is a mapping of len bytes owned by the benchmark.
    unsafe { libc::munmap(p.cast(), len) };
}

/// Reads one word per page: what the 32-bit side does with the buffer.
fn touch(p: *const u8, len: usize) -> u64 {
    let mut sum = 0u64;
    for off in (0..len).step_by(page()) {
        // SAFETY: p maps len readable bytes.
        sum = sum.wrapping_add(unsafe { p.add(off).cast::<u64>().read_volatile() });
    }
    sum
}

/// Median of `ROUNDS` runs of `f`, in microseconds.
fn median_us(f: impl FnMut()) -> f64 {
    samples_us(ROUNDS, f)[ROUNDS / 2]
}

/// `rounds` timings of `f`, in microseconds, sorted.
fn samples_us(rounds: usize, mut f: impl FnMut()) -> Vec<f64> {
    let mut v: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

fn second_view() {
    let name = CString::new("bench").unwrap();
    // SAFETY: plain system calls on a fresh memfd.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    // SAFETY: as above.
    assert!(fd >= 0 && unsafe { libc::ftruncate(fd, LEN as libc::off_t) } == 0);
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let orig = map(LEN, rw, libc::MAP_SHARED | libc::MAP_POPULATE, fd);
    // SAFETY: orig maps LEN writable bytes.
    unsafe { orig.write_bytes(0x5a, LEN) };

    let t_dup = median_us(|| {
        // SAFETY: Anywhere replaces nothing.
        let d =
            unsafe { dup(orig.cast(), LEN, Placement::Anywhere) }.expect("MREMAP_DUP") as *mut u8;
        touch(d, LEN);
        unmap(d, LEN);
    });
    let t_mmap = median_us(|| {
        let d = map(LEN, rw, libc::MAP_SHARED | libc::MAP_POPULATE, fd);
        touch(d, LEN);
        unmap(d, LEN);
    });
    let shadow = map(
        LEN,
        rw,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
        -1,
    );
    let t_copy = median_us(|| {
        // SAFETY: both map LEN bytes and do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(orig, shadow, LEN) };
        touch(shadow, LEN);
    });
    println!("second view of 16 MiB: MREMAP_DUP {t_dup:.0} us, mmap(fd)+MAP_POPULATE {t_mmap:.0} us, memcpy to shadow {t_copy:.0} us");
    println!("ratio dup/mmap_populate: {:.2}", t_dup / t_mmap);
    println!("ratio dup/memcpy_shadow: {:.2}", t_dup / t_copy);
    unmap(shadow, LEN);
    unmap(orig, LEN);
}

fn fork_cost() {
    // Many small shared mappings, populated: fork copies none of their
    // entries (refaultable) ...
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let shared = map(
        LEN,
        rw,
        libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
        -1,
    );
    // ... and private anonymous memory, whose entries fork copies through
    // copy_pte_range() (the path given a destination address).
    let private = map(
        FORK_PRIVATE,
        rw,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
        -1,
    );
    // SAFETY: each maps that many writable bytes.
    unsafe {
        shared.write_bytes(1, LEN);
        private.write_bytes(1, FORK_PRIVATE);
    }
    // Only the parent's fork() call is timed (that is where the page tables
    // are copied); the child's exit and the wait, which add scheduling
    // noise, are not.
    let mut t: Vec<f64> = (0..FORK_ROUNDS)
        .map(|_| {
            let start = Instant::now();
            // SAFETY: the child only exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(0) };
            }
            let us = start.elapsed().as_secs_f64() * 1e6;
            let mut st = 0;
            // SAFETY: waits for the child just forked.
            unsafe { libc::waitpid(pid, &mut st, 0) };
            us
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // bench.sh reads the median (the field before "us").
    println!(
        "fork() in the parent, 64 MiB private + 16 MiB shared populated: median {:.0} us (min {:.0}, max {:.0}, {FORK_ROUNDS} rounds)",
        t[FORK_ROUNDS / 2],
        t[0],
        t[FORK_ROUNDS - 1]
    );
}

/// `view` or `fork`: each benchmark runs in a process of its own, so that
/// what one maps does not weigh on the other (fork copies every mapping).
fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("fork") => fork_cost(),
        Some("view") => second_view(),
        _ => {
            eprintln!("usage: mremap-dup-bench view|fork");
            std::process::exit(2);
        }
    }
}
