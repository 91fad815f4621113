// SPDX-License-Identifier: GPL-2.0

//! Tests of the `mremap-dup` crate's [`dup_range`] helper (what a WoW64
//! layer calls) and of the examples in its documentation, run in the guest.
//!
//! Usage: `mremap-dup-helper-tests [NAME-SUBSTRING...]`. Prints KTAP; on a
//! kernel without `MREMAP_DUP` every test skips and says why. The exit
//! status is 1 if any test failed.

mod card;
#[allow(dead_code)]
mod harness;
#[allow(dead_code)]
mod util;
mod vgem;

// The JIT example of the crate, run as a test.
#[allow(dead_code)]
#[path = "../../crates/mremap-dup/examples/jit.rs"]
mod jit;

use core::ffi::c_void;
use core::ptr::NonNull;
use std::os::fd::AsRawFd;

use nix::errno::Errno;

use harness::{Context, Failure, TestResult};
use mremap_dup::{dup_range, dup_range_flags, DupRangeFlags, RangePlacement, Reservation};
use util::{
    expect_errno, fill, map, maps_in, memfd, page, peek, poke, require_dup, reserve, shared_memfd,
    verify, Mapping, RW,
};

const FOUR_GIB: usize = 1 << 32;

fn nn(addr: usize) -> NonNull<c_void> {
    NonNull::new(addr as *mut c_void).expect("null address")
}

fn addr_of(p: NonNull<c_void>) -> usize {
    p.as_ptr() as usize
}

/// A write through each of `orig` and `dup` (the same byte of the memory,
/// 16 bytes writable) is read back through the other.
fn shared_both_ways(what: &str, orig: usize, dup: usize) -> TestResult {
    poke(orig, 0x1111_2222_3333_4444);
    check!(
        peek(dup) == 0x1111_2222_3333_4444,
        "{what}: write via original not seen via duplicate"
    );
    poke(dup + 8, 0x5555_6666_7777_8888);
    check!(
        peek(orig + 8) == 0x5555_6666_7777_8888,
        "{what}: write via duplicate not seen via original"
    );
    Ok(())
}

/// The whole of /proc/self/maps (read twice first, so that the reads'
/// own allocations are in place).
fn all_maps() -> Vec<String> {
    maps_in(0, usize::MAX);
    maps_in(0, usize::MAX);
    maps_in(0, usize::MAX)
}

fn memfd_part_of_larger_mapping() -> TestResult {
    require_dup()?;
    let (_fd, m) = shared_memfd(16)?;
    fill(m.addr, 16, 7);
    let ptr = m.addr + 5 * page() + 128;
    let d = dup_range(nn(ptr), 2 * page(), RangePlacement::Anywhere).ctx("dup_range")?;
    check!(!d.is_whole_mapping(), "a memfd part was duplicated whole");
    check!(
        d.size() == 3 * page(),
        "duplicated {} bytes, expected the 3 pages holding the range",
        d.size()
    );
    check!(
        addr_of(d.as_ptr()) - addr_of(d.base()) == 128,
        "pointer at the wrong offset of the duplicate"
    );
    verify("the duplicate's pages", addr_of(d.base()), 3, 7, 5)?;
    let vma =
        util::vma_at(addr_of(d.base())).ok_or(Failure::Fail("duplicate not mapped".into()))?;
    check!(
        vma.offset == 5 * page(),
        "duplicate at file offset {:#x}, expected page 5",
        vma.offset
    );
    shared_both_ways("memfd part", ptr, addr_of(d.as_ptr()))
}

fn vgem_middle_gives_whole_mapping() -> TestResult {
    require_dup()?;
    let bo = vgem::VgemBo::new(256, 256).map_err(Failure::Fail)?;
    let off = bo.len / 2 + 64;
    let d = dup_range(nn(bo.addr + off), 16, RangePlacement::Anywhere).ctx("dup_range")?;
    check!(d.is_whole_mapping(), "a part of a DRM BO was duplicated");
    check!(
        d.size() == bo.len,
        "duplicated {} bytes of a {}-byte BO",
        d.size(),
        bo.len
    );
    check!(
        addr_of(d.as_ptr()) - addr_of(d.base()) == off,
        "pointer at the wrong offset of the duplicate"
    );
    shared_both_ways("vgem BO", bo.addr + off, addr_of(d.as_ptr()))
}

