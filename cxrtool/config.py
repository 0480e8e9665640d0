"""Preprocessing configuration: defined once, carried by every checkpoint, ONNX file and engine.

Like timm's ``pretrained_cfg``: the model owns how its input is made, so training, predict,
export and explain never re-type sizes or normalisation.  Resolution precedence (timm's):
explicit overrides, then the model's stored config, then these defaults.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ResizeMode = Literal["stretch", "letterbox", "center_crop"]
RESIZE_MODES: tuple[str, ...] = ("stretch", "letterbox", "center_crop")


@dataclass(frozen=True)
class PreprocessCfg:
    """How a grey-scale film in [0, 1] becomes the network's input tensor.

    Attributes
    ----------
    input_size:
        Side of the square input in pixels.
    channels:
        1, or 3 to replicate the grey channel for ImageNet-initialised stems.
    mean, std:
        Per-channel normalisation applied after scaling to [0, 1].
    resize:
        ``stretch`` squashes to a square (what the paper and CheXNet do; most public
        CXR sets are already near-square), ``letterbox`` keeps the aspect and pads with
        black, ``center_crop`` resizes the short side and crops the centre.
    window:
        DICOM display policy used when an input is DICOM (``dicom``, ``minmax`` or ``none``).
    """

    input_size: int = 224
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: ResizeMode = "stretch"
    window: str = "dicom"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, not {self.resize!r}")
        if self.input_size < 8:
            raise ValueError(f"input_size too small: {self.input_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessCfg:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known and v is not None}
        for key in ("mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(float(x) for x in kwargs[key])
        if "channels" in kwargs and "mean" not in kwargs:
            kwargs["mean"] = _default_stats(IMAGENET_MEAN, kwargs["channels"])
            kwargs["std"] = _default_stats(IMAGENET_STD, kwargs["channels"])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> PreprocessCfg:
        return cls.from_dict(json.loads(text))

    def input_bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Normalised values of black (0) and white (1) per channel: the LRP ZBox bounds."""
        low = tuple((0.0 - m) / s for m, s in zip(self.mean, self.std))
        high = tuple((1.0 - m) / s for m, s in zip(self.mean, self.std))
        return low, high


def _default_stats(stats: tuple[float, ...], channels: int) -> tuple[float, ...]:
    return stats if channels == 3 else (sum(stats) / 3,)


def resolve_preprocess(
    stored: PreprocessCfg | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> PreprocessCfg:
    """Merge key by key: explicit ``overrides`` (non-None values) win over ``stored``, then defaults."""
    base = stored.to_dict() if isinstance(stored, PreprocessCfg) else dict(stored or {})
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given.get("channels", base.get("channels")) != base.get("channels") and "mean" not in given:
        # the stored statistics belong to the stored channel count
        base.pop("mean", None)
        base.pop("std", None)
    return PreprocessCfg.from_dict(base | given)
