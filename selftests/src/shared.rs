// SPDX-License-Identifier: GPL-2.0

//! MREMAP_DUP of shared file, shmem, memfd and hugetlbfs mappings: what it
//! does, and every errno it gives, with source and destination unchanged.

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::signal::Signal;

use crate::harness::{Context, Failure, Test, TestResult};
use crate::util::*;
use crate::{check, fail};
use mremap_dup::{dup, Placement, RemapFlags as F};

/// DUP with MREMAP_FIXED of `m` (whole) into `dst`; the duplicate's address.
/// The huge page size of hugetlb and device-dax on x86-64.
const HUGE: usize = 2 << 20;

fn dup_fixed(src: usize, len: usize, dst: usize) -> Result<usize, Errno> {
    dup_raw(src, len, len, F::DUP | F::FIXED, dst)
}

/// Writes through each of `a` and `b` are seen through the other.
fn shares(what: &str, a: usize, b: usize, pages: usize) -> TestResult {
    fill(a, pages, 1);
    verify(
        &format!("{what}: write via original, read via duplicate"),
        b,
        pages,
        1,
        0,
    )?;
    fill(b, pages, 2);
    verify(
        &format!("{what}: write via duplicate, read via original"),
        a,
        pages,
        2,
        0,
    )
}

fn memfd_fixed_below_4g() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(8)?;
    let res = reserve(8, true)?;
    check!(
        res.addr < 1 << 32,
        "reservation not below 4 GiB: {:#x}",
        res.addr
    );
    let got = dup_fixed(src.addr, src.len, res.addr).ctx("DUP|FIXED of memfd mapping")?;
    check!(
        got == res.addr,
        "DUP|FIXED returned {got:#x}, asked for {:#x}",
        res.addr
    );
    shares("memfd below 4 GiB", src.addr, got, 8)?;
    let v =
        vma_at(got).ok_or_else(|| Failure::Fail(format!("no VMA at the duplicate {got:#x}")))?;
    check!(
        v.perms == "rw-s",
        "duplicate perms {}, expected rw-s",
        v.perms
    );
    Ok(())
}

fn placement_anywhere_ignores_new_addr() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(4)?;
    // An unaligned new_addr would be EINVAL if it were looked at.
    let got = dup_raw(src.addr, src.len, src.len, F::DUP, 0x1234_5001).ctx("DUP without FIXED")?;
    let _d = Mapping::adopt(got, src.len);
    check!(got != src.addr, "DUP returned the source address");
    check!(
        got & (page() - 1) == 0,
        "DUP returned an unaligned address {got:#x}"
    );
    shares("DUP anywhere", src.addr, got, 4)
}

fn placement_anywhere_with_maymove() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(4)?;
    let got = dup_raw(src.addr, src.len, src.len, F::DUP | F::MAYMOVE, 0).ctx("DUP|MAYMOVE")?;
    let _d = Mapping::adopt(got, src.len);
    check!(got != src.addr, "DUP|MAYMOVE returned the source address");
    shares("DUP|MAYMOVE", src.addr, got, 4)
}

fn placement_fixed_with_maymove() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(4)?;
    let res = reserve(4, false)?;
    let got = dup_raw(
        src.addr,
        src.len,
        src.len,
        F::DUP | F::FIXED | F::MAYMOVE,
        res.addr,
    )
    .ctx("DUP|FIXED|MAYMOVE")?;
    check!(
        got == res.addr,
        "DUP|FIXED|MAYMOVE returned {got:#x}, asked for {:#x}",
        res.addr
    );
    shares("DUP|FIXED|MAYMOVE", src.addr, got, 4)
}

fn safe_api_dup_fixed_and_anywhere() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(2)?;
    let res = reserve(2, true)?;
    // SAFETY: the destination is this test's own reservation.
    let a =
        unsafe { dup(src.ptr().cast(), src.len, Placement::Fixed(res.addr)) }.ctx("dup Fixed")?;
    check!(a as usize == res.addr, "dup(Fixed) placed at {a:?}");
    // SAFETY: Placement::Anywhere replaces nothing.
    let b = unsafe { dup(src.ptr().cast(), src.len, Placement::Anywhere) }.ctx("dup Anywhere")?;
    let _b = Mapping::adopt(b as usize, src.len);
    shares("safe API, fixed", src.addr, a as usize, 2)?;
    shares("safe API, anywhere", src.addr, b as usize, 2)
}

fn shared_anonymous() -> TestResult {
    require_dup()?;
    let src = map(
        0,
        4 * page(),
        RW,
        libc::MAP_SHARED | libc::MAP_ANONYMOUS,
        -1,
        0,
    )
    .ctx("mmap shared anon")?;
    let res = reserve(4, true)?;
    let got = dup_fixed(src.addr, src.len, res.addr).ctx("DUP of shared anonymous")?;
    shares("shared anonymous", src.addr, got, 4)
}

fn tmpfs_file() -> TestResult {
    require_dup()?;
    let path = format!("/dev/shm/mremap-dup-{}", std::process::id());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .ctx("create /dev/shm file")?;
    let _ = std::fs::remove_file(&path);
    file.set_len(4 * page() as u64).ctx("set_len")?;
    let src =
        map(0, 4 * page(), RW, libc::MAP_SHARED, file.as_raw_fd(), 0).ctx("mmap tmpfs file")?;
    let res = reserve(4, true)?;
    let got = dup_fixed(src.addr, src.len, res.addr).ctx("DUP of tmpfs file mapping")?;
    shares("tmpfs file", src.addr, got, 4)
}

fn subrange_maps_matching_offset() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(8)?;
    fill(src.addr, 8, 3);
    let res = reserve(3, true)?;
    let got = dup_fixed(src.addr + 2 * page(), 3 * page(), res.addr).ctx("DUP of pages 2..5")?;
    verify("sub-range duplicate shows pages 2..5", got, 3, 3, 2)?;
    let v = vma_at(got).ok_or_else(|| Failure::Fail("no VMA at duplicate".into()))?;
    check!(
        v.offset == 2 * page(),
        "duplicate's file offset {:#x}, expected {:#x}",
        v.offset,
        2 * page()
    );
    check!(
        v.end - v.start >= 3 * page(),
        "duplicate VMA too small: {v:?}"
    );
    // The source VMA is not split by a sub-range duplicate.
    let s = vma_at(src.addr).ok_or_else(|| Failure::Fail("no source VMA".into()))?;
    check!(
        s.start == src.addr && s.end == src.end(),
        "source VMA changed: {s:?}"
    );
    Ok(())
}

