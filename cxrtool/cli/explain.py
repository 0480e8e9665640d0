"""``cxrtool explain``: LRP heatmaps, overlays, panels and the shortcut audit for films and folders."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

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
from cxrtool.cli._options import check_inputs, default_of, require_checkpoint
from cxrtool.explain.composites import COMPOSITES
from cxrtool.explain.options import EXPLAINED, AuditCfg, ExplainOptions

Composite = Enum("Composite", {name: name for name in COMPOSITES}, type=str)  # type: ignore[misc]  (choices from the registry)
Explained = Enum("Explained", {name: name for name in EXPLAINED}, type=str)  # type: ignore[misc]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("explain")(explain)


def explain(
    model: Annotated[Path, typer.Option("--model", "-m", help="cxrtool checkpoint (.safetensors).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created; inputs are never modified).")],
    paths: Annotated[
        Optional[list[str]],
        typer.Argument(
            metavar="PATHS",
            help="Films (PNG/JPEG/DICOM...) or folders of them, "
            "or a dicomweb+http(s)://…/studies/UID[/series/UID[/instances/UID]] address.",
        ),
    ] = None,
    target: Annotated[str, typer.Option("--target", "-t", help="'predicted', 'all', or a class name.")] = default_of(
        ExplainOptions, "target"
    ),
    explained: Annotated[
        Explained,
        typer.Option(
            "--explained",
            help="What the map explains: the class's log-odds against the other classes (log-odds) or its logit; "
            "auto: log-odds for a multiclass model, logit for a multilabel one.",
        ),
    ] = Explained(default_of(ExplainOptions, "explained")),
    composite: Annotated[
        Composite, typer.Option("--composite", "-c", help="LRP composite (or 'gradient' x input).")
    ] = Composite(default_of(ExplainOptions, "composite")),
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Films per forward/backward pass.")
    ] = default_of(ExplainOptions, "batch_size"),
    border: Annotated[
        float, typer.Option("--border", help="Audit border band, as a fraction of the side.")
    ] = default_of(AuditCfg, "border"),
    dicom_out: Annotated[
        Optional[str],
        typer.Option(
            "--dicom-out",
            help="Also write a DICOM SR + heatmap SC per DICOM input to this folder, "
            "or STOW-RS them into each film's study at a dicomweb+http(s):// service root.",
        ),
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Also write a self-contained HTML report (films, heatmaps, predicted class) here.",
            dir_okay=False,
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="Where LRP runs: auto (CUDA when present), cpu, cuda or cuda:N.")
    ] = "auto",
    dicomweb: DicomwebRoot = None,
    qido: Qido = None,
    ca_file: CaFile = None,
    token_env: TokenEnv = None,
    token_file: TokenFile = None,
    basic_auth_env: BasicAuthEnv = None,
    basic_auth_file: BasicAuthFile = None,
    http_timeout: HttpTimeout = DEFAULT_TIMEOUT,
) -> None:
    """Explain predictions with LRP: heatmap .npy, overlay and panel PNGs, explain.csv, shortcut-audit table.

    Exit codes: 0 all explained, 1 some films could not be read (error rows in explain.csv) or got no DICOM
    result, 2 usage error.
    """
    from cxrtool.cli._console import EXIT_SOME_FAILED, err, failed, progress, user_errors
    from cxrtool.cli._console import out as stdout

    with user_errors():  # mistakes first: before torch is imported or a model loaded
        connection = connection_options(ca_file, token_env, token_file, basic_auth_env, basic_auth_file, http_timeout)
        files, web = split_inputs(paths, dicomweb, qido, connection)
        check_inputs(paths)
        require_checkpoint(model, "explain")
        stow = results_destination(dicom_out, web, connection)

    from rich.table import Table

    from cxrtool.devices import resolve_device
    from cxrtool.explain.attribution import explain_files, plan_inputs, resolve_quantity
    from cxrtool.fsutil import check_writable_output
    from cxrtool.inputs import max_pixels
    from cxrtool.modelfile.loaded import open_model
    from cxrtool.models.checkpoint import model_from_loaded
    from cxrtool.trust import load_trust
    from cxrtool.trust.assess import NO_STATS_NOTICE

    with user_errors():
        check_writable_output(out, "dir")
        if html is not None:
            check_writable_output(html, "file")
        max_pixels()  # a bad $CXRTOOL_MAX_PIXELS is a usage error before the model is loaded
        run_on = str(resolve_device(device))  # cuda without a GPU: a usage error before any work
        loaded = open_model(model)  # the run's one read of the model file: explain, DICOM results and report share it
        net, card = model_from_loaded(loaded), loaded.card
        resolve_quantity(explained.value, card.task)  # log-odds of a multilabel model: exit 2 before any progress
        trust = load_trust(loaded)
        if not trust.has_ood:
            err.print(NO_STATS_NOTICE.format(model=model), soft_wrap=True)
        try:
            options = ExplainOptions(
                composite=composite.value,
                target=target,
                explained=explained.value,
                batch_size=batch_size,
                audit=AuditCfg(border=border),
                device=run_on,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        if web is not None:  # streamed: listed page by page, each instance fetched once as its batch comes
            from cxrtool.dicomweb.explain import FetchedFilms, explain_plan

            plan, total, films = explain_plan(web), None, FetchedFilms(web)
        else:
            plan = plan_inputs(files)
            total, films = len(plan), None
        stowed = None
        if stow is not None:  # each film's SR + SC STOWed from explain's own rows, while its copy is open
            from cxrtool.dicomweb.explain import StowExplained

            stowed = StowExplained(stow, loaded, composite.value)
        with progress() as bar:
            task = bar.add_task("explain", total=total, info="")

            def on_file(path: str, error: str | None) -> None:
                bar.advance(task)
                if error:
                    err.print(failed(path, error), soft_wrap=True)

            report = explain_files(
                plan, net, card, out, options, on_file=on_file, trust=trust, films=films, after_film=stowed
            )

    table = Table(title=f"Shortcut audit ({composite.value}): share of positive relevance", title_justify="left")
    for col in ("target", "n", "border", "x uniform", "outside lung box", "x uniform"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for row in report.summary:
        fmt = lambda v: "-" if isinstance(v, float) and math.isnan(v) else f"{v:.2f}"  # noqa: E731
        table.add_row(
            str(row["target"]),
            str(row["n"]),
            fmt(row["mean_share_border"]),
            fmt(row["ratio_border"]),
            fmt(row["mean_share_outside_lung"]),
            fmt(row["ratio_outside_lung"]),
        )
    stdout.print(table)
    if report.shortcut:
        from cxrtool.trust.shortcut import summary_lines

        stdout.print("Shortcut audit (data side: can the classes be told apart without the lungs?)", markup=False)
        for line in summary_lines(report.shortcut):
            stdout.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    stdout.print(f"results: {report.csv_path}", highlight=False, soft_wrap=True)
    dicom_failed = 0
    if stowed is not None and stow is not None:  # stored film by film during the run (cxrtool.dicomweb.explain)
        from collections import Counter

        from cxrtool.dicomweb.results import summary_line as stow_line

        for r in stowed.results:
            if r.status == "failed":
                err.print(failed(r.path, r.reason), soft_wrap=True)
        err.print(stow_line(Counter(r.status for r in stowed.results), stow), soft_wrap=True)
        dicom_failed = sum(r.status == "failed" for r in stowed.results)
    elif dicom_out is not None:  # post-pass over the DICOM inputs (cxrtool.results)
        from cxrtool.results.write import failed_count, results_for_explain, summary_line

        with user_errors():
            results = results_for_explain(report.rows, dicom_out, model=loaded, composite=composite.value)
            err.print(summary_line(results, dicom_out), soft_wrap=True)
        dicom_failed = failed_count(results)
    if html is not None:
        from cxrtool.report.html import build_report

        with user_errors():
            err.print(f"report: {build_report(None, html, explain_dir=out, model=loaded).path}", soft_wrap=True)
    if report.n_failed:
        of = f" of {total}" if total is not None else ""
        err.print(f"{report.n_failed}{of} files failed", highlight=False)
    if report.n_failed or dicom_failed:
        raise typer.Exit(EXIT_SOME_FAILED)
