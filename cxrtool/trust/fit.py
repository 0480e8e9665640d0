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
from torch.utils.data import DataLoader, Subset

from cxrtool.data import ManifestDataset
from cxrtool.errors import CxrError
from cxrtool.modelfile import TRUST_PREFIX, ModelCard
from cxrtool.trust.ood import OodModel, fit_ood, scale_depths
from cxrtool.trust.options import DEFAULT_QUANTILE, KEEP
from cxrtool.trust.temperature import calibration_metrics, fit_temperature


@dataclass
class Outputs:
    """A model's outputs on one split's readable films."""

    logits: np.ndarray
    features: np.ndarray
    targets: np.ndarray
    failed: int
    thumbs: np.ndarray  # 8x8 thumbnails of the inputs, for the shortcut verdict (cxrtool.trust.shortcut)


def thumbnails(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) model inputs -> (N, 64) box-averaged 8x8 thumbnails of the first channel.

    The inputs are normalised films (an affine map of the grey film); the shortcut probe
    standardises its inputs, so its verdict is the same as on the grey film's thumbnail.
    """
    from cxrtool.trust.shortcut import THUMB_SIDE

    return torch.nn.functional.adaptive_avg_pool2d(x[:, :1].float(), THUMB_SIDE).flatten(1).cpu().numpy()


Gather = Callable[[Any], list[Any]]


@torch.inference_mode()
def collect(
    model: nn.Module,
    dataset: ManifestDataset,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    on_batch: Callable[[int], None] | None = None,
    shard: tuple[int, int] = (0, 1),
    gather: Gather | None = None,
) -> Outputs:
    """Logits and features (``model.forward_features``) of every readable film of ``dataset``.

    ``shard=(rank, world)`` runs films ``rank, rank + world, ...`` only; ``gather`` (every rank's
    object, in rank order: ``all_gather_object``) then puts all shards together in dataset order,
    so every rank returns what one process would have.
    """
    if not hasattr(model, "forward_features"):
        raise CxrError(f"{type(model).__name__} has no features path; OOD statistics need a cxrtool DenseNet")
    model = getattr(model, "module", model).eval()
    rank, world = shard
    part = dataset if world == 1 else Subset(dataset, range(rank, len(dataset), world))
    loader = DataLoader(part, batch_size=batch_size, num_workers=workers)
    logits, feats, targets, order, thumbs, failed = [], [], [], [], [], 0
    for x, y, index, errors in loader:
        ok = torch.tensor([not e for e in errors], dtype=torch.bool)
        failed += int((~ok).sum())
        if ok.any():
            z, f = model.forward_features(x[ok].to(device))
            logits.append(z.float().cpu().numpy())
            feats.append(f.float().cpu().numpy())
            targets.append(y[ok].numpy())
            order.append(index[ok].numpy())
            thumbs.append(thumbnails(x[ok]))
        if on_batch is not None:
            on_batch(len(errors))
    mine = [np.concatenate(a) if a else None for a in (logits, feats, targets, order, thumbs)]
    parts = gather((mine, failed)) if gather is not None else [(mine, failed)]
    kept = [arrays for arrays, _ in parts if arrays[0] is not None]
    if not kept:
        raise CxrError(f"none of the {len(dataset)} films could be read")
    z, f, y, index, t = (np.concatenate([k[i] for k in kept]) for i in range(5))
    sort = np.argsort(index, kind="stable")
    return Outputs(z[sort], f[sort], y[sort], sum(n for _, n in parts), t[sort])


@dataclass
class TrustFit:
    """What :func:`fit_trust` found: card fields, checkpoint tensors and a summary."""

    calibration: dict[str, Any]
    ood: OodModel
    failed: int = 0  # unreadable films left out
    #: the shortcut verdict on the Gaussians' split (None: none found); ``refit=False``: no such split, card kept
    shortcut: str | None = None
    refit: bool = True

    def apply(self, card: ModelCard) -> dict[str, torch.Tensor]:
        """Write the fields into ``card``; return the tensors to save with the checkpoint."""
        from cxrtool.trust.shortcut import CARD_KEY

        card.calibration = dict(self.calibration)
        card.ood = self.ood.params()
        if self.refit:
            card.dataset = {k: v for k, v in card.dataset.items() if k != CARD_KEY}
            if self.shortcut:
                card.dataset[CARD_KEY] = self.shortcut
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
    shard: tuple[int, int] = (0, 1),
    gather: Gather | None = None,
) -> TrustFit:
    """Temperature (val NLL), OOD Gaussians (``train``) and threshold (val ``quantile``) for ``model``.

    With ``train=None`` the Gaussians of ``keep`` are reused and only their scaling, the threshold
    and the temperature are refitted.  Datasets must be built without augmentation and with the
    card's preprocessing.  Under DDP each rank passes its ``shard`` and a ``gather`` (see
    :func:`collect`); every rank then fits the same statistics from the same gathered outputs.
    """
    layout = getattr(model, "module", model).feature_layout()
    kw = {
        "device": device,
        "batch_size": batch_size,
        "workers": workers,
        "on_batch": on_batch,
        "shard": shard,
        "gather": gather,
    }
    va = collect(model, val, **kw)
    task = card.task
    if len(va.logits) < 2:
        raise CxrError(f"{len(va.logits)} readable validation film(s): too few to calibrate")
    temperature = fit_temperature(task, va.logits, va.targets)
    calibration = {
        "split": splits[1],
        "n": int(len(va.logits)),
        **calibration_metrics(task, va.logits, va.targets, temperature),
    }
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
    if train is None:
        return TrustFit(calibration, ood, failed, refit=False)
    return TrustFit(calibration, ood, failed, split_shortcut(card, tr.thumbs, tr.targets))


def split_shortcut(card: ModelCard, thumbs: np.ndarray, targets: np.ndarray) -> str | None:
    """:func:`~cxrtool.trust.shortcut.shortcut_verdict` on one split's films and true labels (multiclass only)."""
    from cxrtool.trust.shortcut import shortcut_verdict

    if card.task.multilabel or len(targets) == 0:
        return None
    return shortcut_verdict(thumbs, [card.class_names[int(t)] for t in targets])


