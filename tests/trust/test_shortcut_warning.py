"""The training-time shortcut verdict: found on the fixtures' adult/child split, stored in the card, carried
downstream.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.config import PreprocessCfg
from cxrtool.modelfile.loaded import open_model
from cxrtool.preprocess import load_gray
from cxrtool.trust.shortcut import (
    CARD_KEY,
    WARNING_PREFIX,
    card_warning,
    shortcut_verdict,
    thumbnail,
)

RUN = CliRunner()


def _thumbs(shared: Path, cls: str, n: int) -> np.ndarray:
    files = sorted((shared / "covid3_256" / cls).glob("*.png"))[:n]
    return np.stack([thumbnail(load_gray(f, PreprocessCfg(input_size=64))) for f in files])


def test_the_fixtures_adult_vs_child_split_is_detected_and_shuffled_labels_are_not(shared_data: Path) -> None:
    covid, normal = _thumbs(shared_data, "covid", 40), _thumbs(shared_data, "normal", 40)
    x = np.concatenate([covid, normal])
    labels = ["covid"] * 40 + ["normal"] * 40
    verdict = shortcut_verdict(x, labels)
    assert verdict is not None and verdict.startswith(WARNING_PREFIX) and "covid vs normal" in verdict
    shuffled = list(np.random.default_rng(0).permutation(labels))  # labels unrelated to the films: nothing to find
    assert shortcut_verdict(x, shuffled) is None
    assert shortcut_verdict(x, labels, min_accuracy=1.01) is None  # the bar is a parameter


def test_card_warning_reads_only_a_non_empty_string() -> None:
    assert card_warning({CARD_KEY: "trained on ..."}) == "trained on ..."
    assert card_warning({}) is None and card_warning({CARD_KEY: ""}) is None and card_warning({CARD_KEY: 3}) is None


def test_trust_fit_writes_and_clears_the_card_field(trusted: Path) -> None:
    from cxrtool.modelfile import read_card
    from cxrtool.trust.assess import load_trust
    from cxrtool.trust.fit import TrustFit

    card = read_card(trusted)
    ood = load_trust(trusted, card).ood
    with_warning = copy.deepcopy(card)
    TrustFit(card.calibration, ood, shortcut=WARNING_PREFIX + "x").apply(with_warning)
    assert with_warning.dataset[CARD_KEY] == WARNING_PREFIX + "x"
    TrustFit(card.calibration, ood, shortcut=None).apply(with_warning)  # a refit that finds none clears it
    assert CARD_KEY not in with_warning.dataset
    kept = copy.deepcopy(card)
    kept.dataset[CARD_KEY] = "old"
    TrustFit(card.calibration, ood, refit=False).apply(kept)  # calibrate --fit-split keep: training data unchanged
    assert kept.dataset[CARD_KEY] == "old"


@pytest.fixture
def warned(trusted: Path, tmp_path: Path) -> Path:
    """The trusted checkpoint, its card carrying a shortcut warning."""
    import torch

    from cxrtool.models.checkpoint import load_checkpoint, save_checkpoint
    from cxrtool.trust.store import checkpoint_tensors

    model, card = load_checkpoint(trusted)
    card.dataset[CARD_KEY] = WARNING_PREFIX + "covid vs normal 0.97"
    out = tmp_path / "warned.safetensors"
    save_checkpoint(out, model, card, {k: torch.from_numpy(v) for k, v in checkpoint_tensors(trusted).items()})
    return out


def test_predict_report_and_sr_carry_the_warning(warned: Path, shared_data: Path, tmp_path: Path) -> None:
    from cxrtool.modelfile import read_card
    from cxrtool.report.html import build_report
    from cxrtool.results import ModelInfo

    films = sorted((shared_data / "covid3_256" / "normal").glob("*.png"))[:2]
    out = tmp_path / "p.csv"
    result = RUN.invoke(
        app, ["predict", *map(str, films), "-m", str(warned), "-o", str(out), "--backend", "torch", "--workers", "0"]
    )
    assert result.exit_code == 0, result.output
    assert WARNING_PREFIX + "covid vs normal 0.97" in " ".join(result.output.split())
    build_report(out, tmp_path / "r.html", model=open_model(warned))
    html = (tmp_path / "r.html").read_text()
    assert 'class="caveat">' + WARNING_PREFIX + "covid vs normal 0.97" in html
    info = ModelInfo.of(read_card(warned), "m@1", "torch")
    assert info.extra == (("training_data", WARNING_PREFIX + "covid vs normal 0.97"),)


def test_training_stores_the_verdict_of_its_training_split(trusted: Path, films: Path, tmp_path: Path) -> None:
    """``train`` (its trust fit) and ``evaluate --split train`` run the same probe on the same films."""
    import json

    from cxrtool.modelfile import read_card

    stored = card_warning(read_card(trusted).dataset)
    assert stored is not None and stored.startswith(WARNING_PREFIX)
    result = RUN.invoke(
        app, ["evaluate", str(trusted), str(films), "--split", "train", "--out", str(tmp_path), "--bootstrap", "0"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "metrics.json").read_text())["shortcut"] == stored
    assert "warning: " + stored in " ".join(result.output.split())  # evaluate prints it
    # the 36 training films: 12 adult covid films and 24 children's; a thumbnail tells covid apart
    assert "tells apart covid vs " in stored
