"""Benchmark and DCMTK agreement table for ``cxrtool prep dicom`` (not a test: numbers, not asserts).

    .venv/bin/python bench/prep_dicom.py               # images/s: prep dicom -j1, -jN, dcmj2pnm
    .venv/bin/python bench/prep_dicom.py --agreement   # max diff / % differing vs dcmj2pnm per file

Throughput uses the real fixtures in ../shared/data/dicom that DCMTK can read (so both tools
convert the same files), each listed ``--copies`` times through symlinks in a temp folder.  All
timings come from the same run; ratios are against ``dcmj2pnm`` run once per file, sequentially
(what a shell loop does), writing non-interlaced PNG like ours (zlib level: DCMTK's default, ours 1);
uncompressed PGM output is timed too, to show the share of PNG compression.  Other users load the machine: the load
average is printed, each
setting runs ``--repeats`` times and the best time is reported next to the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("CXRTOOL_SHARED_DATA", REPO.parent / "shared" / "data")) / "dicom"
sys.path.insert(0, str(REPO / "tests" / "dicom"))  # dicom_synth: the synthetic cases of the tests


def dicom_files(root: Path) -> list[Path]:
    from cxrtool.dicom import is_dicom

    return sorted(p for p in root.rglob("*") if p.is_file() and is_dicom(p))


def agreement(root: Path, synthetic: bool) -> None:
    from cxrtool.dicom.dcmtk import compare, dcmtk_render
    from cxrtool.dicom.pixels import WINDOW_POLICIES, render
    from cxrtool.dicom.read import read_dataset

    files = [(p.relative_to(root).as_posix(), p) for p in dicom_files(root)]
    if synthetic:
        from dicom_synth import write_synthetic_set

        tmp = Path(tempfile.mkdtemp(prefix="cxrtool-synth-"))
        skip = {"no_pixels", "truncated", "empty", "not_dicom", "ct"}
        files += [(f"synthetic/{k}", p) for k, p in write_synthetic_set(tmp).items() if k not in skip]
    print(f"| file | transfer syntax | {' | '.join(f'{w}: max diff / % px differing' for w in WINDOW_POLICIES)} |")
    print("|---|---|" + "---|" * len(WINDOW_POLICIES))
    worst = 0
    for name, path in files:
        ds = read_dataset(path)
        cells = []
        for window in WINDOW_POLICIES:
            try:
                theirs = dcmtk_render(path, window=window)
            except RuntimeError:
                cells.append("DCMTK cannot read")
                continue
            a = compare(render(ds, window=window)[0], theirs, file=name, window=window)
            worst = max(worst, a.max_diff)
            cells.append(a.error or f"{a.max_diff} / {a.pct_differing:.1f}%")
        print(f"| {name} | {ds.file_meta.TransferSyntaxUID.name} | {' | '.join(cells)} |")
    print(f"\nworst max difference over all files DCMTK reads: {worst} grey level(s) at 8 bits")


def _timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def throughput(root: Path, copies: int, workers: int, repeats: int) -> None:
    from cxrtool.dicom.dcmtk import dcmj2pnm_command, dcmj2pnm_path, dcmtk_render
    from cxrtool.dicom.prepare import PrepOptions, prepare_folder

    if dcmj2pnm_path() is None:
        sys.exit("dcmj2pnm not found (apt-get install dcmtk)")
    readable = []
    for p in dicom_files(root):
        try:
            dcmtk_render(p)
            readable.append(p)
        except RuntimeError:
            pass
    with tempfile.TemporaryDirectory(prefix="cxrtool-bench-") as tmp:
        src = Path(tmp) / "src"
        for k in range(copies):
            for p in readable:
                link = src / f"c{k}" / p.relative_to(root)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(p)
        inputs = sorted(q for q in src.rglob("*.dcm"))
        n = len(inputs)
        dcmtk_cmds = {
            fmt: [dcmj2pnm_command(q, Path(tmp) / "dcmtk" / f"{i}.{fmt}", fmt=fmt) for i, q in enumerate(inputs)]
            for fmt in ("png", "pgm")
        }
        (Path(tmp) / "dcmtk").mkdir()
        options = PrepOptions(salt="bench")
        run = iter(range(10**6))

        def ours(w: int):
            return lambda: prepare_folder(src, Path(tmp) / f"out{next(run)}", options=options, workers=w)

        def dcmtk(parallel: int, fmt: str = "png"):
            def go():
                with ThreadPoolExecutor(parallel) as pool:
                    list(pool.map(lambda c: subprocess.run(c, check=True, capture_output=True), dcmtk_cmds[fmt]))

            return go

        print(
            f"{n} files ({len(readable)} DCMTK-readable fixtures x {copies}), {os.cpu_count()} CPUs, "
            f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        results = {
            "dcmj2pnm, one process per file, sequential": _timed(dcmtk(1), repeats),
            f"dcmj2pnm, {workers} in parallel": _timed(dcmtk(workers), repeats),
            "dcmj2pnm to uncompressed PGM, sequential": _timed(dcmtk(1, "pgm"), repeats),
            "cxrtool prep dicom -j 1": _timed(ours(1), repeats),
            f"cxrtool prep dicom -j {workers}": _timed(ours(workers), repeats),
        }
        base = n / results["dcmj2pnm, one process per file, sequential"][0]
        print("| setting | best s | median s | images/s (best) | ratio vs dcmj2pnm sequential |\n|---|---|---|---|---|")
        for name, (best, med) in results.items():
            print(f"| {name} | {best:.2f} | {med:.2f} | {n / best:.1f} | {n / best / base:.2f}x |")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of DICOM fixtures")
    ap.add_argument("--agreement", action="store_true", help="print the DCMTK agreement table instead")
    ap.add_argument("--synthetic", action="store_true", help="add the tests' synthetic DICOMs to the agreement table")
    ap.add_argument("--copies", type=int, default=4, help="each fixture is converted this many times")
    ap.add_argument("--workers", "-j", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: no such folder (set CXRTOOL_SHARED_DATA or --data)")
    if args.agreement:
        agreement(args.data, args.synthetic)
    else:
        throughput(args.data, args.copies, args.workers, args.repeats)


if __name__ == "__main__":
    main()
