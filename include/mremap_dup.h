/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * mremap_dup.h: duplicate the memory behind a pointer with mremap(2)
 * MREMAP_DUP, header-only, for C (the Rust crate crates/mremap-dup is the
 * same helper). Needs only the C library and the Linux uapi headers.
 *
 *   struct mremap_dup_mapping dup;
 *   struct mremap_dup_placement below = {
 *       .where = MREMAP_DUP_BELOW, .limit = (uintptr_t)1 << 32 };
 *   if (mremap_dup_range(ptr, len, &below, 0, &dup) == 0) {
 *       ... dup.ptr is ptr's byte, below 4 GiB, shared both ways ...
 *       mremap_dup_release(&dup);
 *   }
 *
 * mremap_dup_range() finds the mapping holding [ptr, ptr + len) with the
 * PROCMAP_QUERY ioctl of /proc/self/maps (Linux 6.11+). The kernel
 * duplicates any page-aligned part of a mapping of a regular file (page
 * cache, shmem/memfd, MAP_SHARED | MAP_ANONYMOUS; hugetlbfs at huge page
 * alignment) but other shared mappings (DRM buffer objects, device memory)
 * only whole, unless their driver declared that its faults follow the file
 * offset: a part of those gives EINVAL. So it duplicates first the range
 * rounded out to the mapping's page size (its huge page size for hugetlb,
 * as PROCMAP_QUERY reports it) and, if the kernel refuses that with
 * EINVAL, the whole mapping. MREMAP_DUP_WHOLE and MREMAP_DUP_NO_WHOLE skip
 * either step.
 *
 * Placement (struct mremap_dup_placement, NULL for MREMAP_DUP_ANYWHERE):
 *   MREMAP_DUP_ANYWHERE          where the kernel picks;
 *   MREMAP_DUP_BELOW             entirely below .limit, in the highest free
 *                                hole (taken with MAP_FIXED_NOREPLACE first,
 *                                so another thread's mapping is never
 *                                replaced; a few retries, then EAGAIN; no
 *                                hole: ENOMEM);
 *   MREMAP_DUP_IN_RESERVATION    in the lowest free part of the caller's
 *                                PROT_NONE reservation [.base, .base + .size)
 *                                (no room: ENOMEM);
 *   MREMAP_DUP_AT_IN_RESERVATION the duplicated range starting exactly at
 *                                .at in that reservation (unaligned: EINVAL;
 *                                not fitting: ENOMEM; not all free: EEXIST).
 * The free parts of a reservation are its private anonymous PROT_NONE
 * mappings; the caller owns it and serializes the calls placing into it.
 * Make it with mmap(PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE):
 * mremap_dup_release() puts such a mapping back over a duplicate placed in
 * it, which merges with its neighbours again, and unmaps any other.
 *
 * Needs _GNU_SOURCE or _DEFAULT_SOURCE (the default of gcc's and clang's
 * gnu dialects) for MAP_ANONYMOUS and syscall().
 *
 * Errors (return -1, errno): EFAULT, the range is not mapped or not within
 * one mapping; EINVAL, len is 0, the mapping is private, or the kernel
 * refuses (a kernel without MREMAP_DUP: see mremap_dup_is_supported());
 * ENOTTY, no PROCMAP_QUERY; the placement's; those of mremap(2).
 */
#ifndef MREMAP_DUP_H
#define MREMAP_DUP_H

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
#include <linux/ioctl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#ifndef MREMAP_FIXED
#define MREMAP_FIXED 2
#endif
#ifndef MREMAP_DUP
#define MREMAP_DUP 8
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

/* Flags of mremap_dup_range(). */
#define MREMAP_DUP_WHOLE 0x1u    /* the whole mapping right away */
#define MREMAP_DUP_NO_WHOLE 0x2u /* never fall back to the whole mapping */

enum mremap_dup_where {
	MREMAP_DUP_ANYWHERE = 0,
	MREMAP_DUP_BELOW,
	MREMAP_DUP_IN_RESERVATION,
	MREMAP_DUP_AT_IN_RESERVATION,
};

struct mremap_dup_placement {
	enum mremap_dup_where where;
	uintptr_t limit; /* MREMAP_DUP_BELOW */
	void *base;      /* the reservation */
	size_t size;
	void *at;        /* MREMAP_DUP_AT_IN_RESERVATION */
};

/* A duplicate made by mremap_dup_range(). */
struct mremap_dup_mapping {
	void *ptr;      /* the caller's pointer, seen through the duplicate */
	void *base;     /* the start of the duplicated range (<= ptr) */
	size_t size;    /* its size: pages holding the range, or the mapping */
	bool whole;     /* it covers the whole mapping that held the range */
	bool reserved;  /* placed in a reservation: released to PROT_NONE */
};

