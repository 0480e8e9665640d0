"""Fit a model's trust statistics on manifest splits: used at the end of ``train`` and by ``calibrate``.

The OOD Gaussians come from the training split (the films the features were learned on), the
depth scaling, the threshold and the temperature from the validation split (films the weights
never saw, so they behave like new in-distribution films).  ``calibrate`` may point both at a new
site's own films.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from cxrtool.data import ManifestDataset
from cxrtool.errors import CxrError
from cxrtool.modelfile import TRUST_PREFIX, ModelCard
from cxrtool.trust.temperature import calibration_metrics, fit_temperature
from cxrtool.trust.ood import DEFAULT_QUANTILE, OodModel, fit_ood, scale_depths


@dataclass
class Outputs:
    """A model's outputs on one split's readable films."""

    logits: np.ndarray
    features: np.ndarray
    targets: np.ndarray
    failed: int


@torch.inference_mode()
def collect(model: nn.Module, dataset: ManifestDataset, *, device: torch.device | str = "cpu", batch_size: int = 64, workers: int = 0,
            on_batch: Callable[[int], None] | None = None) -> Outputs:  # fmt: skip
    """Logits and features (``model.forward_features``) of every readable film of ``dataset``."""
    if not hasattr(model, "forward_features"):
        raise CxrError(f"{type(model).__name__} has no features path; OOD statistics need a cxrtool DenseNet")
    model = getattr(model, "module", model).eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    logits, feats, targets, failed = [], [], [], 0
    for x, y, _, errors in loader:
        ok = torch.tensor([not e for e in errors], dtype=torch.bool)
        failed += int((~ok).sum())
        if ok.any():
            z, f = model.forward_features(x[ok].to(device))
            logits.append(z.float().cpu().numpy())
            feats.append(f.float().cpu().numpy())
            targets.append(y[ok].numpy())
        if on_batch is not None:
            on_batch(len(errors))
    if not logits:
        raise CxrError(f"none of the {len(dataset)} films could be read")
    return Outputs(np.concatenate(logits), np.concatenate(feats), np.concatenate(targets), failed)


@dataclass
class TrustFit:
    """What :func:`fit_trust` found: card fields, checkpoint tensors and a summary."""

    calibration: dict[str, Any]
    ood: OodModel
    failed: int = 0  # unreadable films left out

    def apply(self, card: ModelCard) -> dict[str, torch.Tensor]:
        """Write the fields into ``card``; return the tensors to save with the checkpoint."""
        card.calibration = dict(self.calibration)
        card.ood = self.ood.params()
        return {k: torch.from_numpy(v) for k, v in self.ood.tensors(TRUST_PREFIX).items()}


def fit_trust(
    model: nn.Module,
    card: ModelCard,
    train: ManifestDataset | None,
    val: ManifestDataset,
    *,
    keep: OodModel | None = None,
    splits: tuple[str, str] = ("train", "val"),
    quantile: float = DEFAULT_QUANTILE,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> TrustFit:
    """Temperature (val NLL), OOD Gaussians (``train``) and threshold (val ``quantile``) for ``model``.

    With ``train=None`` the Gaussians of ``keep`` are reused and only their scaling, the threshold
    and the temperature are refitted.  Datasets must be built without augmentation and with the
    card's preprocessing.
    """
    layout = getattr(model, "module", model).feature_layout()
    kw = {"device": device, "batch_size": batch_size, "workers": workers, "on_batch": on_batch}
    va = collect(model, val, **kw)
    task = card.task
    if len(va.logits) < 2:
        raise CxrError(f"{len(va.logits)} readable validation film(s): too few to calibrate")
    temperature = fit_temperature(task, va.logits, va.targets)
    calibration = {"split": splits[1], "n": int(len(va.logits)), **calibration_metrics(task, va.logits, va.targets, temperature)}
    info = {"train_split": splits[0], "val_split": splits[1], "n_val": int(len(va.logits))}
    failed = va.failed
    try:
        if train is None:
            if keep is None:
                raise CxrError("no training split given and no OOD statistics to keep")
            info |= {k: keep.info[k] for k in ("train_split", "n_train") if k in keep.info}
            ood = scale_depths(keep.depths, va.features, quantile=quantile, info=info)
        else:
            tr = collect(model, train, **kw)
            info["n_train"], failed = int(len(tr.logits)), failed + tr.failed
            labels = None if task.multilabel else tr.targets
            ood = fit_ood(tr.features, labels, va.features, layout, quantile=quantile, info=info)
    except ValueError as exc:
        raise CxrError(f"OOD statistics: {exc}") from None
    return TrustFit(calibration, ood, failed)


@dataclass
class CalibrateResult:
    out: Path
    fit: TrustFit


KEEP = "keep"


def default_calibrated_path(checkpoint: str | Path) -> Path:
    """``runs/x/best.safetensors`` -> ``runs/x/best.calibrated.safetensors``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.calibrated{checkpoint.suffix}")


