// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * Tests of include/mremap_dup.h, run in the guest: KTAP on stdout, one
 * behaviour per test, each in its own forked process. On a kernel without
 * MREMAP_DUP every test skips and says why. Built by scripts/build-c-tests.sh.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <drm/drm.h>
#include <drm/drm_mode.h>

#include "mremap_dup.h"

#define FOUR_GIB ((uintptr_t)1 << 32)
#define PASS 0
#define FAIL 1
#define SKIP 2

static char msg[4096];
static size_t page;

static int fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return FAIL;
}

#define CHECK(cond, ...)                                                   \
	do {                                                               \
		if (!(cond))                                               \
			return fail("line %d: " __VA_ARGS__, __LINE__);    \
	} while (0)

/* Skips the test on a kernel without MREMAP_DUP. */
#define REQUIRE_DUP()                                                                      \
	do {                                                                               \
		if (!mremap_dup_is_supported()) {                                          \
			snprintf(msg, sizeof(msg), "MREMAP_DUP not supported by this kernel "  \
				 "(a DUP of a shared anonymous page gave EINVAL)");               \
			return SKIP;                                                       \
		}                                                                          \
	} while (0)

static int expect_errno(const char *what, int ret, int want)
{
	if (ret == 0)
		return fail("%s: succeeded, expected %s", what, strerror(want));
	if (errno != want)
		return fail("%s: %s, expected %s", what, strerror(errno), strerror(want));
	return PASS;
}

