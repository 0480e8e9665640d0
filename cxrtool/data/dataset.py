"""A torch Dataset over manifest rows: load_image -> resize_gray -> augment -> normalize.

Augmentation randomness comes from a generator seeded by ``(seed, epoch, index)``, not from a
global RNG, so it is identical with any number of workers, on any DDP rank and after a resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrtool.config import PreprocessCfg
from cxrtool.data.augment import AugmentCfg, augment
from cxrtool.errors import CxrError, ImageLoadError
from cxrtool.manifest import Manifest, label_column
from cxrtool.preprocess import load_gray, normalize
from cxrtool.task import Task


class ManifestDataset(Dataset):
    """Items are ``(input CxHxW float32, target, row index, error message or "")``.

    Targets: the class index (multiclass) or a multi-hot float vector in ``class_names`` order
    (multilabel; ``y:<class>`` columns are matched by name, so a manifest may order them
    differently from the model).  With ``skip_errors`` an unreadable file yields a zero input and
    its error message (evaluation reports it per row); otherwise it raises the one-line error.
    """

    def __init__(
        self,
        manifest: Manifest,
        *,
        class_names: Sequence[str],
        task: Task,
        preprocess: PreprocessCfg,
        augment_cfg: AugmentCfg | None = None,
        seed: int = 0,
        skip_errors: bool = False,
    ):
        self.manifest, self.class_names, self.task = manifest, list(class_names), task
        self.preprocess, self.augment_cfg, self.seed = preprocess, augment_cfg, seed
        self.skip_errors, self.epoch = skip_errors, 0
        self.targets = self._targets()

    def _targets(self) -> list:
        rows = self.manifest.rows
        if not self.task.multilabel:
            if self.manifest.task.multilabel:
                raise CxrError("the model is multiclass but the manifest has y: columns (multilabel)")
            return [self.manifest.class_index(r, self.class_names) for r in rows]
        missing = [c for c in self.class_names if label_column(c) not in self.manifest.columns]
        if missing:
            raise CxrError(f"multilabel manifest lacks columns for {missing} (need y:<class> for every class)")
        cols = [label_column(c) for c in self.class_names]
        try:
            return [[float(r.get(c) or 0) for c in cols] for r in rows]
        except ValueError as exc:
            raise CxrError(f"multilabel manifest has a non-numeric y: value ({exc})") from None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.manifest.rows)

    def load(self, index: int) -> np.ndarray:
        """Input of row ``index`` as CxHxW float32 (augmented when the dataset has an AugmentCfg)."""
        row = self.manifest.rows[index]
        gray = load_gray(self.manifest.resolve(row), self.preprocess)
        if self.augment_cfg is not None:
            gray = augment(gray, self.augment_cfg, np.random.default_rng([self.seed, self.epoch, index]))
        return normalize(gray, self.preprocess)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, str]:
        target = torch.tensor(self.targets[index], dtype=torch.float32 if self.task.multilabel else torch.long)
        try:
            x = torch.from_numpy(self.load(index))
        except ImageLoadError as exc:
            if not self.skip_errors:
                raise
            size = self.preprocess.input_size
            return torch.zeros(self.preprocess.channels, size, size), target, index, exc.reason
        return x, target, index, ""