fn original_left_intact() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(4)?;
    fill(src.addr, 4, 4);
    let before_maps = maps_in(src.addr, src.end());
    let before_rss = smaps_at(src.addr)
        .lines()
        .find(|l| l.starts_with("Rss:"))
        .map(str::to_string);
    let res = reserve(4, false)?;
    dup_fixed(src.addr, src.len, res.addr).ctx("DUP")?;
    check!(
        maps_in(src.addr, src.end()) == before_maps,
        "source maps line changed"
    );
    let after_rss = smaps_at(src.addr)
        .lines()
        .find(|l| l.starts_with("Rss:"))
        .map(str::to_string);
    check!(
        before_rss == after_rss,
        "source Rss changed: {before_rss:?} -> {after_rss:?} (page tables touched)"
    );
    verify("source contents after DUP", src.addr, 4, 4, 0)
}

fn dup_of_dup() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(4)?;
    let r1 = reserve(4, true)?;
    let r2 = reserve(4, true)?;
    let d1 = dup_fixed(src.addr, src.len, r1.addr).ctx("first DUP")?;
    let d2 = dup_fixed(d1, src.len, r2.addr).ctx("DUP of the duplicate")?;
    shares("dup of dup vs original", src.addr, d2, 4)?;
    shares("dup of dup vs first dup", d1, d2, 4)
}

fn survives_close_and_unmap_of_original() -> TestResult {
    require_dup()?;
    let (fd, src) = shared_memfd(4)?;
    fill(src.addr, 4, 5);
    let res = reserve(4, true)?;
    let got = dup_fixed(src.addr, src.len, res.addr).ctx("DUP")?;
    drop(fd);
    drop(src);
    verify("duplicate after close(fd) + munmap(original)", got, 4, 5, 0)?;
    fill(got, 4, 6);
    verify("duplicate still writable", got, 4, 6, 0)
}

fn fork_shares_both() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(2)?;
    let res = reserve(2, true)?;
    let got = dup_fixed(src.addr, src.len, res.addr).ctx("DUP")?;
    let (a, b) = (src.addr, got);
    let code = in_child(|| {
        poke(b, 0xc0ffee);
        poke(a + page(), 0xbeef);
        i32::from(peek(a) != 0xc0ffee || peek(b + page()) != 0xbeef)
    });
    check!(
        code == 0,
        "child did not see its own writes through both mappings"
    );
    check!(
        peek(a) == 0xc0ffee,
        "parent's original misses the child's write via the duplicate"
    );
    check!(
        peek(b + page()) == 0xbeef,
        "parent's duplicate misses the child's write via the original"
    );
    Ok(())
}

fn truncate_zaps_both() -> TestResult {
    require_dup()?;
    let (fd, src) = shared_memfd(4)?;
    fill(src.addr, 4, 7);
    let res = reserve(4, true)?;
    let got = dup_fixed(src.addr, src.len, res.addr).ctx("DUP")?;
    truncate(&fd, page())?;
    let (a, b) = (src.addr + 2 * page(), got + 2 * page());
    check!(
        in_child_signal(|| {
            peek(a);
        }) == Some(Signal::SIGBUS),
        "original beyond EOF did not SIGBUS"
    );
    check!(
        in_child_signal(|| {
            peek(b);
        }) == Some(Signal::SIGBUS),
        "duplicate beyond EOF did not SIGBUS"
    );
    truncate(&fd, 4 * page())?;
    check!(
        peek(a) == 0 && peek(b) == 0,
        "page beyond the old EOF not zero after re-extension"
    );
    verify("page 0 kept via duplicate", got, 1, 7, 0)
}

fn same_protection() -> TestResult {
    require_dup()?;
    let fd = memfd(2 * page(), 0)?;
    let src = map(
        0,
        2 * page(),
        libc::PROT_READ,
        libc::MAP_SHARED,
        fd.as_raw_fd(),
        0,
    )
    .ctx("mmap")?;
    let res = reserve(2, true)?;
    let got = dup_fixed(src.addr, src.len, res.addr).ctx("DUP of a read-only mapping")?;
    let v = vma_at(got).ok_or_else(|| Failure::Fail("no VMA".into()))?;
    check!(v.perms == "r--s", "duplicate of r--s has perms {}", v.perms);
    check!(
        in_child_signal(|| poke(got, 1)) == Some(Signal::SIGSEGV),
        "write to read-only duplicate did not SIGSEGV"
    );
    // The fd is O_RDWR, so the maximum protection allows write, as for the original.
    // SAFETY: the duplicate is this test's mapping.
    let r = unsafe { libc::mprotect(got as *mut libc::c_void, 2 * page(), RW) };
    check!(r == 0, "mprotect(duplicate, RW) failed: {}", Errno::last());
    Ok(())
}

fn rdonly_fd_keeps_max_protection() -> TestResult {
    require_dup()?;
    let fd = memfd(2 * page(), 0)?;
    let ro =
        std::fs::File::open(format!("/proc/self/fd/{}", fd.as_raw_fd())).ctx("reopen O_RDONLY")?;
    let src = map(
        0,
        2 * page(),
        libc::PROT_READ,
        libc::MAP_SHARED,
        ro.as_raw_fd(),
        0,
    )
    .ctx("mmap O_RDONLY")?;
    let res = reserve(2, true)?;
    let got = dup_fixed(src.addr, src.len, res.addr).ctx("DUP")?;
    for (what, addr) in [("original", src.addr), ("duplicate", got)] {
        // SAFETY: these are this test's mappings.
        let r = unsafe { libc::mprotect(addr as *mut libc::c_void, 2 * page(), RW) };
        check!(
            r == -1 && Errno::last() == Errno::EACCES,
            "mprotect({what} of O_RDONLY fd, RW): got {r} / {}, expected EACCES",
            Errno::last()
        );
    }
    let rw = map(0, 2 * page(), RW, libc::MAP_SHARED, fd.as_raw_fd(), 0).ctx("mmap O_RDWR")?;
    poke(rw.addr, 0x5eed);
    check!(
        peek(got) == 0x5eed,
        "read-only duplicate does not see writes to the file"
    );
    Ok(())
}

const F_SEAL_WRITE: i32 = 0x0008;
const F_SEAL_FUTURE_WRITE: i32 = 0x0010;

