"""The training configuration: defaults < TOML file < command-line flags; stored resolved in every checkpoint.

Also ``evaluate``'s defaults (:class:`EvalDefaults`): this module stays light (no torch), so the
CLI's help reads them here and the core's signature uses the same values.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrtool.errors import CxrError

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "constant")
BALANCE = ("none", "sampler", "loss")
AMP = ("auto", "none", "bf16", "fp16")
#: Options that may differ when a run is resumed: they change where it runs, not what it computes.
RUNTIME_KEYS = frozenset({"device", "workers"})


@dataclass
class TrainConfig:
    """Every option of ``cxrtool train`` (TOML keys have the same names, flat)."""

    manifest: str = ""
    out_dir: str = ""
    init: str = ""  # imagenet | none | <cxrtool checkpoint> | <foreign state dict>
    arch: str | None = None  # default: the parent checkpoint's, else densenet121
    val_manifest: str | None = None  # default: the same manifest
    train_split: str = "train"
    val_split: str = "val"
    keep_neurons: bool = False
    keep_map: dict[str, str] = field(default_factory=dict)  # new class -> old class
    init_classes: list[str] | None = None  # old class names of a foreign state dict
    input_size: int | None = None  # None: parent checkpoint's, else PreprocessCfg default
    channels: int | None = None
    resize: str | None = None
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    scheduler: str = "cosine"
    freeze_epochs: int = 0  # backbone frozen (weights and BatchNorm statistics) for the first N epochs
    augment: bool = True
    aug_rotate: float = 5.0
    aug_scale: float = 0.05
    aug_translate: float = 0.03
    aug_brightness: float = 0.1
    aug_contrast: float = 0.1
    hflip: bool = False
    balance: str = "none"  # none | sampler (class-balanced draws) | loss (class weights / pos_weight)
    monitor: str = "auto"  # validation metric choosing the best checkpoint; auto: macro_f1 / auc_macro
    patience: int = 0  # early stopping after N epochs without improvement (0: off)
    threshold: float = 0.5  # multilabel decision threshold for F1 etc.
    trust: bool = True  # fit OOD statistics and temperature into best.safetensors at the end (cxrtool.trust)
    ood_quantile: float = 0.95  # share of validation films the OOD threshold lets pass
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto: bf16 (or fp16) on CUDA, off on CPU
    channels_last: bool | None = None  # None: on for CUDA
    workers: int = 2

    def validate(self) -> TrainConfig:
        for name, allowed in (("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS), ("balance", BALANCE), ("amp", AMP)):
            if getattr(self, name) not in allowed:
                raise CxrError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if not self.manifest:
            raise CxrError(
                "no training manifest given: pass MANIFEST (a CSV from `cxrtool prep`) or 'manifest' in --config"
            )
        if not self.out_dir:
            raise CxrError("no output folder given (--out)")
        if not self.init:
            raise CxrError("--init is required: imagenet, none, or a checkpoint / state dict file")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise CxrError(f"{name} must be at least 1")
        if self.freeze_epochs < 0 or self.patience < 0 or self.workers < 0:
            raise CxrError("freeze_epochs, patience and workers cannot be negative")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise CxrError(f"{source}: unknown option(s) {', '.join(unknown)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class EvalDefaults:
    """The defaults of :func:`cxrtool.train.evaluate.evaluate` and ``cxrtool evaluate``, in one place."""

    split: str = "test"
    batch_size: int = 64
    device: str = "auto"
    amp: str = "none"
    workers: int = 0
    bootstrap: int = 1000  # bootstrap resamples for the 95% intervals
    seed: int = 0  # bootstrap seed


EVAL_DEFAULTS = EvalDefaults()


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config (flat keys, or the same keys under a ``[train]`` table)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CxrError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CxrError(f"{path}: invalid TOML ({exc})") from None
    return dict(data.get("train", data))


def resolve_config(toml_path: str | Path | None, overrides: Mapping[str, Any]) -> TrainConfig:
    """Defaults, then the TOML file, then explicit flags (``None`` means "not given")."""
    data = load_toml(toml_path) if toml_path else {}
    TrainConfig.from_dict(data, source=str(toml_path))  # unknown keys fail with the file's name
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data).validate()


def dump_toml(cfg: TrainConfig) -> str:
    """The resolved config as TOML (unset options are left out: TOML has no null)."""
    import tomli_w

    return tomli_w.dumps({k: v for k, v in cfg.to_dict().items() if v is not None})