fn vgem_part_refused_with_no_whole() -> TestResult {
    require_dup()?;
    let bo = vgem::VgemBo::new(256, 256).map_err(Failure::Fail)?;
    let res = dup_range_flags(
        nn(bo.addr + page()),
        16,
        RangePlacement::Anywhere,
        DupRangeFlags::NO_WHOLE,
    );
    expect_errno("NO_WHOLE on a part of a DRM BO", res, Errno::EINVAL)
}

fn whole_flag_duplicates_the_whole_mapping() -> TestResult {
    require_dup()?;
    let (_fd, m) = shared_memfd(8)?;
    let ptr = m.addr + 3 * page();
    let d = dup_range_flags(nn(ptr), 8, RangePlacement::Anywhere, DupRangeFlags::WHOLE)
        .ctx("dup_range_flags(WHOLE)")?;
    check!(
        d.is_whole_mapping() && d.size() == m.len,
        "WHOLE duplicated {:#x} bytes",
        d.size()
    );
    check!(
        addr_of(d.as_ptr()) - addr_of(d.base()) == 3 * page(),
        "pointer at the wrong offset"
    );
    let both = DupRangeFlags::WHOLE | DupRangeFlags::NO_WHOLE;
    let res = dup_range_flags(nn(ptr), 8, RangePlacement::Anywhere, both);
    expect_errno("WHOLE | NO_WHOLE", res, Errno::EINVAL)
}

fn memfd_below_4gib() -> TestResult {
    require_dup()?;
    let (_fd, m) = shared_memfd(8)?;
    check!(m.addr >= FOUR_GIB, "the memfd was mapped low already");
    let ptr = m.addr + 3 * page() + 256;
    let d = dup_range(nn(ptr), 64, RangePlacement::Below(FOUR_GIB)).ctx("dup_range below 4 GiB")?;
    check!(
        addr_of(d.base()) + d.size() <= FOUR_GIB,
        "duplicate at {:p} not below 4 GiB",
        d.base()
    );
    shared_both_ways("memfd below 4 GiB", ptr, addr_of(d.as_ptr()))
}

fn vgem_below_4gib() -> TestResult {
    require_dup()?;
    let bo = vgem::VgemBo::new(256, 256).map_err(Failure::Fail)?;
    let off = 17 * page() + 512;
    let d = dup_range(nn(bo.addr + off), 4096, RangePlacement::Below(FOUR_GIB))
        .ctx("dup_range below 4 GiB")?;
    check!(
        addr_of(d.base()) + d.size() <= FOUR_GIB,
        "duplicate at {:p} not below 4 GiB",
        d.base()
    );
    check!(
        addr_of(d.as_ptr()) - addr_of(d.base()) == off,
        "pointer at the wrong offset of the duplicate"
    );
    shared_both_ways("vgem BO below 4 GiB", bo.addr + off, addr_of(d.as_ptr()))
}

/// A reservation of `pages` pages below 4 GiB, as a WoW64 layer keeps.
fn wow64_reservation(pages: usize) -> Result<(Mapping, Reservation), Failure> {
    let m = reserve(pages, true)?;
    // SAFETY: the reservation was just made and only this test uses it.
    let res = unsafe { Reservation::new(nn(m.addr), m.len) };
    Ok((m, res))
}

fn reservation_first_fit() -> TestResult {
    require_dup()?;
    let (_fd, m) = shared_memfd(8)?;
    let (r, res) = wow64_reservation(32)?;
    let place = RangePlacement::InReservation(res);
    let d1 = dup_range(nn(m.addr), 2 * page(), place).ctx("first dup_range")?;
    check!(
        addr_of(d1.base()) == r.addr,
        "first duplicate not at the reservation's start"
    );
    let d2 = dup_range(nn(m.addr + 4 * page()), page(), place).ctx("second dup_range")?;
    check!(
        addr_of(d2.base()) == r.addr + 2 * page(),
        "second duplicate not right after the first"
    );
    shared_both_ways(
        "in a reservation",
        m.addr + 4 * page(),
        addr_of(d2.as_ptr()),
    )?;
    drop(d1);
    let d3 = dup_range(nn(m.addr), page(), place).ctx("third dup_range")?;
    check!(
        addr_of(d3.base()) == r.addr,
        "the released part was not reused"
    );
    let big = dup_range(
        nn(m.addr),
        8 * page(),
        RangePlacement::InReservation(unsafe { Reservation::new(nn(r.addr), 4 * page()) }),
    );
    expect_errno("a duplicate larger than the free part", big, Errno::ENOMEM)
}

