"""The typed events ``fit`` reports to ``on_event`` (one dataclass per kind) and its result.

Kept apart from the loop so a renderer (the CLI) can match on them without importing the
training machinery; torch and the init report appear in annotations only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrtool.config import PreprocessCfg

if TYPE_CHECKING:
    import torch.nn as nn

    from cxrtool.models.pretrained import InitReport


@dataclass(frozen=True)
class RunWarning:
    """Something was degraded or skipped; training goes on."""

    message: str


@dataclass(frozen=True)
class InitDone:
    """Where the starting weights came from (:func:`cxrtool.models.pretrained.initialise`)."""

    report: InitReport


@dataclass(frozen=True)
class SetupDone:
    """Everything resolved; training starts (or resumes) at ``start_epoch``/``start_step``."""

    arch: str
    task: str
    runtime: str
    world_size: int
    class_names: list[str]
    n_train: int
    n_val: int
    steps_per_epoch: int
    epochs: int
    start_epoch: int
    start_step: int
    preprocess: PreprocessCfg
    monitor: str


@dataclass(frozen=True)
class EpochStarted:
    epoch: int  # 1-based
    steps: int
    start_step: int
    frozen: bool


@dataclass(frozen=True)
class StepDone:
    epoch: int  # 1-based
    step: int
    steps: int
    loss: float
    lr: float
    images_per_s: float


@dataclass(frozen=True)
class EpochEnded:
    """One epoch's log record (as in ``log.jsonl``) and the run status after it."""

    epoch: int
    train_loss: float
    val_loss: float
    val_metrics: dict[str, Any]  # accuracy, macro_f1, auc_macro, per_class, ...
    images_per_s: float
    best: bool
    status: str


@dataclass(frozen=True)
class Stopped:
    """A stop request ended the run early; ``state`` resumes it."""

    epoch: int  # 0-based epoch the run stopped in
    step: int
    state: Path


@dataclass(frozen=True)
class TrustProgress:
    """Films run through the best model so far while its trust statistics are fitted (val, then train)."""

    done: int
    total: int


@dataclass(frozen=True)
class TrustFitted:
    """``checkpoint`` got its OOD statistics and temperature (:mod:`cxrtool.trust`)."""

    checkpoint: Path
    temperature: float
    ece: float
    ece_calibrated: float
    threshold: float
    n_train: int
    n_val: int


Event = RunWarning | InitDone | SetupDone | EpochStarted | StepDone | EpochEnded | Stopped | TrustProgress | TrustFitted
EventFn = Callable[[Event], None]


@dataclass
class FitResult:
    out_dir: Path
    status: str  # completed | early_stopped | interrupted
    epochs_done: int
    monitor: str
    best_value: float | None
    best_epoch: int | None
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None  # the final weights (this rank's), for notebooks and tests
    rank: int = 0  # under torchrun, only rank 0 reports
