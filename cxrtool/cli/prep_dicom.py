"""``cxrtool prep dicom SRC DST``: thin Typer wrapper over :func:`cxrtool.dicom.prepare.prepare_folder`."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from cxrtool.cli._console import EXIT_OK, EXIT_SOME_FAILED, err, failed, out, progress, user_errors
from cxrtool.cli._options import Window, default_of
from cxrtool.dicom.prepare import PrepOptions


class Bits(str, Enum):
    b8 = "8"
    b16 = "16"


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def dicom(
    src: Annotated[
        Path, typer.Argument(help="DICOM file or folder tree (files are recognised by content).")
    ],  # missing: check_paths; a link loop: a failed row
    dst: Annotated[
        Path, typer.Argument(file_okay=False, help="Output folder; mirrors SRC's tree with one PNG per image.")
    ],
    window: Annotated[
        Window,
        typer.Option(
            "--window",
            "-w",
            help="dicom: the file's VOI LUT or first window (min-max if none); "
            "minmax: image min-max; none: full stored range.",
        ),
    ] = Window(default_of(PrepOptions, "window")),
    bits: Annotated[Bits, typer.Option("--bits", help="PNG bit depth.")] = Bits(str(default_of(PrepOptions, "bits"))),
    size: Annotated[
        Optional[int],
        typer.Option(
            "--size",
            min=8,
            metavar="SIZE",
            show_default="the film's own size",
            help="Resize so the long side is SIZE (anti-aliased).",
        ),
    ] = None,
    all_frames: Annotated[
        bool, typer.Option("--all-frames", help="Write every frame of multi-frame files (NAME_f0000.png ...).")
    ] = False,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Skip files whose header is not a chest CR/DX/DR (modality, body part, view)."),
    ] = False,
    keep_phi: Annotated[
        bool, typer.Option("--keep-phi", help="Write real Patient IDs to the manifest instead of salted pseudonyms.")
    ] = False,
    workers: Annotated[
        int, typer.Option("--workers", "-j", min=1, show_default="cores, at most 4", help="Worker processes.")
    ] = _default_workers(),
    manifest: Annotated[
        Optional[Path], typer.Option("--manifest", show_default="DST/manifest.csv", help="Manifest CSV to write.")
    ] = None,
    salt_file: Annotated[
        Optional[Path],
        typer.Option(
            "--salt-file", show_default="$CXRTOOL_SALT, else ~/.config/cxrtool/salt", help="Salt for pseudonyms."
        ),
    ] = None,
) -> None:
    """Convert DICOM files to PNG the way a viewer shows them (modality LUT, VOI, MONOCHROME1), with a manifest.

    Reruns resume: files already converted with the same settings are skipped.  Exit code 0 when
    every DICOM converted (skips included), 1 when some failed, 2 for usage errors.
    """
    from cxrtool.dicom.prepare import FAILED, check_paths, prepare_folder
    from cxrtool.fsutil import check_writable_output
    from cxrtool.locks import owned_output
    from cxrtool.privacy import default_salt_path, load_or_create_salt

    with user_errors():
        check_paths(src, dst)
        check_writable_output(dst, "dir")
        if manifest is not None:
            check_writable_output(manifest, "file")
        salt = "" if keep_phi else load_or_create_salt(salt_file or default_salt_path())
        options = PrepOptions(
            window=window.value,
            bits=int(bits.value),
            size=size,
            all_frames=all_frames,
            strict=strict,
            keep_phi=keep_phi,
            salt=salt,
        )
        with progress() as bar:
            task = bar.add_task("prep dicom", total=None, info="")

            def on_result(rows: list[dict[str, str]]) -> None:
                row = rows[0]
                if row["status"] == FAILED:
                    bar.console.print(failed(row["input"], row["error"]), soft_wrap=True)
                bar.update(task, advance=1, info=row["input"][-40:])

            with owned_output(dst):  # one run per output folder; a second one refuses (exit 2)
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
    for label, key in (
        ("converted", "ok"),
        ("already done (resumed)", "resumed"),
        ("skipped", "skipped"),
        ("failed", "failed"),
    ):
        table.add_row(label, str(c.get(key, 0)))
    table.add_row("PNG frames in manifest", str(c.get("frames", 0)))
    out.print(table)
    reasons = Counter(r["error"] for r in summary.rows if r["status"] == "skipped")
    for reason, n in reasons.most_common():
        err.print(f"skipped {n}: {reason}", highlight=False, soft_wrap=True)
    flagged = sum(1 for r in summary.rows if r["status"] == "ok" and r.get("checks"))
    if flagged:
        err.print(
            f"{flagged} converted file(s) have header warnings (column 'checks'; --strict skips them)", highlight=False
        )
    err.print(f"manifest: {summary.manifest}", highlight=False, soft_wrap=True)


def register(group: typer.Typer) -> None:
    """Add ``dicom`` to the prep group."""
    group.command("dicom")(dicom)
