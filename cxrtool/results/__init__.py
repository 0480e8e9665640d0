"""DICOM results: a TID 1500 Comprehensive 3D SR and a heatmap Secondary Capture per film (highdicom).

:func:`write_dicom_results` is the core entry point; ``predict``/``explain --dicom-out`` and
``cxrtool listen`` all call it.  Heavy imports (highdicom, torch) happen inside the functions.
"""

from cxrtool.results.content import FilmPrediction, Heatmap, ModelInfo
from cxrtool.results.write import DicomResult, results_for_explain, results_for_predictions, write_dicom_results

__all__ = [
    "DicomResult",
    "FilmPrediction",
    "Heatmap",
    "ModelInfo",
    "results_for_explain",
    "results_for_predictions",
    "write_dicom_results",
]
