"""Where a training run's weights come from: ``--init imagenet | none | <checkpoint> | <state dict>``.

The backbone is always loaded strictly: a missing or unexpected key is an error, never a silently
random layer.  The head is rebuilt for the new classes; with *output neuron keeping* (Bassi &
Attux 2020, arXiv 2005.01578) each new class that matches an old output, by name
(case-insensitive) or by an explicit ``new=old`` mapping, starts from that output's weight row
and bias, so knowledge such as stage 1's "Pneumonia" neuron survives the second transfer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn as nn

from cxrtool.errors import CxrError
from cxrtool.labels import CHESTXRAY14
from cxrtool.models.checkpoint import load_state_dict, load_strict
from cxrtool.modelfile import ModelCard, card_if_checkpoint, file_sha256

HEAD_KEYS = ("classifier.weight", "classifier.bias")
_STRIP_PREFIXES = ("module.", "densenet121.", "densenet201.")
# torchvision's own fix-up for pre-0.4 DenseNet files ('norm.1' -> 'norm1'), see densenet._load_state_dict.
_OLD_DENSE_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


@dataclass
class InitReport:
    """What :func:`initialise` did, for the log and the new checkpoint's lineage."""

    source: str  # none | imagenet | checkpoint | state_dict
    path: str | None = None
    kept: list[tuple[str, str]] = field(default_factory=list)  # (new class, old class)
    fresh: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lineage: list[dict[str, Any]] = field(default_factory=list)


def _imagenet_weights(arch: str):
    from torchvision.models import DenseNet121_Weights, DenseNet201_Weights

    table = {"densenet121": DenseNet121_Weights.IMAGENET1K_V1, "densenet201": DenseNet201_Weights.IMAGENET1K_V1}
    if arch not in table:
        raise CxrError(f"--init imagenet: no ImageNet weights known for architecture {arch!r}")
    return table[arch]


def imagenet_weights_file(arch: str) -> Path:
    """The file torchvision's hub cache would hold for ``arch`` (``$TORCH_HOME/hub/checkpoints/...``)."""
    weights = _imagenet_weights(arch)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def load_imagenet_state(arch: str) -> tuple[dict[str, torch.Tensor], Path]:
    """torchvision's ImageNet state dict, from the local torch hub cache only (never downloads)."""
    weights = _imagenet_weights(arch)
    path = imagenet_weights_file(arch)
    if not path.is_file():
        raise CxrError(
            f"--init imagenet: ImageNet weights not found offline; download {weights.url} "
            f"and put it at {path} (the torch hub cache; set TORCH_HOME to move it)"
        )
    # The file exists, so this only reads the cache (weights_only: unpickling cannot run code).
    state = weights.get_state_dict(progress=False, weights_only=True)
    return remap_keys(state), path


def load_foreign_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.pth/.pt/.tar`` (``torch.load(weights_only=True)``) or ``.safetensors``, keys remapped."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            state: Any = load_state_dict(path)
        except Exception as exc:
            raise CxrError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CxrError(f"{path}: not a loadable weights-only state dict ({first})") from None
    for wrapper in ("state_dict", "model_state_dict", "model"):  # CheXNet saves {'state_dict': ...}
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
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
        state, path = load_imagenet_state(arch)
        report = InitReport(source="imagenet", path=str(path), fresh=list(class_names))
        report.lineage = [
            {"source": "imagenet", "weights": f"{arch}:IMAGENET1K_V1", "file": path.name, "sha256": file_sha256(path)}
        ]
        _load_backbone(model, state, source=str(path), notes=report.notes)
        return report

    path = Path(init)
    if not path.is_file():
        raise CxrError(f"--init {init!r}: not 'imagenet', 'none' or an existing weights file")
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
        state = load_foreign_state(path)
        old_names = list(init_classes) if init_classes else None
        report = InitReport(source="state_dict", path=str(path))
        report.lineage = [{"source": "state_dict", "path": str(path.resolve()), "sha256": file_sha256(path)}]
        if old_names:
            report.lineage[0]["class_names"] = list(old_names)
    head = _load_backbone(model, state, source=str(path), notes=report.notes)
    if keep_neurons or keep_map:
        if old_names is None:
            raise CxrError(f"{path}: --keep-neurons needs the old class names; give --init-classes for a state dict")
        if head is None:
            raise CxrError(f"{path}: --keep-neurons asked for, but the file has no classifier weights")
        report.kept = keep_output_neurons(model.classifier, *head, old_names=old_names, new_names=class_names,
                                          keep_map=keep_map)  # fmt: skip
    kept = {new for new, _ in report.kept}
    report.fresh = [c for c in class_names if c not in kept]
    return report


def read_parent_card(init: str) -> ModelCard | None:
    """The card of ``init`` when it is a cxrtool checkpoint (its arch and preprocessing are the defaults)."""
    path = Path(init)
    if init in ("none", "imagenet") or not path.is_file():
        return None
    return _card_or_none(path)


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
