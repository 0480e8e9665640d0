"""Trust at predict time: is this film like the training films, and how sure is the model really?

* :mod:`~cxrtool.trust.ood`: a feature-space out-of-distribution score (class-conditional
  Gaussians with a shared, shrunk covariance: Mahalanobis, Lee et al. 2018).
* :mod:`~cxrtool.trust.temperature`: temperature scaling, ECE, Brier score, reliability bins.
* :mod:`~cxrtool.trust.gate`: the DICOM header gate (the checks ``prep dicom`` records, a lateral view).
* :mod:`~cxrtool.trust.view`: image rules on the model input, frontal vs lateral (``view:lateral``).
* :mod:`~cxrtool.trust.fit`: fits all of it for a model on manifest splits (train end, ``calibrate``).
* :mod:`~cxrtool.trust.store`: where the statistics live in checkpoints and ONNX files.
* :mod:`~cxrtool.trust.assess`: the one function every command uses, (logits, features, header)
  -> (calibrated probabilities, ``ood_score``, ``flag``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxrtool.trust.assess import FLAG_OK, FLAG_OOD, Assessment, Trust, load_trust

__all__ = ["FLAG_OK", "FLAG_OOD", "Assessment", "Trust", "load_trust"]


def __getattr__(name: str) -> Any:
    """The names above, from :mod:`~cxrtool.trust.assess` on first use (PEP 562): ``cxrtool calibrate --help``
    reads :mod:`~cxrtool.trust.options` without importing numpy through this package."""
    if name in __all__:
        from cxrtool.trust import assess

        return getattr(assess, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
