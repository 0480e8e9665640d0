"""The model-file contract: cards round-trip, damaged cards give one-line errors, package boundaries hold."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from cxrtool.config import PreprocessCfg
from cxrtool.errors import CxrError
from cxrtool.modelfile import (
    CHECKPOINT_FORMAT,
    ModelCard,
    default_engine_path,
    default_onnx_path,
    model_id,
    read_any_card,
    read_card,
)
from cxrtool.task import Multiclass, Multilabel, get_task

REPO = Path(__file__).resolve().parents[1]


def write_raw_checkpoint(path: Path, card_text: str) -> Path:
    """A safetensors file with a hand-written card (what a damaged or foreign file looks like)."""
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(2, np.float32)}, str(path), metadata={"format": CHECKPOINT_FORMAT, "card": card_text})
    return path


class TestCard:
    def test_round_trip_keeps_task_threshold_and_preprocessing(self):
        card = ModelCard(
            "densenet121",
            Multilabel(threshold=0.3),
            ["A", "B"],
            PreprocessCfg(input_size=64, channels=1, mean=(0.5,), std=(0.25,)),
        )
        back = ModelCard.from_json(card.to_json())
        assert back == card
        assert back.task.threshold == 0.3 and back.task.multilabel and back.preprocess.channels == 1

    def test_task_given_by_name_and_old_string_cards_still_load(self):
        card = ModelCard("densenet121", "multiclass", ["a", "b"])
        assert isinstance(card.task, Multiclass)
        old = json.loads(card.to_json()) | {"task": "multilabel"}  # cards written before the Task object
        assert ModelCard.from_dict(old).task == Multilabel()

    @pytest.mark.parametrize(
        "text, field",
        [
            ("{not json", "not valid JSON"),
            (json.dumps({"arch": "densenet121", "task": "multiclass"}), "'class_names' is missing"),
            (json.dumps({"arch": "densenet121", "task": "multiclass", "class_names": []}), "'class_names' must be"),
            (json.dumps({"arch": "densenet121", "task": "multiclass", "class_names": ["a", "a"]}), "repeats"),
            (json.dumps({"arch": "densenet121", "task": "regression", "class_names": ["a"]}), "field 'task'"),
            (
                json.dumps(
                    {"arch": "densenet121", "task": "multiclass", "class_names": ["a"], "preprocess": {"channels": 2}}
                ),
                "field 'preprocess'",
            ),
            (json.dumps([1, 2]), "not a JSON object"),
        ],
    )
    def test_damaged_card_is_one_line_naming_file_and_field(self, tmp_path, text, field):
        path = write_raw_checkpoint(tmp_path / "bad.safetensors", text)
        with pytest.raises(CxrError) as info:
            read_card(path)
        message = str(info.value)
        assert message.startswith(str(path)) and field in message and "\n" not in message

    def test_unknown_architecture_is_a_one_line_error_at_load(self, tmp_path):
        from cxrtool.models.checkpoint import load_checkpoint

        card = ModelCard("resnet9000", "multiclass", ["a", "b"])
        path = write_raw_checkpoint(tmp_path / "arch.safetensors", card.to_json())
        with pytest.raises(
            CxrError, match=r"arch\.safetensors: model card field 'arch': unknown architecture 'resnet9000'"
        ):
            load_checkpoint(path)

    def test_not_a_checkpoint(self, tmp_path):
        (tmp_path / "x.safetensors").write_bytes(b"\x00" * 10)
        with pytest.raises(CxrError, match="not a safetensors checkpoint"):
            read_card(tmp_path / "x.safetensors")
        with pytest.raises(CxrError, match="is a folder"):
            read_card(tmp_path)


def test_paths_and_model_id(tmp_path):
    ckpt = tmp_path / "run" / "best.safetensors"
    assert default_onnx_path(ckpt) == tmp_path / "run" / "engines" / "best.onnx"
    assert default_engine_path(ckpt) == tmp_path / "run" / "engines" / "best.engine"
    assert default_engine_path(tmp_path / "m.onnx") == tmp_path / "m.engine"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"abc")
    assert model_id(ckpt) == "best@ba7816bf8f01"  # sha256("abc") starts ba7816bf8f01


def test_read_any_card_dispatches_on_suffix(tmp_path):
    card = ModelCard("densenet121", "multiclass", ["a", "b"])
    path = write_raw_checkpoint(tmp_path / "m.safetensors", card.to_json())
    assert read_any_card(path) == card
    with pytest.raises(CxrError, match="ONNX file not found"):
        read_any_card(tmp_path / "missing.onnx")
    with pytest.raises(CxrError, match="sidecar m.engine.json is missing"):
        read_any_card(tmp_path / "m.engine")


class TestTask:
    def test_multiclass_rule_is_argmax(self):
        task = get_task("multiclass")
        probs = task.probs(np.array([[1.0, 3.0, 2.0]]))
        assert probs.sum() == pytest.approx(1.0) and task.decide(probs[0], ["a", "b", "c"]) == "b"

    def test_multilabel_rule_is_pipe_joined_at_threshold(self):
        task = get_task({"name": "multilabel", "threshold": 0.5})
        probs = task.probs(np.array([[0.0, 2.0, -2.0, 1000.0, -1000.0]]))[0]  # no overflow at +-1000
        assert np.allclose(probs, [0.5, 0.8808, 0.1192, 1.0, 0.0], atol=1e-4)
        assert task.decide(probs, list("abcde")) == "a|b|d"
        assert task.with_threshold(0.9).decide(probs, list("abcde")) == "d"
        assert task.decide(np.zeros(5), list("abcde")) == ""  # no finding

    def test_probs_agree_between_numpy_and_torch(self):
        import torch

        z = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
        for name in ("multiclass", "multilabel"):
            task = get_task(name)
            assert np.allclose(task.probs(z), task.probs_tensor(torch.from_numpy(z)).numpy(), atol=1e-6)

    def test_bad_threshold_and_name(self):
        with pytest.raises(ValueError, match="threshold"):
            get_task("multilabel", threshold=1.5)
        with pytest.raises(ValueError, match="unknown task"):
            get_task("ordinal")


def _imports(package: str) -> set[str]:
    found = set()
    for file in (REPO / "cxrtool" / package).rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
    return found


def test_export_and_infer_never_import_each_other():
    assert not {m for m in _imports("export") if m.startswith("cxrtool.infer")}
    assert not {m for m in _imports("infer") if m.startswith("cxrtool.export")}


def test_explain_does_not_import_train():
    assert not {m for m in _imports("explain") if m.startswith("cxrtool.train")}


def test_core_does_not_import_the_cli():
    for package in ("export", "infer", "explain", "train", "dicom", "prep", "models", "data"):
        assert not {m for m in _imports(package) if m.startswith(("cxrtool.cli", "typer", "rich"))}, package


def test_train_init_with_a_damaged_card_is_an_error_not_a_foreign_state_dict(tmp_path):
    from cxrtool.models.pretrained import read_parent_card

    path = write_raw_checkpoint(tmp_path / "s1.safetensors", '{"arch": "densenet121"')
    with pytest.raises(CxrError, match=r"s1\.safetensors: damaged cxrtool model card .*not valid JSON"):
        read_parent_card(str(path))
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "plain.safetensors"))
    assert read_parent_card(str(tmp_path / "plain.safetensors")) is None  # a foreign state dict


class TestEveryCardGoesThroughTheValidator:
    """ONNX metadata, OpenVINO rt_info and TensorRT sidecars are parsed by the same checked parser (issue 22)."""

    BAD = {
        "arch": "densenet121",
        "task": "multiclass",
        "class_names": ["a", "b"],
        "calibration": {"temperature": float("inf")},
    }

    def test_onnx_and_ir_metadata_cards(self):
        from cxrtool.modelfile import CARD_KEY, read_ir_card, read_onnx_card

        for reader, name in ((read_onnx_card, "m.onnx"), (read_ir_card, "m.int8.xml")):
            with pytest.raises(CxrError, match=r"^m\.(onnx|int8\.xml): .*'calibration\.temperature' must be finite"):
                reader(name, {CARD_KEY: json.dumps(self.BAD)})

    def test_tensorrt_sidecar(self, tmp_path):
        from cxrtool.modelfile import SIDECAR_FORMAT, read_sidecar

        engine = tmp_path / "m.engine"
        sidecar = {"format": SIDECAR_FORMAT, "card": self.BAD, "profile": {"min": 1, "opt": 4, "max": 8}}
        (tmp_path / "m.engine.json").write_text(json.dumps(sidecar))
        with pytest.raises(CxrError, match="calibration.temperature"):
            read_sidecar(engine)
        sidecar |= {"card": self.BAD | {"calibration": {}}, "profile": {"min": 1, "opt": 4, "max": 1e9}}
        (tmp_path / "m.engine.json").write_text(json.dumps(sidecar))
        with pytest.raises(CxrError, match="profile.max"):
            read_sidecar(engine)
        (tmp_path / "m.engine.json").write_text(
            '{"format": "' + SIDECAR_FORMAT + '", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
        )
        with pytest.raises(CxrError, match="nested deeper"):
            read_sidecar(engine)


def test_onnx_metadata_reads_as_onnx_reads_it_without_importing_onnx(tmp_path):
    """The schema-less protobuf reader agrees with ``onnx.load`` (duplicates: last wins; any text), refuses damage
    with the file named, and keeps ``onnx`` (1.5 s of imports) out of the process."""
    import subprocess
    import sys

    import onnx
    from onnx import TensorProto, helper

    from cxrtool.modelfile import parse_onnx_metadata

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph)
    for key, value in [("a", "1"), ("ünïcode", "é" * 3000), ("a", "2"), ("empty", "")]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    data = model.SerializeToString()
    expected = {p.key: p.value for p in onnx.load_model_from_string(data).metadata_props}
    assert parse_onnx_metadata(data, "m.onnx") == expected == {"a": "2", "ünïcode": "é" * 3000, "empty": ""}
    for damaged in (data[: len(data) // 2], b"\xff" * 16):
        with pytest.raises(CxrError, match="m.onnx: not a readable ONNX file"):
            parse_onnx_metadata(damaged, "m.onnx")
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    code = f"import sys\nfrom cxrtool.modelfile import read_onnx_metadata\nread_onnx_metadata({str(path)!r})\n"
    code += "print('onnx' in sys.modules, 'ml_dtypes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
