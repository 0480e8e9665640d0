"""The TensorRT path without a GPU: fake 10.x / 11.x bindings and a fake pycuda drive the real code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxrtool.config import PreprocessCfg
from cxrtool.errors import CxrError
from cxrtool.modelfile import BatchProfile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from trt_fakes import install  # noqa: E402

CFG = PreprocessCfg(input_size=8)


def tiny_onnx(path: Path, *, qdq: bool = False, zero_point=np.int8) -> Path:
    """input (N,3,8,8) -> Conv -> Relu -> GlobalAveragePool -> Flatten -> ``features`` (N,4) -> Gemm -> ``logits``.

    The two outputs of a cxrtool export.  ``qdq``: Q/DQ on the input and the weight with zero
    points of type ``zero_point``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "fc"),
        numpy_helper.from_array(np.zeros(3, np.float32), "fc_b"),
    ]
    nodes = []
    x, w = "input", "w"
    if qdq:
        inits += [
            numpy_helper.from_array(np.array(0.05, np.float32), "s"),
            numpy_helper.from_array(np.array(0, zero_point), "z"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["input", "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"]),
            helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"]),
        ]
        x, w = "xd", "wd"
    nodes += [
        helper.make_node("Conv", [x, w], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["features"]),
        helper.make_node("Gemm", ["features", "fc", "fc_b"], ["logits"], transB=1),
    ]
    io = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", io, ["N", 3, 8, 8])],
        [
            helper.make_tensor_value_info("logits", io, ["N", 3]),
            helper.make_tensor_value_info("features", io, ["N", 4]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def carded_onnx(tmp_path: Path) -> Path:
    """:func:`tiny_onnx` with a model card in its metadata, as ``cxrtool export`` writes it."""
    import onnx

    from cxrtool.modelfile import ModelCard, onnx_metadata
    from cxrtool.modelfile.write import set_onnx_metadata

    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"weights")
    source = tiny_onnx(tmp_path / "m.onnx")
    proto = onnx.load_model(str(source))
    card = ModelCard(arch="densenet121", task="multiclass", class_names=["a", "b", "c"], preprocess=CFG)
    set_onnx_metadata(proto, onnx_metadata(card, ckpt))
    onnx.save_model(proto, str(source))
    return source


@pytest.fixture(params=[10, 11], ids=["trt10", "trt11"])
def fakes(request, monkeypatch):
    from cxrtool.runtimes import trt_runner

    installed = install(monkeypatch, request.param)
    yield request.param, *installed
    trt_runner.cuda_problem.cache_clear()


class TestImport:
    @pytest.mark.parametrize("major, ok", [(9, False), (10, True), (11, True), (12, False)])
    def test_supported_majors(self, monkeypatch, major, ok):
        from trt_fakes import fake_tensorrt

        from cxrtool.runtimes.trtlib import import_tensorrt

        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(major, []))
        if ok:
            assert import_tensorrt().__version__.startswith(f"{major}.")
        else:
            with pytest.raises(
                CxrError, match=rf"TensorRT {major}\.0\.0 is not supported; cxrtool supports TensorRT 10 and 11"
            ):
                import_tensorrt()


