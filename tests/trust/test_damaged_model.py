"""A tampered or damaged model file is refused at load (exit 2, naming the file and the field), never used.

Issue 22: NaN OOD centres, an OOD scale of 0, a NaN threshold or an infinite temperature used to
give ``flag=ok`` on every film (or the wrong class); ``"abc"``, deep nesting and absurd sizes
crashed with exit 3.  Each case here is one damaged copy of the ``trusted`` tiny model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.errors import CxrError
from cxrtool.modelfile import TRUST_PREFIX, read_card
from cxrtool.trust import FLAG_OK, Trust, load_trust

RUN = CliRunner()


def tamper(
    src: Path,
    dst: Path,
    *,
    card: Callable[[dict], None] | None = None,
    tensors: Callable[[dict], None] | None = None,
    card_text: str | None = None,
) -> Path:
    """A copy of checkpoint ``src`` with its card dict and/or trust tensors edited in place by the callables."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(src), framework="numpy") as fh:
        meta = dict(fh.metadata())
    arrays = load_file(str(src))
    data = json.loads(meta["card"])
    if card:
        card(data)
    if tensors:
        tensors(arrays)
    meta["card"] = card_text if card_text is not None else json.dumps(data)
    save_file(arrays, str(dst), metadata=meta)
    return dst


def _first_means(arrays: dict) -> str:
    return next(k for k in sorted(arrays) if k.startswith(TRUST_PREFIX) and k.endswith(".means"))


def _set(path: str, value: object) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        node = data
        *parents, last = path.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value

    return edit


def _nan_centres(arrays: dict) -> None:
    arrays[_first_means(arrays)][0, 0] = np.nan


def _inf_precision(arrays: dict) -> None:
    key = next(k for k in sorted(arrays) if k.endswith(".precision"))
    arrays[key][1, 1] = np.inf


def _wrong_width(arrays: dict) -> None:
    key = _first_means(arrays)
    arrays[key] = np.ascontiguousarray(arrays[key][:, :-1])


CARD_CASES = [
    ("temperature 'abc'", _set("calibration.temperature", "abc"), "calibration.temperature"),
    ("temperature Inf", _set("calibration.temperature", float("inf")), "calibration.temperature"),
    ("temperature 0", _set("calibration.temperature", 0.0), "calibration.temperature"),
    ("OOD scale 0", _set("ood.depths.0.scale", 0.0), "ood.depths[0].scale"),
    ("OOD centre NaN", _set("ood.depths.0.center", float("nan")), "ood.depths[0].center"),
    ("OOD threshold NaN", _set("ood.threshold", float("nan")), "ood.threshold"),
    ("OOD stop 1e9", _set("ood.depths.0.stop", 1e9), "ood.depths[0].stop"),
    ("OOD stop int 10**9", _set("ood.depths.0.stop", 10**9), "ood.depths[0].stop"),
    ("input_size 100000", _set("preprocess.input_size", 100000), "preprocess.input_size"),
    ("input_size 32.5", _set("preprocess.input_size", 32.5), "preprocess.input_size"),
    ("std 0", _set("preprocess.std", [0.2, 0.0, 0.2]), "preprocess.std[1]"),
    ("mean NaN", _set("preprocess.mean", [0.2, float("nan"), 0.2]), "preprocess.mean[1]"),
    ("mean two values for three channels", _set("preprocess.mean", [0.2, 0.2]), "preprocess.mean"),
    ("class names empty string", _set("class_names", ["covid", "", "x"]), "class_names"),
    ("class names repeated", _set("class_names", ["covid", "covid", "x"]), "class_names"),
]


@pytest.mark.parametrize("label, edit, field", CARD_CASES, ids=[c[0] for c in CARD_CASES])
def test_damaged_card_field_is_refused_at_load_naming_file_and_field(
    trusted: Path, tmp_path: Path, label: str, edit, field: str
) -> None:
    bad = tamper(trusted, tmp_path / "bad.safetensors", card=edit)
    with pytest.raises(CxrError) as info:
        read_card(bad)
    message = str(info.value)
    assert message.startswith(str(bad)) and field in message and "\n" not in message


