"""Training data: a torch Dataset over a manifest, chest-film augmentation, deterministic samplers."""

from cxrtool.data.augment import AugmentCfg, augment
from cxrtool.data.dataset import ManifestDataset
from cxrtool.data.samplers import EpochSampler, balanced_weights

__all__ = ["AugmentCfg", "EpochSampler", "ManifestDataset", "augment", "balanced_weights"]