fn add_seal(fd: &std::os::fd::OwnedFd, seal: i32) -> Result<(), Errno> {
    // SAFETY: fcntl on an open fd with integer arguments.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seal) };
    if r == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

fn future_write_seal_refuses_writable_dup() -> TestResult {
    require_dup()?;
    let (fd, src) = shared_memfd(2)?;
    add_seal(&fd, F_SEAL_FUTURE_WRITE).ctx("F_SEAL_FUTURE_WRITE")?;
    let res = reserve(2, true)?;
    let before = snapshot(&[(src.addr, src.len, true), (res.addr, res.len, false)]);
    expect_errno(
        "writable DUP of FUTURE_WRITE-sealed memfd",
        dup_fixed(src.addr, src.len, res.addr),
        Errno::EPERM,
    )?;
    check!(
        snapshot(&[(src.addr, src.len, true), (res.addr, res.len, false)]) == before,
        "source or destination changed"
    );
    Ok(())
}

fn future_write_seal_readonly_dup_not_maywrite() -> TestResult {
    require_dup()?;
    let fd = memfd(2 * page(), libc::MFD_ALLOW_SEALING)?;
    let src = map(
        0,
        2 * page(),
        libc::PROT_READ,
        libc::MAP_SHARED,
        fd.as_raw_fd(),
        0,
    )
    .ctx("mmap")?;
    add_seal(&fd, F_SEAL_FUTURE_WRITE).ctx("F_SEAL_FUTURE_WRITE")?;
    let res = reserve(2, true)?;
    let got = dup_fixed(src.addr, src.len, res.addr).ctx("read-only DUP of sealed memfd")?;
    // SAFETY: the duplicate is this test's mapping.
    let r = unsafe { libc::mprotect(got as *mut libc::c_void, 2 * page(), RW) };
    check!(
        r == -1 && Errno::last() == Errno::EACCES,
        "mprotect(read-only dup of sealed memfd, RW): got {r} / {}, expected EACCES",
        Errno::last()
    );
    Ok(())
}

fn seal_write_busy_while_dup_exists() -> TestResult {
    require_dup()?;
    let (fd, src) = shared_memfd(2)?;
    let res = reserve(2, true)?;
    let got = dup_fixed(src.addr, src.len, res.addr).ctx("DUP")?;
    drop(src);
    expect_errno(
        "F_SEAL_WRITE with a writable duplicate",
        add_seal(&fd, F_SEAL_WRITE),
        Errno::EBUSY,
    )?;
    // SAFETY: the duplicate is this test's mapping.
    unsafe { libc::munmap(got as *mut libc::c_void, 2 * page()) };
    res.forget();
    add_seal(&fd, F_SEAL_WRITE).ctx("F_SEAL_WRITE after both mappings are gone")?;
    Ok(())
}

fn mlock_not_inherited() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(4)?;
    // SAFETY: mlock of this test's mapping.
    check!(
        unsafe { libc::mlock(src.ptr().cast(), src.len) } == 0,
        "mlock: {}",
        Errno::last()
    );
    let res = reserve(4, true)?;
    let got = dup_fixed(src.addr, src.len, res.addr).ctx("DUP of mlock()ed mapping")?;
    check!(
        vm_flags_at(src.addr).iter().any(|f| f == "lo"),
        "source lost VM_LOCKED"
    );
    check!(
        !vm_flags_at(got).iter().any(|f| f == "lo"),
        "duplicate inherited VM_LOCKED: {:?}",
        vm_flags_at(got)
    );
    Ok(())
}

fn accounted_as_new_mapping() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(16)?;
    let kb = src.len / 1024;
    let before = status_kb("VmSize");
    let got = dup_raw(src.addr, src.len, src.len, F::DUP, 0).ctx("DUP anywhere")?;
    let _d = Mapping::adopt(got, src.len);
    let after = status_kb("VmSize");
    check!(
        after == before + kb,
        "VmSize {before} -> {after} kB after DUP anywhere of {kb} kB"
    );
    let res = reserve(16, true)?;
    let before = status_kb("VmSize");
    dup_fixed(src.addr, src.len, res.addr).ctx("DUP|FIXED over reservation")?;
    let after = status_kb("VmSize");
    check!(
        after == before,
        "VmSize {before} -> {after} kB after DUP over a same-size reservation"
    );
    Ok(())
}

fn rlimit_as_counts_only_new_pages() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(64)?;
    let res = reserve(64, true)?;
    let limit = (status_kb("VmSize") * 1024 + 8 * page()) as libc::rlim_t;
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct; this test runs in its own process.
    check!(
        unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) } == 0,
        "setrlimit: {}",
        Errno::last()
    );
    let before = snapshot(&[(src.addr, src.len, true)]);
    expect_errno(
        "DUP anywhere beyond RLIMIT_AS",
        dup_raw(src.addr, src.len, src.len, F::DUP, 0),
        Errno::ENOMEM,
    )?;
    check!(
        snapshot(&[(src.addr, src.len, true)]) == before,
        "source changed"
    );
    dup_fixed(src.addr, src.len, res.addr).ctx("DUP|FIXED over a reservation under RLIMIT_AS")?;
    Ok(())
}

/// Brings the mm to exactly `vm.max_map_count` VMAs, counted by the kernel:
/// mmap() refuses a new VMA only once `map_count > max_map_count`, so after
/// its first ENOMEM the mm holds `max + 1` VMAs, and unmapping one of them
/// leaves exactly `max`. The one-page mappings alternate their protection and
/// leave gaps so that none merges with another. Returns them (unmapped when
/// dropped).
fn fill_to_max_map_count(max: usize) -> Result<Vec<Mapping>, Failure> {
    let mut filler = Vec::new();
    let area = reserve(2 * max + 2, false)?;
    let base = area.addr;
    drop(area);
    for i in 0..=max {
        let prot = if i % 2 == 0 {
            libc::PROT_READ
        } else {
            libc::PROT_NONE
        };
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
        match map(base + 2 * i * page(), page(), prot, flags, -1, 0) {
            Ok(m) => filler.push(m),
            Err(Errno::ENOMEM) => {
                // map_count == max + 1: one VMA fewer is exactly the limit.
                check!(!filler.is_empty(), "mmap refused the first filler");
                filler.pop();
                return Ok(filler);
            }
            Err(e) => fail!("filler mmap {i}: {e}"),
        }
    }
    fail!(
        "{} mmap calls past vm.max_map_count = {max} never failed",
        max + 1
    )
}

/// vm.max_map_count is checked exactly, as split_vma() checks it: with the mm
/// at the limit, a DUP that adds a VMA fails with ENOMEM and changes nothing,
/// and a DUP|FIXED that replaces exactly one VMA (adding none) succeeds.
fn max_map_count_exact() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(2)?;
    fill(src.addr, 2, 7);
    // The destination: one PROT_NONE VMA between two gaps, replaced whole.
    let hole = reserve(4, true)?;
    let res = map(
        hole.addr + page(),
        2 * page(),
        libc::PROT_NONE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
        -1,
        0,
    )
    .map_err(|e| Failure::Fail(format!("destination: {e}")))?;
    // SAFETY: unmapping the two guard pages of this test's own reservation.
    unsafe {
        libc::munmap(hole.addr as *mut libc::c_void, page());
        libc::munmap((hole.addr + 3 * page()) as *mut libc::c_void, page());
    }
    hole.forget();
    // Headroom for the fillers only: maps_in() overcounts ([vsyscall]).
    let max = maps_in(0, usize::MAX).len() + 64;
    let before = snapshot(&[(src.addr, src.len, true), (res.addr, res.len, false)]);
    let (adding, after_adding, replacing) = {
        let _g = SysctlGuard::set("/proc/sys/vm/max_map_count", &max.to_string())?;
        let filler = fill_to_max_map_count(max)?;
        let adding = dup_raw(src.addr, src.len, src.len, F::DUP, 0);
        let after_adding = snapshot(&[(src.addr, src.len, true), (res.addr, res.len, false)]);
        let replacing = dup_fixed(src.addr, src.len, res.addr);
        drop(filler);
        (adding, after_adding, replacing)
    };
    expect_errno(
        "DUP adding a VMA at vm.max_map_count",
        adding,
        Errno::ENOMEM,
    )?;
    check!(
        after_adding == before,
        "the refused DUP changed source or destination"
    );
    let dup = replacing.ctx("DUP|FIXED replacing exactly one VMA at vm.max_map_count")?;
    check!(
        dup == res.addr,
        "duplicate at {dup:#x}, not {:#x}",
        res.addr
    );
    res.forget();
    let _dup = Mapping::adopt(dup, src.len);
    verify("duplicate made at the limit", dup, 2, 7, 0)?;
    Ok(())
}

