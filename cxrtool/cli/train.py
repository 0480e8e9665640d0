"""``cxrtool train`` and ``cxrtool evaluate``: thin commands over :mod:`cxrtool.train`.

Help shows :class:`~cxrtool.train.config.TrainConfig`'s defaults, but only flags typed on the command
line are passed on (:func:`_given`), so precedence stays defaults < ``--config`` TOML < flags; the
core resolves and validates.  Under ``torchrun`` only rank 0 draws progress.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.text import Text

from cxrtool.cli._console import EXIT_SOME_FAILED, err, failed, out, progress, user_errors
from cxrtool.cli._options import device_option
from cxrtool.config import RESIZE_MODES, PreprocessCfg
from cxrtool.errors import CxrError
from cxrtool.fsutil import check_writable_output
from cxrtool.models.registry import DEFAULT_ARCH
from cxrtool.train.config import AMP, BALANCE, EVAL_DEFAULTS, OPTIMIZERS, SCHEDULERS, TrainConfig

EXIT_INTERRUPTED = 130


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
        from cxrtool.labels import CHESTXRAY14

        return list(CHESTXRAY14)
    return [c.strip() for c in value.split(",") if c.strip()]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


class _TrainView:
    """Renders fit() events (:data:`cxrtool.train.events.Event`): a progress bar per epoch, one summary line per
    epoch."""

    def __init__(self) -> None:
        self.bar = progress()
        self.task: Any = None

    def __call__(self, event: Any) -> None:
        from cxrtool.train import events as ev

        if isinstance(event, ev.RunWarning):
            err.print(Text.assemble(("warning:", "yellow"), " ", event.message))
        elif isinstance(event, ev.InitDone):
            self._init(event.report)
        elif isinstance(event, ev.SetupDone):
            err.print(
                f"{event.arch} {event.task} on {event.runtime} x{event.world_size}: "
                f"{event.n_train} train / {event.n_val} val images, "
                f"{_plural(event.steps_per_epoch, 'step')} per epoch, "
                f"input {event.preprocess.input_size} px, best by val {event.monitor}",
                markup=False,
                soft_wrap=True,
            )
            self.bar.start()
        elif isinstance(event, ev.EpochStarted):
            if self.task is not None:
                self.bar.remove_task(self.task)
            name = f"epoch {event.epoch}" + (" (backbone frozen)" if event.frozen else "")
            self.task = self.bar.add_task(name, total=event.steps, completed=event.start_step, info="")
        elif isinstance(event, ev.StepDone):
            info = f"loss {event.loss:.4f}  {event.images_per_s:.1f} img/s  lr {event.lr:.2e}"
            self.bar.update(self.task, completed=event.step, info=info)
        elif isinstance(event, ev.EpochEnded):
            values = {
                "train_loss": event.train_loss,
                "val_loss": event.val_loss,
                **{f"val_{k}": v for k, v in event.val_metrics.items()},
            }
            keys = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "val_auc_macro")
            line = "  ".join(f"{k} {_fmt(values.get(k))}" for k in keys)
            self.bar.console.print(
                Text.assemble(
                    f"epoch {event.epoch}: {line}  {event.images_per_s:.1f} img/s",
                    ("  best" if event.best else "", "green"),
                ),
                soft_wrap=True,
            )
        elif isinstance(event, ev.Stopped):
            self.bar.console.print(
                Text.assemble(
                    ("stopped", "yellow"),
                    f" at epoch {event.epoch + 1} step {event.step}; state saved to {event.state}",
                ),
                soft_wrap=True,
            )
        elif isinstance(event, ev.TrustProgress):
            if self.task is None or self.bar.tasks[-1].description != "trust statistics":
                if self.task is not None:
                    self.bar.remove_task(self.task)
                self.task = self.bar.add_task(
                    "trust statistics", total=event.total, info="films through the best model"
                )
            self.bar.update(self.task, completed=event.done)
        elif isinstance(event, ev.TrustFitted):
            self.bar.console.print(
                f"trust: temperature {event.temperature:.3f} (val ECE {event.ece:.4f} -> {event.ece_calibrated:.4f}), "
                f"OOD statistics from {event.n_train} train films, "
                f"threshold {event.threshold:.3f} on {event.n_val} val films",
                markup=False,
                soft_wrap=True,
            )

    def _init(self, report: Any) -> None:
        err.print(f"init: {report.source}" + (f" from {report.path}" if report.path else ""), markup=False)
        for note in report.notes:
            err.print(f"  {note}", markup=False)
        if report.kept:
            err.print(
                "  kept output neurons: " + ", ".join(f"{new} <- {old}" for new, old in report.kept), markup=False
            )
        if report.source != "none":
            err.print("  fresh output neurons: " + (", ".join(report.fresh) or "none"), markup=False)

    def close(self) -> None:
        self.bar.stop()


def _choice(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


Balance, Optimizer, Scheduler, Amp, Resize = (
    _choice(n, v)
    for n, v in (
        ("Balance", BALANCE),
        ("Optimizer", OPTIMIZERS),
        ("Scheduler", SCHEDULERS),
        ("Amp", AMP),
        ("Resize", RESIZE_MODES),
    )
)
_T = TrainConfig()  # the defaults every help text shows
_E = EVAL_DEFAULTS  # evaluate's, the same object the core's signature uses
#: flag name -> TrainConfig key, where they differ
_KEYS = {"rotate": "aug_rotate"}


def _given(ctx: typer.Context) -> dict[str, Any]:
    """The training flags typed on the command line (or from the environment), as TrainConfig keys.

    Flags left at their default are left out, so that a ``--config`` TOML value is not overridden
    by a default: precedence stays defaults < TOML < flags.
    """
    given = {}
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)
        if name in ("config", "resume") or source is None or source.name not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, Path):
            value = str(value)
        elif name == "keep_map":
            value = _keep_map(value)
        elif name == "init_classes":
            value = _init_classes(value)
        given[_KEYS.get(name, name)] = value
    return given


def train(
    ctx: typer.Context,
    manifest: Annotated[
        Optional[Path], typer.Argument(help="Training manifest CSV (or 'manifest' in --config).", show_default=False)
    ] = None,
    out_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            show_default="required unless --resume or --config gives it",
            help="Output folder for checkpoints, logs and resume state.",
        ),
    ] = None,
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config", "-c", help="TOML file with any of these options (flags win).", exists=True, dir_okay=False
        ),
    ] = None,
    resume: Annotated[
        Optional[Path],
        typer.Option(
            "--resume",
            help="Continue the run in this output folder (its stored config is used).",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    val_manifest: Annotated[
        Optional[Path],
        typer.Option("--val-manifest", show_default="the training manifest", help="Validation manifest."),
    ] = None,
    train_split: Annotated[
        str, typer.Option("--train-split", help="Split name of the training rows.")
    ] = _T.train_split,
    val_split: Annotated[str, typer.Option("--val-split", help="Split name of the validation rows.")] = _T.val_split,
    balance: Annotated[
        Balance, typer.Option("--balance", help="sampler: class-balanced draws; loss: class weights.")
    ] = Balance(_T.balance),
    init: Annotated[
        Optional[str],
        typer.Option(
            "--init",
            show_default="required unless --resume or --config gives it",
            help="imagenet | none | txrv:NAME or txrv:PATH (a torchxrayvision model, read without running its code) "
            "| a cxrtool checkpoint | a weights file (.pth/.pt/.safetensors). Never downloads: see docs/train.md.",
        ),
    ] = None,
    arch: Annotated[
        Optional[str],
        typer.Option("--arch", show_default=f"the --init checkpoint's, else {DEFAULT_ARCH}", help="Architecture."),
    ] = None,
    keep_neurons: Annotated[
        bool,
        typer.Option(
            "--keep-neurons/--no-keep-neurons", help="Start new outputs that match an old class from its weights."
        ),
    ] = _T.keep_neurons,
    keep_map: Annotated[
        Optional[list[str]], typer.Option("--keep-map", help="NEW=OLD class pairing for neuron keeping (repeatable).")
    ] = None,
    init_classes: Annotated[
        Optional[str],
        typer.Option(
            "--init-classes",
            help="Output classes of a foreign weights file, in head order: "
            "comma list ('-': unused slot) or 'chestxray14'.",
        ),
    ] = None,
    input_size: Annotated[
        Optional[int],
        typer.Option(
            "--input-size", show_default=f"the parent's, else {PreprocessCfg.input_size}", help="Input side in px."
        ),
    ] = None,
    channels: Annotated[
        Optional[int],
        typer.Option(
            "--channels", show_default=f"the parent's, else {PreprocessCfg.channels}", help="1 or 3 input channels."
        ),
    ] = None,
    resize: Annotated[
        Optional[Resize],
        typer.Option(
            "--resize", show_default=f"the parent's, else {PreprocessCfg.resize}", help="How a film becomes square."
        ),
    ] = None,
    freeze_epochs: Annotated[
        int, typer.Option("--freeze-epochs", help="Train only the head for the first N epochs.")
    ] = _T.freeze_epochs,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = _T.epochs,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Images per step, per process.")
    ] = _T.batch_size,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = _T.lr,
    optimizer: Annotated[Optimizer, typer.Option("--optimizer", help="Optimiser.")] = Optimizer(_T.optimizer),
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="Decoupled weight decay.")] = _T.weight_decay,
    scheduler: Annotated[Scheduler, typer.Option("--scheduler", help="cosine: per step, to 0.")] = Scheduler(
        _T.scheduler
    ),
    monitor: Annotated[
        str,
        typer.Option(
            "--monitor",
            help="Validation metric for the best checkpoint: loss | accuracy | macro_f1 | auc_macro; "
            "auto: macro_f1 multiclass, auc_macro multilabel.",
        ),
    ] = _T.monitor,
    patience: Annotated[
        int, typer.Option("--patience", help="Early stopping after N epochs without improvement (0: off).")
    ] = _T.patience,
    seed: Annotated[int, typer.Option("--seed", help="Seed of initialisation, sampling and augmentation.")] = _T.seed,
    augment: Annotated[
        bool, typer.Option("--augment/--no-augment", help="Small rotation/scale/shift/brightness/contrast.")
    ] = _T.augment,
    rotate: Annotated[float, typer.Option("--rotate", help="Max rotation in degrees.")] = _T.aug_rotate,
    hflip: Annotated[
        bool, typer.Option("--hflip/--no-hflip", help="Random horizontal flips (see the README).")
    ] = _T.hflip,
    device: Annotated[
        str, typer.Option("--device", callback=device_option(auto=True), help="auto, cpu, cuda or cuda:N.")
    ] = _T.device,
    amp: Annotated[Amp, typer.Option("--amp", help="auto: bf16/fp16 on CUDA, off on CPU.")] = Amp(_T.amp),
    channels_last: Annotated[
        Optional[bool],
        typer.Option(
            "--channels-last/--no-channels-last", show_default="on for CUDA", help="channels_last memory format."
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", "-j", help="Data loader processes.")] = _T.workers,
    trust: Annotated[
        bool,
        typer.Option(
            "--trust/--no-trust",
            help="Fit OOD statistics and temperature into best.safetensors at the end (docs/trust.md).",
        ),
    ] = _T.trust,
) -> None:
    """Train a DenseNet on a manifest: multilabel (BCE) or multiclass (cross-entropy), as the manifest says.

    Twice transfer: stage 1 with --init imagenet (or none) on ChestX-ray14; stage 2 with
    --init stage1/best.safetensors --keep-neurons --keep-map viral_pneumonia=Pneumonia on the 3-class manifest.

    Ctrl-C finishes the step, saves and exits with 130; --resume OUT continues exactly.
    Multi-GPU: torchrun --nproc_per_node N -m cxrtool train ...
    """
    from cxrtool.train.config import resolve_config

    view = _TrainView()
    with user_errors():
        if resume is not None or out_dir is not None:
            check_writable_output(resume if resume is not None else out_dir, "dir")
        flags = _given(ctx)
        if resume is not None:
            if config is not None:
                raise CxrError("--resume uses the run's stored config; drop --config")
            from cxrtool.train.loop import resume_config

            cfg = resume_config(resume, {k: v for k, v in flags.items() if k != "out_dir"})
        else:
            cfg = resolve_config(config, flags)  # a usage error here costs no torch import
        from cxrtool.train.loop import fit

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
    checkpoint: Annotated[Path, typer.Argument(help="A cxrtool .safetensors checkpoint.", exists=True, dir_okay=False)],
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV with labels.", exists=True, dir_okay=False)],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for metrics.json, predictions.csv and the PNGs.")
    ],
    split: Annotated[str, typer.Option("--split", help="Rows of this split ('all' for every row).")] = _E.split,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.")
    ] = _E.batch_size,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples for the 95% intervals (0: none).")
    ] = _E.bootstrap,
    threshold: Annotated[
        Optional[float],
        typer.Option(
            "--threshold", show_default="the one stored with the model", help="Multilabel decision threshold."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = _E.seed,
    device: Annotated[
        str, typer.Option("--device", callback=device_option(auto=True), help="auto, cpu, cuda or cuda:N.")
    ] = _E.device,
    workers: Annotated[int, typer.Option("--workers", "-j", min=0, help="Data loader processes.")] = _E.workers,
) -> None:
    """Metrics of a checkpoint on a manifest split: JSON with bootstrap CIs, per-image CSV, confusion matrix and ROC
    PNGs.

    Unreadable images are listed as error rows and left out of the metrics (exit code 1).
    """
    from rich.table import Table

    from cxrtool.train.evaluate import evaluate as run_evaluate

    bar = progress(transient=True)
    with user_errors():
        check_writable_output(out_dir, "dir")
        task = bar.add_task("evaluating", total=None, info="")
        with bar:
            result = run_evaluate(
                checkpoint,
                manifest,
                out_dir,
                split=None if split == "all" else split,
                batch_size=batch_size,
                device=device,
                workers=workers,
                bootstrap=bootstrap,
                seed=seed,
                threshold=threshold,
                on_batch=lambda n: bar.advance(task, n),
            )
    m = result.metrics
    ci = m["ci"]
    summary = Table(title=f"{checkpoint.name} on {manifest.name} [{split}] n={result.n_ok}", title_justify="left")
    for col in ("metric", "value", "95% CI"):
        summary.add_column(col)
    for key in (
        "accuracy",
        "macro_f1",
        "auc_macro",
        "ece",
        "ece_calibrated",
        "brier",
        "brier_calibrated",
        "ood_flagged_share",
    ):
        if key not in m:
            continue
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
    if m.get("shortcut"):
        err.print(Text.assemble(("warning:", "yellow"), " ", m["shortcut"]))
    for path, reason in result.failures:
        err.print(failed(path, reason), soft_wrap=True)
    if result.failures:
        raise typer.Exit(EXIT_SOME_FAILED)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)