/* A MAP_SHARED read-write mapping of a fresh memfd of `pages` pages. */
static char *memfd_map(size_t pages, unsigned int mfd_flags, size_t unit)
{
	int fd = memfd_create("mremap-dup-helper-test", mfd_flags);
	char *p;

	if (fd < 0 || ftruncate(fd, pages * unit))
		return NULL;
	p = mmap(NULL, pages * unit, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	return p == MAP_FAILED ? NULL : p;
}

/* A PROT_NONE reservation below 4 GiB, as a WoW64 layer keeps. */
static char *reserve_low(size_t pages)
{
	char *p = mmap(NULL, pages * page, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_32BIT, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

/* A write through each of orig and dup is read back through the other. */
static int shared_both_ways(const char *what, void *orig, void *dup)
{
	volatile uint64_t *o = orig, *d = dup;

	o[0] = 0x1111222233334444ull;
	CHECK(d[0] == 0x1111222233334444ull, "%s: write via original not seen via duplicate", what);
	d[1] = 0x5555666677778888ull;
	CHECK(o[1] == 0x5555666677778888ull, "%s: write via duplicate not seen via original", what);
	return PASS;
}

/* A vgem dumb buffer of width x height x 32 bpp, mapped where the kernel picks. */
static char *vgem_bo(uint32_t width, uint32_t height, size_t *size)
{
	struct dirent *e;
	DIR *dir = opendir("/dev/dri");
	char *p = NULL;

	while (dir && (e = readdir(dir))) {
		char path[300], name[64] = { 0 };
		struct drm_version v = { .name = name, .name_len = sizeof(name) - 1 };
		struct drm_mode_create_dumb c = { .width = width, .height = height, .bpp = 32 };
		struct drm_mode_map_dumb m = { 0 };
		int fd;

		if (strncmp(e->d_name, "card", 4))
			continue;
		snprintf(path, sizeof(path), "/dev/dri/%s", e->d_name);
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (ioctl(fd, DRM_IOCTL_VERSION, &v) || strcmp(name, "vgem") ||
		    ioctl(fd, DRM_IOCTL_MODE_CREATE_DUMB, &c)) {
			close(fd);
			continue;
		}
		m.handle = c.handle;
		if (!ioctl(fd, DRM_IOCTL_MODE_MAP_DUMB, &m)) {
			p = mmap(NULL, c.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, m.offset);
			*size = c.size;
		}
		close(fd);
		break;
	}
	if (dir)
		closedir(dir);
	return p == MAP_FAILED ? NULL : p;
}

/* /proc/self/maps into buf. */
static void read_maps(char *buf, size_t size)
{
	int fd = open("/proc/self/maps", O_RDONLY);
	ssize_t n, got = 0;

	while (fd >= 0 && (n = read(fd, buf + got, size - 1 - got)) > 0)
		got += n;
	buf[got] = 0;
	if (fd >= 0)
		close(fd);
}

static int memfd_part_of_larger_mapping(void)
{
	struct mremap_dup_mapping d;
	char *m, *ptr;

	REQUIRE_DUP();
	m = memfd_map(16, 0, page);
	CHECK(m, "memfd mapping: %s", strerror(errno));
	ptr = m + 5 * page + 128;
	CHECK(mremap_dup_range(ptr, 2 * page, NULL, 0, &d) == 0, "mremap_dup_range: %s", strerror(errno));
	CHECK(!d.whole, "a memfd part was duplicated whole");
	CHECK(d.size == 3 * page, "duplicated %zu bytes, expected 3 pages", d.size);
	CHECK((char *)d.ptr - (char *)d.base == 128, "pointer at the wrong offset");
	if (shared_both_ways("memfd part", ptr, d.ptr))
		return FAIL;
	CHECK(mremap_dup_release(&d) == 0, "release: %s", strerror(errno));
	return PASS;
}

static int vgem_middle_gives_whole_mapping(void)
{
	struct mremap_dup_mapping d;
	size_t size, off;
	char *bo;

	REQUIRE_DUP();
	bo = vgem_bo(256, 256, &size);
	CHECK(bo, "no vgem buffer object");
	off = size / 2 + 64;
	CHECK(mremap_dup_range(bo + off, 16, NULL, 0, &d) == 0, "mremap_dup_range: %s", strerror(errno));
	CHECK(d.whole && d.size == size, "duplicated %zu bytes of a %zu-byte BO", d.size, size);
	CHECK((char *)d.ptr - (char *)d.base == (ptrdiff_t)off, "pointer at the wrong offset");
	return shared_both_ways("vgem BO", bo + off, d.ptr);
}

static int vgem_part_refused_with_no_whole(void)
{
	struct mremap_dup_mapping d;
	size_t size;
	char *bo;

	REQUIRE_DUP();
	bo = vgem_bo(256, 256, &size);
	CHECK(bo, "no vgem buffer object");
	return expect_errno("NO_WHOLE on a part of a DRM BO",
			    mremap_dup_range(bo + page, 16, NULL, MREMAP_DUP_NO_WHOLE, &d), EINVAL);
}

static int whole_flag_duplicates_the_whole_mapping(void)
{
	struct mremap_dup_mapping d;
	char *m;

	REQUIRE_DUP();
	m = memfd_map(8, 0, page);
	CHECK(m, "memfd mapping: %s", strerror(errno));
	CHECK(mremap_dup_range(m + 3 * page, 8, NULL, MREMAP_DUP_WHOLE, &d) == 0, "mremap_dup_range: %s",
	      strerror(errno));
	CHECK(d.whole && d.size == 8 * page, "MREMAP_DUP_WHOLE duplicated %zu bytes", d.size);
	CHECK((char *)d.ptr - (char *)d.base == (ptrdiff_t)(3 * page), "pointer at the wrong offset");
	return expect_errno("WHOLE | NO_WHOLE",
			    mremap_dup_range(m, 8, NULL, MREMAP_DUP_WHOLE | MREMAP_DUP_NO_WHOLE, &d), EINVAL);
}

static int vgem_below_4gib(void)
{
	struct mremap_dup_placement below = { .where = MREMAP_DUP_BELOW, .limit = FOUR_GIB };
	struct mremap_dup_mapping d;
	size_t size, off = 17 * 4096 + 512;
	char *bo;

	REQUIRE_DUP();
	bo = vgem_bo(256, 256, &size);
	CHECK(bo, "no vgem buffer object");
	CHECK(mremap_dup_range(bo + off, 4096, &below, 0, &d) == 0, "mremap_dup_range: %s", strerror(errno));
	CHECK((uintptr_t)d.base + d.size <= FOUR_GIB, "duplicate at %p, not below 4 GiB", d.base);
	CHECK((char *)d.ptr - (char *)d.base == (ptrdiff_t)off, "pointer at the wrong offset");
	return shared_both_ways("vgem BO below 4 GiB", bo + off, d.ptr);
}

static int memfd_below_4gib(void)
{
	struct mremap_dup_placement below = { .where = MREMAP_DUP_BELOW, .limit = FOUR_GIB };
	struct mremap_dup_mapping d;
	char *m;

	REQUIRE_DUP();
	m = memfd_map(8, 0, page);
	CHECK(m && (uintptr_t)m >= FOUR_GIB, "memfd mapping not above 4 GiB");
	CHECK(mremap_dup_range(m + 3 * page + 256, 64, &below, 0, &d) == 0, "mremap_dup_range: %s",
	      strerror(errno));
	CHECK((uintptr_t)d.base + d.size <= FOUR_GIB, "duplicate at %p, not below 4 GiB", d.base);
	return shared_both_ways("memfd below 4 GiB", m + 3 * page + 256, d.ptr);
}

static int reservation_first_fit(void)
{
	struct mremap_dup_placement in = { .where = MREMAP_DUP_IN_RESERVATION, .size = 32 * page };
	struct mremap_dup_mapping d1, d2, d3;
	char *m = memfd_map(8, 0, page);

	REQUIRE_DUP();
	in.base = reserve_low(32);
	CHECK(m && in.base, "mmap: %s", strerror(errno));
	CHECK(mremap_dup_range(m, 2 * page, &in, 0, &d1) == 0, "first: %s", strerror(errno));
	CHECK(d1.base == in.base, "first duplicate not at the reservation's start");
	CHECK(mremap_dup_range(m + 4 * page, page, &in, 0, &d2) == 0, "second: %s", strerror(errno));
	CHECK(d2.base == (char *)in.base + 2 * page, "second duplicate not right after the first");
	if (shared_both_ways("in a reservation", m + 4 * page, d2.ptr))
		return FAIL;
	CHECK(mremap_dup_release(&d1) == 0, "release: %s", strerror(errno));
	CHECK(mremap_dup_range(m, page, &in, 0, &d3) == 0, "third: %s", strerror(errno));
	CHECK(d3.base == in.base, "the released part was not reused");
	in.size = 4 * page;
	return expect_errno("larger than the free part", mremap_dup_range(m, 8 * page, &in, 0, &d3), ENOMEM);
}

static int reservation_exact_address(void)
{
	struct mremap_dup_placement at = { .where = MREMAP_DUP_AT_IN_RESERVATION, .size = 16 * page };
	struct mremap_dup_mapping d;
	char *m = memfd_map(4, 0, page);

	REQUIRE_DUP();
	at.base = reserve_low(16);
	CHECK(m && at.base, "mmap: %s", strerror(errno));
	at.at = (char *)at.base + 8 * page;
	CHECK(mremap_dup_range(m + page, page, &at, 0, &d) == 0, "mremap_dup_range: %s", strerror(errno));
	CHECK(d.base == at.at, "duplicate not at the given address");
	if (shared_both_ways("at an address", m + page, d.ptr) ||
	    expect_errno("an address holding a duplicate", mremap_dup_range(m, page, &at, 0, &d), EEXIST))
		return FAIL;
	at.at = (char *)at.base + 100;
	if (expect_errno("an unaligned address", mremap_dup_range(m, page, &at, 0, &d), EINVAL))
		return FAIL;
	at.at = (char *)at.base + 15 * page;
	return expect_errno("beyond the reservation", mremap_dup_range(m, 2 * page, &at, 0, &d), ENOMEM);
}

static char before[1 << 16], after[1 << 16];

/* Duplicates part of a memfd as pl says and releases it: /proc/self/maps
 * must have changed, then read as before. */
static int release_leaves_maps_as_before(const struct mremap_dup_placement *pl)
{
	struct mremap_dup_mapping d;
	char *m = memfd_map(4, 0, page);

	CHECK(m, "mmap: %s", strerror(errno));
	read_maps(before, sizeof(before));
	CHECK(mremap_dup_range(m + page, 8, pl, 0, &d) == 0, "mremap_dup_range: %s", strerror(errno));
	read_maps(after, sizeof(after));
	CHECK(strcmp(before, after), "the duplicate is not in /proc/self/maps");
	CHECK(mremap_dup_release(&d) == 0, "release: %s", strerror(errno));
	read_maps(after, sizeof(after));
	CHECK(!strcmp(before, after), "maps after the release:\n%s", after);
	return PASS;
}

static int release_restores_the_reservation(void)
{
	struct mremap_dup_placement in = { .where = MREMAP_DUP_IN_RESERVATION, .size = 16 * page };

	REQUIRE_DUP();
	in.base = reserve_low(16);
	CHECK(in.base, "mmap: %s", strerror(errno));
	return release_leaves_maps_as_before(&in);
}

static int release_unmaps_exactly_the_duplicate(void)
{
	struct mremap_dup_placement below = { .where = MREMAP_DUP_BELOW, .limit = FOUR_GIB };

	REQUIRE_DUP();
	return release_leaves_maps_as_before(&below);
}

static int unmapped_pointer_efault(void)
{
	struct mremap_dup_mapping d;
	char *m = mmap(NULL, page, PROT_READ, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	REQUIRE_DUP();
	munmap(m, page);
	return expect_errno("an unmapped pointer", mremap_dup_range(m, 8, NULL, 0, &d), EFAULT);
}

static int private_mapping_einval(void)
{
	struct mremap_dup_mapping d;
	char *m = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	REQUIRE_DUP();
	CHECK(m != MAP_FAILED, "mmap: %s", strerror(errno));
	return expect_errno("a private mapping", mremap_dup_range(m + 8, 8, NULL, 0, &d), EINVAL);
}

static int range_over_two_mappings_efault(void)
{
	struct mremap_dup_mapping d;
	char *r = reserve_low(4);
	int a = memfd_create("a", 0), b = memfd_create("b", 0);

	REQUIRE_DUP();
	CHECK(r && a >= 0 && b >= 0 && !ftruncate(a, 2 * page) && !ftruncate(b, 2 * page), "set-up");
	CHECK(mmap(r, 2 * page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, a, 0) == r &&
	      mmap(r + 2 * page, 2 * page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, b, 0) ==
		      r + 2 * page, "mmap: %s", strerror(errno));
	return expect_errno("a range over two mappings", mremap_dup_range(r + page, 2 * page, NULL, 0, &d),
			    EFAULT);
}

static int is_supported_leaves_no_mapping(void)
{
	bool supported;

	read_maps(before, sizeof(before));
	supported = mremap_dup_is_supported();
	read_maps(after, sizeof(after));
	CHECK(!strcmp(before, after), "the detection left maps behind:\n%s", after);
	CHECK(mremap_dup_is_supported() == supported, "a second call answered otherwise");
	REQUIRE_DUP();
	return PASS;
}

struct test {
	const char *name;
	int (*run)(void);
};

#define T(f) { #f, f }
static const struct test tests[] = {
	T(memfd_part_of_larger_mapping),
	T(vgem_middle_gives_whole_mapping),
	T(vgem_part_refused_with_no_whole),
	T(whole_flag_duplicates_the_whole_mapping),
	T(vgem_below_4gib),
	T(memfd_below_4gib),
	T(reservation_first_fit),
	T(reservation_exact_address),
	T(release_restores_the_reservation),
	T(release_unmaps_exactly_the_duplicate),
	T(unmapped_pointer_efault),
	T(private_mapping_einval),
	T(range_over_two_mappings_efault),
	T(is_supported_leaves_no_mapping),
};

int main(void)
{
	size_t n = sizeof(tests) / sizeof(tests[0]);
	int pass = 0, failed = 0, skip = 0;

	page = (size_t)sysconf(_SC_PAGESIZE);
	printf("KTAP version 1\n1..%zu\n", n);
	for (size_t i = 0; i < n; i++) {
		char note[sizeof(msg)] = "";
		int pipefd[2], status, code;
		ssize_t got;
		pid_t pid;

		fflush(stdout);
		if (pipe(pipefd) || (pid = fork()) < 0)
			return 1;
		if (pid == 0) {
			close(pipefd[0]);
			alarm(120);
			code = tests[i].run();
			if (write(pipefd[1], msg, strlen(msg)) < 0)
				code = FAIL;
			_exit(code);
		}
		close(pipefd[1]);
		got = read(pipefd[0], note, sizeof(note) - 1);
		note[got > 0 ? got : 0] = 0;
		close(pipefd[0]);
		waitpid(pid, &status, 0);
		code = WIFEXITED(status) ? WEXITSTATUS(status) : FAIL;
		if (code == PASS) {
			pass++;
			printf("ok %zu %s\n", i + 1, tests[i].name);
		} else if (code == SKIP) {
			skip++;
			printf("ok %zu %s # SKIP %s\n", i + 1, tests[i].name, note);
		} else {
			failed++;
			for (char *line = strtok(note, "\n"); line; line = strtok(NULL, "\n"))
				printf("# %s: %s\n", tests[i].name, line);
			if (!WIFEXITED(status))
				printf("# %s: killed by signal %d\n", tests[i].name, WTERMSIG(status));
			printf("not ok %zu %s\n", i + 1, tests[i].name);
		}
	}
	printf("# Totals: pass:%d fail:%d skip:%d\n", pass, failed, skip);
	return failed ? 1 : 0;
}
