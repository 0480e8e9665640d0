"""Model builders and checkpoints."""

from cxrtool.models.registry import build_model, list_archs

__all__ = ["build_model", "list_archs"]
