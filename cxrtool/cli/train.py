"""``cxrtool train`` and ``cxrtool evaluate``: thin commands over :mod:`cxrtool.train`.

Every training flag defaults to "not given" so that precedence is defaults < ``--config`` TOML <
flags; the core resolves and validates.  Under ``torchrun`` only rank 0 draws progress.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cxrtool.cli._console import EXIT_SOME_FAILED, err, out, progress, user_errors
from cxrtool.errors import CxrError

EXIT_INTERRUPTED = 130

_DATA, _MODEL, _OPT, _AUG, _RUN = "Data", "Model and init", "Optimisation", "Augmentation", "Runtime"


def _keep_map(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    pairs = {}
    for item in items:
        new, sep, old = item.partition("=")
        if not sep or not new.strip() or not old.strip():
            raise CxrError(f"--keep-map {item!r}: expected NEW=OLD, e.g. viral_pneumonia=Pneumonia")
        pairs[new.strip()] = old.strip()
    return pairs


def _init_classes(value: str | None) -> list[str] | None:
    if value is None:
        return None
    if value.lower() == "chestxray14":
        from cxrtool.models.init import CHESTXRAY14

        return list(CHESTXRAY14)
    return [c.strip() for c in value.split(",") if c.strip()]


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


class _TrainView:
    """Renders fit() events: a progress bar per epoch, one summary line per epoch."""

    def __init__(self) -> None:
        self.bar = progress()
        self.task: Any = None

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "warning":
            err.print(f"[yellow]warning:[/] {data['message']}")
        elif kind == "init":
            self._init(data)
        elif kind == "setup":
            err.print(
                f"{data['arch']} {data['task']} on {data['runtime']} x{data['world_size']}: "
                f"{data['n_train']} train / {data['n_val']} val images, {data['steps_per_epoch']} steps per epoch, "
                f"input {data['preprocess']['input_size']} px, best by val {data['monitor']}"
            )
            self.bar.start()
        elif kind == "epoch_start":
            if self.task is not None:
                self.bar.remove_task(self.task)
            name = f"epoch {data['epoch']}" + (" (backbone frozen)" if data["frozen"] else "")
            self.task = self.bar.add_task(name, total=data["steps"], completed=data["start_step"], info="")
        elif kind == "step":
            info = f"loss {data['loss']:.4f}  {data['images_per_s']:.1f} img/s  lr {data['lr']:.2e}"
            self.bar.update(self.task, completed=data["step"], info=info)
        elif kind == "epoch_end":
            keys = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "val_auc_macro")
            line = "  ".join(f"{k} {_fmt(data.get(k))}" for k in keys)
            self.bar.console.print(
                f"epoch {data['epoch']}: {line}  {data['images_per_s']:.1f} img/s"
                + ("  [green]best[/]" if data["best"] else "")
            )
        elif kind == "stopped":
            self.bar.console.print(
                f"[yellow]stopped[/] at epoch {data['epoch'] + 1} step {data['step']}; state saved to {data['state']}"
            )

    def _init(self, data: dict[str, Any]) -> None:
        err.print(f"init: {data['source']}" + (f" from {data['path']}" if data["path"] else ""))
        for note in data["notes"]:
            err.print(f"  {note}")
        if data["kept"]:
            err.print("  kept output neurons: " + ", ".join(f"{new} <- {old}" for new, old in data["kept"]))
        if data["source"] != "none":
            err.print("  fresh output neurons: " + (", ".join(data["fresh"]) or "none"))

    def close(self) -> None:
        self.bar.stop()


def train(
    manifest: Path = typer.Argument(
        None, help="Training manifest CSV (or 'manifest' in --config).", show_default=False
    ),
    out_dir: Path = typer.Option(
        None, "--out", "-o", help="Output folder for checkpoints, logs and resume state.", rich_help_panel=_DATA
    ),
    config: Path = typer.Option(
        None,
        "--config",
        "-c",
        help="TOML file with any of these options (flags win).",
        exists=True,
        dir_okay=False,
        rich_help_panel=_DATA,
    ),
    resume: Path = typer.Option(
        None,
        "--resume",
        help="Continue the run in this output folder (its stored config is used).",
        exists=True,
        file_okay=False,
        rich_help_panel=_DATA,
    ),
    val_manifest: Path = typer.Option(
        None, "--val-manifest", help="Validation manifest (default: the training manifest).", rich_help_panel=_DATA
    ),
    train_split: str = typer.Option(
        None, "--train-split", help="Split name of the training rows [default: train].", rich_help_panel=_DATA
    ),
    val_split: str = typer.Option(
        None, "--val-split", help="Split name of the validation rows [default: val].", rich_help_panel=_DATA
    ),
    balance: str = typer.Option(
        None,
        "--balance",
        help="none | sampler (class-balanced draws) | loss (class weights) [default: none].",
        rich_help_panel=_DATA,
    ),
    init: str = typer.Option(
        None,
        "--init",
        help="imagenet | none | a cxrtool checkpoint | a foreign state dict (.pth/.pt/.safetensors).",
        rich_help_panel=_MODEL,
    ),
    arch: str = typer.Option(
        None,
        "--arch",
        help="densenet121 | densenet201 [default: the --init checkpoint's, else densenet121].",
        rich_help_panel=_MODEL,
    ),
    keep_neurons: bool = typer.Option(
        None,
        "--keep-neurons/--no-keep-neurons",
        help="Start new outputs that match an old class from its weights.",
        rich_help_panel=_MODEL,
    ),
    keep_map: list[str] = typer.Option(
        None, "--keep-map", help="NEW=OLD class pairing for neuron keeping (repeatable).", rich_help_panel=_MODEL
    ),
    init_classes: str = typer.Option(
        None,
        "--init-classes",
        help="Output classes of a foreign state dict: comma list or 'chestxray14'.",
        rich_help_panel=_MODEL,
    ),
    input_size: int = typer.Option(
        None, "--input-size", help="Input side in px [default: the parent's, else 224].", rich_help_panel=_MODEL
    ),
    channels: int = typer.Option(
        None, "--channels", help="1 or 3 input channels [default: the parent's, else 3].", rich_help_panel=_MODEL
    ),
    resize: str = typer.Option(None, "--resize", help="stretch | letterbox | center_crop.", rich_help_panel=_MODEL),
    freeze_epochs: int = typer.Option(
        None, "--freeze-epochs", help="Train only the head for the first N epochs [default: 0].", rich_help_panel=_MODEL
    ),
    epochs: int = typer.Option(None, "--epochs", help="[default: 10]", rich_help_panel=_OPT),
    batch_size: int = typer.Option(None, "--batch-size", "-b", help="Per process [default: 32].", rich_help_panel=_OPT),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate [default: 1e-3].", rich_help_panel=_OPT),
    optimizer: str = typer.Option(None, "--optimizer", help="adamw | sgd [default: adamw].", rich_help_panel=_OPT),
    weight_decay: float = typer.Option(None, "--weight-decay", help="[default: 1e-4]", rich_help_panel=_OPT),
    scheduler: str = typer.Option(
        None, "--scheduler", help="cosine (per step, to 0) | constant [default: cosine].", rich_help_panel=_OPT
    ),
    monitor: str = typer.Option(
        None,
        "--monitor",
        help="Validation metric for the best checkpoint: loss | accuracy | macro_f1 | auc_macro [default: macro_f1 multiclass, auc_macro multilabel].",
        rich_help_panel=_OPT,
    ),
    patience: int = typer.Option(
        None, "--patience", help="Early stopping after N epochs without improvement (0: off).", rich_help_panel=_OPT
    ),
    seed: int = typer.Option(None, "--seed", help="[default: 0]", rich_help_panel=_OPT),
    augment: bool = typer.Option(
        None,
        "--augment/--no-augment",
        help="Small rotation/scale/shift/brightness/contrast [default: on].",
        rich_help_panel=_AUG,
    ),
    rotate: float = typer.Option(None, "--rotate", help="Max rotation in degrees [default: 5].", rich_help_panel=_AUG),
    hflip: bool = typer.Option(
        None, "--hflip/--no-hflip", help="Random horizontal flips [default: off; see the README].", rich_help_panel=_AUG
    ),
    device: str = typer.Option(
        None, "--device", help="auto | cpu | cuda | cuda:N [default: auto].", rich_help_panel=_RUN
    ),
    amp: str = typer.Option(
        None,
        "--amp",
        help="auto | none | bf16 | fp16 [default: auto = bf16/fp16 on CUDA, off on CPU].",
        rich_help_panel=_RUN,
    ),
    channels_last: bool = typer.Option(
        None, "--channels-last/--no-channels-last", help="[default: on for CUDA]", rich_help_panel=_RUN
    ),
    workers: int = typer.Option(
        None, "--workers", "-j", help="Data loader processes [default: 2].", rich_help_panel=_RUN
    ),
) -> None:
    """Train a DenseNet on a manifest: multilabel (BCE) or multiclass (cross-entropy), as the manifest says.

    Twice transfer: stage 1 with --init imagenet (or none) on ChestX-ray14; stage 2 with
    --init stage1/best.safetensors --keep-neurons --keep-map viral_pneumonia=Pneumonia on the 3-class manifest.

    Ctrl-C finishes the step, saves and exits with 130; --resume OUT continues exactly.
    Multi-GPU: torchrun --nproc_per_node N -m cxrtool train ...
    """
    from cxrtool.train.config import resolve_config
    from cxrtool.train.loop import fit, resume_config

    view = _TrainView()
    with user_errors():
        flags = {
            "manifest": str(manifest) if manifest else None, "out_dir": str(out_dir) if out_dir else None,
            "val_manifest": str(val_manifest) if val_manifest else None, "train_split": train_split,
            "val_split": val_split, "balance": balance, "init": init, "arch": arch, "keep_neurons": keep_neurons,
            "keep_map": _keep_map(keep_map), "init_classes": _init_classes(init_classes), "input_size": input_size,
            "channels": channels, "resize": resize, "freeze_epochs": freeze_epochs, "epochs": epochs,
            "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "weight_decay": weight_decay,
            "scheduler": scheduler, "monitor": monitor, "patience": patience, "seed": seed, "augment": augment,
            "aug_rotate": rotate, "hflip": hflip, "device": device, "amp": amp, "channels_last": channels_last,
            "workers": workers,
        }  # fmt: skip
        if resume is not None:
            if config is not None:
                raise CxrError("--resume uses the run's stored config; drop --config")
            cfg = resume_config(resume, {k: v for k, v in flags.items() if k != "out_dir"})
        else:
            cfg = resolve_config(config, flags)
        try:
            result = fit(cfg, resume=resume is not None, on_event=view)
        finally:
            view.close()
    if result.rank != 0:
        raise typer.Exit(EXIT_INTERRUPTED if result.status == "interrupted" else 0)
    if result.status == "interrupted":
        err.print(f"interrupted; continue with: cxrtool train --resume {result.out_dir}")
        raise typer.Exit(EXIT_INTERRUPTED)
    best = f"best val {result.monitor} {_fmt(result.best_value)} at epoch {result.best_epoch}"
    out.print(
        f"{result.status} after {result.epochs_done} epochs; {best}: {result.out_dir / 'best.safetensors'}",
        highlight=False,
    )


def evaluate(
    checkpoint: Path = typer.Argument(..., help="A cxrtool .safetensors checkpoint.", exists=True, dir_okay=False),
    manifest: Path = typer.Argument(..., help="Manifest CSV with labels.", exists=True, dir_okay=False),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for metrics.json, predictions.csv and the PNGs."),
    split: str = typer.Option("test", "--split", help="Rows of this split ('all' for every row)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b"),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% intervals (0: none)."),
    threshold: float = typer.Option(0.5, "--threshold", help="Multilabel decision threshold."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    workers: int = typer.Option(0, "--workers", "-j", help="Data loader processes."),
) -> None:
    """Metrics of a checkpoint on a manifest split: JSON with bootstrap CIs, per-image CSV, confusion matrix and ROC PNGs.

    Unreadable images are listed as error rows and left out of the metrics (exit code 1).
    """
    from rich.table import Table

    from cxrtool.train.evaluate import evaluate as run_evaluate

    bar = progress(transient=True)
    with user_errors():
        task = bar.add_task("evaluating", total=None, info="")
        with bar:
            result = run_evaluate(
                checkpoint, manifest, out_dir, split=None if split == "all" else split, batch_size=batch_size,
                device=device, workers=workers, bootstrap=bootstrap, seed=seed, threshold=threshold,
                on_batch=lambda n: bar.advance(task, n),
            )  # fmt: skip
    m = result.metrics
    ci = m["ci"]
    summary = Table(title=f"{checkpoint.name} on {manifest.name} [{split}] n={result.n_ok}", title_justify="left")
    for col in ("metric", "value", "95% CI"):
        summary.add_column(col)
    for key in ("accuracy", "macro_f1", "auc_macro"):
        interval = ci.get(key)
        summary.add_row(key, _fmt(m.get(key)), f"{interval[0]:.4f} - {interval[1]:.4f}" if interval else "")
    out.print(summary)
    per = Table(show_header=True)
    for col in ("class", "precision", "recall", "specificity", "f1", "auc", "support"):
        per.add_column(col)
    for name, row in m["per_class"].items():
        per.add_row(name, *(_fmt(row[k]) for k in ("precision", "recall", "specificity", "f1", "auc", "support")))
    out.print(per)
    err.print("wrote " + ", ".join(str(f) for f in result.files))
    for path, reason in result.failures:
        err.print(f"[red]failed:[/] {path}: {reason}", highlight=False)
    if result.failures:
        raise typer.Exit(EXIT_SOME_FAILED)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)
