"""Heatmaps for ``predict --dicom-out`` and ``listen``, made by explain's own core.

The core is :class:`~cxrtool.explain.attribution.Explainer`.

A film is loaded and preprocessed exactly as ``explain`` does (``load_image`` -> ``resize_gray`` ->
``normalize``), and the relevance is the same map ``explain`` saves as ``.npy``.  LRP needs the
torch model, so heatmaps need a ``.safetensors`` checkpoint.  The probabilities are never taken from
here: a result shows the calibrated ones of the run that predicted the film; this only explains
the class that run chose.  (``explain --dicom-out`` uses explain's own maps and needs none of this.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrtool.errors import CxrError
from cxrtool.modelfile.loaded import LoadedModel
from cxrtool.results.content import Heatmap


class HeatmapMaker:
    """The run's loaded checkpoint + composite, reused for every film (building the LRP model is the slow part)."""

    def __init__(self, model: LoadedModel, composite: str | None = None, *, device: str = "cpu"):
        from cxrtool.explain.attribution import Explainer
        from cxrtool.explain.composites import DEFAULT_COMPOSITE
        from cxrtool.models.checkpoint import model_from_loaded

        if not model.is_checkpoint:
            raise CxrError(f"{model.path}: heatmaps need a .safetensors checkpoint (LRP runs on the torch model)")
        self.card = model.card
        self.composite = composite or DEFAULT_COMPOSITE
        bounds = self.card.preprocess.input_bounds()
        self.explainer = Explainer(model_from_loaded(model), self.composite, bounds, device=device)

    def make(self, path: str | Path, target: str) -> Heatmap:
        """The relevance of class ``target`` (the run's predicted class) for the film at ``path``.

        Raises
        ------
        ImageLoadError
            The film cannot be read.
        """
        import torch

        from cxrtool.images import load_image
        from cxrtool.preprocess import normalize, resize_gray

        cfg = self.card.preprocess
        film = load_image(path, window=cfg.window)
        x = torch.from_numpy(normalize(resize_gray(film, cfg), cfg)[None])
        _, (rel,) = self.explainer.explain(x, [list(self.card.class_names).index(target)])
        return Heatmap(film, rel[0].sum(0).numpy().astype(np.float32), cfg.resize, target, self.composite)
