"""``cxrtool predict``: files and folders -> streamed CSV/JSONL predictions (thin wrapper)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cxrtool.cli._console import EXIT_OK, EXIT_SOME_FAILED, err, failed, out as stdout, progress, styled, user_errors
from cxrtool.cli._options import Backend, Window, default_of, parse_shard_option
from cxrtool.fsutil import check_writable_output, display_path
from cxrtool.infer.predict import PredictOptions


def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image/DICOM files and folders (searched recursively).")],
    model: Annotated[Path, typer.Option("--model", "-m", help="cxrtool checkpoint (.safetensors), ONNX file or TensorRT engine.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .csv or .jsonl, written as results complete.")],
    backend: Annotated[Backend, typer.Option(help="Runtime; auto picks the fastest available for the device and model file.")] = Backend.auto,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model call.")] = default_of(PredictOptions, "batch_size"),
    workers: Annotated[
        Optional[int],
        typer.Option(min=0, show_default="cores - 1; inline for ONNX Runtime / OpenVINO on <= 2 cores", help="Decode processes (0 = decode inline)."),
    ] = None,
    shard: Annotated[
        Optional[str], typer.Option(callback=parse_shard_option, help="Predict only shard i of n (1-based, e.g. 2/4), stable across machines.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an existing output, skipping files it already has.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    window: Annotated[
        Optional[Window], typer.Option(show_default="the model's", help="DICOM display policy override.")
    ] = None,
    dicom_out: Annotated[
        Optional[Path], typer.Option("--dicom-out", help="Also write a DICOM SR (+ heatmap SC from a checkpoint) per DICOM input here.")
    ] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML report of the rows here.", dir_okay=False)] = None,
    reject_ood: Annotated[
        bool, typer.Option("--reject-ood", help="Leave the predicted class empty for flagged films (out of distribution or header gate).")
    ] = False,
) -> None:
    """Predict every film in PATHS; exit 0 when all were read, 1 when some files failed, 2 on usage errors."""
    from rich.table import Table

    from cxrtool.infer.predict import predict_to_file

    with user_errors():
        options = PredictOptions(
            batch_size=batch_size,
            workers=workers,
            shard=shard,  # type: ignore[arg-type]  (parse_shard_option made it a tuple)
            resume=resume,
            overwrite=overwrite,
            window=window.value if window else None,
            reject_ood=reject_ood,
        )
        check_writable_output(out, "file")
        if dicom_out is not None:
            check_writable_output(dicom_out, "dir")
        if html is not None:
            check_writable_output(html, "file")
        with progress() as bar:
            task = bar.add_task("predict", total=None, info="")

            def advance(rows: list) -> None:
                bad = sum(r.error is not None for r in rows)
                bar.advance(task, len(rows))
                if bad:
                    bar.update(task, info=f"{bad} failed in last batch")

            summary = predict_to_file(inputs, model, out, options, backend=backend.value, device=device, on_rows=advance)

    table = Table(
        title=f"predictions -> {display_path(summary.out)}",
        caption=f"model {summary.model_id}, {summary.backend} on {summary.device}" + (f" (auto: {summary.choice})" if summary.choice else ""),
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("predicted")
    table.add_column("files", justify="right")
    for name in summary.class_names:
        table.add_row(name, str(summary.per_class.get(name, 0)))
    for name, count in sorted(summary.per_class.items()):
        if name not in summary.class_names:
            table.add_row(name, str(count))
    for flag, count in sorted(summary.flags.items()):
        if flag != "ok":
            table.add_row(styled(f"flagged: {flag}", "yellow"), str(count))
    table.add_row(styled("failed", "red"), str(summary.failed))
    if summary.skipped_resume:
        table.add_row("already in output (resume)", str(summary.skipped_resume))
    if summary.skipped_shard:
        table.add_row("other shards", str(summary.skipped_shard))
    stdout.print(table)
    for path, reason in summary.failures:
        err.print(failed(display_path(path), reason), soft_wrap=True)
    if summary.failed > len(summary.failures):
        err.print(f"... and {summary.failed - len(summary.failures)} more failures (see the error column of {display_path(summary.out)})")
    err.print(f"{summary.predicted} predicted in {summary.seconds:.1f} s ({summary.images_per_s:.1f} images/s), {summary.flagged} flagged")
    for notice in summary.notices:
        err.print(notice, soft_wrap=True)
    dicom_failed = 0
    if dicom_out is not None:  # post-pass over the rows just written (cxrtool.results)
        from cxrtool.results.write import failed_count, results_for_predictions, summary_line

        with user_errors():
            results = results_for_predictions(summary.out, dicom_out, model=model)
            err.print(summary_line(results, dicom_out), soft_wrap=True)
        dicom_failed = failed_count(results)
    if html is not None:
        from cxrtool.report.html import build_report

        with user_errors():
            err.print(f"report: {build_report(summary.out, html, model=model).path}", soft_wrap=True)
    raise typer.Exit(EXIT_SOME_FAILED if summary.failed or dicom_failed else EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add ``predict`` to the root app."""
    app.command(no_args_is_help=True)(predict)