fn hugetlb_memfd() -> TestResult {
    require_dup()?;
    let free = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("HugePages_Free:")?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    let _guard = if free < 2 {
        Some(SysctlGuard::set("/proc/sys/vm/nr_hugepages", "4")?)
    } else {
        None
    };
    let fd = memfd(2 * HUGE, libc::MFD_HUGETLB)?;
    let src =
        map(0, 2 * HUGE, RW, libc::MAP_SHARED, fd.as_raw_fd(), 0).ctx("mmap hugetlb memfd")?;
    // A huge-page-aligned reservation: over-reserve and pick an aligned address.
    let big = reserve(4 * HUGE / page(), true)?;
    let dst = huge_aligned(&big);
    let before = snapshot(&[(src.addr, src.len, false), (dst, 2 * HUGE, false)]);
    expect_errno(
        "hugetlb DUP of a base-page length",
        dup_fixed(src.addr, page(), dst),
        Errno::EINVAL,
    )?;
    expect_errno(
        "hugetlb DUP to a base-page-aligned address",
        dup_fixed(src.addr, HUGE, dst + page()),
        Errno::EINVAL,
    )?;
    expect_errno(
        "hugetlb DUP from a base-page offset",
        dup_fixed(src.addr + page(), HUGE, dst),
        Errno::EINVAL,
    )?;
    check!(
        snapshot(&[(src.addr, src.len, false), (dst, 2 * HUGE, false)]) == before,
        "source or destination changed"
    );
    let got = dup_fixed(src.addr, 2 * HUGE, dst).ctx("hugetlb DUP")?;
    shares("hugetlb", src.addr, got, 2 * HUGE / page())?;
    // A sub-range: the second huge page alone, at another aligned address.
    let big2 = reserve(2 * HUGE / page(), true)?;
    let dst2 = huge_aligned(&big2);
    let got2 = dup_fixed(src.addr + HUGE, HUGE, dst2).ctx("hugetlb DUP of the second huge page")?;
    verify(
        "second huge page via its own duplicate",
        got2,
        1,
        2,
        HUGE / page(),
    )
}

/// A DUP of pages with no entries allocates no page table for the duplicate,
/// even where the source's PTE table exists (for a touched neighbour in the
/// same 2 MiB): VmPTE does not grow, until the duplicate's first touch, which
/// shows that the count sees the PTE table the fault allocates.
fn unpopulated_range_gets_no_page_table() -> TestResult {
    require_dup()?;
    let fd = memfd(8 * page(), 0)?;
    // Source and destination each alone in a 2 MiB-aligned 2 MiB, below
    // 4 GiB: no page table maps either range yet.
    let big = reserve(3 * HUGE / page(), true)?;
    let src = huge_aligned(&big);
    let dst = src + HUGE;
    let m = map(
        src,
        8 * page(),
        RW,
        libc::MAP_SHARED | libc::MAP_FIXED,
        fd.as_raw_fd(),
        0,
    )
    .ctx("mmap memfd")?;
    m.forget();
    poke(src, 7);
    let before = (status_kb("VmPTE"), status_kb("VmPTE"));
    dup_fixed(src + 4 * page(), 4 * page(), dst).ctx("DUP of untouched pages")?;
    let after = status_kb("VmPTE");
    check!(
        after == before.1,
        "VmPTE {} -> {after} kB: a page table was allocated for a duplicate with nothing to copy",
        before.1
    );
    poke(dst, 9);
    check!(
        status_kb("VmPTE") >= after + 4,
        "VmPTE {after} -> {} kB after the duplicate's first touch, expected a PTE table more",
        status_kb("VmPTE")
    );
    check!(
        peek(src + 4 * page()) == 9,
        "write via the duplicate not seen via the source"
    );
    Ok(())
}

/// The device-dax device that boot.sh's soft-reserved range gives the guest
/// (device-dax's hmem driver, 2 MiB pages), mapped whole: two huge pages.
fn devdax_map() -> Result<(std::fs::File, Mapping), Failure> {
    const PATH: &str = "/dev/dax0.0";
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(PATH)
        .map_err(|e| {
            Failure::Fail(format!(
                "open {PATH}: {e} (the guest needs CONFIG_DEV_DAX_HMEM and boot.sh's memmap=...%...-1+0xefffffff)"
            ))
        })?;
    let m = map(0, 2 * HUGE, RW, libc::MAP_SHARED, f.as_raw_fd(), 0).ctx("mmap /dev/dax0.0")?;
    check!(
        smaps_at(m.addr).contains("KernelPageSize:     2048 kB"),
        "/dev/dax0.0 mapping has no 2 MiB pages:\n{}",
        smaps_at(m.addr)
    );
    Ok((f, m))
}

/// The first 2 MiB-aligned address inside the reservation `big`.
fn huge_aligned(big: &Mapping) -> usize {
    (big.addr + HUGE - 1) & !(HUGE - 1)
}

/// A device-dax mapping (2 MiB pages, not hugetlb) is duplicated whole at a
/// 2 MiB-aligned address below 4 GiB, and the two share writes both ways.
fn devdax_duplicated_huge_aligned() -> TestResult {
    require_dup()?;
    let (_f, src) = devdax_map()?;
    let big = reserve(3 * HUGE / page(), true)?;
    let got = dup_fixed(src.addr, src.len, huge_aligned(&big)).ctx("device-dax DUP")?;
    shares("device-dax", src.addr, got, src.len / page())?;
    check!(
        smaps_at(got).contains("KernelPageSize:     2048 kB"),
        "the device-dax duplicate has no 2 MiB pages"
    );
    Ok(())
}

