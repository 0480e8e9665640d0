"""``cxrtool predict``: files and folders -> streamed CSV/JSONL predictions (thin wrapper)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cxrtool.cli._console import EXIT_OK, EXIT_SOME_FAILED, err, failed, progress, styled, user_errors
from cxrtool.cli._console import out as stdout
from cxrtool.cli._dicomweb import (
    DEFAULT_TIMEOUT,
    BasicAuthEnv,
    BasicAuthFile,
    CaFile,
    DicomwebRoot,
    HttpTimeout,
    Qido,
    TokenEnv,
    TokenFile,
    connection_options,
    results_destination,
    split_inputs,
)
from cxrtool.cli._options import Backend, Window, check_inputs, default_of, device_option, parse_shard_option
from cxrtool.fsutil import check_writable_output, display_path
from cxrtool.infer.options import PredictOptions


def predict(
    model: Annotated[
        Path, typer.Option("--model", "-m", help="cxrtool checkpoint (.safetensors), ONNX file or TensorRT engine.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .csv or .jsonl, written as results complete.")],
    inputs: Annotated[
        Optional[list[str]],
        typer.Argument(
            metavar="PATHS",
            help="Image/DICOM files and folders (searched recursively), "
            "or a dicomweb+http(s)://…/studies/UID[/series/UID] address.",
        ),
    ] = None,
    backend: Annotated[
        Backend, typer.Option(help="Runtime; auto picks the fastest available for the device and model file.")
    ] = Backend.auto,
    device: Annotated[str, typer.Option(callback=device_option(auto=False), help="cpu, cuda or cuda:N.")] = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model call.")] = default_of(
        PredictOptions, "batch_size"
    ),
    workers: Annotated[
        Optional[int],
        typer.Option(
            min=0,
            show_default="cores - 1; inline for ONNX Runtime / OpenVINO on <= 2 cores",
            help="Decode processes (0 = decode inline).",
        ),
    ] = None,
    shard: Annotated[
        Optional[str],
        typer.Option(
            callback=parse_shard_option, help="Predict only shard i of n (1-based, e.g. 2/4), stable across machines."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an existing output, skipping files it already has.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    window: Annotated[
        Optional[Window], typer.Option(show_default="the model's", help="DICOM display policy override.")
    ] = None,
    dicom_out: Annotated[
        Optional[str],
        typer.Option(
            "--dicom-out",
            help="Also write a DICOM SR (+ heatmap SC from a checkpoint) per DICOM input "
            "to this folder, or STOW-RS them into each film's study at a dicomweb+http(s):// service root.",
        ),
    ] = None,
    html: Annotated[
        Optional[Path],
        typer.Option("--html", help="Also write a self-contained HTML report of the rows here.", dir_okay=False),
    ] = None,
    reject_ood: Annotated[
        bool,
        typer.Option(
            "--reject-ood",
            help="Leave the predicted class empty for flagged films (out of distribution, header gate or view check).",
        ),
    ] = False,
    dicomweb: DicomwebRoot = None,
    qido: Qido = None,
    ca_file: CaFile = None,
    token_env: TokenEnv = None,
    token_file: TokenFile = None,
    basic_auth_env: BasicAuthEnv = None,
    basic_auth_file: BasicAuthFile = None,
    http_timeout: HttpTimeout = DEFAULT_TIMEOUT,
) -> None:
    """Predict every film in PATHS; exit 0 when all were read, 1 when some files failed, 2 on usage errors."""
    from contextlib import nullcontext

    from rich.table import Table

    with user_errors():
        connection = connection_options(ca_file, token_env, token_file, basic_auth_env, basic_auth_file, http_timeout)
        sources, dicomweb_source = split_inputs(inputs, dicomweb, qido, connection)
        total = check_inputs(inputs)
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
        stow = results_destination(dicom_out, dicomweb_source, connection)
        if html is not None:
            check_writable_output(html, "file")
        from cxrtool.infer.predict import predict_to_file  # after the usage checks: a mistake costs no numpy
        from cxrtool.modelfile.loaded import open_model

        loaded = open_model(model)  # the run's one read of the model file: predict, DICOM results and report share it
        stower = None
        if stow is not None:  # SR + SC STOWed per batch as the rows are written (cxrtool.dicomweb.results)
            from cxrtool.dicomweb.results import ResultStower

            stower = ResultStower(stow, loaded, out, resume=resume)
        with progress(lazy=True) as bar, stower or nullcontext():
            task = bar.add_task("predict", total=None if shard or resume else total, info="")

            def advance(rows: list) -> None:
                if stower is not None:
                    stower(rows)
                bad = sum(r.error is not None for r in rows)
                bar.advance(task, len(rows))
                if bad:
                    bar.update(task, info=f"{bad} failed in last batch")

            web = {}
            if dicomweb_source is not None:
                decoder = dicomweb_source.keeping_decoder(stower.folder) if stower else dicomweb_source.decoder
                web = dict(decode=decoder, header=dicomweb_source.header_verdict)
            summary = predict_to_file(
                sources,
                loaded,
                out,
                options,
                backend=backend.value,
                device=device,
                on_start=stower.start if stower else None,
                on_rows=advance,
                **web,
            )

    stdout.print(f"predictions -> {display_path(summary.out)}", soft_wrap=True)  # a path is never wrapped to the table
    table = Table()
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
    model_line = f"model {summary.model_id}, {summary.backend} on {summary.device}" + (
        f" (auto: {summary.choice})" if summary.choice else ""
    )
    stdout.print(model_line, soft_wrap=True)
    for path, reason in summary.failures:
        err.print(failed(display_path(path), reason), soft_wrap=True)
    if summary.failed > len(summary.failures):
        err.print(
            f"... and {summary.failed - len(summary.failures)} more failures "
            f"(see the error column of {display_path(summary.out)})"
        )
    err.print(
        f"{summary.predicted} predicted in {summary.seconds:.1f} s ({summary.images_per_s:.1f} images/s), "
        f"{summary.flagged} flagged"
    )
    for notice in summary.notices:
        err.print(notice, soft_wrap=True)
    results_failed = False
    if stower is not None:
        from cxrtool.dicomweb.results import summary_line as stow_line

        for r in stower.failures:
            err.print(failed(r.path, r.reason), soft_wrap=True)
        err.print(stow_line(stower.counts, stow), soft_wrap=True)
        results_failed = bool(stower.failures)
    elif dicom_out is not None:  # post-pass over the rows just written (cxrtool.results)
        from cxrtool.results.write import failed_count, results_for_predictions, summary_line

        with user_errors():
            results = results_for_predictions(summary.out, dicom_out, model=loaded)
            err.print(summary_line(results, dicom_out), soft_wrap=True)
        results_failed = failed_count(results) > 0
    if html is not None:
        from cxrtool.report.html import build_report

        with user_errors():
            err.print(f"report: {build_report(summary.out, html, model=loaded).path}", soft_wrap=True)
    raise typer.Exit(EXIT_SOME_FAILED if summary.failed or results_failed else EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add ``predict`` to the root app."""
    app.command(no_args_is_help=True)(predict)