class TestBuild:
    @pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
    def test_strongly_typed_build_with_explicit_precision(self, fakes, tmp_path, precision):
        import onnx

        from cxrtool.export.trt_build import build_serialized, precision_onnx

        major, trt, _driver, calls = fakes
        source = tiny_onnx(tmp_path / "m.onnx", qdq=precision == "int8")
        model_bytes = precision_onnx(source, precision)
        built = build_serialized(trt, model_bytes, source, CFG, BatchProfile(1, 4, 8), workspace_gib=1)
        # strongly typed: the 10.x flag; 0 on 11.x, where STRONGLY_TYPED still exists but is deprecated and ignored
        assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
        assert ("create_network", 1 << 1 if major == 10 else 0) in calls
        assert not [c for c in calls if c[0] == "deprecated"]
        assert built.strongly_typed == ("flag" if major == 10 else "always")
        assert not [c for c in calls if c[0] in ("set_flag", "set_calibration_profile")]
        assert ("build_serialized_network", []) in calls
        assert ("set_shape", "input", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8)) in calls
        parsed = onnx.load_model_from_string(model_bytes)
        init_types = {i.data_type for i in parsed.graph.initializer}
        io_types = {v.type.tensor_type.elem_type for v in [*parsed.graph.input, *parsed.graph.output]}
        assert io_types == {onnx.TensorProto.FLOAT}  # the runtime's float32 buffers stay valid
        if precision == "fp16":
            assert {i.data_type for i in parsed.graph.initializer if i.name in ("w", "fc")} == {
                onnx.TensorProto.FLOAT16
            }
        else:
            assert onnx.TensorProto.FLOAT16 not in init_types
        assert any(n.op_type == "QuantizeLinear" for n in parsed.graph.node) == (precision == "int8")
        assert built.input_name == "input" and built.output_names == ["logits", "features"]

    def test_precision_must_match_the_onnx(self, tmp_path):
        from cxrtool.export.trt_build import precision_onnx

        with pytest.raises(CxrError, match="needs the Q/DQ ONNX"):
            precision_onnx(tiny_onnx(tmp_path / "fp32.onnx"), "int8")
        with pytest.raises(CxrError, match="is a Q/DQ .INT8. ONNX; build it with --int8"):
            precision_onnx(tiny_onnx(tmp_path / "q.onnx", qdq=True), "fp16")

    def test_uint8_qdq_is_refused_by_the_parser(self, fakes, tmp_path):
        """onnx-tensorrt accepts INT8 (and FP8) Q/DQ only; UINT8 -- explicit or the ONNX default -- fails to parse."""
        import onnx

        from cxrtool.export.trt_build import build_serialized, precision_onnx

        _, trt, _, _ = fakes
        source = tiny_onnx(tmp_path / "u8.onnx", qdq=True, zero_point=np.uint8)
        with pytest.raises(CxrError, match=r"u8.onnx: has UINT8 Q/DQ nodes; TensorRT takes INT8 only"):
            precision_onnx(source, "int8")  # an old Q/DQ file is refused before the build
        with pytest.raises(
            CxrError, match=r"u8.onnx: TensorRT's ONNX parser failed: .*UINT8 QuantizeLinear is not supported"
        ) as info:
            build_serialized(trt, source.read_bytes(), source, CFG, BatchProfile(1, 4, 8))
        assert "\n" not in str(info.value)
        proto = onnx.load_model(str(tiny_onnx(tmp_path / "default.onnx", qdq=True)))
        for node in proto.graph.node:  # no zero point at all: UINT8 by the ONNX spec
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                del node.input[2]
        with pytest.raises(CxrError, match="UINT8"):
            build_serialized(trt, proto.SerializeToString(), source, CFG, BatchProfile(1, 4, 8))

    def test_flag_sets_match_the_real_bindings(self, fakes):
        from cxrtool.runtimes.trtlib import network_flags, weakly_typed_default

        major, trt, _, _ = fakes
        network = set(trt.NetworkDefinitionCreationFlag.__members__)
        builder = set(trt.BuilderFlag.__members__)
        assert {"STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"} <= network
        assert ("EXPLICIT_BATCH" in network) == (major == 10)
        assert ({"FP16", "INT8", "BF16", "FP8"} <= builder) == (major == 10) and not (
            {"FP16", "INT8"} & builder and major == 11
        )
        assert weakly_typed_default(trt) == (major == 10)
        assert network_flags(trt) == (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if major == 10 else 0)

    def test_profile_shapes_that_do_not_nest_raise_like_the_bindings(self, fakes, tmp_path):
        import types

        from cxrtool.export.trt_build import build_serialized, precision_onnx

        _, trt, _, _ = fakes
        profile = trt.Builder(trt.Logger()).create_optimization_profile()
        with pytest.raises(RuntimeError, match="Shape provided for opt is inconsistent"):
            profile.set_shape("input", (4, 3, 8, 8), (2, 3, 8, 8), (8, 3, 8, 8))
        source = tiny_onnx(tmp_path / "m.onnx")
        unchecked = types.SimpleNamespace(
            min=1, opt=8, max=4
        )  # BatchProfile itself refuses this; the build must not crash either
        with pytest.raises(CxrError, match="TensorRT refused the optimisation profile .*Shape provided for max"):
            build_serialized(trt, precision_onnx(source, "fp32"), source, CFG, unchecked)

    def test_parser_errors_are_one_line(self, fakes, tmp_path):
        from cxrtool.export.trt_build import build_serialized

        _, trt, _, _ = fakes
        with pytest.raises(CxrError, match=r"m.onnx: TensorRT's ONNX parser failed: In node -1 \(parseGraph\)"):
            build_serialized(trt, b"not onnx", tmp_path / "m.onnx", CFG, BatchProfile(1, 4, 8))

    def test_options(self, tmp_path):
        from cxrtool.export.options import default_tolerance, engine_precision

        assert [
            engine_precision(fp16=f, int8=i, calib=tmp_path if i else None) for f, i in ((0, 0), (1, 0), (0, 1))
        ] == ["fp32", "fp16", "int8"]
        assert default_tolerance("int8") > default_tolerance("fp16") > default_tolerance("fp32")
        for kwargs, message in [
            (dict(fp16=True, int8=True, calib=tmp_path), "choose one TensorRT precision"),
            (dict(fp16=False, int8=True, calib=None), "--int8 needs --calib"),
            (dict(fp16=False, int8=False, calib=tmp_path), "--calib is only used with --int8"),
            (dict(fp16=False, int8=True, calib=tmp_path / "none"), "not found"),
        ]:
            with pytest.raises(CxrError, match=message):
                engine_precision(**kwargs)