/// A device-dax duplicate at an address that is page- but not 2 MiB-aligned
/// gives EINVAL, source and destination unchanged. device-dax's
/// get_unmapped_area() accepts any MAP_FIXED address (unlike hugetlbfs'), so
/// only MREMAP_DUP's own check of the VMA's page size refuses it: a duplicate
/// made there would SIGBUS on every fault (device-dax's check_vma()).
fn devdax_unaligned_address_refused() -> TestResult {
    require_dup()?;
    let (_f, src) = devdax_map()?;
    fill(src.addr, src.len / page(), 3);
    // Room for the aligned address's round-up and the largest offset.
    let big = reserve(4 * HUGE / page(), true)?;
    let dst = huge_aligned(&big);
    let ranges = [(src.addr, src.len, true), (dst, src.len + HUGE / 2, false)];
    let before = snapshot(&ranges);
    for off in [page(), HUGE / 2] {
        expect_errno(
            &format!("device-dax DUP to a 2 MiB-aligned address + {off:#x}"),
            dup_fixed(src.addr, src.len, dst + off),
            Errno::EINVAL,
        )?;
    }
    check!(snapshot(&ranges) == before, "source or destination changed");
    verify(
        "device-dax mapping after refused DUPs",
        src.addr,
        src.len / page(),
        3,
        0,
    )
}

/// The shared shape of every errno test: `call` must fail with `want` and
/// leave the source VMA (its maps lines and contents) and the destination
/// range as they were.
fn refused(
    case: &str,
    src: &Mapping,
    dst: &Mapping,
    want: Errno,
    call: impl FnOnce() -> Result<usize, Errno>,
) -> TestResult {
    let ranges = [(src.addr, src.len, true), (dst.addr, dst.len, false)];
    let before = snapshot(&ranges);
    expect_errno(case, call(), want)?;
    check!(
        snapshot(&ranges) == before,
        "{case}: source or destination changed"
    );
    Ok(())
}

/// After a refused call, a valid DUP of the same source still works.
fn still_dups(src: &Mapping) -> TestResult {
    let res = reserve(src.len / page(), true)?;
    let got = dup_fixed(src.addr, src.len, res.addr).ctx("valid DUP after the refused one")?;
    shares(
        "valid DUP after the refused one",
        src.addr,
        got,
        src.len / page(),
    )
}

/// One refused call: (case, old_address, old_len, new_len, flags, new_address).
type Row = (&'static str, usize, usize, usize, F, usize);

/// Table-driven errno check: every row must fail with `want` and leave the
/// source and the destination unchanged.
fn refused_rows(src: &Mapping, dst: &Mapping, want: Errno, rows: &[Row]) -> TestResult {
    for &(case, old, old_len, new_len, flags, new) in rows {
        refused(case, src, dst, want, || {
            dup_raw(old, old_len, new_len, flags, new)
        })?;
    }
    Ok(())
}

fn einval_resize() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(4)?;
    let dst = reserve(4, true)?;
    let (a, p, d) = (src.addr, page(), dst.addr);
    refused_rows(
        &src,
        &dst,
        Errno::EINVAL,
        &[
            ("old_len < new_len", a, 2 * p, 4 * p, F::DUP | F::FIXED, d),
            ("old_len > new_len", a, 4 * p, 2 * p, F::DUP | F::FIXED, d),
            ("old_len == 0", a, 0, 4 * p, F::DUP | F::FIXED, d),
            ("old_len == 0, anywhere", a, 0, 4 * p, F::DUP, 0),
        ],
    )?;
    still_dups(&src)
}

fn einval_with_dontunmap() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(2)?;
    let dst = reserve(2, true)?;
    let (a, l) = (src.addr, src.len);
    refused_rows(
        &src,
        &dst,
        Errno::EINVAL,
        &[
            (
                "DUP|DONTUNMAP|MAYMOVE",
                a,
                l,
                l,
                F::DUP | F::DONTUNMAP | F::MAYMOVE,
                0,
            ),
            (
                "DUP|DONTUNMAP|FIXED|MAYMOVE",
                a,
                l,
                l,
                F::DUP | F::DONTUNMAP | F::FIXED | F::MAYMOVE,
                dst.addr,
            ),
        ],
    )?;
    still_dups(&src)
}

fn einval_unknown_flag_still_refused() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(2)?;
    let dst = reserve(2, true)?;
    refused("DUP|0x10", &src, &dst, Errno::EINVAL, || {
        dup_raw(
            src.addr,
            src.len,
            src.len,
            F::DUP | F::from_bits_retain(0x10),
            0,
        )
    })?;
    still_dups(&src)
}

fn einval_unaligned_addresses() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(2)?;
    let dst = reserve(2, true)?;
    let (a, p, d, fl) = (src.addr, page(), dst.addr, F::DUP | F::FIXED);
    refused_rows(
        &src,
        &dst,
        Errno::EINVAL,
        &[
            ("unaligned old_address", a + 8, p, p, fl, d),
            ("unaligned new_address", a, 2 * p, 2 * p, fl, d + 8),
        ],
    )?;
    still_dups(&src)
}

/// TASK_SIZE on x86-64: the top page below 2^56 is mappable with 5-level
/// paging (TCG's `-cpu max` has LA57), else the top page below 2^47 is.
fn task_size() -> usize {
    let probe = (1usize << 56) - 2 * page();
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
    match map(probe, page(), libc::PROT_NONE, flags, -1, 0) {
        Ok(_m) => (1 << 56) - page(),
        Err(_) => (1 << 47) - page(),
    }
}

fn einval_new_address_beyond_task_size() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(2)?;
    let dst = reserve(2, true)?;
    let top = task_size();
    let call = |new| move || dup_raw(src.addr, src.len, src.len, F::DUP | F::FIXED, new);
    refused(
        "new_address at TASK_SIZE",
        &src,
        &dst,
        Errno::EINVAL,
        call(top),
    )?;
    refused(
        "new_address + len past TASK_SIZE",
        &src,
        &dst,
        Errno::EINVAL,
        call(top - page()),
    )?;
    refused(
        "new_address in the kernel half",
        &src,
        &dst,
        Errno::EINVAL,
        call(usize::MAX & !(page() - 1)),
    )?;
    still_dups(&src)
}

fn einval_destination_overlaps_source() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(8)?;
    let dst = reserve(2, true)?;
    let (a, p, fl) = (src.addr, page(), F::DUP | F::FIXED);
    refused_rows(
        &src,
        &dst,
        Errno::EINVAL,
        &[
            ("destination == source", a, 4 * p, 4 * p, fl, a),
            (
                "destination overlaps source range",
                a,
                4 * p,
                4 * p,
                fl,
                a + 2 * p,
            ),
            (
                "destination in the rest of the source VMA",
                a,
                2 * p,
                2 * p,
                fl,
                a + 5 * p,
            ),
            (
                "destination straddles the source VMA's end",
                a,
                2 * p,
                2 * p,
                fl,
                a + 7 * p,
            ),
        ],
    )?;
    still_dups(&src)
}

