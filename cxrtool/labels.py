"""Label vocabularies the product knows by name (one list each, used by datasets, init and the demo)."""

from __future__ import annotations

#: ChestX-ray14's 14 findings in the order of the NIH release (and of CheXNet's 14 outputs).
CHESTXRAY14: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

#: ChestX-ray14's label for an image without any of the 14 findings
NO_FINDING = "No Finding"
