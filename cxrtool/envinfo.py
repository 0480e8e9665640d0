"""Environment report for ``cxrtool doctor``: what this workstation can run and decode."""

from __future__ import annotations

import importlib
import platform
import sys

Row = tuple[str, str, bool | None]


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:
        return None
    return str(getattr(mod, "__version__", "installed"))


def collect() -> dict[str, list[Row]]:
    """Sections of (item, value, ok) rows; ``ok`` is None where there is nothing to judge."""
    from cxrtool import __version__

    libs: list[Row] = [
        ("python", sys.version.split()[0], None),
        ("cxrtool", __version__, None),
        ("platform", platform.platform(), None),
    ]
    for name in (
        "torch",
        "torchvision",
        "numpy",
        "pydicom",
        "zennit",
        "onnx",
        "onnxruntime",
        "openvino",
        "safetensors",
        "tensorrt",
        "pycuda",
    ):
        v = _version(name)
        optional = name in ("tensorrt", "pycuda")
        libs.append(
            (
                name,
                v or ("not installed (optional: pip install 'cxrtool[trt]')" if optional else "not installed"),
                v is not None,
            )
        )
    return {
        "Libraries": libs,
        "Compute": _compute_rows(),
        "DICOM transfer syntaxes": _dicom_rows(),
        "Weight files for --init": _weight_rows(),
    }


def _weight_rows() -> list[Row]:
    """Each published file ``--init`` knows, found in its library's cache or not (cxrtool never downloads)."""
    from cxrtool.models.catalog import KNOWN

    rows: list[Row] = []
    for key, weights in KNOWN.items():
        path = weights.find()
        label = f"txrv:{key}" if weights.kind == "torchxrayvision" else f"imagenet ({key})"
        value = str(path) if path else f"not found in {weights.cache_path().parent} (published at {weights.url})"
        rows.append((label, value, True if path else None))
    return rows


def _compute_rows() -> list[Row]:
    rows: list[Row] = []
    import torch

    rows.append(("torch CUDA build", str(torch.version.cuda or "cpu-only"), None))
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    rows.append(("CUDA devices", str(n), n > 0))
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        rows.append((f"cuda:{i}", f"{p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}", True))
    rows.append(("torch CPU threads", str(torch.get_num_threads()), None))
    try:
        import onnxruntime as ort

        rows.append(("ONNX Runtime providers", ", ".join(ort.get_available_providers()), True))
    except Exception as exc:
        rows.append(("ONNX Runtime providers", f"unavailable ({exc})", False))
    try:
        import openvino as ov

        core = ov.Core()
        devs = []
        for d in core.available_devices:
            caps = core.get_property(d, "OPTIMIZATION_CAPABILITIES")
            devs.append(f"{d} ({', '.join(caps)})")
        rows.append(("OpenVINO devices", "; ".join(devs), bool(devs)))
    except Exception as exc:
        rows.append(("OpenVINO devices", f"unavailable ({exc})", False))
    return rows


def _dicom_rows() -> list[Row]:
    """One row per transfer syntax: native (uncompressed, decoded by pydicom itself) or its plugins."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import UID

    from cxrtool.dicom.gdcm_fallback import register_fallback
    from cxrtool.dicom.syntaxes import TRANSFER_SYNTAXES

    register_fallback()  # list cxrtool's own GDCM fallback where it serves
    rows: list[Row] = []
    for uid in TRANSFER_SYNTAXES:
        try:
            dec = get_decoder(UID(uid))
        except NotImplementedError:
            rows.append((UID(uid).name, "not supported by pydicom", False))
            continue
        if dec.is_native:
            rows.append((UID(uid).name, "native (pydicom, no plugin needed)", True))
        else:
            plugins = sorted(dec.available_plugins)
            rows.append((UID(uid).name, ", ".join(plugins) or "no decoder plugin installed", bool(plugins)))
    return rows