fn efault_unmapped_source() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(2)?;
    let dst = reserve(2, true)?;
    let hole = reserve(2, false)?;
    let hole_addr = hole.addr;
    drop(hole);
    refused("unmapped source", &src, &dst, Errno::EFAULT, || {
        dup_raw(
            hole_addr,
            2 * page(),
            2 * page(),
            F::DUP | F::FIXED,
            dst.addr,
        )
    })?;
    refused(
        "source runs past its VMA",
        &src,
        &dst,
        Errno::EFAULT,
        || {
            dup_raw(
                src.addr + page(),
                2 * page(),
                2 * page(),
                F::DUP | F::FIXED,
                dst.addr,
            )
        },
    )?;
    still_dups(&src)
}

fn efault_source_spans_two_vmas() -> TestResult {
    require_dup()?;
    let (fd1, src) = shared_memfd(2)?;
    let area = reserve(4, false)?;
    let fd2 = memfd(2 * page(), 0)?;
    let a = map(
        area.addr,
        2 * page(),
        RW,
        libc::MAP_SHARED | libc::MAP_FIXED,
        fd1.as_raw_fd(),
        0,
    )
    .ctx("map first")?;
    let b = map(
        area.addr + 2 * page(),
        2 * page(),
        RW,
        libc::MAP_SHARED | libc::MAP_FIXED,
        fd2.as_raw_fd(),
        0,
    )
    .ctx("map second")?;
    let whole = Mapping::adopt(area.addr, 4 * page());
    area.forget();
    a.forget();
    b.forget();
    let dst = reserve(4, true)?;
    refused("source spans two VMAs", &whole, &dst, Errno::EFAULT, || {
        dup_raw(
            whole.addr,
            4 * page(),
            4 * page(),
            F::DUP | F::FIXED,
            dst.addr,
        )
    })?;
    still_dups(&src)
}

fn einval_private_mappings() -> TestResult {
    require_dup()?;
    let dst = reserve(2, true)?;
    let anon = map(
        0,
        2 * page(),
        RW,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    )
    .ctx("private anon")?;
    fill(anon.addr, 2, 8);
    refused("MAP_PRIVATE anonymous", &anon, &dst, Errno::EINVAL, || {
        dup_raw(anon.addr, anon.len, anon.len, F::DUP | F::FIXED, dst.addr)
    })?;
    let fd = memfd(2 * page(), 0)?;
    let file = map(0, 2 * page(), RW, libc::MAP_PRIVATE, fd.as_raw_fd(), 0).ctx("private file")?;
    fill(file.addr, 1, 9);
    refused("MAP_PRIVATE file", &file, &dst, Errno::EINVAL, || {
        dup_raw(file.addr, file.len, file.len, F::DUP, 0)
    })?;
    let (_fd, src) = shared_memfd(2)?;
    still_dups(&src)
}

fn einval_dontfork() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(2)?;
    // SAFETY: madvise on this test's mapping.
    check!(
        unsafe { libc::madvise(src.ptr().cast(), src.len, libc::MADV_DONTFORK) } == 0,
        "MADV_DONTFORK: {}",
        Errno::last()
    );
    let dst = reserve(2, true)?;
    refused(
        "VM_DONTCOPY (MADV_DONTFORK)",
        &src,
        &dst,
        Errno::EINVAL,
        || dup_raw(src.addr, src.len, src.len, F::DUP | F::FIXED, dst.addr),
    )?;
    // SAFETY: as above.
    check!(
        unsafe { libc::madvise(src.ptr().cast(), src.len, libc::MADV_DOFORK) } == 0,
        "MADV_DOFORK: {}",
        Errno::last()
    );
    still_dups(&src)
}

fn guard_region_copied() -> TestResult {
    require_dup()?;
    const MADV_GUARD_INSTALL: i32 = 102;
    let (_fd, src) = shared_memfd(4)?;
    fill(src.addr, 4, 12);
    let guard = src.addr + page();
    // SAFETY: madvise on this test's mapping.
    let r = unsafe { libc::madvise(guard as *mut libc::c_void, page(), MADV_GUARD_INSTALL) };
    check!(
        r == 0,
        "MADV_GUARD_INSTALL on a shared memfd mapping: {}",
        Errno::last()
    );
    let dst = reserve(4, true)?;
    // Markers exist only in the page tables: they must be copied.
    let got = dup_fixed(src.addr, src.len, dst.addr).ctx("DUP of a mapping with a guard region")?;
    check!(
        in_child_signal(|| {
            peek(guard);
        }) == Some(Signal::SIGSEGV),
        "original's guard page no longer faults"
    );
    check!(
        in_child_signal(|| {
            peek(got + page());
        }) == Some(Signal::SIGSEGV),
        "duplicate's guard page does not fault"
    );
    verify("page 0 via duplicate", got, 1, 12, 0)?;
    verify("pages 2..4 via duplicate", got + 2 * page(), 2, 12, 2)
}

fn einval_mremap_hook_aio_ring() -> TestResult {
    require_dup()?;
    let mut ctx: libc::c_ulong = 0;
    // SAFETY: io_setup writes the context (the ring's address) to ctx.
    let r = unsafe { libc::syscall(libc::SYS_io_setup, 1, &mut ctx as *mut libc::c_ulong) };
    check!(r == 0, "io_setup: {}", Errno::last());
    let ring =
        vma_at(ctx as usize).ok_or_else(|| Failure::Fail("no VMA for the aio ring".into()))?;
    let len = ring.end - ring.start;
    let dst = reserve(len / page(), true)?;
    let before = snapshot(&[(ring.start, len, true), (dst.addr, dst.len, false)]);
    expect_errno(
        "aio ring (vm_ops->mremap)",
        dup_raw(ring.start, len, len, F::DUP | F::FIXED, dst.addr),
        Errno::EINVAL,
    )?;
    check!(
        snapshot(&[(ring.start, len, true), (dst.addr, dst.len, false)]) == before,
        "ring or destination changed"
    );
    // SAFETY: destroys the context created above.
    unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
    let (_fd, src) = shared_memfd(2)?;
    still_dups(&src)
}