fn reservation_exact_address() -> TestResult {
    require_dup()?;
    let (_fd, m) = shared_memfd(4)?;
    let (r, res) = wow64_reservation(16)?;
    let at = |a: usize| RangePlacement::AtInReservation(res, nn(a));
    let d = dup_range(nn(m.addr + page()), page(), at(r.addr + 8 * page()))
        .ctx("dup_range at an address")?;
    check!(
        addr_of(d.base()) == r.addr + 8 * page(),
        "duplicate not at the given address"
    );
    shared_both_ways("at an address", m.addr + page(), addr_of(d.as_ptr()))?;
    let again = dup_range(nn(m.addr), page(), at(r.addr + 8 * page()));
    expect_errno(
        "an address already holding a duplicate",
        again,
        Errno::EEXIST,
    )?;
    let unaligned = dup_range(nn(m.addr), page(), at(r.addr + 100));
    expect_errno("an unaligned address", unaligned, Errno::EINVAL)?;
    let beyond = dup_range(nn(m.addr), 2 * page(), at(r.addr + 15 * page()));
    expect_errno(
        "a duplicate ending beyond the reservation",
        beyond,
        Errno::ENOMEM,
    )
}

fn reservation_release_restores_prot_none() -> TestResult {
    require_dup()?;
    let (_fd, m) = shared_memfd(4)?;
    let (r, res) = wow64_reservation(16)?;
    let before = maps_in(r.addr, r.end());
    let d =
        dup_range(nn(m.addr), 2 * page(), RangePlacement::InReservation(res)).ctx("dup_range")?;
    check!(
        maps_in(r.addr, r.end()) != before,
        "the duplicate is not in the reservation's maps"
    );
    drop(d);
    let after = maps_in(r.addr, r.end());
    check!(
        after == before,
        "reservation after release:\n{}\nbefore:\n{}",
        after.join("\n"),
        before.join("\n")
    );
    Ok(())
}

fn release_unmaps_exactly_the_duplicate() -> TestResult {
    require_dup()?;
    let (_fd, m) = shared_memfd(4)?;
    let before = all_maps();
    let d = dup_range(nn(m.addr + page()), 8, RangePlacement::Below(FOUR_GIB)).ctx("dup_range")?;
    let (base, size) = (addr_of(d.base()), d.size());
    let during = all_maps();
    let added: Vec<_> = during.iter().filter(|l| !before.contains(l)).collect();
    check!(
        added.len() == 1,
        "the duplicate added {} maps lines: {added:?}",
        added.len()
    );
    check!(
        added[0].starts_with(&format!("{base:x}-{:x} ", base + size)),
        "maps line {} is not the duplicate {base:#x}+{size:#x}",
        added[0]
    );
    drop(d);
    let after = all_maps();
    check!(
        after == before,
        "maps after the release:\n{}\nbefore:\n{}",
        after.join("\n"),
        before.join("\n")
    );
    Ok(())
}

fn unmapped_pointer_efault() -> TestResult {
    require_dup()?;
    let m = map(0, page(), RW, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0).ctx("mmap")?;
    let addr = m.addr;
    drop(m);
    expect_errno(
        "an unmapped pointer",
        dup_range(nn(addr), 8, RangePlacement::Anywhere),
        Errno::EFAULT,
    )
}

fn private_mapping_einval() -> TestResult {
    require_dup()?;
    let m = map(
        0,
        2 * page(),
        RW,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    )
    .ctx("mmap")?;
    let res = dup_range(nn(m.addr + 8), 8, RangePlacement::Below(FOUR_GIB));
    expect_errno("a private mapping", res, Errno::EINVAL)
}

fn range_over_two_mappings_efault() -> TestResult {
    require_dup()?;
    let r = reserve(4, false)?;
    let (a, b) = (memfd(2 * page(), 0)?, memfd(2 * page(), 0)?);
    let fixed = libc::MAP_SHARED | libc::MAP_FIXED;
    map(r.addr, 2 * page(), RW, fixed, a.as_raw_fd(), 0)
        .ctx("mmap first memfd")?
        .forget();
    map(r.addr + 2 * page(), 2 * page(), RW, fixed, b.as_raw_fd(), 0)
        .ctx("mmap second memfd")?
        .forget();
    let res = dup_range(nn(r.addr + page()), 2 * page(), RangePlacement::Anywhere);
    expect_errno("a range over two mappings", res, Errno::EFAULT)
}

