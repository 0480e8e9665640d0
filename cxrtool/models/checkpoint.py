"""cxrtool checkpoints: one ``.safetensors`` file = weights + a JSON model card in its header.

safetensors holds only tensors and strings, so loading can never execute code.  The card carries
everything needed to rebuild the model and reproduce its preprocessing (timm's idea of a model
that knows its own data config), plus provenance: training config, metrics, data fingerprint and
the lineage of parent checkpoints for twice-transferred models.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cxrtool import __version__
from cxrtool.config import PreprocessCfg
from cxrtool.errors import CxrError
from cxrtool.fsutil import atomic_path

FORMAT = "cxrtool-checkpoint/1"


@dataclass
class ModelCard:
    """What a checkpoint says about its model (serialised as JSON in the safetensors header)."""

    arch: str
    task: str  # "multiclass" | "multilabel"
    class_names: list[str]
    preprocess: PreprocessCfg = field(default_factory=PreprocessCfg)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    lineage: list[dict[str, Any]] = field(default_factory=list)
    cxrtool_version: str = __version__
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def to_json(self) -> str:
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        data = json.loads(text)
        data["preprocess"] = PreprocessCfg.from_dict(data.get("preprocess") or {})
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def save_checkpoint(path: str | Path, model: nn.Module, card: ModelCard) -> Path:
    """Write weights and card atomically (a crash never leaves a half-written checkpoint)."""
    from safetensors.torch import save_file

    path = Path(path)
    model = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "card": card.to_json()})
    return path


def read_card(path: str | Path) -> ModelCard:
    """Read only the card (fast: the header, not the weights)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except FileNotFoundError:
        raise CxrError(f"{path}: checkpoint not found") from None
    except Exception as exc:
        raise CxrError(f"{path}: not a safetensors checkpoint ({exc})") from None
    if meta.get("format") != FORMAT or "card" not in meta:
        raise CxrError(f"{path}: safetensors file without a cxrtool model card")
    return ModelCard.from_json(meta["card"])


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def load_checkpoint(path: str | Path) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model from its card and load the weights strictly (any key mismatch is an error)."""
    from cxrtool.models.registry import build_model

    card = read_card(path)
    model = build_model(card.arch, num_classes=len(card.class_names), in_chans=card.preprocess.channels)
    load_strict(model, load_state_dict(path), source=str(path))
    model.eval()
    return model, card


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error listing what did not match."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shape)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{name} keys: {', '.join(keys[:3])}{more}")
        raise CxrError(f"{source}: weights do not fit the model: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
