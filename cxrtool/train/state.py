"""Resume state: everything besides the weights that makes a resumed run equal an uninterrupted one.

Saved atomically with ``torch.save`` and read back with ``torch.load(weights_only=True)``, so it
holds only tensors and plain Python values (RNG states included, as tensors and lists).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrtool.errors import CxrError
from cxrtool.fsutil import atomic_path, remove_stale_temps

STATE_FILE = "train_state.pt"
FORMAT = "cxrtool-train-state/1"


@dataclass
class Progress:
    """Everything that changes while training and is saved for ``--resume``."""

    epoch: int = 0  # epochs finished
    step: int = 0  # steps done in the current epoch
    run_loss: list[float] = field(default_factory=lambda: [0.0, 0.0])  # summed loss, samples this epoch
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = "running"

    def to_state(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "epoch": self.epoch,
            "step": self.step,
            "run_loss": self.run_loss,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": json.dumps(self.history),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], *, is_main: bool) -> Progress:
        return cls(
            epoch=state["epoch"],
            step=state["step"],
            run_loss=list(state["run_loss"]) if is_main else [0.0, 0.0],
            best_value=state["best_value"],
            best_epoch=state["best_epoch"],
            bad_epochs=state["bad_epochs"],
            history=json.loads(state["history"]),
            status="running" if state["status"] in ("running", "interrupted") else state["status"],
        )


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        # a run resumed with fewer visible GPUs than it was saved with restores the ones it has
        # (``set_rng_state_all`` would raise IndexError); extra GPUs keep their fresh seeds
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write the state atomically; temp files a killed earlier write left in the run folder go first."""
    remove_stale_temps(Path(path).parent)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return Path(path)


def load_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    remove_stale_temps(path.parent)  # a resume after kill -9: the half-written checkpoint/state temps
    if not path.is_file():
        raise CxrError(f"{path}: no training state to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CxrError(f"{path}: unreadable training state ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CxrError(f"{path}: not a cxrtool training state")
    return state
