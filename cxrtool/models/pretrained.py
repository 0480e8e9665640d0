"""Where a training run's weights come from: ``--init imagenet | none | txrv:NAME | <checkpoint> | <weights file>``.

The backbone is always loaded strictly: a missing or unexpected key is an error, never a silently
random layer.  The head is rebuilt for the new classes; with *output neuron keeping* (Bassi &
Attux 2020, arXiv 2005.01578) each new class that matches an old output, by name
(case-insensitive) or by an explicit ``new=old`` mapping, starts from that output's weight row
and bias, so knowledge such as stage 1's "Pneumonia" neuron survives the second transfer.

Foreign ``.pt/.pth`` files are read by :mod:`cxrtool.models.safe_pickle` (never ``torch.load`` of
a pickle that may run code): plain state dicts and whole pickled models alike.  A torchxrayvision
DenseNet is recognised by its pickled class and brings its own classes and preprocessing
(:mod:`cxrtool.models.txrv`), like a cxrtool checkpoint's card.  Nothing is ever downloaded.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cxrtool.errors import CxrError
from cxrtool.modelfile import ModelCard, card_if_checkpoint, file_sha256
from cxrtool.models import catalog
from cxrtool.models.checkpoint import load_state_dict, load_strict
from cxrtool.models.safe_pickle import PickledObject, module_state_dict, read_torch_file
from cxrtool.models.txrv import PREFIX as TXRV_PREFIX
from cxrtool.models.txrv import is_txrv, read_txrv, resolve_txrv

HEAD_KEYS = ("classifier.weight", "classifier.bias")
_STRIP_PREFIXES = ("module.", "densenet121.", "densenet201.")
# torchvision's own fix-up for pre-0.4 DenseNet files ('norm.1' -> 'norm1'), see densenet._load_state_dict.
_OLD_DENSE_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


@dataclass
class InitReport:
    """What :func:`initialise` did, for the log and the new checkpoint's lineage."""

    source: str  # none | imagenet | checkpoint | state_dict | torchxrayvision
    path: str | None = None
    kept: list[tuple[str, str]] = field(default_factory=list)  # (new class, old class)
    fresh: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lineage: list[dict[str, Any]] = field(default_factory=list)


def imagenet_weights_file(arch: str) -> Path:
    """The file torchvision's hub cache would hold for ``arch`` (``$TORCH_HOME/hub/checkpoints/...``)."""
    return _imagenet_files(arch)[0].cache_path()


def _imagenet_files(arch: str) -> list[catalog.WeightFile]:
    files = catalog.imagenet_files(arch)
    if not files:
        raise CxrError(f"--init imagenet: no ImageNet weights known for architecture {arch!r}")
    return files


def load_imagenet_state(arch: str) -> tuple[dict[str, torch.Tensor], catalog.WeightFile, Path]:
    """ImageNet weights from the local caches only (never downloads): torchvision's ``.pth``, else timm's file.

    torchvision's file is read with ``torch.load(weights_only=True)``; timm's ``densenet121.tv_in1k``
    safetensors holds the same weights under timm's names, which for DenseNet are torchvision's
    (``features.denseblock1.denselayer1.norm1.weight``, ``classifier.weight``); :func:`remap_keys`
    covers the old ``norm.1`` spellings and a missing ``num_batches_tracked``.
    """
    files = _imagenet_files(arch)
    for weights in files:
        path = weights.find()
        if path is None:
            continue
        if weights.kind == "timm":
            return load_foreign_state(path), weights, path
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CxrError(f"{path}: not a loadable torchvision weights file ({_first_line(exc)})") from None
        return remap_keys(state), weights, path
    where = "; or ".join(f"download {w.url} and put it at {w.cache_path()}" for w in files)
    raise CxrError(
        f"--init imagenet: ImageNet weights for {arch} not found offline; {where} "
        f"(the torch hub and Hugging Face caches; TORCH_HOME / HF_HOME move them), or pass the file as --init PATH"
    )


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@dataclass
class Foreign:
    """A weights file that is not a cxrtool checkpoint, as :func:`initialise` uses it."""

    state: dict[str, torch.Tensor]
    #: the file's own model card (torchxrayvision: classes, preprocessing); None for a bare state dict
    card: ModelCard | None
    lineage: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def read_foreign(path: str | Path, *, init_classes: Sequence[str] | None = None, txrv: bool = False) -> Foreign:
    """Read a foreign weights file once per run (cached by path, size and mtime) and map it onto cxrtool's names.

    ``txrv``: the user said ``txrv:`` and anything else is an error.  ``init_classes`` names the
    outputs (for torchxrayvision: every slot, in head order).
    """
    path = Path(path)
    obj = _read_cached(str(path.resolve()), *_stamp(path)) if path.suffix != ".safetensors" else None
    if is_txrv(obj):
        weights = read_txrv(obj, path, labels=init_classes)
        return Foreign(remap_keys(weights.state), weights.card, weights.card.lineage[0], weights.notes)
    if txrv:
        what = obj.qualname if isinstance(obj, PickledObject) else "safetensors" if obj is None else type(obj).__name__
        raise CxrError(f"{path}: not a torchxrayvision DenseNet file (it holds {what})")
    state = load_foreign_state(path, obj)
    lineage: dict[str, Any] = {"source": "state_dict", "path": str(path.resolve()), "sha256": file_sha256(path)}
    if init_classes:
        lineage["class_names"] = list(init_classes)
    return Foreign(state, None, lineage)


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=2)
def _read_cached(path: str, mtime_ns: int, size: int) -> Any:
    """The parent is read for its card (arch, preprocessing) and again for its weights: parse once."""
    return read_torch_file(path)


