"""What a model's outputs mean: the one place that knows multiclass from multilabel.

A :class:`Task` owns the output activation (softmax or sigmoid), the decision rule that turns
probabilities into labels, the label separator used in manifests and prediction files, the
target encoding and the training loss.  Every command (train, evaluate, predict, explain,
export checks) asks the model card's task instead of comparing strings.

Decision rule, the same everywhere: multiclass takes the arg-max class; multilabel reports every
class whose probability is at least ``threshold`` (default 0.5, stored on the card, overridable
per command), joined with ``|`` (the manifest's separator); an empty label means "no finding".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # numpy too: the CLI reads a model card (and its task) before any array exists
    import numpy as np
    import torch

#: joins findings in manifests, prediction files and evaluate's predictions.csv
LABEL_SEPARATOR = "|"
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Task:
    """Base: subclasses fix the activation, decision rule and loss."""

    threshold: float = DEFAULT_THRESHOLD
    name: ClassVar[str] = ""
    separator: ClassVar[str] = LABEL_SEPARATOR

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"decision threshold must be in (0, 1), not {self.threshold}")

    @property
    def multilabel(self) -> bool:
        return False

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) float32 from logits, numerically stable (float64 inside)."""
        raise NotImplementedError

    def probs_tensor(self, logits: torch.Tensor) -> torch.Tensor:
        """The same activation on a torch tensor (training and explain stay on the tensor)."""
        raise NotImplementedError

    def decide(self, probs: np.ndarray, class_names: Sequence[str]) -> str:
        """One row's predicted label under this task's rule."""
        raise NotImplementedError

    def loss(self, *, class_weight: Any = None, pos_weight: Any = None) -> torch.nn.Module:
        """Training loss on logits: cross-entropy or per-class binary cross-entropy."""
        raise NotImplementedError

    def one_hot(self, targets: np.ndarray, num_classes: int) -> np.ndarray:
        """Targets as an (N, classes) 0/1 matrix (what ROC curves and ECE need)."""
        import numpy as np

        return np.asarray(targets, dtype=np.float64)

    def with_threshold(self, threshold: float | None) -> Task:
        """This task with another decision threshold (``None`` keeps the stored one)."""
        return self if threshold is None else type(self)(threshold=float(threshold))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold}


@dataclass(frozen=True)
class Multiclass(Task):
    """Exactly one class per film: softmax, arg-max, cross-entropy (the paper's 3-class task)."""

    name: ClassVar[str] = "multiclass"

    def probs(self, logits: np.ndarray) -> np.ndarray:
        import numpy as np

        z = np.asarray(logits, dtype=np.float64)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def probs_tensor(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(1)

    def decide(self, probs: np.ndarray, class_names: Sequence[str]) -> str:
        import numpy as np

        return class_names[int(np.argmax(probs))]

    def loss(self, *, class_weight: Any = None, pos_weight: Any = None) -> torch.nn.Module:
        import torch.nn as nn

        return nn.CrossEntropyLoss(weight=class_weight)

    def one_hot(self, targets: np.ndarray, num_classes: int) -> np.ndarray:
        import numpy as np

        return np.eye(num_classes)[np.asarray(targets).astype(int)]


@dataclass(frozen=True)
class Multilabel(Task):
    """Any number of findings per film (ChestX-ray14): sigmoid per class, threshold, BCE."""

    name: ClassVar[str] = "multilabel"

    @property
    def multilabel(self) -> bool:
        return True

    def probs(self, logits: np.ndarray) -> np.ndarray:
        import numpy as np

        z = np.asarray(logits, dtype=np.float64)
        return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # sigmoid without overflow

    def probs_tensor(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def decide(self, probs: np.ndarray, class_names: Sequence[str]) -> str:
        return self.separator.join(c for c, p in zip(class_names, probs) if p >= self.threshold)

    def loss(self, *, class_weight: Any = None, pos_weight: Any = None) -> torch.nn.Module:
        import torch.nn as nn

        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)


TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (Multiclass, Multilabel)}


def get_task(value: str | Mapping[str, Any] | Task, threshold: float | None = None) -> Task:
    """A Task from its name, its card dict (``{"name", "threshold"}``) or a Task; ``threshold`` overrides."""
    if isinstance(value, Task):
        return value.with_threshold(threshold)
    if isinstance(value, Mapping):
        name, stored = value.get("name"), value.get("threshold", DEFAULT_THRESHOLD)
    else:
        name, stored = value, DEFAULT_THRESHOLD
    try:
        cls = TASKS[str(name)]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}") from None
    return cls(threshold=float(stored if threshold is None else threshold))
