"""The shared DenseNet121 trained for real epochs carries its trust statistics and every backend scores alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrtool.export.parity import load_check_batch
from cxrtool.modelfile import read_card
from cxrtool.trust import load_trust


@pytest.mark.slow
def test_trained_checkpoint_has_statistics_and_backends_agree(
    trained_checkpoint: Path, shared_data: Path, tmp_path: Path
) -> None:
    from cxrtool.export.onnx import export_onnx
    from cxrtool.infer.loading import load_backend

    card = read_card(trained_checkpoint)
    assert [d["name"] for d in card.ood["depths"]] == ["transition1", "transition2", "transition3", "penultimate"]
    assert card.calibration["ece_calibrated"] <= card.calibration["ece"]
    films = sorted((shared_data / "covid3").rglob("*.png"))[::20] + sorted(
        (shared_data / "dicom" / "nonchest").glob("*.dcm")
    )
    onnx_path = export_onnx(trained_checkpoint, tmp_path / "m.onnx", check_images=films[:8]).path
    ref_backend = load_backend(trained_checkpoint, backend="torch")
    batch, _ = load_check_batch(films, card.preprocess, limit=len(films))
    ref = load_trust(trained_checkpoint, card).ood.score(ref_backend.run_features(batch)[1])
    for name, options in (("onnxruntime", {}), ("openvino", {"precision": "f32"})):
        b = load_backend(onnx_path, backend=name, **options)
        got = load_trust(onnx_path, b.card).ood.score(b.run_features(batch)[1])
        assert np.max(np.abs(got - ref) / np.maximum(1.0, np.abs(ref))) <= 1e-3, name
