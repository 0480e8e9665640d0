"""Data-side shortcut audit: can the classes be told apart without looking at the lungs?

The border / lung-box shares of :mod:`.audit` only see shortcuts that sit in a place (text,
markers).  A shortcut spread over the whole film, like the fixtures' adult-vs-child one (every
COVID-19 film an adult, every normal and viral film a child), needs other evidence:

* **Thumbnail probe.** A cross-validated linear probe on an 8x8 thumbnail of each film (no lung
  detail survives at that size: only body size, shape, exposure and borders).  When it separates
  two classes almost as well as the model does, those classes differ in global appearance, which
  a model can learn instead of the finding.  Reported for every pair of predicted classes and for
  the input folders (a folder per source collection or per class).
* **Feature probe.** The same probe on the model's penultimate features (the classifier's
  inputs), predicting the input folder: overall, and inside each predicted class when that class
  came from several folders (features that separate source collections *within* a class encode
  the source, not only the disease).
* **Relevance maps.** Per predicted class, the mean of the heatmaps (each scaled to unit total
  ``|R|``), the correlation between classes' mean maps and the share of the image that holds 80%
  of a class's mean ``|R|``: a whole-thorax cue spreads wide, a focal finding does not.

At training time (``train``, ``calibrate``'s fit split, ``evaluate``) only the thumbnail probe runs,
on the true labels: :func:`shortcut_verdict` turns it into one warning line, stored in the model
card's ``dataset`` (:data:`CARD_KEY`) and repeated by predict, the report and the DICOM SR.

Probes are scikit-learn logistic regressions on standardised inputs with stratified k-fold
cross-validation; scores are balanced accuracy next to chance (1 / number of classes).  They
need at least 2 films of each label; otherwise the line is left out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

THUMB_SIDE = 8
#: thumbnail-probe balanced accuracy from which a pair of classes counts as told apart without lung detail
SHORTCUT_ACCURACY = 0.9
WARNING_PREFIX = "trained on data with a detected shortcut: "
#: where the warning lives in :attr:`cxrtool.modelfile.ModelCard.dataset`
CARD_KEY = "shortcut"


@dataclass(frozen=True)
class Probe:
    """One probe's result: what it read, what it predicted, how well (balanced accuracy) vs chance."""

    inputs: str
    target: str
    n: int
    accuracy: float
    chance: float

    def line(self) -> str:
        return (
            f"{self.inputs} -> {self.target}: balanced accuracy {self.accuracy:.2f} "
            f"(chance {self.chance:.2f}, n={self.n})"
        )