fn einval_userfaultfd_registered() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(2)?;
    // Populate first: a missing-page fault in a registered range would wait
    // for a userfaultfd handler that this test does not run.
    fill(src.addr, 2, 10);
    // SAFETY: userfaultfd() takes flags only.
    let ufd =
        unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) } as i32;
    if ufd < 0 {
        return Err(Failure::Skip(format!(
            "userfaultfd unavailable: {}",
            Errno::last()
        )));
    }
    #[repr(C)]
    struct UffdioApi {
        api: u64,
        features: u64,
        ioctls: u64,
    }
    #[repr(C)]
    struct UffdioRegister {
        start: u64,
        len: u64,
        mode: u64,
        ioctls: u64,
    }
    let api_req = nix::request_code_readwrite!(0xAA, 0x3F, std::mem::size_of::<UffdioApi>());
    let reg_req = nix::request_code_readwrite!(0xAA, 0x00, std::mem::size_of::<UffdioRegister>());
    let mut api = UffdioApi {
        api: 0xAA,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: the ioctl reads and writes the struct passed.
    check!(
        unsafe { libc::ioctl(ufd, api_req as _, &mut api) } == 0,
        "UFFDIO_API: {}",
        Errno::last()
    );
    let mut reg = UffdioRegister {
        start: src.addr as u64,
        len: src.len as u64,
        mode: 1,
        ioctls: 0,
    };
    // SAFETY: as above.
    check!(
        unsafe { libc::ioctl(ufd, reg_req as _, &mut reg) } == 0,
        "UFFDIO_REGISTER: {}",
        Errno::last()
    );
    let dst = reserve(2, true)?;
    refused(
        "userfaultfd-registered source",
        &src,
        &dst,
        Errno::EINVAL,
        || dup_raw(src.addr, src.len, src.len, F::DUP | F::FIXED, dst.addr),
    )?;
    // SAFETY: closes the userfaultfd created above, unregistering the range.
    unsafe { libc::close(ufd) };
    still_dups(&src)
}

const SYS_MSEAL: libc::c_long = 462;

fn mseal(addr: usize, len: usize) -> TestResult {
    // SAFETY: mseal takes integers; the range is this test's.
    let r = unsafe { libc::syscall(SYS_MSEAL, addr, len, 0) };
    check!(r == 0, "mseal: {}", Errno::last());
    Ok(())
}

fn eperm_sealed_source() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(2)?;
    fill(src.addr, 2, 11);
    mseal(src.addr, src.len)?;
    let dst = reserve(2, true)?;
    refused("mseal()ed source", &src, &dst, Errno::EPERM, || {
        dup_raw(src.addr, src.len, src.len, F::DUP | F::FIXED, dst.addr)
    })?;
    src.forget();
    let (_fd2, other) = shared_memfd(2)?;
    still_dups(&other)
}

fn eperm_sealed_destination_no_split() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(3)?;
    // Destination: pages 1..4 of a reservation whose pages 2..4 are sealed,
    // so that the range starts inside an unsealed VMA.
    let area = reserve(4, true)?;
    // SAFETY: mprotect of this test's reservation, to make pages 2..4 a VMA of their own.
    check!(
        unsafe {
            libc::mprotect(
                (area.addr + 2 * page()) as *mut libc::c_void,
                2 * page(),
                libc::PROT_READ,
            )
        } == 0,
        "mprotect: {}",
        Errno::last()
    );
    mseal(area.addr + 2 * page(), 2 * page())?;
    let dst = Mapping::adopt(area.addr, 4 * page());
    area.forget();
    refused("sealed destination", &src, &dst, Errno::EPERM, || {
        dup_raw(
            src.addr,
            src.len,
            src.len,
            F::DUP | F::FIXED,
            dst.addr + page(),
        )
    })?;
    dst.forget();
    still_dups(&src)
}

fn detection_recipe() -> TestResult {
    let page = page();
    let hole = reserve(1, false)?;
    let addr = hole.addr;
    drop(hole);
    expect_errno(
        "DUP of an unmapped, aligned address (detection recipe)",
        dup_raw(addr, page, page, F::DUP, 0),
        Errno::EFAULT,
    )?;
    check!(mremap_dup::is_supported(), "is_supported() says no");
    Ok(())
}

/// The tests of this module.
/// Sets RLIMIT_AS (soft limit) to `bytes`.
fn set_rlimit_as(bytes: usize) -> TestResult {
    let rl = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct; each test runs in its own process.
    check!(
        unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) } == 0,
        "setrlimit: {}",
        Errno::last()
    );
    Ok(())
}

/// RLIMIT_AS counts only the pages a DUP|FIXED adds: over a destination of
/// which half is mapped, a limit with room for exactly the other half lets it
/// through, one page less refuses it (ENOMEM, nothing changed).
fn rlimit_as_partially_mapped_destination() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(8)?;
    let res = reserve(8, true)?;
    // Unmap the second half: 4 of the 8 destination pages are mapped.
    // SAFETY: unmapping part of this test's own reservation.
    check!(
        unsafe { libc::munmap((res.addr + 4 * page()) as *mut libc::c_void, 4 * page()) } == 0,
        "munmap: {}",
        Errno::last()
    );
    let vm = status_kb("VmSize") * 1024;
    set_rlimit_as(vm + 4 * page() - page())?;
    let before = snapshot(&[(src.addr, src.len, true), (res.addr, src.len, false)]);
    expect_errno(
        "DUP|FIXED one page beyond RLIMIT_AS",
        dup_fixed(src.addr, src.len, res.addr),
        Errno::ENOMEM,
    )?;
    check!(
        snapshot(&[(src.addr, src.len, true), (res.addr, src.len, false)]) == before,
        "the refused DUP changed source or destination"
    );
    set_rlimit_as(vm + 4 * page())?;
    let dup = dup_fixed(src.addr, src.len, res.addr).ctx("DUP|FIXED exactly at RLIMIT_AS")?;
    res.forget();
    let _dup = Mapping::adopt(dup, src.len);
    check!(
        status_kb("VmSize") * 1024 == vm + 4 * page(),
        "VmSize {} kB, want {} kB",
        status_kb("VmSize"),
        (vm + 4 * page()) / 1024
    );
    shares("duplicate at RLIMIT_AS", src.addr, dup, 8)
}

/// A DUP|FIXED over a populated destination made of several VMAs, starting
/// inside the first and ending inside the last: what lies outside the
/// destination keeps its mapping and contents, the rest is the duplicate.
fn fixed_over_several_populated_vmas() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(6)?;
    fill(src.addr, 6, 11);
    // Three populated VMAs of 4 pages, told apart by their protections.
    let area = map(
        0,
        12 * page(),
        RW,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    )
    .ctx("destination area")?;
    fill(area.addr, 12, 12);
    // SAFETY: changing the protection of this test's own mapping.
    check!(
        unsafe {
            libc::mprotect(
                (area.addr + 4 * page()) as *mut libc::c_void,
                4 * page(),
                libc::PROT_READ,
            )
        } == 0,
        "mprotect: {}",
        Errno::last()
    );
    check!(maps_in(area.addr, area.end()).len() == 3, "not three VMAs");
    // Pages 3..9 of the area: the last page of the first VMA, the whole
    // second, the first page of the third.
    let dst = area.addr + 3 * page();
    let dup = dup_fixed(src.addr, src.len, dst).ctx("DUP|FIXED over three VMAs")?;
    check!(dup == dst, "duplicate at {dup:#x}, not {dst:#x}");
    verify("pages before the destination", area.addr, 3, 12, 0)?;
    verify(
        "pages after the destination",
        area.addr + 9 * page(),
        3,
        12,
        9,
    )?;
    verify("the duplicate", dup, 6, 11, 0)?;
    let lines = maps_in(area.addr, area.end());
    check!(
        lines.len() == 3,
        "want the first VMA's head, the duplicate, the third's tail: {lines:?}"
    );
    let v = vma_at(dup).ok_or("no VMA at the duplicate").ctx("maps")?;
    check!(
        v.start == dup && v.end == dup + 6 * page() && v.perms.starts_with("rw-s"),
        "duplicate VMA {v:?}"
    );
    shares("duplicate over three VMAs", src.addr, dup, 6)
}

