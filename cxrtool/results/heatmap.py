"""Heatmaps for DICOM results, made by ``explain``'s own core (:class:`~cxrtool.explain.attribution.Explainer`).

A film is loaded and preprocessed exactly as ``explain`` does (``load_image`` -> ``resize_gray`` ->
``normalize``), and the relevance is the same map ``explain`` saves as ``.npy``.  LRP needs the
torch model, so heatmaps need a ``.safetensors`` checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrtool.errors import CxrError
from cxrtool.results.content import FilmPrediction, Heatmap


class HeatmapMaker:
    """One loaded checkpoint + composite, reused for every film (model loading is the slow part)."""

    def __init__(self, checkpoint: str | Path, composite: str | None = None):
        from cxrtool.explain.attribution import Explainer
        from cxrtool.explain.composites import DEFAULT_COMPOSITE
        from cxrtool.models.checkpoint import load_checkpoint

        checkpoint = Path(checkpoint)
        if checkpoint.suffix.lower() != ".safetensors":
            raise CxrError(f"{checkpoint}: heatmaps need a .safetensors checkpoint (LRP runs on the torch model)")
        net, self.card = load_checkpoint(checkpoint)
        self.composite = composite or DEFAULT_COMPOSITE
        self.explainer = Explainer(net, self.composite, self.card.preprocess.input_bounds())

    def make(self, path: str | Path, target: str | None = None) -> tuple[Heatmap, FilmPrediction]:
        """Heatmap of ``target`` (default: the predicted class) and the torch model's own prediction.

        Raises
        ------
        ImageLoadError
            The film cannot be read.
        """
        import torch

        from cxrtool.images import load_image
        from cxrtool.preprocess import normalize, resize_gray

        cfg = self.card.preprocess
        names = list(self.card.class_names)
        film = load_image(path, window=cfg.window)
        x = torch.from_numpy(normalize(resize_gray(film, cfg), cfg)[None])
        index = None if target is None else names.index(target)
        logits, (rel,) = self.explainer.explain(x, [index])
        probs = self.card.task.probs(logits.numpy())[0]
        target_name = names[int(logits[0].argmax()) if index is None else index]
        heatmap = Heatmap(film, rel[0].sum(0).numpy().astype(np.float32), cfg.resize, target_name, self.composite)
        return heatmap, FilmPrediction.from_probs(probs, names, self.card.task.decide(probs, names))
