#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# export-series.sh [REV]: write the series developed in the patched tree
# (base..REV, default HEAD) to patches/ with git format-patch, keeping the
# cover letter's subject and text, and record that the patched tree holds
# exactly this series (so build-kernel.sh does not re-apply it).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

src=$TREE_PATCHED/src
rev=${1:-HEAD}
dir=$REPO/patches
cover=$dir/0000-cover-letter.patch
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

[ -f "$cover" ] && cp "$cover" "$tmp/old-cover"

git -C "$src" format-patch -q --cover-letter --zero-commit --no-signature \
	--subject-prefix="PATCH v$SERIES_VERSION" \
	--to=linux-mm@kvack.org \
	--cc=linux-api@vger.kernel.org \
	--cc=linux-kernel@vger.kernel.org \
	--cc="Andrew Morton <akpm@linux-foundation.org>" \
	--cc="Lorenzo Stoakes <lorenzo.stoakes@oracle.com>" \
	--cc="Liam R. Howlett <Liam.Howlett@oracle.com>" \
	--cc="Vlastimil Babka <vbabka@suse.cz>" \
	--cc="David Hildenbrand <david@redhat.com>" \
	--cc="Jann Horn <jannh@google.com>" \
	-o "$tmp/out" "tags/base..$rev"

# Carry the hand-written subject and text of the cover letter over to the
# regenerated one (whose shortlog and diffstat are new).
if [ -f "$tmp/old-cover" ]; then
	python3 - "$tmp/old-cover" "$tmp/out/0000-cover-letter.patch" <<'EOF'
import re, sys
old = open(sys.argv[1]).read()
new = open(sys.argv[2]).read()
subj = re.search(r'^Subject: \[PATCH[^\]]*\] (.*(?:\n .*)*)', old, re.M).group(1)
# The text runs from the blank line after the headers to the shortlog.
head, _, body = old.partition('\n\n')
blurb = re.split(r'\n[^\n]+\([0-9]+\):\n', body, maxsplit=1)[0]
new = new.replace('*** SUBJECT HERE ***', subj, 1)
new = new.replace('*** BLURB HERE ***\n', blurb.rstrip('\n') + '\n', 1)
open(sys.argv[2], 'w').write(new)
EOF
fi

rm -f "$dir"/*.patch
mkdir -p "$dir"
cp "$tmp"/out/*.patch "$dir/"
(cd "$dir" && ls [0-9]*.patch | grep -v '^0000-cover-letter' >series)
# record that the patched tree now holds this series
(cd "$dir" && cat series $(cat series)) | sha256sum | cut -d' ' -f1 >"$TREE_PATCHED/series.applied"
log "exported $(grep -c . "$dir/series") patches + cover letter to $dir"