def load_foreign_state(path: str | Path, obj: Any = None) -> dict[str, torch.Tensor]:
    """A state dict from ``.pth/.pt/.tar`` (safe reader, whole pickled models too) or ``.safetensors``, keys remapped.

    ``obj``: the file's content when the caller has already read it.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            state: Any = load_state_dict(path)
        except Exception as exc:
            raise CxrError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        state = read_torch_file(path) if obj is None else obj
    for wrapper in ("state_dict", "model_state_dict", "model"):  # CheXNet saves {'state_dict': ...}
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), (Mapping, PickledObject)):
            state = state[wrapper]
            break
    if isinstance(state, PickledObject):  # torch.save(model): its parameters and buffers
        state = module_state_dict(state)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CxrError(f"{path}: does not contain a state dict of tensors")
    return remap_keys(state)


def remap_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map DataParallel / CheXNet / old-torchvision key names onto cxrtool's (torchvision's current) names.

    ``module.`` and ``densenet121.`` prefixes are stripped, ``denselayerN.norm.1`` becomes
    ``denselayerN.norm1`` and CheXNet's ``classifier.0.`` (Linear inside a Sequential with a
    Sigmoid) becomes ``classifier.``.  Files older than BatchNorm's ``num_batches_tracked`` buffer
    get it as 0, which is what ``nn.BatchNorm2d`` itself does for such files.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in _STRIP_PREFIXES:
                if new.startswith(prefix):
                    new, stripped = new[len(prefix) :], True
        match = _OLD_DENSE_KEY.match(new)
        if match:
            new = match.group(1) + match.group(2)
        if new.startswith("classifier.0."):
            new = "classifier." + new[len("classifier.0.") :]
        if new in out:
            raise CxrError(f"state dict has two keys that both mean {new!r} (one is {key!r})")
        out[new] = value
    for key in list(out):
        if key.endswith(".running_mean"):
            tracked = key[: -len("running_mean")] + "num_batches_tracked"
            out.setdefault(tracked, torch.tensor(0, dtype=torch.long))
    return out


def initialise(
    model: nn.Module,
    init: str,
    *,
    arch: str,
    class_names: Sequence[str],
    keep_neurons: bool = False,
    keep_map: Mapping[str, str] | None = None,
    init_classes: Sequence[str] | None = None,
) -> InitReport:
    """Load ``init`` into ``model`` (a freshly built cxrtool model for ``class_names``).

    Parameters
    ----------
    init:
        ``none``, ``imagenet``, a cxrtool ``.safetensors`` checkpoint, or a foreign state dict file.
    keep_neurons:
        Copy old output rows into matching new outputs (needs old class names: from the
        checkpoint's card, or ``init_classes`` for a foreign state dict).
    keep_map:
        Explicit ``{new class: old class}`` pairs, matched case-insensitively; they win over names.

    Raises
    ------
    CxrError
        Unknown ``init``, missing file, architecture mismatch, any backbone key mismatch, or a
        keep-map naming a class that does not exist.
    """
    keep_map = dict(keep_map or {})
    if (keep_neurons or keep_map) and init in ("none", "imagenet"):
        raise CxrError(f"--keep-neurons needs --init to be a checkpoint, not {init!r}")
    if init == "none":
        return InitReport(source="none", fresh=list(class_names))
    if init == "imagenet":
        state, weights, path = load_imagenet_state(arch)
        report = InitReport(source="imagenet", path=str(path), fresh=list(class_names))
        report.lineage = [
            {
                "source": "imagenet",
                "weights": f"{weights.kind}:{weights.name}",
                "file": path.name,
                "sha256": file_sha256(path),
            }
        ]
        _load_backbone(model, state, source=str(path), notes=report.notes)
        return report

    path = _init_path(init)
    card = _card_or_none(path)
    if card is not None:
        if card.arch != arch:
            raise CxrError(f"{path}: checkpoint is {card.arch}, the run asks for {arch}")
        state = load_state_dict(path)
        old_names: Sequence[str] | None = card.class_names
        report = InitReport(source="checkpoint", path=str(path))
        entry = {"source": "cxrtool", "path": str(path.resolve()), "sha256": file_sha256(path), "arch": card.arch}
        entry |= {"task": card.task.name, "class_names": list(card.class_names), "created": card.created}
        report.lineage = [entry, *card.lineage]
    else:
        foreign = read_foreign(path, init_classes=init_classes, txrv=init.startswith(TXRV_PREFIX))
        if foreign.card is not None and foreign.card.arch != arch:
            raise CxrError(f"{path}: the file holds a {foreign.card.arch}, the run asks for {arch}")
        state = foreign.state
        old_names = foreign.card.class_names if foreign.card else (list(init_classes) if init_classes else None)
        report = InitReport(source=foreign.lineage["source"], path=str(path), notes=list(foreign.notes))
        report.lineage = [foreign.lineage]
    head = _load_backbone(model, state, source=str(path), notes=report.notes)
    if keep_neurons or keep_map:
        if old_names is None:
            raise CxrError(f"{path}: --keep-neurons needs the old class names; give --init-classes for a state dict")
        if head is None:
            raise CxrError(f"{path}: --keep-neurons asked for, but the file has no classifier weights")
        report.kept = keep_output_neurons(
            model.classifier, *head, old_names=old_names, new_names=class_names, keep_map=keep_map
        )
    kept = {new for new, _ in report.kept}
    report.fresh = [c for c in class_names if c not in kept]
    return report


def _init_path(init: str) -> Path:
    if init.startswith(TXRV_PREFIX):
        return resolve_txrv(init)
    path = Path(init)
    if not path.is_file():
        raise CxrError(f"--init {init!r}: not 'imagenet', 'none', 'txrv:NAME' or an existing weights file")
    return path


def read_parent_card(init: str, init_classes: Sequence[str] | None = None) -> ModelCard | None:
    """The card of ``init`` when it has one: a cxrtool checkpoint's, or an imported torchxrayvision model's.

    Its arch and preprocessing are the run's defaults.
    """
    if init in ("none", "imagenet"):
        return None
    if not init.startswith(TXRV_PREFIX) and not Path(init).is_file():
        return None
    path = _init_path(init)
    card = _card_or_none(path)
    if card is not None or path.suffix == ".safetensors":
        return card
    return read_foreign(path, init_classes=init_classes, txrv=init.startswith(TXRV_PREFIX)).card


def _card_or_none(path: Path) -> ModelCard | None:
    if path.suffix != ".safetensors":
        return None
    return card_if_checkpoint(path)  # None: a plain safetensors state dict; a damaged card raises


def _load_backbone(
    model: nn.Module, state: dict[str, torch.Tensor], *, source: str, notes: list[str]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Load every non-head tensor strictly; return the file's (head weight, bias) or None."""
    head_keys = {k for k in state if k.startswith("classifier.")}
    if head_keys and head_keys != set(HEAD_KEYS):
        raise CxrError(f"{source}: weights do not fit the model: unexpected head keys {sorted(head_keys)}")
    body = {k: v for k, v in state.items() if k not in head_keys}
    conv = "features.conv0.weight"
    own = model.state_dict()
    if conv in body and conv in own and body[conv].shape != own[conv].shape:
        body[conv] = _adapt_input_conv(body[conv], own[conv].shape[1], source=source)
        notes.append(f"first convolution adapted from {state[conv].shape[1]} to {own[conv].shape[1]} input channels")
    load_strict(model, {**body, **{k: own[k] for k in HEAD_KEYS}}, source=source)
    return (state["classifier.weight"], state["classifier.bias"]) if head_keys else None


def _adapt_input_conv(weight: torch.Tensor, in_chans: int, *, source: str) -> torch.Tensor:
    """3 -> 1 channels: sum over colour (a grey image replicated 3x gives the same response); 1 -> 3: split."""
    have = weight.shape[1]
    if have == 3 and in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    if have == 1 and in_chans == 3:
        return weight.repeat(1, 3, 1, 1) / 3.0
    raise CxrError(f"{source}: first convolution has {have} input channels, the model needs {in_chans}")


def keep_output_neurons(
    classifier: nn.Linear,
    old_weight: torch.Tensor,
    old_bias: torch.Tensor,
    *,
    old_names: Sequence[str],
    new_names: Sequence[str],
    keep_map: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """Copy the old row and bias of each matching class into ``classifier``; return (new, old) pairs."""
    if old_weight.shape != (len(old_names), classifier.in_features):
        raise CxrError(
            f"old head has shape {tuple(old_weight.shape)}, expected ({len(old_names)}, {classifier.in_features}) "
            f"for classes {list(old_names)}"
        )
    old_index = {name.lower(): i for i, name in enumerate(old_names)}
    new_lower = {name.lower(): name for name in new_names}
    explicit: dict[str, str] = {}
    for new, old in (keep_map or {}).items():
        if new.lower() not in new_lower:
            raise CxrError(f"--keep-map {new}={old}: {new!r} is not one of the new classes {list(new_names)}")
        if old.lower() not in old_index:
            raise CxrError(f"--keep-map {new}={old}: {old!r} is not one of the old classes {list(old_names)}")
        explicit[new_lower[new.lower()]] = old
    kept: list[tuple[str, str]] = []
    with torch.no_grad():
        for j, name in enumerate(new_names):
            old = explicit.get(name, name)
            i = old_index.get(old.lower())
            if i is None:
                continue
            classifier.weight[j].copy_(old_weight[i])
            classifier.bias[j].copy_(old_bias[i])
            kept.append((name, old_names[i]))
    return kept
