"""torchxrayvision's DenseNets as a starting point: their weights, label names and preprocessing in cxrtool's terms.

torchxrayvision (Cohen et al., arXiv 2111.00595) publishes DenseNet-121 files saved with
``torch.save(model)``; :mod:`cxrtool.models.safe_pickle` reads them without running code.  Its
``DenseNet`` has torchvision's layer names (``features.*``, ``classifier``) and the same head
(``F.relu`` -> average pool -> ``classifier``), so the state dict loads into
:class:`~cxrtool.models.densenet.DenseNetClassifier` key for key; what differs is carried by the card:

* **input**: one channel, kept as ``channels=1`` (no weight is changed); a stage 2 that asks for
  3 channels gets the first convolution split over them (``/3``) by :mod:`cxrtool.models.pretrained`;
* **scaling**: ``xrv.utils.normalize(img, 255)`` maps a grey value ``g`` in [0, 1] to
  ``(2g - 1) * 1024``, which is ``(g - 0.5) / (1/2048)``: mean 0.5, std 1/2048 (both exact in float32);
* **size**: 224 px, centre square (``XRayCenterCrop`` then ``XRayResizer(224)``): cxrtool's
  ``center_crop`` resizes the short side then crops the centre, the same pixels for square films; the
  resize kernels differ (Pillow's bilinear vs scikit-image's anti-aliased bilinear), see docs/train.md;
* **outputs**: the imported model's outputs are the classifier's **logits**.  torchxrayvision's own
  ``forward`` returns ``op_norm(sigmoid(logits), op_threshs)`` when weights are loaded: a monotone
  per-finding rescaling that puts its operating point at 0.5.  Training and neuron keeping act on the
  logits, so the ``op_threshs`` buffer (when a file has one) is not imported;
* **classes**: the 18 output slots with the unused ('') slots dropped (14 ChestX-ray14 findings for
  ``densenet121-res224-nih``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cxrtool.config import PreprocessCfg
from cxrtool.errors import CxrError
from cxrtool.modelfile import ModelCard, file_sha256
from cxrtool.models import catalog
from cxrtool.models.safe_pickle import PickledObject, module_state_dict

#: the class a torchxrayvision DenseNet file pickles
TXRV_DENSENET = "torchxrayvision.models.DenseNet"
PREFIX = "txrv:"
#: how ``--init-classes`` marks an unused output slot (the comma list cannot hold an empty name)
UNUSED = "-"
#: torchxrayvision's input side for every published DenseNet (``input_resolution``)
TXRV_SIZE = 224
#: ``(2g - 1) * 1024 == (g - MEAN) / STD`` for a grey value g in [0, 1]
TXRV_MEAN, TXRV_STD = 0.5, 1.0 / 2048.0
_BLOCKS = {(6, 12, 24, 16): "densenet121", (6, 12, 48, 32): "densenet201"}
_LAYER = re.compile(r"^features\.denseblock(\d+)\.denselayer(\d+)\.conv1\.weight$")


@dataclass
class TxrvWeights:
    """A torchxrayvision file in cxrtool's terms: state dict (empty slots dropped), card and notes."""

    state: dict[str, torch.Tensor]
    card: ModelCard
    notes: list[str] = field(default_factory=list)


def txrv_preprocess(channels: int = 1) -> PreprocessCfg:
    """The :class:`PreprocessCfg` that reproduces torchxrayvision's input (module docstring)."""
    return PreprocessCfg(
        input_size=TXRV_SIZE,
        channels=channels,
        mean=(TXRV_MEAN,) * channels,
        std=(TXRV_STD,) * channels,
        resize="center_crop",
    )


