"""``cxrtool prep dicom SRC DST``: thin Typer wrapper over :func:`cxrtool.dicom.prepare.prepare_folder`."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

import typer

from cxrtool.cli._console import EXIT_OK, EXIT_SOME_FAILED, err, out, progress, user_errors


class Window(str, Enum):
    """VOI policies; kept equal to ``cxrtool.dicom.pixels.WINDOW_POLICIES`` by a test (no numpy at --help)."""

    dicom = "dicom"
    minmax = "minmax"
    none = "none"


class Bits(str, Enum):
    b8 = "8"
    b16 = "16"


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def dicom(
    src: Path = typer.Argument(..., exists=True, help="DICOM file or folder tree (files are recognised by content)."),
    dst: Path = typer.Argument(..., file_okay=False, help="Output folder; mirrors SRC's tree with one PNG per image."),
    window: Window = typer.Option(
        Window.dicom,
        "--window",
        "-w",
        help="dicom: the file's VOI LUT or first window (min-max if none); minmax: image min-max; "
        "none: full stored range.",
    ),
    bits: Bits = typer.Option(Bits.b8, "--bits", help="PNG bit depth."),
    size: int | None = typer.Option(None, "--size", min=8, help="Resize so the long side is SIZE (anti-aliased)."),
    all_frames: bool = typer.Option(False, "--all-frames", help="Write every frame of multi-frame files (NAME_f0000.png ...)."),
    strict: bool = typer.Option(False, "--strict", help="Skip files whose header is not a chest CR/DX (modality, body part, view)."),
    keep_phi: bool = typer.Option(False, "--keep-phi", help="Write real Patient IDs to the manifest instead of salted pseudonyms."),
    workers: int = typer.Option(_default_workers(), "--workers", "-j", min=1, help="Worker processes."),
    manifest: Path | None = typer.Option(None, "--manifest", help="Manifest CSV to write (default: DST/manifest.csv)."),
    salt_file: Path | None = typer.Option(
        None, "--salt-file", help="Salt for pseudonyms (default: $CXRTOOL_SALT, else ~/.config/cxrtool/salt)."
    ),
) -> None:
    """Convert DICOM files to PNG the way a viewer shows them (modality LUT, VOI, MONOCHROME1), with a manifest.

    Reruns resume: files already converted with the same settings are skipped.  Exit code 0 when
    every DICOM converted (skips included), 1 when some failed, 2 for usage errors.
    """
    from cxrtool.dicom.prepare import FAILED, PrepOptions, check_paths, prepare_folder
    from cxrtool.privacy import default_salt_path, load_or_create_salt

    with user_errors():
        check_paths(src, dst)
        salt = "" if keep_phi else load_or_create_salt(salt_file or default_salt_path())
        options = PrepOptions(
            window=window.value, bits=int(bits.value), size=size, all_frames=all_frames, strict=strict, keep_phi=keep_phi, salt=salt
        )
        with progress() as bar:
            task = bar.add_task("prep dicom", total=None, info="")

            def on_result(rows: list[dict[str, str]]) -> None:
                row = rows[0]
                if row["status"] == FAILED:
                    bar.console.print(f"[red]failed:[/] {row['input']}: {row['error']}", highlight=False, soft_wrap=True)
                bar.update(task, advance=1, info=row["input"][-40:])

            summary = prepare_folder(
                src,
                dst,
                options=options,
                workers=workers,
                manifest=manifest,
                on_result=on_result,
                on_plan=lambda n: bar.update(task, total=n),
            )
    _print_summary(summary)
    raise typer.Exit(EXIT_SOME_FAILED if summary.failed else EXIT_OK)


def _print_summary(summary) -> None:
    from collections import Counter

    from rich.table import Table

    table = Table(title="prep dicom", title_justify="left")
    table.add_column("result")
    table.add_column("files", justify="right")
    c = summary.counts
    for label, key in (("converted", "ok"), ("already done (resumed)", "resumed"), ("skipped", "skipped"), ("failed", "failed")):
        table.add_row(label, str(c.get(key, 0)))
    table.add_row("PNG frames in manifest", str(c.get("frames", 0)))
    out.print(table)
    reasons = Counter(r["error"] for r in summary.rows if r["status"] == "skipped")
    for reason, n in reasons.most_common():
        err.print(f"skipped {n}: {reason}", highlight=False, soft_wrap=True)
    flagged = sum(1 for r in summary.rows if r["status"] == "ok" and r.get("checks"))
    if flagged:
        err.print(f"{flagged} converted file(s) have header warnings (column 'checks'; --strict skips them)", highlight=False)
    err.print(f"manifest: {summary.manifest}", highlight=False, soft_wrap=True)


def register(group: typer.Typer) -> None:
    """Add ``dicom`` to the prep group."""
    group.command("dicom")(dicom)
