// SPDX-License-Identifier: GPL-2.0
// profile-dup.c: time MREMAP_DUP|FIXED of a LEN-byte memfd mapping with no
// present entries against mmap(fd, MAP_FIXED) over the same reservation
// (200 rounds each); with a second argument "trace", the last round runs
// with /sys/kernel/tracing/tracing_on set; with "dup N" or "mmap N", only
// that call and the mmap() that puts the reservation back, N times, for a
// sampling profiler (scripts/profile-dup.sh --perf). With PRESENT=1 in the
// environment, the memfd's pages are written first and every DUP's source
// is a fresh mapping of them (as bench.rs's dup_empty has it).
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

#ifndef MREMAP_DUP
#define MREMAP_DUP 8
#endif

static long ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void tr(const char *v)
{
	int fd = open("/sys/kernel/tracing/tracing_on", O_WRONLY);

	if (fd >= 0) {
		write(fd, v, 1);
		close(fd);
	}
}

int main(int argc, char **argv)
{
	size_t len = argc > 1 ? strtoul(argv[1], NULL, 0) : 4096;
	const char *mode = argc > 2 ? argv[2] : "";
	int trace = !strcmp(mode, "trace");
	int fd = memfd_create("prof", 0);
	char *src, *res, *p;
	long t0, tdup = 0, tmap = 0;
	int i, n = 200;

	int present = getenv("PRESENT") ? atoi(getenv("PRESENT")) : 0;

	ftruncate(fd, len);
	src = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (present) {
		memset(src, 1, len);
		munmap(src, len);
	}
	res = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (!strcmp(mode, "dup") || !strcmp(mode, "mmap")) {
		int dup = !strcmp(mode, "dup");

		n = argc > 3 ? atoi(argv[3]) : 10000;
		t0 = ns();
		for (i = 0; i < n; i++) {
			if (dup && present)
				src = mmap(NULL, len, PROT_READ | PROT_WRITE,
					   MAP_SHARED, fd, 0);
			if (dup)
				p = (char *)syscall(SYS_mremap, src, len, len,
						    MREMAP_DUP | MREMAP_FIXED, res);
			else
				p = mmap(res, len, PROT_READ | PROT_WRITE,
					 MAP_SHARED | MAP_FIXED, fd, 0);
			if (p != res) {
				perror(mode);
				return 1;
			}
			mmap(res, len, PROT_NONE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
			if (dup && present)
				munmap(src, len);
		}
		printf("len %zu: %d x (%s + mmap back): %ld ns each\n", len, n, mode, (ns() - t0) / n);
		return 0;
	}
	for (i = 0; i < n + 1; i++) {
		int last = trace && i == n;

		if (present)
			src = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (last)
			tr("1");
		t0 = ns();
		p = (char *)syscall(SYS_mremap, src, len, len, MREMAP_DUP | MREMAP_FIXED, res);
		tdup += ns() - t0;
		if (p != res) { perror("dup"); return 1; }
		if (present)
			munmap(src, len);
		mmap(res, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
		t0 = ns();
		p = mmap(res, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
		tmap += ns() - t0;
		if (last)
			tr("0");
		mmap(res, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
	}
	printf("len %zu: DUP %ld ns, mmap FIXED %ld ns, ratio %.2f\n", len, tdup / (n + 1), tmap / (n + 1), (double)tdup / tmap);
	return 0;
}
