#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# build-c-tests.sh: build the C tests of include/mremap_dup.h for the guest
# (which shares the host's filesystem) into target/c-tests/:
#   mremap-dup-helper-tests-c   tests/c/mremap_dup_helper_test.c (KTAP)
# with gcc -Wall -Wextra -Werror, against the patched kernel's uapi headers
# (installed by build-kselftest.sh) for the DRM ioctls. The header itself is
# also compiled alone against the system's headers only, as a user would.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

uapi=$TREE_PATCHED/out/usr/include
out=$REPO/target/c-tests
[ -d "$uapi/drm" ] || die "no $uapi: run scripts/build-kselftest.sh first (make headers)"
mkdir -p "$out"
cflags=(-O2 -Wall -Wextra -Werror -I "$REPO/include")
printf '#include "mremap_dup.h"\nint main(void) { return !mremap_dup_is_supported(); }\n' |
	gcc "${cflags[@]}" -std=gnu11 -pedantic -x c -o /dev/null -
gcc "${cflags[@]}" -isystem "$uapi" -o "$out/mremap-dup-helper-tests-c" \
	"$REPO/tests/c/mremap_dup_helper_test.c"
log "built: $out/mremap-dup-helper-tests-c"
