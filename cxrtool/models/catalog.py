"""Published weight files cxrtool can start from: name, URL and the cache folder each library keeps it in.

cxrtool never downloads: the user fetches a file from its URL (see docs/train.md) and puts it where its
own library would have, so ``--init`` and ``cxrtool doctor`` find it.  One table, used by ``--init``'s
look-ups, its missing-file errors and ``doctor``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TORCHVISION = "https://download.pytorch.org/models/"
_TXRV_RELEASE = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
_TXRV_SUFFIX = "-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
_CXR14 = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
)
_CHEX = (
    "Atelectasis",
    "Consolidation",
    "",
    "Pneumothorax",
    "Edema",
    "",
    "",
    "Effusion",
    "Pneumonia",
    "",
    "Cardiomegaly",
    "",
    "",
    "",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)


@dataclass(frozen=True)
class WeightFile:
    """One published file: ``kind`` is ``torchvision``, ``timm`` or ``torchxrayvision``."""

    name: str
    kind: str
    arch: str
    url: str
    #: torchxrayvision's output names in head order ('' marks an unused slot); empty for ImageNet files
    labels: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        return os.path.basename(self.url)

    def cache_path(self) -> Path:
        """Where this file's own library keeps it (the folder holds no snapshot hash for HF: see :func:`find`)."""
        if self.kind == "torchvision":
            return torch_hub_dir() / "checkpoints" / self.filename
        if self.kind == "timm":
            return hf_hub_dir() / f"models--timm--{self.name}" / "snapshots" / "<revision>" / self.filename
        return txrv_dir() / self.filename

    def find(self) -> Path | None:
        """The file in its cache, or None (the HF cache may hold several revisions: the newest wins)."""
        if self.kind != "timm":
            path = self.cache_path()
            return path if path.is_file() else None
        found = sorted(
            (hf_hub_dir() / f"models--timm--{self.name}" / "snapshots").glob(f"*/{self.filename}"),
            key=lambda p: p.stat().st_mtime,
        )
        return found[-1] if found else None


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()``: ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub``."""
    import torch

    return Path(torch.hub.get_dir())


def hf_hub_dir() -> Path:
    """huggingface_hub's cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def txrv_dir() -> Path:
    """torchxrayvision's default ``cache_dir``: ``~/.torchxrayvision/models_data``."""
    return Path("~/.torchxrayvision/models_data").expanduser()


def _txrv(tag: str, file_tag: str, labels: tuple[str, ...]) -> WeightFile:
    url = _TXRV_RELEASE + file_tag + _TXRV_SUFFIX
    return WeightFile(f"densenet121-res224-{tag}", "torchxrayvision", "densenet121", url, labels)


_ALL_18 = (*_CXR14, "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum")
_RSNA = tuple("Pneumonia" if i == 8 else "Lung Opacity" if i == 16 else "" for i in range(18))

#: every file ``--init`` knows by name (labels as in torchxrayvision 1.5.7's ``model_urls``)
KNOWN: dict[str, WeightFile] = {
    w.name if w.kind == "torchxrayvision" else f"{w.kind}:{w.name}": w
    for w in (
        WeightFile("densenet121", "torchvision", "densenet121", _TORCHVISION + "densenet121-a639ec97.pth"),
        WeightFile("densenet201", "torchvision", "densenet201", _TORCHVISION + "densenet201-c1103571.pth"),
        WeightFile(
            "densenet121.tv_in1k",
            "timm",
            "densenet121",
            "https://huggingface.co/timm/densenet121.tv_in1k/resolve/main/model.safetensors",
        ),
        WeightFile(
            "densenet201.tv_in1k",
            "timm",
            "densenet201",
            "https://huggingface.co/timm/densenet201.tv_in1k/resolve/main/model.safetensors",
        ),
        _txrv("nih", "nih", (*_CXR14, "", "", "", "")),
        _txrv("all", "nih-pc-chex-mimic_ch-google-openi-kaggle", _ALL_18),
        _txrv("pc", "pc", (*_CXR14, "", "Fracture", "", "")),
        _txrv("chex", "chex", _CHEX),
        _txrv("rsna", "kaggle", _RSNA),
        _txrv("mimic_nb", "mimic_nb", _CHEX),
        _txrv("mimic_ch", "mimic_ch", _CHEX),
    )
}


def imagenet_files(arch: str) -> list[WeightFile]:
    """ImageNet files for ``arch``, in the order ``--init imagenet`` looks for them (torchvision, then timm)."""
    return [w for w in KNOWN.values() if w.arch == arch and w.kind in ("torchvision", "timm")]


def txrv_by_filename(filename: str) -> WeightFile | None:
    """The torchxrayvision entry whose published file has this name (a renamed file is not recognised)."""
    return next((w for w in KNOWN.values() if w.kind == "torchxrayvision" and w.filename == filename), None)