/* struct procmap_query of <linux/fs.h>, declared here (uapi layout, 104
 * bytes) so that older headers do not matter. */
struct mremap_dup__procmap_query {
	uint64_t size;
	uint64_t query_flags;
	uint64_t query_addr;
	uint64_t vma_start;
	uint64_t vma_end;
	uint64_t vma_flags;
	uint64_t vma_page_size;
	uint64_t vma_offset;
	uint64_t inode;
	uint32_t dev_major;
	uint32_t dev_minor;
	uint32_t vma_name_size;
	uint32_t build_id_size;
	uint64_t vma_name_addr;
	uint64_t build_id_addr;
};

_Static_assert(sizeof(struct mremap_dup__procmap_query) == 104, "struct procmap_query layout");

#define MREMAP_DUP__PROCMAP_QUERY _IOWR('f', 17, struct mremap_dup__procmap_query)
#define MREMAP_DUP__VMA_BUSY 0xfull /* PROCMAP_QUERY_VMA_{READABLE,WRITABLE,EXECUTABLE,SHARED} */
#define MREMAP_DUP__VMA_SHARED 0x8ull
#define MREMAP_DUP__COVERING_OR_NEXT 0x10ull
#define MREMAP_DUP__RACE_RETRIES 8
#define MREMAP_DUP__TASK_SIZE_47 (((uintptr_t)1 << 47) - 4096)

struct mremap_dup__vma {
	uintptr_t start, end, page_size;
	uint64_t flags, inode;
};

/* 1 and *vma: found; 0: none; -errno. */
static inline int mremap_dup__query(int fd, uintptr_t addr, uint64_t qflags, struct mremap_dup__vma *vma)
{
	struct mremap_dup__procmap_query q = {
		.size = sizeof(q), .query_flags = qflags, .query_addr = addr,
	};

	*vma = (struct mremap_dup__vma){ 0 };
	if (ioctl(fd, MREMAP_DUP__PROCMAP_QUERY, &q) != 0)
		return errno == ENOENT ? 0 : -errno;
	vma->start = (uintptr_t)q.vma_start;
	vma->end = (uintptr_t)q.vma_end;
	vma->page_size = (uintptr_t)q.vma_page_size;
	vma->flags = q.vma_flags;
	vma->inode = q.inode;
	return 1;
}

/* A private anonymous PROT_NONE mapping: free reservation. */
static inline bool mremap_dup__is_reservation(const struct mremap_dup__vma *vma)
{
	return !(vma->flags & MREMAP_DUP__VMA_BUSY) && vma->inode == 0;
}

static inline uintptr_t mremap_dup__page_size(void)
{
	return (uintptr_t)sysconf(_SC_PAGESIZE);
}

static inline uintptr_t mremap_dup__align_down(uintptr_t x, uintptr_t align)
{
	return x & ~(align - 1);
}

static inline uintptr_t mremap_dup__align_up(uintptr_t x, uintptr_t align)
{
	return x > UINTPTR_MAX - (align - 1) ? mremap_dup__align_down(UINTPTR_MAX, align)
					      : mremap_dup__align_down(x + align - 1, align);
}

static inline void *mremap_dup__reserve(uintptr_t addr, size_t len, int how)
{
	return mmap((void *)addr, len, PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | how, -1, 0);
}

/* MREMAP_DUP of [start, start + len) to *dst (MREMAP_FIXED) or, with
 * fixed false, where the kernel picks. 0 or -errno. */
static inline int mremap_dup__dup(uintptr_t start, size_t len, bool fixed, uintptr_t *dst)
{
	long ret = syscall(SYS_mremap, start, len, len,
			   MREMAP_DUP | (fixed ? MREMAP_FIXED : 0), fixed ? *dst : 0);

	if (ret == -1)
		return -errno;
	*dst = (uintptr_t)ret;
	return 0;
}

static inline uintptr_t mremap_dup__mmap_min_addr(void)
{
	char buf[32] = { 0 };
	uintptr_t min = 65536;
	int fd = open("/proc/sys/vm/mmap_min_addr", O_RDONLY | O_CLOEXEC);

	if (fd >= 0) {
		if (read(fd, buf, sizeof(buf) - 1) > 0)
			min = (uintptr_t)strtoull(buf, NULL, 10);
		close(fd);
	}
	return min > mremap_dup__page_size() ? min : mremap_dup__page_size();
}