def calibrate_checkpoint(
    checkpoint: str | Path,
    manifest: str | Path,
    out: str | Path | None = None,
    *,
    split: str = "val",
    fit_split: str = "train",
    quantile: float = DEFAULT_QUANTILE,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> CalibrateResult:
    """Refit temperature, OOD statistics and threshold of ``checkpoint`` on ``manifest``; write a new checkpoint.

    ``split`` rows set the temperature, the depth scaling and the threshold; ``fit_split`` rows
    the Gaussians, or ``"keep"`` reuses the checkpoint's own Gaussians (a site recalibrating on its
    own in-distribution films).  The new checkpoint's lineage starts with the old one.
    """
    import copy

    from cxrtool.config import resolve_preprocess
    from cxrtool.fsutil import check_writable_output
    from cxrtool.manifest import Manifest, check_for_model, read_manifest
    from cxrtool.modelfile import file_sha256, read_card
    from cxrtool.models.checkpoint import load_checkpoint, save_checkpoint
    from cxrtool.train.runtime import resolve_device
    from cxrtool.trust.assess import load_trust

    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else default_calibrated_path(checkpoint)
    check_writable_output(out, "file")  # before a minute of work, as predict does
    if out.exists() and out.resolve() == checkpoint.resolve():
        raise CxrError(f"{out}: calibrate writes a new checkpoint; choose another --out than the input")
    card = read_card(checkpoint)
    rows = read_manifest(manifest)

    def checked(name: str) -> Manifest:  # two classes at least: one cannot set a temperature or class Gaussians
        return check_for_model(rows, name, card.class_names, card.task, source=manifest, min_classes=2)

    selected = {name: checked(name) for name in dict.fromkeys([split] if fit_split == KEEP else [fit_split, split])}
    keep = None
    if fit_split == KEEP:
        keep = load_trust(checkpoint, card).ood
        if keep is None:
            raise CxrError(f"{checkpoint}: has no OOD statistics to keep; give --fit-split a split name (e.g. train)")
    model, card = load_checkpoint(checkpoint)
    dev = resolve_device(device)
    model = model.to(dev)
    preprocess = resolve_preprocess(card.preprocess)

    def dataset(name: str) -> ManifestDataset:
        return ManifestDataset(
            selected[name], class_names=card.class_names, task=card.task, preprocess=preprocess, skip_errors=True
        )

    train = None if fit_split == KEEP else dataset(fit_split)
    val = dataset(split)
    fit = fit_trust(model, card, train, val, keep=keep, splits=(fit_split, split), quantile=quantile, device=dev,
                    batch_size=batch_size, workers=workers, on_batch=on_batch)  # fmt: skip
    new = copy.deepcopy(card)
    tensors = fit.apply(new)
    entry = {"source": "calibrate", "path": str(checkpoint.resolve()), "sha256": file_sha256(checkpoint), "arch": card.arch,
             "created": card.created, "manifest": str(manifest), "splits": [fit_split, split]}  # fmt: skip
    new.lineage = [entry, *card.lineage]
    save_checkpoint(out, model, new, tensors)
    return CalibrateResult(out, fit)
