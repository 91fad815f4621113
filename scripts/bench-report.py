#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""bench-report.py RESULTS [--check RESULTS2]: turn RESULTS/bench.tsv (what
mremap-dup-bench run printed in the guest) into RESULTS/bench.md (ratios,
each to an alternative measured in the same run) and RESULTS/plots/*.png
(cost against size, log-log, one line per method, one plot per memory kind).

--check RESULTS2: a second run of the same binary (scripts/bench.sh
--icount-check: same guest under -icount shift=0, where the guest clock
counts instructions); its ratios are set beside the first run's for the
sizes both have, as a stability check. Only the first run's numbers are the
result.
"""

import math
import os
import statistics
import sys
from collections import defaultdict

METHOD_LABEL = {
    "dup": "DUP",
    "dup_read": "DUP + read every page",
    "dup_write": "DUP + write every page",
    "mmap_read": "mmap(fd) + read",
    "mmap_write": "mmap(fd) + write",
    "populate_read": "mmap(fd, MAP_POPULATE) + read",
    "legacy_read": "mremap(old, 0, n, MAYMOVE) + read",
    "copy_in": "memcpy into shadow",
    "copy_cycle": "memcpy into shadow and back",
    "munmap_dup": "munmap of the duplicate",
    "munmap_mmap": "munmap of the 2nd mmap",
    "pass_dup": "2nd pass via duplicate",
    "pass_orig": "2nd pass via original",
    "first_pass_orig": "1st pass via original after a TLB flush",
    "steady_dup": "steady state, DUP reused (per cycle)",
    "steady_shadow": "steady state, shadow (per cycle)",
    "dup_empty": "DUP, no present entries",
    "mmap": "mmap(fd) alone",
    "clean_dup_write": "after fdatasync: DUP + write",
    "clean_orig_write": "after fdatasync: write via original",
    "clean_mmap_write": "after fdatasync: mmap(fd) + write",
}

# (column title, numerator, denominator)
TABLE_A = [
    ("DUP+read / memcpy", "dup_read", "copy_in"),
    ("DUP+write / memcpy", "dup_write", "copy_in"),
    ("DUP+read / memcpy in+back", "dup_read", "copy_cycle"),
    ("DUP+read / mmap+read", "dup_read", "mmap_read"),
    ("DUP+write / mmap+write", "dup_write", "mmap_write"),
    ("DUP+read / POPULATE+read", "dup_read", "populate_read"),
    ("DUP+read / legacy mremap+read", "dup_read", "legacy_read"),
]
TABLE_B = [
    ("DUP (no entries) / mmap", "dup_empty", "mmap"),
    ("DUP (present) / mmap", "dup", "mmap"),
    ("munmap dup / munmap mmap", "munmap_dup", "munmap_mmap"),
    ("2nd pass: dup / orig", "pass_dup", "pass_orig"),
    ("1st pass after a flush, orig / DUP+read", "first_pass_orig", "dup_read"),
    ("steady: DUP reused / shadow", "steady_dup", "steady_shadow"),
]
# A file with writeback, every page clean (so mapped read-only) first.
TABLE_C = [
    ("DUP+write / write via original", "clean_dup_write", "clean_orig_write"),
    ("DUP+write / mmap+write", "clean_dup_write", "clean_mmap_write"),
    ("DUP+write / memcpy", "clean_dup_write", "copy_in"),
    ("write via original / memcpy", "clean_orig_write", "copy_in"),
]


def size_str(n):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def load(path):
    """R and T rows: {(kind, size, method): stats and times}, the VMA rows
    apart ({(vmas, method): ...}); S rows; comments."""
    res, vmas, skips, notes = {}, {}, [], []
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if f[0] in ("R", "T") and len(f) >= 5:
            kind, size, method = f[1], int(f[2]), f[3]
            d = vmas.setdefault((size, method), {}) if kind == "vmas" else res.setdefault((kind, size, method), {})
            if f[0] == "T":
                d["times"] = [int(x) for x in f[4].split(",")]
            else:
                med, p25, p75, lo, hi, n, faults = map(int, f[4:11])
                d.update(med=med, p25=p25, p75=p75, min=lo, max=hi, n=n, faults=faults)
        elif f[0] == "S":
            skips.append(f[1:])
        elif line.startswith("#"):
            notes.append(line[1:].strip())
    return res, vmas, skips, notes


def spread(s):
    """Half the interquartile range, relative to the median."""
    return (s["p75"] - s["p25"]) / 2 / s["med"] if s["med"] else 0.0


def quantile(v, q):
    v = sorted(v)
    return v[round((len(v) - 1) * q)]


def paired(a, b):
    """The median of the ratios of the times of one round (the two methods
    ran in the same round), and half their interquartile range, relative;
    the ratio of the medians when there are no round times of both in the
    same rounds (methods measured in rounds of their own)."""
    if not a or not b or not b.get("med"):
        return None
    ta, tb = a.get("times"), b.get("times")
    if ta and tb and len(ta) == len(tb) and all(tb):
        r = [x / y for x, y in zip(ta, tb)]
        m = statistics.median(r)
        return m, (quantile(r, 0.75) - quantile(r, 0.25)) / 2 / m if m else 0.0
    return a["med"] / b["med"], max(spread(a), spread(b))


def ratio(res, kind, size, num, den):
    return paired(res.get((kind, size, num)), res.get((kind, size, den)))


def fmt(r):
    if r is None:
        return "n/a"
    v, sp = r
    digits = 3 if v < 0.1 else 2
    return f"{v:.{digits}f} ±{sp * 100:.0f}%"


def kinds_sizes(res):
    kinds, sizes = [], defaultdict(set)
    for kind, size, _ in res:
        if kind not in kinds:
            kinds.append(kind)
        sizes[kind].add(size)
    return kinds, {k: sorted(v) for k, v in sizes.items()}


def table(res, cols, title, intro=None):
    """One row per kind and size that has at least one of the ratios."""
    kinds, sizes = kinds_sizes(res)
    rows = []
    for k in kinds:
        for s in sizes[k]:
            r = [ratio(res, k, s, num, den) for _, num, den in cols]
            if any(x is not None for x in r):
                rows.append(f"| {k} | {size_str(s)} | " + " | ".join(fmt(x) for x in r) + " |")
    if not rows:
        return []
    out = [f"### {title}", ""] + ([intro, ""] if intro else [])
    out.append("| kind | size | " + " | ".join(c[0] for c in cols) + " |")
    out.append("| --- | --- |" + " --- |" * len(cols))
    return out + rows + [""]


def faults_table(res):
    kinds, sizes = kinds_sizes(res)
    methods = ["dup_read", "dup_write", "mmap_read", "mmap_write", "legacy_read", "pass_dup",
               "clean_dup_write", "clean_orig_write", "clean_mmap_write"]
    out = [
        "### Page faults per page touched (median run; explains the ratios above, not itself a timing)",
        "",
        "| kind | size | " + " | ".join(METHOD_LABEL[m] for m in methods) + " |",
        "| --- | --- |" + " --- |" * len(methods),
    ]
    for k in kinds:
        for s in sizes[k]:
            pages = s // 4096
            cells = []
            for m in methods:
                r = res.get((k, s, m))
                cells.append("n/a" if r is None else f"{r['faults'] / pages:.2f}")
            out.append(f"| {k} | {size_str(s)} | " + " | ".join(cells) + " |")
    return out + [""]


def vma_table(vmas):
    if not vmas:
        return []
    ns = sorted({n for n, _ in vmas})
    out = [
        "### DUP of a 64 KiB memfd mapping against the number of VMAs in the process",
        "",
        "| extra VMAs | DUP / mmap(fd) | DUP / DUP with the fewest VMAs |",
        "| --- | --- | --- |",
    ]
    base = vmas.get((ns[0], "dup"))
    for n in ns:
        d, m = vmas.get((n, "dup")), vmas.get((n, "mmap"))
        r1 = paired(d, m)
        r2 = (d["med"] / base["med"], max(spread(d), spread(base))) if d and base else None
        out.append(f"| {n} | {fmt(r1)} | {fmt(r2)} |")
    return out + [""]


def headlines(res, vmas):
    """One line per target the lead reads off the table."""
    kinds, sizes = kinds_sizes(res)
    out = ["### Headlines", ""]

    def rng(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return None
        lo, hi = min(v[0] for v in vals), max(v[0] for v in vals)
        return f"{lo:.3g}" if math.isclose(lo, hi, rel_tol=0.005) else f"{lo:.3g}-{hi:.3g}"

    big = [(k, [s for s in sizes[k] if 16 << 20 <= s <= 1 << 30]) for k in kinds]
    for title, num, den in (
        ("DUP + first read of every page / one shadow memcpy, 16 MiB-1 GiB", "dup_read", "copy_in"),
        ("DUP + first write of every page / one shadow memcpy, 16 MiB-1 GiB", "dup_write", "copy_in"),
    ):
        parts = []
        for k, ss in big:
            r = rng([ratio(res, k, s, num, den) for s in ss])
            if r:
                parts.append(f"{k} {r}")
        out.append(f"- {title}: " + ("; ".join(parts) if parts else "no size in range measured"))
    parts = []
    for k, ss in big:
        r = rng([ratio(res, k, s, "clean_dup_write", "clean_orig_write") for s in ss])
        if r:
            parts.append(f"{k} {r}")
    if parts:
        out.append("- after fdatasync (every page clean, mapped read-only), DUP + first write of every page "
                   "/ writing every page through the original, 16 MiB-1 GiB: " + "; ".join(parts))
    parts = []
    for k in kinds:
        r = [ratio(res, k, s, "dup_empty", "mmap") for s in sizes[k]]
        e = [res.get((k, s, "dup_empty")) for s in sizes[k]]
        e = [x for x in e if x]
        mm = [res.get((k, s, "mmap")) for s in sizes[k]]
        mm = [x for x in mm if x]
        flat = f", DUP at {size_str(sizes[k][-1])} / at {size_str(sizes[k][0])} {e[-1]['med'] / e[0]['med']:.2f}" if len(e) > 1 else ""
        if flat and len(mm) > 1:
            flat += f" (mmap(fd) {mm[-1]['med'] / mm[0]['med']:.2f})"
        if rng(r):
            parts.append(f"{k} {rng(r)}{flat}")
    out.append("- DUP of a mapping with no present entries / a second mmap(fd), all sizes: " + "; ".join(parts))
    parts = [f"{k} {rng([ratio(res, k, s, 'pass_dup', 'pass_orig') for s in sizes[k]])}" for k in kinds]
    out.append("- a read pass through the duplicate after its first touch / through the original: " + "; ".join(parts))
    parts = []
    for k in kinds:
        r = rng([ratio(res, k, s, "steady_dup", "steady_shadow") for s in sizes[k]])
        if r:
            parts.append(f"{k} {r}")
    out.append("- WoW64 steady state, per map/use/unmap cycle, one duplicate reused / shadow copies: " + "; ".join(parts))
    if vmas:
        ns = sorted({n for n, _ in vmas})
        d0, d1 = vmas.get((ns[0], "dup")), vmas.get((ns[-1], "dup"))
        if d0 and d1:
            out.append(f"- DUP with {ns[-1]} extra VMAs / with {ns[0]}: {d1['med'] / d0['med']:.2f}")
    return out + [""]


def plots(res, outdir):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: no plots (scripts/setup.sh installs it in the venv)", file=sys.stderr)
        return []
    os.makedirs(outdir, exist_ok=True)
    kinds, sizes = kinds_sizes(res)
    files = []
    markers = "os^vD<>px*hH+1234"
    for k in kinds:
        fig, ax = plt.subplots(figsize=(9, 6))
        for i, m in enumerate(METHOD_LABEL):
            pts = [(s, res[(k, s, m)]) for s in sizes[k] if (k, s, m) in res]
            if not pts:
                continue
            xs = [s for s, _ in pts]
            ys = [r["med"] / 1e3 for _, r in pts]
            lo = [(r["med"] - r["p25"]) / 1e3 for _, r in pts]
            hi = [(r["p75"] - r["med"]) / 1e3 for _, r in pts]
            ls = "-" if m.startswith(("dup", "steady_dup", "munmap_dup", "pass_dup", "clean_dup")) else "--"
            ax.errorbar(xs, ys, yerr=[lo, hi], label=METHOD_LABEL[m], marker=markers[i % len(markers)],
                        linestyle=ls, markersize=4, capsize=2, color=plt.cm.tab20(i % 20))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("size (bytes)")
        ax.set_ylabel("median time (µs; bars: 25th-75th percentile)")
        ax.set_title(f"{k}: cost against size (guest under TCG; solid: through MREMAP_DUP)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        path = os.path.join(outdir, f"{k}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)
    return files


def check_table(res, res2):
    """The first run's ratios beside the -icount run's."""
    cols = TABLE_A[:2] + TABLE_B[:1] + TABLE_B[3:5]
    out = [
        "### Stability check: the same ratios from a second boot under -icount shift=0",
        "",
        "Under `-icount` the guest clock counts instructions, so these do not depend on the host's load "
        "(but they do not weigh memory accesses as hardware does): they are a check of the plain-TCG "
        "ratios above, not a result. Each cell: plain TCG / icount.",
        "",
        "| kind | size | " + " | ".join(c[0] for c in cols) + " |",
        "| --- | --- |" + " --- |" * len(cols),
    ]
    kinds, sizes = kinds_sizes(res2)
    for k in kinds:
        for s in sizes[k]:
            cells = []
            for _, num, den in cols:
                a, b = ratio(res, k, s, num, den), ratio(res2, k, s, num, den)
                cells.append(
                    "n/a" if a is None or b is None else f"{a[0]:.3g} / {b[0]:.3g}"
                )
            out.append(f"| {k} | {size_str(s)} | " + " | ".join(cells) + " |")
    return out + [""]


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    results = args[0]
    res, vmas, skips, notes = load(os.path.join(results, "bench.tsv"))
    if not res:
        sys.exit(f"no results in {results}/bench.tsv")
    meta = ""
    if os.path.exists(os.path.join(results, "meta.md")):
        meta = open(os.path.join(results, "meta.md")).read()
    reps = [r["n"] for r in res.values()]
    out = ["## MREMAP_DUP benchmark", "", meta]
    out += [
        "Every number is a ratio of two costs measured in the same run, in the same process "
        "(below 1: the MREMAP_DUP side is cheaper). The methods on one object run in rounds, "
        "each once per round, in a shuffled order of its own; a ratio is the median over the rounds of the ratio of the "
        "two methods' times in one round, ± half the interquartile range of those ratios, "
        "relative (across the VMA counts: the ratio of medians, ± the larger half interquartile "
        "range). "
        f"Runs per median: {min(reps)}-{statistics.median(reps):.0f}-{max(reps)} (min-median-max). "
        "memcpy: one copy of the whole buffer into a pre-faulted private anonymous shadow buffer; "
        "'in+back': into the shadow and back, what WoW64 does per map/unmap today. The original "
        "mapping is fully present (every page written through it) except for 'no entries'.",
        "",
    ]
    out += headlines(res, vmas)
    out += table(res, TABLE_A, "A second view and its first touch")
    out += table(res, TABLE_B, "Setup alone, teardown, use after the first touch, steady state")
    out += table(res, TABLE_C, "A file with writeback, after fdatasync: every page clean",
                 "A clean page of a file with writeback is mapped read-only in every mapping "
                 "(the filesystem's ->page_mkwrite hears of the first write), the original's too, "
                 "and a duplicate copies the original's entries as they are: its first write to "
                 "each page faults, as the original's does. A fresh mmap() faults too, but maps "
                 "a whole large folio writable per fault.")
    out += vma_table(vmas)
    out += faults_table(res)
    if "--check" in args:
        res2, _, _, _ = load(os.path.join(args[args.index("--check") + 1], "bench.tsv"))
        out += check_table(res, res2)
    if skips:
        out += ["### Not measured", ""]
        seen = set()
        for s in skips:
            kind, size, method, why = (s + ["", "", "", ""])[:4]
            key = (kind, method, why)
            if key in seen:
                continue
            seen.add(key)
            sz = [size_str(int(x[1])) for x in skips if (x[0], x[2], x[3] if len(x) > 3 else "") == key]
            what = "everything" if method == "-" else METHOD_LABEL.get(method, method)
            out.append(f"- {kind}, {what} ({', '.join(sz)}): {why}")
        out.append("")
    pngs = plots(res, os.path.join(results, "plots"))
    if pngs:
        out += ["### Plots", ""] + [f"- `plots/{os.path.basename(p)}`" for p in pngs] + [""]
    text = "\n".join(out)
    open(os.path.join(results, "bench.md"), "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
