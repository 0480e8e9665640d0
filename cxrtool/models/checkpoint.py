"""cxrtool checkpoints: one ``.safetensors`` file = weights + the JSON model card in its header.

safetensors holds only tensors and strings, so loading can never execute code.  What the card
carries and how it is read lives in :mod:`cxrtool.modelfile`; this module writes and loads weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from cxrtool.errors import CxrError, one_line
from cxrtool.fsutil import atomic_path
from cxrtool.modelfile import TRUST_PREFIX, ModelCard, checkpoint_metadata, read_card

if TYPE_CHECKING:
    from cxrtool.modelfile.loaded import LoadedModel


def save_checkpoint(
    path: str | Path, model: nn.Module, card: ModelCard, extra: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write weights and card atomically (a crash never leaves a half-written checkpoint).

    ``extra``: tensors that are not weights (the OOD statistics, keys under ``TRUST_PREFIX``).
    """
    from safetensors.torch import save_file

    path = Path(path)
    model = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if extra:
        if any(not k.startswith(TRUST_PREFIX) for k in extra):
            raise ValueError(f"extra checkpoint tensors must be named {TRUST_PREFIX}*")
        state |= {k: v.detach().to("cpu").contiguous() for k, v in extra.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=checkpoint_metadata(card))
    return path


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights (statistics stored under ``TRUST_PREFIX`` are not weights and are left out)."""
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path), device="cpu").items() if not k.startswith(TRUST_PREFIX)}


def load_checkpoint(path: str | Path) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model from its card and load the weights strictly (any key mismatch is an error)."""
    card = read_card(path)
    return build_from_card(card, load_state_dict(path), source=str(path)), card


def model_from_loaded(model: LoadedModel) -> nn.Module:
    """:func:`load_checkpoint` of a checkpoint already read (:func:`cxrtool.modelfile.loaded.open_model`)."""
    from safetensors.torch import load

    if not model.is_checkpoint:
        raise CxrError(f"{model.path}: the torch model needs a .safetensors checkpoint")
    try:
        tensors = load(model.data)
    except Exception as exc:  # safetensors' own error type for a damaged tensor table
        raise CxrError(f"{model.path}: unreadable checkpoint weights ({one_line(exc)})") from None
    state = {k: v for k, v in tensors.items() if not k.startswith(TRUST_PREFIX)}
    return build_from_card(model.card, state, source=str(model.path))


def build_from_card(card: ModelCard, state: dict[str, torch.Tensor], *, source: str) -> nn.Module:
    """The card's architecture with ``state`` loaded strictly, in eval mode."""
    from cxrtool.models.registry import build_model

    try:
        model = build_model(card.arch, num_classes=len(card.class_names), in_chans=card.preprocess.channels)
    except ValueError as exc:  # unknown architecture named by the card
        raise CxrError(f"{source}: model card field 'arch': {exc}") from None
    load_strict(model, state, source=source)
    model.eval()
    return model


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
