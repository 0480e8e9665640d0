"""``cxrtool export``: checkpoint -> ONNX (parity-checked against torch), NNCF INT8 and/or a TensorRT engine."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.text import Text

from cxrtool.cli._console import EXIT_SOME_FAILED, err, error, out, progress, user_errors, warning
from cxrtool.cli._options import default_of, device_option
from cxrtool.export.options import CHECK_COUNT, ONNX_OPSET, ONNX_TOLERANCE, TRT_TOLERANCE
from cxrtool.modelfile import BatchProfile

if TYPE_CHECKING:
    from cxrtool.export.pipeline import ExportResult
    from cxrtool.export.progress import ExportProgress


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command(name="export")(export)


def export(
    model: Annotated[
        Path, typer.Argument(help="A cxrtool checkpoint (.safetensors); for --trt alone also an exported .onnx.")
    ],
    onnx: Annotated[
        bool, typer.Option("--onnx", help="Write engines/<name>.onnx (dynamic batch, model card in its metadata).")
    ] = False,
    trt: Annotated[
        bool, typer.Option("--trt", help="Build a TensorRT engine from the ONNX export (needs TensorRT 10+ and a GPU).")
    ] = False,
    out_dir: Annotated[
        Optional[Path],
        typer.Option("--out-dir", show_default="engines/ next to the checkpoint", help="Folder for the files."),
    ] = None,
    check_images: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--check-images",
            help="Real films (files or folders) for the parity check; repeatable. Without it seeded noise is used.",
        ),
    ] = None,
    check_count: Annotated[
        int, typer.Option("--check-count", min=1, help="How many check films to use, spread over the folder.")
    ] = CHECK_COUNT,
    tolerance: Annotated[
        float, typer.Option("--tolerance", min=0.0, help="Max abs logit difference ONNX Runtime vs torch.")
    ] = ONNX_TOLERANCE,
    opset: Annotated[int, typer.Option("--opset", min=13, help="ONNX opset.")] = ONNX_OPSET,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="TensorRT: fp16 engine (the ONNX converted to fp16, strongly typed build).")
    ] = False,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="NNCF INT8 (needs --calib): an OpenVINO IR, or with --trt a Q/DQ ONNX and its engine; "
            "written only if held-out films agree with fp32.",
        ),
    ] = False,
    calib: Annotated[
        Optional[Path],
        typer.Option(
            "--calib",
            help="INT8: folder of films or manifest .csv; train rows calibrate, "
            "val/test rows (a quarter of a folder) check.",
        ),
    ] = None,
    min_batch: Annotated[int, typer.Option("--min-batch", help="TensorRT profile: smallest batch.")] = default_of(
        BatchProfile, "min"
    ),
    opt_batch: Annotated[
        int, typer.Option("--opt-batch", help="TensorRT profile: batch the kernels are tuned for.")
    ] = default_of(BatchProfile, "opt"),
    max_batch: Annotated[int, typer.Option("--max-batch", help="TensorRT profile: largest batch.")] = default_of(
        BatchProfile, "max"
    ),
    device: Annotated[
        str,
        typer.Option(
            "--device", callback=device_option(auto=False), help="TensorRT: GPU to build for (cuda or cuda:N)."
        ),
    ] = "cuda",
    trt_tolerance: Annotated[
        Optional[float],
        typer.Option(
            "--trt-tolerance",
            min=0.0,
            show_default=", ".join(f"{p} {t:g}" for p, t in TRT_TOLERANCE.items()),
            help="Max abs logit difference TensorRT vs ONNX Runtime.",
        ),
    ] = None,
) -> None:
    """Export a checkpoint to ONNX, NNCF INT8 and/or TensorRT; each file is written only if it passes its check against
    fp32."""
    from cxrtool.export.parity import ParityError
    from cxrtool.export.pipeline import export_model
    from cxrtool.fsutil import check_writable_output

    with user_errors():
        if out_dir is not None:
            check_writable_output(out_dir, "dir")
        profile = BatchProfile(min_batch, opt_batch, max_batch) if trt else None
        view = _ExportView()
        try:
            with view:
                result = export_model(
                    model,
                    onnx=onnx,
                    trt=trt,
                    out_dir=out_dir,
                    check_images=check_images or (),
                    check_count=check_count,
                    tolerance=tolerance,
                    opset=opset,
                    fp16=fp16,
                    int8=int8,
                    calib=calib,
                    profile=profile,
                    device=device,
                    trt_tolerance=trt_tolerance,
                    on_step=view.step,
                    on_progress=view.count,
                )
        except ParityError as exc:
            err.print(error(f"export failed: {exc}"), soft_wrap=True)
            raise typer.Exit(EXIT_SOME_FAILED) from None
    _render(result)


class _ExportView:
    """The export's steps and film counts on stderr, one display at a time.

    A step (a message, no count) is a spinner on a terminal and its own line when piped; a counted
    stage (:class:`~cxrtool.export.progress.ExportProgress`) is a progress bar on a terminal that stays
    as a finished line, and plain ``stage: done/total`` lines when piped.
    """

    def __init__(self) -> None:
        self.live: Any = None  # the Rich status or progress now shown
        self.task: Any = None
        self.stage: str | None = None

    def step(self, message: str) -> None:
        self._end()
        if err.is_terminal:
            self.live = err.status(Text(message))
            self.live.start()
        else:
            err.print(message, soft_wrap=True)

    def count(self, event: ExportProgress) -> None:
        if event.stage != self.stage:
            self._end()
            self.live, self.stage = progress(lazy=True), event.stage
            self.task = self.live.add_task(event.stage, total=event.total, info="")
        self.live.update(self.task, completed=event.done)

    def _end(self) -> None:
        if self.live is not None:
            self.live.stop()
        self.live, self.stage = None, None

    def __enter__(self) -> _ExportView:
        import rich

        # NNCF draws its own bars on Rich's global console (stdout); progress comes through on_progress instead
        self._global, self._quiet = rich.get_console(), rich.get_console().quiet
        self._global.quiet = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._global.quiet = self._quiet
        self._end()


def _render(result: ExportResult) -> None:
    """Written files on stdout, then one parity row per step."""
    from rich.table import Table

    steps = []
    if result.onnx is not None:
        steps.append(("onnx vs torch", result.onnx.path, result.onnx.parity, result.onnx.seconds))
    elif result.engine is not None or result.int8 is not None:
        err.print(f"reused the current ONNX export {result.onnx_path}", highlight=False, soft_wrap=True)
    if result.engine is not None:
        steps.append(
            (
                f"tensorrt {result.engine.sidecar.precision} vs onnx",
                result.engine.path,
                result.engine.parity,
                result.engine.seconds,
            )
        )
    table = Table(title="parity check", title_justify="left")
    for column in ("step", "MB", "inputs", "max |Δlogit|", "tolerance", "top-1 agree", "seconds"):
        table.add_column(column, justify="left" if column in ("step", "inputs") else "right")
    for name, path, parity, seconds in steps:
        out.print(f"wrote {path}", highlight=False, soft_wrap=True)
        table.add_row(
            name,
            f"{path.stat().st_size / 1e6:.1f}",
            f"{parity.n_inputs} {parity.inputs}",
            f"{parity.max_abs_diff:.2e}",
            f"{parity.tolerance:g}",
            f"{parity.top1_agreement:.1%}",
            f"{seconds:.0f}",
        )
        for line in parity.skipped:
            err.print(warning(f"skipped check image {line}"), soft_wrap=True)
    if steps:
        out.print(table)
    if result.int8 is not None:
        _render_int8(result.int8)


def _render_int8(done) -> None:
    """The INT8 file and the held-out check that let it be written."""
    from rich.table import Table

    c, calib = done.check, done.calibration
    out.print(f"wrote {done.path}", highlight=False, soft_wrap=True)
    table = Table(
        title=f"INT8 check on held-out films (calibration {calib['calibration_films']} films, "
        f"fingerprint {calib['fingerprint'][:12]})",
        title_justify="left",
    )
    for column in (
        "attempt",
        "films",
        "top-1 agree",
        "macro-AUC fp32",
        "macro-AUC int8",
        "AUC drop",
        "features cos min",
        "seconds",
    ):
        table.add_column(column, justify="left" if column == "attempt" else "right")

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    table.add_row(
        c.attempt,
        str(c.films),
        f"{c.top1_agreement:.1%}",
        fmt(c.macro_auc_fp32, ".4f"),
        fmt(c.macro_auc_int8, ".4f"),
        fmt(c.auc_drop, "+.4f"),
        fmt(c.features_cosine_min, ".4f"),
        f"{done.seconds:.0f}",
    )
    out.print(table)