/* The highest align-aligned start of len free bytes below limit. */
static inline int mremap_dup__highest_hole(int fd, size_t len, uintptr_t align, uintptr_t limit,
					   uintptr_t *hole)
{
	uintptr_t cur = mremap_dup__mmap_min_addr();
	bool found = false;

	while (cur < limit) {
		struct mremap_dup__vma v;
		int ret = mremap_dup__query(fd, cur, MREMAP_DUP__COVERING_OR_NEXT, &v);
		uintptr_t gap_end;

		if (ret < 0)
			return ret;
		gap_end = ret && v.start < limit ? v.start : limit;
		if (gap_end >= len && mremap_dup__align_down(gap_end - len, align) >= cur) {
			*hole = mremap_dup__align_down(gap_end - len, align);
			found = true;
		}
		if (!ret)
			break;
		cur = v.end;
	}
	return found ? 0 : -ENOMEM;
}

static inline int mremap_dup__below(int fd, uintptr_t start, size_t len, uintptr_t align,
				    uintptr_t limit, uintptr_t *dst)
{
	if (limit > MREMAP_DUP__TASK_SIZE_47)
		limit = MREMAP_DUP__TASK_SIZE_47;
	for (int i = 0; i < MREMAP_DUP__RACE_RETRIES; i++) {
		uintptr_t hole;
		void *got;
		int ret = mremap_dup__highest_hole(fd, len, align, limit, &hole);

		if (ret)
			return ret;
		got = mremap_dup__reserve(hole, len, MAP_FIXED_NOREPLACE);
		if (got == MAP_FAILED) {
			if (errno == EEXIST)
				continue;
			return -errno;
		}
		if ((uintptr_t)got != hole) { /* taken as a hint (before 4.17) */
			munmap(got, len);
			return -EEXIST;
		}
		*dst = hole;
		ret = mremap_dup__dup(start, len, true, dst);
		if (ret)
			munmap((void *)hole, len);
		return ret;
	}
	return -EAGAIN;
}

/* The lowest align-aligned start of len free bytes of [rs, re). */
static inline int mremap_dup__first_fit(int fd, uintptr_t rs, uintptr_t re, size_t len,
					uintptr_t align, uintptr_t *dst)
{
	uintptr_t cur = rs, run_start = 0, run_end = 0;
	bool in_run = false;

	while (cur < re) {
		struct mremap_dup__vma v;
		int ret = mremap_dup__query(fd, cur, MREMAP_DUP__COVERING_OR_NEXT, &v);

		if (ret < 0)
			return ret;
		if (!ret || v.start >= re)
			break;
		if (mremap_dup__is_reservation(&v)) {
			uintptr_t s;

			if (!in_run || run_end != v.start)
				run_start = v.start > rs ? v.start : rs;
			run_end = v.end < re ? v.end : re;
			in_run = true;
			s = mremap_dup__align_up(run_start, align);
			if (s <= run_end && run_end - s >= len) {
				*dst = s;
				return 0;
			}
		} else {
			in_run = false;
		}
		cur = v.end;
	}
	return -ENOMEM;
}

/* Checks that [at, at + len) is an aligned, free part of [rs, re). */
static inline int mremap_dup__check_free(int fd, uintptr_t rs, uintptr_t re, uintptr_t at,
					 size_t len, uintptr_t align)
{
	uintptr_t cur = at;

	if (at % align)
		return -EINVAL;
	if (at < rs || at > re || re - at < len)
		return -ENOMEM;
	while (cur < at + len) {
		struct mremap_dup__vma v;
		int ret = mremap_dup__query(fd, cur, 0, &v);

		if (ret < 0)
			return ret;
		if (!ret || !mremap_dup__is_reservation(&v))
			return -EEXIST;
		cur = v.end;
	}
	return 0;
}

/* Duplicates [start, end) as placement says, to *dst. 0 or -errno. */
static inline int mremap_dup__place(int fd, uintptr_t start, uintptr_t end, uintptr_t align,
				    const struct mremap_dup_placement *pl, uintptr_t *dst)
{
	size_t len = end - start;
	uintptr_t rs = (uintptr_t)pl->base;
	uintptr_t re = rs + pl->size < rs ? UINTPTR_MAX : rs + pl->size;
	int ret;

	switch (pl->where) {
	case MREMAP_DUP_ANYWHERE:
		return mremap_dup__dup(start, len, false, dst);
	case MREMAP_DUP_BELOW:
		return mremap_dup__below(fd, start, len, align, pl->limit, dst);
	case MREMAP_DUP_IN_RESERVATION:
		ret = mremap_dup__first_fit(fd, rs, re, len, align, dst);
		break;
	case MREMAP_DUP_AT_IN_RESERVATION:
		*dst = (uintptr_t)pl->at;
		ret = mremap_dup__check_free(fd, rs, re, *dst, len, align);
		break;
	default:
		return -EINVAL;
	}
	return ret ? ret : mremap_dup__dup(start, len, true, dst);
}