@dataclass
class CalibrateResult:
    out: Path
    fit: TrustFit


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
    from cxrtool.devices import resolve_device
    from cxrtool.fsutil import check_writable_output
    from cxrtool.manifest import Manifest, check_for_model, read_manifest
    from cxrtool.modelfile.loaded import open_model
    from cxrtool.models.checkpoint import model_from_loaded, save_checkpoint
    from cxrtool.trust.assess import load_trust

    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else default_calibrated_path(checkpoint)
    check_writable_output(out, "file")  # before a minute of work, as predict does
    if out.exists() and out.resolve() == checkpoint.resolve():
        raise CxrError(f"{out}: calibrate writes a new checkpoint; choose another --out than the input")
    loaded = open_model(checkpoint)  # the run's one read: card, kept statistics, weights and sha256 come from it
    card = loaded.card
    rows = read_manifest(manifest)

    def checked(name: str) -> Manifest:  # two classes at least: one cannot set a temperature or class Gaussians
        return check_for_model(rows, name, card.class_names, card.task, source=manifest, min_classes=2)

    selected = {name: checked(name) for name in dict.fromkeys([split] if fit_split == KEEP else [fit_split, split])}
    keep = None
    if fit_split == KEEP:
        keep = load_trust(loaded).ood
        if keep is None:
            raise CxrError(f"{checkpoint}: has no OOD statistics to keep; give --fit-split a split name (e.g. train)")
    model = model_from_loaded(loaded)
    dev = resolve_device(device)
    model = model.to(dev)
    preprocess = resolve_preprocess(card.preprocess)

    def dataset(name: str) -> ManifestDataset:
        return ManifestDataset(
            selected[name], class_names=card.class_names, task=card.task, preprocess=preprocess, skip_errors=True
        )

    train = None if fit_split == KEEP else dataset(fit_split)
    val = dataset(split)
    fit = fit_trust(
        model,
        card,
        train,
        val,
        keep=keep,
        splits=(fit_split, split),
        quantile=quantile,
        device=dev,
        batch_size=batch_size,
        workers=workers,
        on_batch=on_batch,
    )
    new = copy.deepcopy(card)
    tensors = fit.apply(new)
    entry = {
        "source": "calibrate",
        "path": str(checkpoint.resolve()),
        "sha256": loaded.sha256,
        "arch": card.arch,
        "created": card.created,
        "manifest": str(manifest),
        "splits": [fit_split, split],
    }
    new.lineage = [entry, *card.lineage]
    save_checkpoint(out, model, new, tensors)
    return CalibrateResult(out, fit)