def build_plan(trt, tmp_path, profile=BatchProfile(1, 2, 4)) -> tuple[bytes, Path]:
    from cxrtool.export.trt_build import build_serialized, precision_onnx

    source = tiny_onnx(tmp_path / "m.onnx")
    return build_serialized(trt, precision_onnx(source, "fp32"), source, CFG, profile).plan, source


def ort_logits(source: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


class TestRunner:
    def test_every_push_has_its_pop_and_each_runner_runs_in_its_device(self, monkeypatch, tmp_path):
        from cxrtool.runtimes.trt_runner import TrtRunner

        trt, driver, calls = install(monkeypatch, 11, devices=("NVIDIA H200", "NVIDIA L4"))
        plan, source = build_plan(trt, tmp_path)
        runners = [TrtRunner(plan, 0), TrtRunner(plan, 1)]
        assert driver.stack == [] and driver.retains == 2  # retained once per device, not left current
        x = np.random.default_rng(0).normal(size=(7, 3, 8, 8)).astype(np.float32)
        for _ in range(2):  # alternate devices: the fake asserts every buffer is used in its own device's context
            for r in runners:
                np.testing.assert_allclose(r.infer(x), ort_logits(source, x), rtol=1e-5, atol=1e-6)
        assert [c[1] for c in calls if c[0] == "execute_async_v3"] == [4, 3] * 4  # chunks of the profile's max batch 4
        assert driver.stack == [] and driver.pushes == driver.pops > 0

    def test_empty_batch_and_padding(self, monkeypatch, tmp_path):
        from cxrtool.runtimes.trt_runner import TrtRunner

        trt, driver, calls = install(monkeypatch, 10)
        plan, source = build_plan(trt, tmp_path, BatchProfile(2, 2, 4))
        runner = TrtRunner(plan, 0)
        assert runner.infer(np.empty((0, 3, 8, 8), np.float32)).shape == (0, 3)
        x = np.ones((1, 3, 8, 8), np.float32)
        np.testing.assert_allclose(
            runner.infer(x), ort_logits(source, x), rtol=1e-5, atol=1e-6
        )  # padded to min batch 2
        assert calls[-1] == ("execute_async_v3", 2)
        with pytest.raises(CxrError, match=r"this engine takes \(N, 3, 8, 8\)"):
            runner.infer(np.ones((2, 3, 4, 4), np.float32))
        assert driver.stack == []

    def test_refused_shape_and_address_are_errors_and_still_pop(self, monkeypatch, tmp_path):
        from cxrtool.runtimes.trt_runner import TrtRunner

        trt, driver, _ = install(monkeypatch, 11)
        plan, _ = build_plan(trt, tmp_path)
        runner = TrtRunner(plan, 0)
        with monkeypatch.context() as patch:
            patch.setattr(type(runner.context), "set_input_shape", lambda self, name, shape: False)
            with pytest.raises(CxrError, match=r"TensorRT refused input shape \(2, 3, 8, 8\)"):
                runner.infer(np.ones((2, 3, 8, 8), np.float32))
        monkeypatch.setattr(type(runner.context), "set_tensor_address", lambda self, name, address: False)
        with pytest.raises(CxrError, match="refused the device address of tensor 'input'"):
            TrtRunner(plan, 0)
        assert driver.stack == [] and driver.pushes == driver.pops

    def test_tensor_dtypes_are_the_engines(self, monkeypatch, tmp_path):
        """``get_tensor_dtype`` reports the ONNX's I/O types; the runner sizes its host buffers from them."""
        import onnx
        from onnxconverter_common import float16

        from cxrtool.export.trt_build import build_serialized
        from cxrtool.runtimes.trt_runner import TrtRunner

        trt, _, _ = install(monkeypatch, 10)
        half = float16.convert_float_to_float16(
            onnx.load_model(str(tiny_onnx(tmp_path / "m.onnx"))), keep_io_types=False
        )
        plan = build_serialized(trt, half.SerializeToString(), tmp_path / "h.onnx", CFG, BatchProfile(1, 2, 4)).plan
        engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(plan)
        assert {n: engine.get_tensor_dtype(n) for n in ("input", "logits", "features")} == dict.fromkeys(
            ("input", "logits", "features"), trt.DataType.HALF
        )
        plan32, _ = build_plan(trt, tmp_path)
        runner = TrtRunner(plan32, 0)
        assert {name: a.dtype for name, a in runner.host.items()} == dict.fromkeys(
            ("input", "logits", "features"), np.dtype(np.float32)
        )
        assert runner.features == "features" and runner.logits == "logits"

    def test_missing_device_is_a_reason_not_a_crash(self, monkeypatch):
        from cxrtool.infer.trt_backend import TensorRTBackend
        from cxrtool.runtimes.trt_runner import cuda_problem

        install(monkeypatch, 10, devices=())
        assert cuda_problem("cuda") == "cuda:0 does not exist (0 CUDA devices)"
        assert not TensorRTBackend.is_available("cuda") and TensorRTBackend.unavailable_reason("cuda").startswith(
            "cuda:0 does not exist"
        )


EXIT_SCRIPT = """
import sys
sys.path[:0] = [{here!r}, {repo!r}]
from trt_fakes import fake_pycuda, fake_tensorrt
import numpy as np
calls = []
sys.modules["tensorrt"] = trt = fake_tensorrt(11, calls)
pycuda, driver = fake_pycuda()
sys.modules["pycuda"], sys.modules["pycuda.driver"] = pycuda, driver
from pathlib import Path
from test_trt_fakes import build_plan
from cxrtool.runtimes.trt_runner import TrtRunner, current_gpu
plan, _ = build_plan(trt, Path({tmp!r}))
runner = TrtRunner(plan, 0)
runner.infer(np.ones((3, 3, 8, 8), np.float32))
current_gpu(0)
{leak}
print("done", driver.pushes, driver.pops)
"""


@pytest.mark.parametrize(
    "leak, code", [("", 0), ("driver.Device(0).retain_primary_context().push()", 134)], ids=["clean", "leaked-push"]
)
def test_interpreter_exit_leaves_the_context_stack_empty(tmp_path, leak, code):
    """pycuda aborts at exit on a non-empty context stack; the fake does too (the leaked push proves it would
    notice).
    """
    script = EXIT_SCRIPT.format(here=str(HERE), repo=str(HERE.parents[1]), tmp=str(tmp_path), leak=leak)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == code, run.stderr[-2000:]
    assert "done" in run.stdout
    assert ("context stack was not empty" in run.stderr) == bool(code)


class TestFallbacks:
    def test_explicit_tensorrt_without_pycuda_is_one_line_exit_2(self, monkeypatch, tmp_path):
        from typer.testing import CliRunner

        from cxrtool.cli.main import app
        from cxrtool.runtimes import trt_runner

        monkeypatch.setitem(sys.modules, "pycuda", None)  # import fails as on a machine without it
        monkeypatch.setitem(sys.modules, "pycuda.driver", None)
        trt_runner.cuda_problem.cache_clear()
        from cxrtool.modelfile import EngineSidecar, ModelCard, write_sidecar

        engine = tmp_path / "m.engine"
        engine.write_bytes(b"plan")
        card = ModelCard(arch="densenet121", task="multiclass", class_names=["a", "b"])
        write_sidecar(
            engine,
            EngineSidecar(
                card,
                "fp16",
                BatchProfile(),
                "input",
                "logits",
                "10.3.0",
                "GPU",
                "8.0",
                "e" * 64,
                "m.onnx",
                "o" * 64,
                "c" * 64,
            ),
        )
        (tmp_path / "films").mkdir()
        (tmp_path / "films" / "a.png").write_bytes(b"not read: the backend check comes first")
        try:
            run = CliRunner().invoke(
                app,
                [
                    "predict",
                    str(tmp_path / "films"),
                    "--model",
                    str(engine),
                    "--out",
                    str(tmp_path / "p.csv"),
                    "--backend",
                    "tensorrt",
                    "--device",
                    "cuda",
                ],
            )
        finally:
            trt_runner.cuda_problem.cache_clear()
        assert run.exit_code == 2, run.output
        message = " ".join(run.output.split())
        assert "backend 'tensorrt' is not available on cuda here" in message
        assert "pycuda is not installed" in message or "TensorRT is not installed" in message
        assert "Traceback" not in run.output

    def test_auto_on_cuda_says_why_tensorrt_was_not_used(self, monkeypatch, tmp_path):
        from cxrtool.infer.auto import load_auto
        from cxrtool.modelfile.loaded import open_model
        from cxrtool.runtimes import trt_runner

        install(monkeypatch, 10, devices=())
        import onnx

        from cxrtool.modelfile import ModelCard, onnx_metadata
        from cxrtool.modelfile.write import set_onnx_metadata

        onnx_path = tiny_onnx(tmp_path / "m.onnx")
        proto = onnx.load_model(str(onnx_path))
        (tmp_path / "m.safetensors").write_bytes(b"weights")
        set_onnx_metadata(
            proto,
            onnx_metadata(
                ModelCard(arch="densenet121", task="multiclass", class_names=["a", "b", "c"]),
                tmp_path / "m.safetensors",
            ),
        )
        onnx.save_model(proto, str(onnx_path))
        with pytest.raises(CxrError) as info:  # no CUDA torch / ORT here either: the error carries the TensorRT reason
            load_auto(open_model(onnx_path), "cuda")
        trt_runner.cuda_problem.cache_clear()
        assert "TensorRT not used: cuda:0 does not exist" in str(info.value)


def test_build_engine_checks_then_writes_engine_and_sidecar(fakes, tmp_path):
    """exporting.build_engine end to end on the fakes: build, run in the runtime, compare with ONNX Runtime, write."""
    from cxrtool.export.pipeline import build_engine
    from cxrtool.infer.trt_backend import TensorRTBackend
    from cxrtool.modelfile import read_sidecar
    from cxrtool.modelfile.loaded import open_model

    major, _trt, driver, _ = fakes
    source = carded_onnx(tmp_path)

    built = build_engine(source, tmp_path / "m.engine", precision="fp32", profile=BatchProfile(1, 2, 4), device="cuda")
    sidecar = read_sidecar(built.path)
    assert built.parity.ok and built.parity.max_abs_diff < 1e-5 and sidecar.precision == "fp32"
    assert (
        sidecar.tensorrt_version.startswith(f"{major}.")
        and sidecar.gpu_name == "NVIDIA H200"
        and sidecar.output_name == "logits"
    )
    backend = TensorRTBackend.load(open_model(built.path), device="cuda")
    x = np.random.default_rng(1).normal(size=(5, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(backend.run(x), ort_logits(source, x), rtol=1e-5, atol=1e-6)
    assert driver.stack == [] and driver.pushes == driver.pops


def test_build_runs_in_the_target_devices_context(monkeypatch, tmp_path):
    """``--device cuda:1`` builds on device 1 (the builder builds for the current device), and the sidecar says so."""
    from cxrtool.export.pipeline import build_engine
    from cxrtool.modelfile import read_sidecar

    _trt, driver, calls = install(monkeypatch, 10, devices=("NVIDIA H200", "NVIDIA L4"))
    built = build_engine(carded_onnx(tmp_path), tmp_path / "m.engine", profile=BatchProfile(1, 2, 4), device="cuda:1")
    assert [c[1] for c in calls if c[0] == "build_device"] == [1]
    assert read_sidecar(built.path).gpu_name == "NVIDIA L4"
    assert driver.stack == [] and driver.pushes == driver.pops


def test_tensorrt_rows_carry_the_same_ood_score_and_flag_as_onnx_runtime(fakes, tmp_path):
    """The trust gate on TensorRT: same features output, same ``ood_score`` and ``flag`` per film as ONNX Runtime."""
    from cxrtool.export.pipeline import build_engine
    from cxrtool.infer.batching import predict_batch
    from cxrtool.infer.loading import load_backend
    from cxrtool.infer.trt_backend import TensorRTBackend
    from cxrtool.modelfile.loaded import open_model
    from cxrtool.trust import Trust
    from cxrtool.trust.assess import FLAG_OK, FLAG_OOD
    from cxrtool.trust.ood import fit_ood

    source = carded_onnx(tmp_path)
    built = build_engine(source, tmp_path / "m.engine", profile=BatchProfile(1, 2, 4), device="cuda")
    ort_backend = load_backend(source, backend="onnxruntime", device="cpu")
    trt_backend = TensorRTBackend.load(open_model(built.path), device="cuda")
    rng = np.random.default_rng(3)
    train, val = (rng.normal(size=(n, 3, 8, 8)).astype(np.float32) for n in (40, 20))
    _, train_f = ort_backend.run_features(train)
    _, val_f = ort_backend.run_features(val)
    trust = Trust(ort_backend.card, 1.0, fit_ood(train_f, None, val_f, [("pool", 4)], quantile=0.5))
    films = np.concatenate([rng.normal(size=(6, 3, 8, 8)), 4 * rng.normal(size=(5, 3, 8, 8))]).astype(np.float32)
    paths = [f"film{i}.png" for i in range(len(films))]
    _, features = trt_backend.run_features(films)
    np.testing.assert_allclose(features, ort_backend.run_features(films)[1], rtol=1e-5, atol=1e-6)
    got, want = predict_batch(trt_backend, paths, films, trust), predict_batch(ort_backend, paths, films, trust)
    assert all(r.ood_score is not None for r in got)
    np.testing.assert_allclose([r.ood_score for r in got], [r.ood_score for r in want], rtol=1e-5)
    assert [r.flag for r in got] == [r.flag for r in want]
    assert {FLAG_OK, FLAG_OOD} <= {
        r.flag for r in want
    }  # both verdicts occur (noise films may also fail the view check)


class TestSignedQdq:
    def test_uint8_symmetric_quantizers_become_int8_with_the_same_range(self, tmp_path):
        """The re-encoding keeps each quantizer's range: UINT8 levels 0..255 of s -> INT8 0..127 of s*255/127."""
        import onnx
        import onnxruntime as ort

        from cxrtool.export.qdq import qdq_zero_point_types, to_signed_int8

        model = onnx.load_model(str(tiny_onnx(tmp_path / "u8.onnx", qdq=True, zero_point=np.uint8)))
        model.graph.output.append(
            onnx.helper.make_tensor_value_info("xd", onnx.TensorProto.FLOAT, None)
        )  # the dequantized input
        x = np.abs(np.random.default_rng(0).normal(size=(4, 3, 8, 8))).astype(
            np.float32
        )  # non-negative, like a ReLU output
        before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            ["xd"], {"input": x}
        )
        assert set(qdq_zero_point_types(model)) == {"UINT8"}
        assert to_signed_int8(model, "u8.onnx") == 4
        assert set(qdq_zero_point_types(model)) == {"INT8"}
        scale = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}["s"]
        assert scale == pytest.approx(0.05 * 255 / 127)
        after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            ["xd"], {"input": x}
        )
        # the same range (255 * 0.05 == 127 * new scale); every value within half a new step of the input
        assert 127 * float(scale) == pytest.approx(255 * 0.05) and x.max() < 255 * 0.05
        assert np.abs(before[0] - x).max() <= 0.05 / 2 + 1e-6 and np.abs(after[0] - x).max() <= float(scale) / 2 + 1e-6

    def test_asymmetric_uint8_is_refused(self, tmp_path):
        import onnx
        from onnx import numpy_helper

        from cxrtool.export.qdq import to_signed_int8

        model = onnx.load_model(str(tiny_onnx(tmp_path / "u8.onnx", qdq=True, zero_point=np.uint8)))
        z = next(i for i in model.graph.initializer if i.name == "z")
        z.CopyFrom(numpy_helper.from_array(np.array(3, np.uint8), "z"))
        with pytest.raises(CxrError, match="u8.onnx: QuantizeLinear .* is asymmetric"):
            to_signed_int8(model, "u8.onnx")