def resolve_txrv(spec: str) -> Path:
    """``txrv:NAME`` (e.g. ``densenet121-res224-nih``, looked up in torchxrayvision's cache) or ``txrv:PATH``.

    Raises
    ------
    CxrError
        The file is not there: the error names the file, its published URL and where to put it.
    """
    name = spec.removeprefix(PREFIX)
    known = catalog.KNOWN.get(name)
    if known is not None and known.kind == "torchxrayvision":
        path = known.find()
        if path is None:
            raise CxrError(
                f"--init {spec}: {known.filename} not found; download {known.url} and put it at "
                f"{known.cache_path()} (torchxrayvision's cache), or give its path: --init txrv:PATH"
            )
        return path
    path = Path(name).expanduser()
    if not path.is_file():
        hint = catalog.txrv_by_filename(path.name)
        where = f"; it is published at {hint.url}" if hint else ""
        names = ", ".join(k for k, w in catalog.KNOWN.items() if w.kind == "torchxrayvision")
        raise CxrError(f"--init {spec}: no file {path}{where} (known names: {names})")
    return path


def is_txrv(obj: Any) -> bool:
    """Whether an object read by :func:`~cxrtool.models.safe_pickle.read_torch_file` is a torchxrayvision DenseNet."""
    return isinstance(obj, PickledObject) and obj.qualname == TXRV_DENSENET


def read_txrv(obj: PickledObject, path: Path, *, labels: Sequence[str] | None = None) -> TxrvWeights:
    """Map a pickled torchxrayvision DenseNet onto cxrtool's DenseNet: state dict, card and lineage.

    ``labels``: the output names in head order ('' or '-' for an unused slot); by default the file's own
    ``targets``/``pathologies`` attribute, else the published table for the file's name.
    """
    state = module_state_dict(obj)
    notes = []
    if state.pop("op_threshs", None) is not None:
        notes.append("op_threshs not imported: cxrtool trains and keeps neurons on the logits")
    if "classifier.weight" not in state or "features.conv0.weight" not in state:
        raise CxrError(f"{path}: torchxrayvision file without features.conv0 or classifier weights")
    arch = _arch(state, path)
    rows = state["classifier.weight"].shape[0]
    published = catalog.txrv_by_filename(path.name)
    names = list(labels or _own_labels(obj) or (published.labels if published else ()))
    if not names:
        raise CxrError(f"{path}: the file does not name its {rows} outputs; give them with --init-classes")
    if len(names) != rows:
        raise CxrError(f"{path}: {len(names)} output names for a classifier with {rows} outputs")
    keep = [i for i, n in enumerate(names) if n and n != UNUSED]
    state["classifier.weight"] = state["classifier.weight"][keep]
    state["classifier.bias"] = state["classifier.bias"][keep]
    if len(keep) < rows:
        notes.append(f"{rows - len(keep)} unused output slots dropped, {len(keep)} classes kept")
    channels = state["features.conv0.weight"].shape[1]
    if channels not in (1, 3):
        raise CxrError(f"{path}: first convolution takes {channels} channels; 1 or 3 are supported")
    entry: dict[str, Any] = {
        "source": "torchxrayvision",
        "file": path.name,
        "sha256": file_sha256(path),
        "path": str(path.resolve()),
        "weights": published.name if published else None,
        "url": published.url if published else None,
        "class_names": [names[i] for i in keep],
    }
    card = ModelCard(arch, "multilabel", entry["class_names"], preprocess=txrv_preprocess(channels), lineage=[entry])
    return TxrvWeights(state, card, notes)


def _own_labels(obj: PickledObject) -> list[str] | None:
    for attr in ("targets", "pathologies"):
        value = obj.attrs.get(attr)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            return list(value)
    return None


def _arch(state: dict[str, torch.Tensor], path: Path) -> str:
    layers: dict[int, int] = {}
    for key in state:
        match = _LAYER.match(key)
        if match:
            block = int(match.group(1))
            layers[block] = max(layers.get(block, 0), int(match.group(2)))
    blocks = tuple(layers[b] for b in sorted(layers))
    if blocks not in _BLOCKS:
        raise CxrError(f"{path}: DenseNet with blocks {blocks}; cxrtool builds DenseNet-121 and -201 only")
    return _BLOCKS[blocks]