fn hugetlb_part_huge_aligned() -> TestResult {
    require_dup()?;
    const HUGE: usize = 2 << 20;
    let nr: usize = std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let _more = if nr < 4 {
        Some(util::SysctlGuard::set("/proc/sys/vm/nr_hugepages", "4")?)
    } else {
        None
    };
    let fd = memfd(3 * HUGE, libc::MFD_HUGETLB)?;
    let src =
        map(0, 3 * HUGE, RW, libc::MAP_SHARED, fd.as_raw_fd(), 0).ctx("mmap of a hugetlb memfd")?;
    let ptr = src.addr + HUGE + 3 * page();
    let d = dup_range(nn(ptr), 64, RangePlacement::Below(FOUR_GIB))
        .ctx("dup_range of a hugetlb part")?;
    check!(
        d.size() == HUGE,
        "duplicated {:#x} bytes, expected one huge page",
        d.size()
    );
    check!(
        addr_of(d.base()) % HUGE == 0,
        "duplicate at {:p}, not huge-page aligned",
        d.base()
    );
    check!(
        addr_of(d.as_ptr()) - addr_of(d.base()) == 3 * page(),
        "pointer at the wrong offset"
    );
    shared_both_ways("hugetlb part", ptr, addr_of(d.as_ptr()))
}

fn is_supported_leaves_no_mapping() -> TestResult {
    let before = all_maps();
    let supported = mremap_dup::is_supported();
    let after = all_maps();
    check!(
        after == before,
        "the detection left maps behind:\n{}",
        after.join("\n")
    );
    check!(
        mremap_dup::is_supported() == supported,
        "a second call answered otherwise"
    );
    require_dup()
}

fn jit_write_xor_execute() -> TestResult {
    require_dup()?;
    let got = jit::run(42, 0x1234_5678).map_err(Failure::Fail)?;
    check!(
        got == (42, 0x1234_5678),
        "the generated code returned {got:?}"
    );
    Ok(())
}

/// The examples of the crate's documentation, as written there (pointer,
/// reservation and fallback replaced by real ones).
fn doc_example_dup_range() -> TestResult {
    require_dup()?;
    let bo = vgem::VgemBo::new(64, 64).map_err(Failure::Fail)?;
    let driver_pointer = || nn(bo.addr + page());
    // dup_range's example.
    let ptr: NonNull<c_void> = driver_pointer();
    let low = dup_range(ptr, 4096, RangePlacement::Below(1 << 32)).ctx("dup_range example")?;
    check!(
        (low.as_ptr().as_ptr() as usize) < 1 << 32,
        "not below 4 GiB"
    );
    drop(low);
    // dup_range_flags's example.
    let (r, _) = wow64_reservation(64)?;
    let (base, size) = (nn(r.addr), r.len);
    // SAFETY: the reservation is ours and only this thread places into it.
    let res = unsafe { Reservation::new(base, size) };
    let dup = dup_range_flags(
        driver_pointer(),
        64,
        RangePlacement::InReservation(res),
        DupRangeFlags::empty(),
    )
    .ctx("dup_range_flags example")?;
    let start = base.as_ptr() as usize;
    check!(
        (start..start + size).contains(&(dup.as_ptr().as_ptr() as usize)),
        "not in the reservation"
    );
    drop(dup);
    // is_supported's example has no effect to check beyond is_supported().
    check!(mremap_dup::is_supported(), "is_supported() example");
    Ok(())
}

fn main() {
    let filters: Vec<String> = std::env::args().skip(1).collect();
    let tests: &[harness::Test] = tests![
        memfd_part_of_larger_mapping,
        vgem_middle_gives_whole_mapping,
        vgem_part_refused_with_no_whole,
        whole_flag_duplicates_the_whole_mapping,
        memfd_below_4gib,
        vgem_below_4gib,
        reservation_first_fit,
        reservation_exact_address,
        reservation_release_restores_prot_none,
        release_unmaps_exactly_the_duplicate,
        unmapped_pointer_efault,
        private_mapping_einval,
        range_over_two_mappings_efault,
        hugetlb_part_huge_aligned,
        is_supported_leaves_no_mapping,
        jit_write_xor_execute,
        doc_example_dup_range,
    ];
    let tests: Vec<&harness::Test> = tests.iter().collect();
    let failed = harness::run(&tests, &filters);
    std::process::exit(i32::from(failed > 0));
}
