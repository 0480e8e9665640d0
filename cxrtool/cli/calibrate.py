"""``cxrtool calibrate``: refit a checkpoint's temperature, OOD statistics and threshold without retraining."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cxrtool.cli._console import err, out, progress, user_errors, warning
from cxrtool.cli._options import device_option, require_checkpoint
from cxrtool.trust.options import DEFAULT_QUANTILE, KEEP


def calibrate(
    checkpoint: Annotated[
        Path, typer.Argument(help="A cxrtool checkpoint (.safetensors).", exists=True, dir_okay=False)
    ],
    manifest: Annotated[
        Path,
        typer.Argument(
            help="Manifest CSV with labels (the training manifest, or a site's own films).", exists=True, dir_okay=False
        ),
    ],
    split: Annotated[
        str, typer.Option("--split", help="Rows that set the temperature, the OOD scaling and the threshold.")
    ] = "val",
    fit_split: Annotated[
        str,
        typer.Option(
            "--fit-split", help=f"Rows the OOD Gaussians are fitted on; '{KEEP}' reuses the checkpoint's own."
        ),
    ] = "train",
    quantile: Annotated[
        float,
        typer.Option("--quantile", min=0.5, max=0.999, help="Share of --split films that pass the OOD threshold."),
    ] = DEFAULT_QUANTILE,
    out_path: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", show_default="<name>.calibrated.safetensors beside it", help="New checkpoint."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model call.")] = 64,
    device: Annotated[
        str, typer.Option("--device", callback=device_option(auto=True), help="auto, cpu, cuda or cuda:N.")
    ] = "cpu",
    workers: Annotated[int, typer.Option("--workers", "-j", min=0, help="Data loader processes.")] = 0,
) -> None:
    """Refit temperature (validation NLL), OOD statistics and threshold; write a new checkpoint whose lineage names the
    old one.

    The weights are unchanged.  Export the new checkpoint again (cxrtool export --onnx) to use it with
    ONNX Runtime / OpenVINO / TensorRT.  See docs/trust.md for recalibrating for a site.
    """
    from cxrtool.trust.fit import calibrate_checkpoint

    with user_errors():
        require_checkpoint(checkpoint, "calibrate")
        bar = progress(transient=True, lazy=True)
        task = bar.add_task("calibrating", total=None, info="")
        with bar:
            result = calibrate_checkpoint(
                checkpoint,
                manifest,
                out_path,
                split=split,
                fit_split=fit_split,
                quantile=quantile,
                batch_size=batch_size,
                workers=workers,
                device=device,
                on_batch=lambda n: bar.advance(task, n),
            )
    c, ood = result.fit.calibration, result.fit.ood
    out.print(f"wrote {result.out}")
    out.print(
        f"temperature {c['temperature']:.4f} on {c['n']} {split} films: "
        f"ECE {c['ece']:.4f} -> {c['ece_calibrated']:.4f}, "
        f"NLL {c['nll']:.4f} -> {c['nll_calibrated']:.4f}"
    )
    out.print(
        f"OOD: Gaussians from {ood.info.get('n_train', '?')} {ood.info.get('train_split', fit_split)} films over "
        f"{len(ood.depths)} depths; threshold {ood.threshold:.4f} lets {quantile:.0%} of {split} films pass"
    )
    if result.fit.failed:
        err.print(warning(f"{result.fit.failed} unreadable film(s) left out"))


def register(app: typer.Typer) -> None:
    """Add ``calibrate`` to the root app."""
    app.command(no_args_is_help=True)(calibrate)
