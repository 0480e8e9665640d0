"""``cxrtool predict``: files and folders -> streamed CSV/JSONL predictions (thin wrapper)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cxrtool.cli._console import EXIT_OK, EXIT_SOME_FAILED, err, out as stdout, progress, user_errors

BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "openvino", "tensorrt")


def _check_backend(value: str) -> str:
    if value not in BACKEND_CHOICES:
        raise typer.BadParameter(f"choose from {', '.join(BACKEND_CHOICES)}")
    return value


def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image/DICOM files and folders (searched recursively).")],
    model: Annotated[Path, typer.Option("--model", "-m", help="cxrtool checkpoint (.safetensors), ONNX file or TensorRT engine.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .csv or .jsonl, written as results complete.")],
    backend: Annotated[str, typer.Option(help="auto|torch|onnxruntime|openvino|tensorrt.", callback=_check_backend)] = "auto",
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model call.")] = 16,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decode processes (default: cores - 1; 0 = decode inline).")] = None,
    shard: Annotated[Optional[str], typer.Option(help="Predict only shard i of n (1-based, e.g. 2/4), stable across machines.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an existing output, skipping files it already has.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    window: Annotated[Optional[str], typer.Option(help="DICOM display policy override: dicom, minmax or none.")] = None,
) -> None:
    """Predict every film in PATHS; exit 0 when all were read, 1 when some files failed, 2 on usage errors."""
    from rich.table import Table

    from cxrtool.infer.predict import PredictOptions, default_workers, parse_shard, predict_to_file

    with user_errors():
        options = PredictOptions(
            batch_size=batch_size,
            workers=default_workers() if workers is None else workers,
            shard=parse_shard(shard) if shard else None,
            resume=resume,
            overwrite=overwrite,
            window=window,
        )
        with progress() as bar:
            task = bar.add_task("predict", total=None, info="")

            def advance(rows: list) -> None:
                bad = sum(r.error is not None for r in rows)
                bar.advance(task, len(rows))
                if bad:
                    bar.update(task, info=f"[red]{bad} failed in last batch[/]")

            summary = predict_to_file(inputs, model, out, options, backend=backend, device=device, on_rows=advance)

    table = Table(
        title=f"predictions -> {summary.out}",
        caption=f"model {summary.model_id}, {summary.backend} on {summary.device}",
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
    table.add_row("[red]failed[/]", str(summary.failed))
    if summary.skipped_resume:
        table.add_row("already in output (resume)", str(summary.skipped_resume))
    if summary.skipped_shard:
        table.add_row("other shards", str(summary.skipped_shard))
    stdout.print(table)
    for path, reason in summary.failures:
        err.print(f"[red]failed:[/] {path}: {reason}", highlight=False, soft_wrap=True)
    if summary.failed > len(summary.failures):
        err.print(f"... and {summary.failed - len(summary.failures)} more failures (see the error column of {summary.out})")
    err.print(f"{summary.predicted} predicted in {summary.seconds:.1f} s ({summary.images_per_s:.1f} images/s)")
    raise typer.Exit(EXIT_SOME_FAILED if summary.failed else EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add ``predict`` to the root app."""
    app.command(no_args_is_help=True)(predict)