def test_card_nested_100000_deep_is_a_clean_error(trusted: Path, tmp_path: Path) -> None:
    card = json.loads(read_card(trusted).to_json())
    text = json.dumps(card)[:-1] + ', "config2": ' + "[" * 100_000 + "]" * 100_000 + "}"
    bad = tamper(trusted, tmp_path / "deep.safetensors", card_text=text)
    with pytest.raises(CxrError, match=r"deep\.safetensors: .*nested deeper than"):
        read_card(bad)


def test_brackets_inside_strings_do_not_count_as_nesting(trusted: Path, tmp_path: Path) -> None:
    edit = _set("dataset", {"note": "[" * 100 + "{" * 100})
    ok = tamper(trusted, tmp_path / "ok.safetensors", card=edit)
    assert read_card(ok).dataset["note"].startswith("[[[")


TENSOR_CASES = [
    ("NaN centres", _nan_centres, "holds NaN"),
    ("Inf precision", _inf_precision, "holds NaN"),
    ("means narrower than the card's depth", _wrong_width, "has shape"),
]


@pytest.mark.parametrize("label, edit, reason", TENSOR_CASES, ids=[c[0] for c in TENSOR_CASES])
def test_damaged_trust_tensors_are_refused_at_load(
    trusted: Path, tmp_path: Path, label: str, edit, reason: str
) -> None:
    bad = tamper(trusted, tmp_path / "bad.safetensors", tensors=edit)
    with pytest.raises(CxrError) as info:
        load_trust(bad, read_card(bad))
    assert str(info.value).startswith(str(bad)) and reason in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("case", ["nan_centres", "scale_0", "nan_threshold", "inf_temperature"])
def test_predict_with_a_damaged_model_is_exit_2_before_any_row(
    trusted: Path, films: Path, tmp_path: Path, case: str
) -> None:
    edits = {
        "nan_centres": {"tensors": _nan_centres},
        "scale_0": {"card": _set("ood.depths.0.scale", 0)},
        "nan_threshold": {"card": _set("ood.threshold", float("nan"))},
        "inf_temperature": {"card": _set("calibration.temperature", float("inf"))},
    }
    bad = tamper(trusted, tmp_path / "bad.safetensors", **edits[case])
    film = next(Path(r.split(",")[0]) for r in films.read_text().splitlines()[1:])
    out = tmp_path / "rows.csv"
    result = RUN.invoke(
        app, ["predict", str(film), "--model", str(bad), "--out", str(out), "--backend", "torch", "--device", "cpu"]
    )
    assert result.exit_code == 2, result.output
    assert "bad.safetensors" in result.output and not out.exists()


def test_a_row_whose_ood_score_is_not_finite_is_an_error_never_ok(trusted: Path) -> None:
    """Features that overflow (or NaN from a backend) make the score NaN: no flag, an error."""
    card = read_card(trusted)
    trust = load_trust(trusted, card)
    width = trust.ood.width
    features = np.zeros((3, width), np.float32)
    features[1, 0] = np.nan
    features[2, 0] = np.inf
    verdicts = trust.assess(np.zeros((3, len(card.class_names)), np.float32), features)
    assert verdicts[0].flag in (FLAG_OK, "out_of_distribution") and verdicts[0].error is None
    for v in verdicts[1:]:
        assert v.error and "ood_score is not finite" in v.error and v.flag == "" and v.ood_score is None


def test_predict_batch_turns_a_non_finite_score_into_an_error_row(trusted: Path) -> None:
    from cxrtool.infer.batching import predict_batch

    card = read_card(trusted)
    trust = load_trust(trusted, card)

    class NanFeatures:  # the backend interface predict_batch calls: run_features -> (logits, features)
        path, card_ = trusted, card

        def run_features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            features = np.ones((len(x), trust.ood.width), np.float32)
            features[0] = np.nan
            return np.zeros((len(x), len(card.class_names)), np.float32), features

    rows = predict_batch(NanFeatures(), ["a.png", "b.png"], np.zeros((2, 3, 32, 32), np.float32), trust)
    assert (
        rows[0].error and "ood_score is not finite" in rows[0].error and rows[0].flag is None and rows[0].probs is None
    )
    assert rows[1].error is None and rows[1].flag is not None


def test_in_memory_card_with_an_infinite_temperature_is_refused(trusted: Path) -> None:
    import dataclasses

    card = read_card(trusted)
    bad = dataclasses.replace(card, calibration={"temperature": float("inf")})
    with pytest.raises(CxrError, match="calibration.temperature"):
        Trust.from_card(bad, {}, source="m")
