"""``prep dicom``: a folder tree of DICOM files -> PNGs as a viewer shows them, plus a manifest.

:func:`prepare_file` converts one file into manifest rows (one per written frame, or one row
saying why it was skipped or failed); :func:`prepare_folder` walks a tree, runs files in
worker processes, resumes earlier runs and writes the manifest atomically.  Nothing here
prints: callers get each file's rows through ``on_result`` for progress and summaries.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from cxrtool.errors import CxrError, ImageLoadError
from cxrtool.fsutil import atomic_path, display_path, remove_stale_temps
from cxrtool.inputs import check_file, iter_input_files, max_pixels
from cxrtool.manifest import CORE_COLUMNS, read_manifest, write_manifest
from cxrtool.workers import die_with

SOURCE = "prep-dicom"
MANIFEST_NAME = "manifest.csv"
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
EXTRA_COLUMNS: tuple[str, ...] = (
    "input",
    "frame",
    "status",
    "error",
    "checks",
    "modality",
    "body_part",
    "view",
    "photometric",
    "transfer_syntax",
    "voi",
    "rows",
    "columns",
    "settings",
)
EMPTY_ROW: dict[str, str] = dict.fromkeys(CORE_COLUMNS + EXTRA_COLUMNS, "")
OK, SKIPPED, FAILED = "ok", "skipped", "failed"
CHECKPOINT_S = 30.0  # how often a long run rewrites its manifest (what a killed run can resume from)

CHEST_MODALITIES = frozenset({"CR", "DX", "DR"})  # DR: not a DICOM term, but what some DR vendors write
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG")
CHEST_VIEWS = frozenset({"PA", "AP", "LL", "RL", "LATERAL", "LAT", "LLD", "RLD", "AP SUPINE", "PA LATERAL"})

Row = dict[str, str]


@dataclass(frozen=True)
class PrepOptions:
    """How files are rendered and what is kept; ``settings`` decides whether a rerun may resume."""

    window: str = "dicom"
    bits: int = 8
    size: int | None = None
    all_frames: bool = False
    strict: bool = False
    keep_phi: bool = False
    salt: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        from cxrtool.dicom.pixels import OUTPUT_BITS, WINDOW_POLICIES

        if self.window not in WINDOW_POLICIES:
            raise CxrError(f"--window must be one of {', '.join(WINDOW_POLICIES)}, not {self.window!r}")
        if self.bits not in OUTPUT_BITS:
            raise CxrError(f"--bits must be 8 or 16, not {self.bits}")
        if self.size is not None and self.size < 8:
            raise CxrError(f"--size must be at least 8 pixels, not {self.size}")
        if not self.keep_phi and not self.salt:
            raise CxrError("a salt is needed to pseudonymise patient IDs (or pass keep_phi=True)")
        max_pixels()  # a bad $CXRTOOL_MAX_PIXELS is a usage error now, not an error row per file later

    @property
    def settings(self) -> str:
        frames = "all" if self.all_frames else "first"
        return f"window={self.window};bits={self.bits};size={self.size or 'orig'};frames={frames}"


@dataclass
class PrepSummary:
    """Rows in input order plus counts; ``resumed`` files were already done by an earlier run."""

    rows: list[Row]
    manifest: Path
    counts: Counter = field(default_factory=Counter)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r["status"] == FAILED]


def tag_text(ds, keyword: str) -> str:
    """A header value as text; "" when absent or when its bytes do not parse (a broken VR is not fatal)."""
    try:
        return str(ds.get(keyword, "") or "")
    except Exception:  # pydicom converts on access and raises many types for malformed elements
        return ""


def header_checks(ds) -> list[str]:
    """Why a file may not be a frontal/lateral chest radiograph (modality, body part, view).

    Missing tags are not flagged (many valid files lack them); present, unexpected values are.
    """
    problems = []
    modality = tag_text(ds, "Modality").strip().upper()
    if modality and modality not in CHEST_MODALITIES:
        problems.append(f"modality {modality} is not CR/DX/DR")
    body = tag_text(ds, "BodyPartExamined").strip().upper()
    if body and not any(part in body for part in CHEST_BODY_PARTS):
        problems.append(f"body part {body} is not chest")
    view = view_position(ds)
    if view and view not in CHEST_VIEWS:
        problems.append(f"unusual view/position {view}")
    return problems


def view_position(ds) -> str:
    """View Position, else Patient Position (NIH's Google conversions put PA/AP there)."""
    for key in ("ViewPosition", "PatientPosition"):
        value = tag_text(ds, key).strip().upper()
        if value:
            return value
    return ""


def output_name(src: Path) -> str:
    """``x.dcm`` -> ``x.png``; suffix-less or other names keep their full name: ``IM0001`` -> ``IM0001.png``."""
    return (src.stem if src.suffix.lower() in DICOM_SUFFIXES else src.name) + ".png"


def frame_path(png: Path, frame: int, *, all_frames: bool) -> Path:
    return png.with_name(f"{png.stem}_f{frame:04d}.png") if all_frames else png


def prepare_file(
    src: str | Path, png: str | Path, *, options: PrepOptions, input_name: str, out_root: str | Path
) -> list[Row]:
    """Convert one file; never raises for a bad input (the row says what went wrong).

    Parameters
    ----------
    src:
        The input file (read only).
    png:
        Output path for the first frame (``_fNNNN`` is inserted per frame with ``all_frames``).
    options:
        Rendering and privacy options.
    input_name:
        How the input is named in the manifest (relative to the source root).
    out_root:
        Manifest folder; output paths are written relative to it.

    Returns
    -------
    list of dict
        Manifest rows: one per written frame, or a single skipped/failed row.
    """
    src, png, out_root = Path(src), Path(png), Path(out_root)
    base: Row = {**EMPTY_ROW, "input": input_name, "source": SOURCE, "settings": options.settings}
    try:
        return _convert(src, png, options, base, out_root)
    except ImageLoadError as exc:
        return [{**base, "status": FAILED, "error": exc.reason}]
    except Exception as exc:  # one bad file never stops a folder
        return [{**base, "status": FAILED, "error": f"unexpected error ({type(exc).__name__}: {exc})"}]


def _convert(src: Path, png: Path, options: PrepOptions, base: Row, out_root: Path) -> list[Row]:
    from cxrtool.dicom.decode import frame_count
    from cxrtool.dicom.pixels import render
    from cxrtool.dicom.read import is_dicom, pixel_error_reason, read_dataset
    from cxrtool.privacy import pseudonymise

    check_file(src)  # loops, dangling links, FIFOs, empty files: a failed row naming the reason
    if not is_dicom(src):
        return [{**base, "status": SKIPPED, "error": "not a DICOM file (by content)"}]
    ds = read_dataset(src)
    patient = tag_text(ds, "PatientID")
    checks = header_checks(ds)
    meta: Row = {
        **base,
        "group": patient if options.keep_phi else pseudonymise(patient, options.salt),
        "checks": "; ".join(checks),
        "modality": tag_text(ds, "Modality"),
        "body_part": tag_text(ds, "BodyPartExamined"),
        "view": view_position(ds),
        "photometric": tag_text(ds, "PhotometricInterpretation"),
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")),
    }
    if "PixelData" not in ds:
        return [{**meta, "status": SKIPPED, "error": "no pixel data (not an image object)"}]
    if options.strict and checks:
        return [{**meta, "status": SKIPPED, "error": "header checks failed (--strict): " + "; ".join(checks)}]
    frames = range(frame_count(ds)) if options.all_frames else range(1)
    rows = []
    for frame in frames:
        dst = frame_path(png, frame, all_frames=options.all_frames)
        if _real(dst) == _real(src):
            raise ImageLoadError(src, "output would overwrite the input")
        try:
            img, voi = render(ds, window=options.window, frame=frame, bits=options.bits, size=options.size)
        except Exception as exc:
            raise ImageLoadError(src, pixel_error_reason(exc)) from None
        try:
            _write_png(dst, img)
        except (OSError, ValueError) as exc:
            raise ImageLoadError(src, f"cannot write {dst} ({exc})") from None
        rows.append(
            {
                **meta,
                "path": Path(os.path.relpath(dst, out_root)).as_posix(),
                "frame": str(frame),
                "status": OK,
                "voi": voi.describe(),
                "rows": str(img.shape[0]),
                "columns": str(img.shape[1]),
            }
        )
    return rows


def _write_png(dst: Path, img) -> None:
    """Atomic PNG with no text chunks (nothing from the header, so no PHI)."""
    from PIL import Image

    with atomic_path(dst) as tmp:  # uint8 -> mode L, uint16 -> mode I;16
        Image.fromarray(img).save(tmp, format="PNG", compress_level=1)


def _task(args: tuple[str, str, PrepOptions, str, str]) -> list[Row]:
    src, png, options, name, root = args
    return prepare_file(src, png, options=options, input_name=name, out_root=root)


def _resumable(manifest: Path, options: PrepOptions) -> dict[str, list[Row]]:
    """Rows of an earlier run whose outputs all exist and were made with the same settings."""
    if not manifest.is_file():
        return {}
    try:
        old = read_manifest(manifest)
    except CxrError:
        return {}
    by_input: dict[str, list[Row]] = {}
    for row in old.rows:
        by_input.setdefault(row.get("input", ""), []).append(row)
    return {
        name: rows
        for name, rows in by_input.items()
        if name
        and all(
            r.get("status") == OK
            and r.get("settings") == options.settings
            and r.get("path")
            and old.resolve(r).is_file()
            for r in rows
        )
    }


def _real(path: Path) -> Path:
    """``path`` with symlinks resolved; unlike ``Path.resolve`` a link loop is no ``RuntimeError``."""
    return Path(os.path.realpath(path))


def plan(src: Path, dst: Path) -> list[tuple[Path, Path, str]]:
    """(input, output PNG, input name) for every file under ``src``; outputs mirror the tree.

    Files inside ``dst`` are left out (when ``dst`` lies inside ``src``); two inputs that
    would map to the same PNG (``a.dcm`` and ``a``) keep their full names instead.
    """
    src_root = src if src.is_dir() else src.parent
    dst_res = _real(dst)
    jobs, taken = [], set()
    for path in iter_input_files([src]):
        if _real(path).is_relative_to(dst_res):
            continue
        rel = path.relative_to(src_root)
        png = dst / rel.parent / output_name(path)
        if png in taken:
            png = dst / rel.parent / (path.name + ".png")
        taken.add(png)
        jobs.append((path, png, rel.as_posix()))
    return jobs


def check_paths(src: Path, dst: Path) -> None:
    """Usage errors found before any work: a missing source, or writing into the source folder itself."""
    if not os.path.lexists(src):  # a symlink loop or dangling link exists: it becomes a failed row
        raise CxrError(f"{display_path(src)}: no such file or folder")
    if _real(dst) == _real(src if src.is_dir() else src.parent):
        raise CxrError(f"{dst}: the output folder must differ from the input folder")


def prepare_folder(
    src: str | Path,
    dst: str | Path,
    *,
    options: PrepOptions,
    workers: int = 1,
    manifest: str | Path | None = None,
    on_result: Callable[[list[Row]], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> PrepSummary:
    """Convert every DICOM under ``src`` into ``dst`` (same tree) and write the manifest.

    A rerun with the same settings skips files whose PNGs an earlier run already wrote (status
    ``ok`` in the old manifest and the files present); failures and skips are tried again.

    Raises
    ------
    CxrError
        ``src`` missing, or ``dst`` is ``src`` itself (inputs are never touched).
    """
    src, dst = Path(src), Path(dst)
    check_paths(src, dst)
    remove_stale_temps(dst, recursive=True)  # PNGs / manifest of a run killed mid-write
    manifest_path = Path(manifest) if manifest else dst / MANIFEST_NAME
    out_root = manifest_path.parent
    jobs = plan(src, dst)
    if on_plan:
        on_plan(len(jobs))
    done = _resumable(manifest_path, options)
    results: dict[int, list[Row]] = {}
    counts: Counter = Counter()
    todo = []
    for i, (path, png, name) in enumerate(jobs):
        if name in done:
            results[i] = done[name]
            counts["resumed"] += 1
            if on_result:
                on_result(done[name])
        else:
            todo.append((i, (str(path), str(png), options, name, str(out_root))))
    try:
        last_save = time.monotonic()
        for i, rows in _run(todo, workers):
            results[i] = rows
            counts[rows[0]["status"]] += 1
            if on_result:
                on_result(rows)
            if time.monotonic() - last_save > CHECKPOINT_S:
                _save(manifest_path, results)
                last_save = time.monotonic()
    finally:  # an interrupted run still records what it finished, so the rerun resumes from there
        rows = _save(manifest_path, results)
    counts["frames"] = sum(1 for r in rows if r["status"] == OK)
    return PrepSummary(rows=rows, manifest=manifest_path, counts=counts)


def _save(manifest: Path, results: dict[int, list[Row]]) -> list[Row]:
    rows = [row for i in sorted(results) for row in results[i]]
    write_manifest(manifest, rows, EXTRA_COLUMNS)
    return rows


def _run(todo: list[tuple[int, tuple]], workers: int) -> Iterator[tuple[int, list[Row]]]:
    """Run tasks in this process (``workers <= 1``) or in a spawn-started process pool."""
    if workers <= 1 or len(todo) <= 1:
        for i, args in todo:
            yield i, _task(args)
        return
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=get_context("spawn"),
        initializer=die_with,
        initargs=(os.getpid(),),
    )  # workers end with this run, even after a kill -9
    try:
        futures = {pool.submit(_task, args): (i, args) for i, args in todo}
        for fut in as_completed(futures):
            i, args = futures[fut]
            try:
                yield i, fut.result()
            except Exception as exc:  # a crashed worker (e.g. a codec segfault) fails its file only
                row = {**EMPTY_ROW, "input": args[3], "source": SOURCE, "settings": args[2].settings}
                yield i, [{**row, "status": FAILED, "error": f"worker process failed ({type(exc).__name__}: {exc})"}]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