/// The duplicate counts in total_vm (VmSize) as a new mapping: a DUP anywhere
/// adds its size, a DUP|FIXED over a reservation of the same size adds none.
fn total_vm_accounting() -> TestResult {
    require_dup()?;
    let (_fd, src) = shared_memfd(16)?;
    let res = reserve(16, true)?;
    let before = status_kb("VmSize");
    let any = dup_raw(src.addr, src.len, src.len, F::DUP, 0).ctx("DUP anywhere")?;
    let _any = Mapping::adopt(any, src.len);
    let after_any = status_kb("VmSize");
    check!(
        after_any == before + src.len / 1024,
        "VmSize {before} -> {after_any} kB after a DUP of {} kB",
        src.len / 1024
    );
    let fixed = dup_fixed(src.addr, src.len, res.addr).ctx("DUP|FIXED")?;
    res.forget();
    let _fixed = Mapping::adopt(fixed, src.len);
    check!(
        status_kb("VmSize") == after_any,
        "VmSize {after_any} -> {} kB after a DUP|FIXED replacing as much",
        status_kb("VmSize")
    );
    Ok(())
}

/// The duplicate may merge with a compatible neighbour: a duplicate of the
/// first pages of a file mapping, placed right before a mapping of the pages
/// that follow them in the file, becomes one VMA with it.
fn merges_with_compatible_neighbour() -> TestResult {
    require_dup()?;
    let (fd, src) = shared_memfd(4)?;
    fill(src.addr, 4, 13);
    let area = reserve(8, false)?;
    let next = map(
        area.addr + 2 * page(),
        2 * page(),
        RW,
        libc::MAP_SHARED | libc::MAP_FIXED,
        fd.as_raw_fd(),
        2 * page(),
    )
    .ctx("neighbour")?;
    let dup = dup_fixed(src.addr, 2 * page(), area.addr).ctx("DUP|FIXED before the neighbour")?;
    check!(dup == area.addr, "duplicate at {dup:#x}");
    let v = vma_at(dup).ok_or("no VMA at the duplicate").ctx("maps")?;
    check!(
        v.start == dup && v.end == next.end() && v.offset == 0,
        "duplicate and neighbour not one VMA: {v:?}"
    );
    next.forget();
    verify("merged duplicate", dup, 4, 13, 0)?;
    shares("merged duplicate", src.addr, dup, 4)
}

/// A MAP_SHARED file on a page-cache filesystem (ext4 on a loop device), not
/// only tmpfs: the duplicate sees and makes the file's writes, and what was
/// written through it reaches the file (read(2) after msync).
fn ext4_file_mapping() -> TestResult {
    require_dup()?;
    let fs = crate::ext4::Ext4::mount("ext4").ctx("ext4 on a loop device")?;
    let result = (|| -> TestResult {
        use std::io::Read;
        use std::os::unix::fs::FileExt;
        let path = fs.path("file");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .ctx("create file")?;
        file.set_len((4 * page()) as u64).ctx("file size")?;
        let m = map(0, 4 * page(), RW, libc::MAP_SHARED, file.as_raw_fd(), 0).ctx("mmap")?;
        fill(m.addr, 4, 14);
        let res = reserve(4, true)?;
        let dup = dup_fixed(m.addr, m.len, res.addr).ctx("DUP|FIXED of an ext4 file")?;
        res.forget();
        let _dup = Mapping::adopt(dup, m.len);
        verify("ext4 duplicate", dup, 4, 14, 0)?;
        fill(dup, 4, 15);
        // SAFETY: msync of this test's own mapping.
        check!(
            unsafe { libc::msync(dup as *mut libc::c_void, m.len, libc::MS_SYNC) } == 0,
            "msync: {}",
            Errno::last()
        );
        let mut word = [0u8; 8];
        file.read_exact_at(&mut word, 0).ctx("pread")?;
        check!(
            u64::from_ne_bytes(word) == peek(m.addr),
            "the file does not hold what was written through the duplicate"
        );
        let mut rest = Vec::new();
        (&file).read_to_end(&mut rest).ctx("read")?;
        check!(rest.len() == 4 * page(), "file length {}", rest.len());
        shares("ext4 duplicate", m.addr, dup, 4)
    })();
    let umount = fs.unmount().ctx("umount");
    result.and(umount)
}

pub const TESTS: &[Test] = crate::tests![
    detection_recipe,
    memfd_fixed_below_4g,
    placement_anywhere_ignores_new_addr,
    placement_anywhere_with_maymove,
    placement_fixed_with_maymove,
    safe_api_dup_fixed_and_anywhere,
    shared_anonymous,
    tmpfs_file,
    subrange_maps_matching_offset,
    original_left_intact,
    dup_of_dup,
    survives_close_and_unmap_of_original,
    fork_shares_both,
    truncate_zaps_both,
    same_protection,
    rdonly_fd_keeps_max_protection,
    future_write_seal_refuses_writable_dup,
    future_write_seal_readonly_dup_not_maywrite,
    seal_write_busy_while_dup_exists,
    mlock_not_inherited,
    accounted_as_new_mapping,
    rlimit_as_counts_only_new_pages,
    max_map_count_exact,
    hugetlb_memfd,
    devdax_duplicated_huge_aligned,
    unpopulated_range_gets_no_page_table,
    devdax_unaligned_address_refused,
    einval_resize,
    einval_with_dontunmap,
    einval_unknown_flag_still_refused,
    einval_unaligned_addresses,
    einval_new_address_beyond_task_size,
    einval_destination_overlaps_source,
    efault_unmapped_source,
    efault_source_spans_two_vmas,
    einval_private_mappings,
    einval_dontfork,
    guard_region_copied,
    einval_mremap_hook_aio_ring,
    einval_userfaultfd_registered,
    eperm_sealed_source,
    eperm_sealed_destination_no_split,
    rlimit_as_partially_mapped_destination,
    fixed_over_several_populated_vmas,
    total_vm_accounting,
    merges_with_compatible_neighbour,
    ext4_file_mapping,
];
