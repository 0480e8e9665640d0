"""``cxrtool export``: checkpoint -> ONNX (parity-checked against torch) and/or a TensorRT engine."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from cxrtool.cli._console import EXIT_SOME_FAILED, err, out, user_errors

if TYPE_CHECKING:
    from cxrtool.export import ExportResult


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command(name="export")(export)


def export(
    model: Path = typer.Argument(..., help="A cxrtool checkpoint (.safetensors); for --trt alone also an exported .onnx."),
    onnx: bool = typer.Option(False, "--onnx", help="Write engines/<name>.onnx (dynamic batch, model card in its metadata)."),
    trt: bool = typer.Option(False, "--trt", help="Build a TensorRT engine from the ONNX export (needs TensorRT 10+ and a GPU)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Folder for the files \\[default: engines/ next to the checkpoint]."),
    check_images: Optional[list[Path]] = typer.Option(
        None, "--check-images", help="Real films (files or folders) for the parity check; repeatable. Without it seeded noise is used."
    ),
    check_count: int = typer.Option(16, "--check-count", min=1, help="How many check films to use, spread over the folder."),
    tolerance: Optional[float] = typer.Option(None, "--tolerance", min=0.0, help="Max abs logit difference ONNX Runtime vs torch \\[default: 1e-3]."),
    opset: Optional[int] = typer.Option(None, "--opset", min=13, help="ONNX opset \\[default: 18]."),
    fp16: bool = typer.Option(False, "--fp16", help="TensorRT: allow fp16 kernels."),
    int8: bool = typer.Option(False, "--int8", help="TensorRT: INT8 with entropy calibration (needs --calib)."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="TensorRT INT8: folder of representative films to calibrate on."),
    min_batch: int = typer.Option(1, "--min-batch", help="TensorRT profile: smallest batch."),
    opt_batch: int = typer.Option(16, "--opt-batch", help="TensorRT profile: batch the kernels are tuned for (and the INT8 calibration batch)."),
    max_batch: int = typer.Option(32, "--max-batch", help="TensorRT profile: largest batch."),
    device: str = typer.Option("cuda", "--device", help="TensorRT: GPU to build for (cuda or cuda:N)."),
    trt_tolerance: Optional[float] = typer.Option(
        None, "--trt-tolerance", min=0.0, help="Max abs logit difference TensorRT vs ONNX Runtime \\[default: fp32 1e-2, fp16 0.1, int8 0.5]."
    ),
) -> None:
    """Export a checkpoint to ONNX and/or TensorRT; each file is written only if it reproduces the reference logits."""
    from cxrtool.export import export_model
    from cxrtool.export.onnx import ParityError

    with user_errors():
        profile = None
        if trt:
            from cxrtool.export.tensorrt import BatchProfile

            profile = BatchProfile(min_batch, opt_batch, max_batch)
        try:
            with err.status("exporting") as status:
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
                    on_step=lambda msg: status.update(msg),
                )
        except ParityError as exc:
            err.print(f"[bold red]export failed:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_SOME_FAILED) from None
    _render(result)


def _render(result: ExportResult) -> None:
    """Written files on stdout, then one parity row per step."""
    from rich.table import Table

    steps = []
    if result.onnx is not None:
        steps.append(("onnx vs torch", result.onnx.path, result.onnx.parity, result.onnx.seconds))
    elif result.engine is not None:
        err.print(f"reused the current ONNX export {result.onnx_path}", highlight=False, soft_wrap=True)
    if result.engine is not None:
        steps.append((f"tensorrt {result.engine.sidecar.precision} vs onnx", result.engine.path, result.engine.parity, result.engine.seconds))
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
            err.print(f"[yellow]skipped check image:[/] {line}", highlight=False, soft_wrap=True)
    out.print(table)