/*
 * Duplicates the memory at [ptr, ptr + len) as placement says (NULL: where
 * the kernel picks), with MREMAP_DUP_* flags, into *out; release it with
 * mremap_dup_release(). Returns 0, or -1 with errno set (see the top of
 * this file).
 */
static inline int mremap_dup_range(const void *ptr, size_t len,
				   const struct mremap_dup_placement *placement, unsigned int flags,
				   struct mremap_dup_mapping *out)
{
	static const struct mremap_dup_placement anywhere = { .where = MREMAP_DUP_ANYWHERE };
	const struct mremap_dup_placement *pl = placement ? placement : &anywhere;
	uintptr_t addr = (uintptr_t)ptr, align, part_start, part_end, first_start, first_end, dst = 0;
	struct mremap_dup__vma v;
	int fd, ret;

	if (len == 0 || (flags & ~(MREMAP_DUP_WHOLE | MREMAP_DUP_NO_WHOLE)) ||
	    (flags & MREMAP_DUP_WHOLE && flags & MREMAP_DUP_NO_WHOLE)) {
		errno = EINVAL;
		return -1;
	}
	if (addr + len < addr) {
		errno = EFAULT;
		return -1;
	}
	fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ret = mremap_dup__query(fd, addr, 0, &v);
	if (ret == 0 || (ret > 0 && addr + len > v.end))
		ret = -EFAULT;
	else if (ret > 0 && !(v.flags & MREMAP_DUP__VMA_SHARED))
		ret = -EINVAL;
	if (ret < 0)
		goto out;
	align = v.page_size > mremap_dup__page_size() ? v.page_size : mremap_dup__page_size();
	part_start = mremap_dup__align_down(addr, align);
	part_end = mremap_dup__align_up(addr + len, align);
	if (part_start < v.start)
		part_start = v.start;
	if (part_end > v.end)
		part_end = v.end;
	first_start = flags & MREMAP_DUP_WHOLE ? v.start : part_start;
	first_end = flags & MREMAP_DUP_WHOLE ? v.end : part_end;
	ret = mremap_dup__place(fd, first_start, first_end, align, pl, &dst);
	if (ret == -EINVAL && (first_start != v.start || first_end != v.end) &&
	    !(flags & MREMAP_DUP_NO_WHOLE)) {
		first_start = v.start;
		first_end = v.end;
		ret = mremap_dup__place(fd, first_start, first_end, align, pl, &dst);
	}
	if (ret)
		goto out;
	out->ptr = (void *)(dst + (addr - first_start));
	out->base = (void *)dst;
	out->size = first_end - first_start;
	out->whole = first_start == v.start && first_end == v.end;
	out->reserved = pl->where == MREMAP_DUP_IN_RESERVATION ||
			pl->where == MREMAP_DUP_AT_IN_RESERVATION;
out:
	close(fd);
	if (ret) {
		errno = -ret;
		return -1;
	}
	return 0;
}

/*
 * Removes a duplicate made by mremap_dup_range(): unmaps it, or, placed in
 * a reservation, replaces it with PROT_NONE memory again. The original
 * mapping is not touched. Returns 0, or -1 with errno set.
 */
static inline int mremap_dup_release(struct mremap_dup_mapping *dup)
{
	int ret;

	if (dup->reserved)
		ret = mremap_dup__reserve((uintptr_t)dup->base, dup->size, MAP_FIXED) == MAP_FAILED ? -1 : 0;
	else
		ret = munmap(dup->base, dup->size);
	if (ret == 0)
		*dup = (struct mremap_dup_mapping){ 0 };
	return ret;
}

/*
 * Does the running kernel know MREMAP_DUP? Duplicates a fresh one-page
 * MAP_SHARED | MAP_ANONYMOUS mapping where the kernel picks (an older
 * kernel refuses the unknown flag with EINVAL), unmaps both and remembers
 * the answer (per translation unit). errno is preserved.
 */
static inline bool mremap_dup_is_supported(void)
{
	static int cached; /* 0: not probed, 1: no, 2: yes */
	int answer = __atomic_load_n(&cached, __ATOMIC_RELAXED);

	if (!answer) {
		int saved = errno;
		size_t page = mremap_dup__page_size();
		void *p = mmap(NULL, page, PROT_READ, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		uintptr_t q = 0;

		answer = 1;
		if (p != MAP_FAILED) {
			if (mremap_dup__dup((uintptr_t)p, page, false, &q) == 0) {
				munmap((void *)q, page);
				answer = 2;
			}
			munmap(p, page);
		}
		__atomic_store_n(&cached, answer, __ATOMIC_RELAXED);
		errno = saved;
	}
	return answer == 2;
}

#endif /* MREMAP_DUP_H */