def thumbnail(gray: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """Area-averaged ``side`` x ``side`` thumbnail of an HxW film (flattened)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(gray, dtype=np.float32), mode="F")
    return np.asarray(img.resize((side, side), Image.Resampling.BOX), dtype=np.float32).ravel()


def probe(
    features: np.ndarray, labels: Sequence[str], inputs: str, target: str, folds: int = 5, seed: int = 0
) -> Probe | None:
    """Cross-validated linear probe ``features -> labels``; None when a label has fewer than 2 samples."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    names, counts = np.unique(labels, return_counts=True)
    if len(names) < 2 or counts.min() < 2:
        return None
    cv = StratifiedKFold(n_splits=int(min(folds, counts.min())), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    predicted = cross_val_predict(model, np.asarray(features, dtype=np.float64), labels, cv=cv)
    return Probe(inputs, target, len(labels), float(balanced_accuracy_score(labels, predicted)), 1.0 / len(names))


def map_comparison(maps: Sequence[np.ndarray], classes: Sequence[str], mass: float = 0.8) -> dict[str, object]:
    """Per class: mean unit-|R| heatmap's spread (area holding ``mass`` of it); correlations between classes."""
    groups: dict[str, list[np.ndarray]] = defaultdict(list)
    for rmap, cls in zip(maps, classes):
        total = float(np.abs(rmap).sum())
        if total > 0:
            groups[cls].append(rmap / total)
    means = {cls: np.mean(items, axis=0) for cls, items in sorted(groups.items())}
    spread = {}
    for cls, mean in means.items():
        a = np.sort(np.abs(mean).ravel())[::-1]
        spread[cls] = float((np.searchsorted(np.cumsum(a) / a.sum(), mass) + 1) / a.size)
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant mean map has no correlation: NaN
        corr = {
            f"{a}|{b}": float(np.corrcoef(means[a].ravel(), means[b].ravel())[0, 1]) for a, b in combinations(means, 2)
        }
    return {"spread": spread, "correlation": corr}


def shortcut_audit(
    thumbs: np.ndarray,
    features: np.ndarray | None,
    predicted: Sequence[str],
    folders: Sequence[str],
    maps: Sequence[np.ndarray],
    map_classes: Sequence[str],
) -> dict[str, object]:
    """Every probe and map comparison above for one run of ``cxrtool explain``.

    ``folders`` holds each film's input sub-folder ("" for files given directly); folder probes
    run when the films come from at least two folders.  ``maps`` are heatmaps of the predicted
    class, ``map_classes`` those classes.
    """
    probes: list[Probe] = []
    predicted = np.asarray(predicted)
    for a, b in combinations(sorted(set(predicted)), 2):
        pair = (predicted == a) | (predicted == b)
        p = probe(thumbs[pair], predicted[pair], "8x8 thumbnail", f"predicted {a} vs {b}")
        if p:
            probes.append(p)
    folder_arr = np.asarray(folders)
    if len({f for f in folders if f}) >= 2 and all(folders):
        for inputs, x in (("8x8 thumbnail", thumbs), ("penultimate features", features)):
            if x is not None and (p := probe(x, folder_arr, inputs, "input folder")):
                probes.append(p)
        if features is not None:
            for cls in sorted(set(predicted)):
                inside = predicted == cls
                if p := probe(
                    features[inside], folder_arr[inside], "penultimate features", f"input folder within predicted {cls}"
                ):
                    probes.append(p)
    return {"probes": probes, "maps": map_comparison(maps, map_classes)}


def summary_lines(audit: dict[str, object]) -> list[str]:
    """Plain-text lines for the explain summary (CLI) and the reproduction report."""
    lines = [p.line() for p in audit["probes"]]  # type: ignore[union-attr]
    maps = audit["maps"]
    if maps["spread"]:  # type: ignore[index]
        spread = ", ".join(f"{c} {v:.2f}" for c, v in maps["spread"].items())  # type: ignore[index]
        lines.append(f"share of the image holding 80% of the mean |relevance|: {spread}")
    if maps["correlation"]:  # type: ignore[index]
        corr = ", ".join(f"{k} {v:+.2f}" for k, v in maps["correlation"].items())  # type: ignore[index]
        lines.append(f"correlation of class-mean relevance maps: {corr}")
    return lines


def shortcut_verdict(thumbs: np.ndarray, labels: Sequence[str], min_accuracy: float = SHORTCUT_ACCURACY) -> str | None:
    """One warning line when an 8x8 thumbnail separates a pair of labelled classes, else None.

    At 8x8 no lung finding survives, so a pair told apart with balanced accuracy >= ``min_accuracy``
    differs in body size, shape, exposure or borders: an age, size or source proxy a model can
    learn instead of the finding (the fixtures: adult COVID-19 films, paediatric normal and viral).
    """
    labels = np.asarray(labels)
    thumbs = np.asarray(thumbs)
    found = []
    for a, b in combinations(sorted(set(labels.tolist())), 2):
        pair = (labels == a) | (labels == b)
        p = probe(thumbs[pair], labels[pair], "8x8 thumbnail", f"{a} vs {b}")
        if p is not None and p.accuracy >= min_accuracy:
            found.append(p)
    if not found:
        return None
    pairs = ", ".join(f"{p.target} {p.accuracy:.2f} (n={p.n})" for p in found)
    return (
        f"{WARNING_PREFIX}an 8x8 thumbnail, without lung detail, tells apart {pairs} (balanced accuracy); "
        "body size, age or source may be learned instead of the finding"
    )


def card_warning(dataset: dict[str, object]) -> str | None:
    """The stored warning of a model card's ``dataset`` field (None: none detected, or an older card)."""
    value = dataset.get(CARD_KEY)
    return value if isinstance(value, str) and value else None
