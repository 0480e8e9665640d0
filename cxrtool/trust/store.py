"""Where a model file keeps its trust statistics, and how to read them back.

* checkpoint (``.safetensors``): parameters in the card (``card.ood``, ``card.calibration``), the
  means and precision matrices as tensors named ``trust.ood.<depth>.means|precision`` next to the
  weights (:data:`~cxrtool.modelfile.TRUST_PREFIX`; never loaded as weights);
* ONNX export: the same card in its metadata plus :data:`~cxrtool.modelfile.TRUST_TENSORS_KEY`,
  the same tensors as a base64 safetensors blob (ONNX metadata holds strings only);
* INT8 OpenVINO IR: the ONNX export's metadata, blob included, copied into its ``rt_info``;
* TensorRT engine: read from the ONNX file it was built from (its sidecar names it and its hash).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrtool.errors import CxrError, one_line
from cxrtool.modelfile import (
    ENGINE_SUFFIX,
    IR_SUFFIX,
    ONNX_SUFFIX,
    TRUST_PREFIX,
    TRUST_TENSORS_KEY,
    file_sha256,
    read_export_metadata,
)

if TYPE_CHECKING:
    from cxrtool.modelfile.loaded import LoadedModel


def decode_tensors(text: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(base64.b64decode(text.encode("ascii")))


def checkpoint_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """The ``TRUST_PREFIX`` tensors of a checkpoint (empty for a checkpoint made without them)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys() if k.startswith(TRUST_PREFIX)}


def stored_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """The trust tensors of any model file (by suffix); empty when the file carries none."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (ONNX_SUFFIX, IR_SUFFIX):  # an INT8 IR carries its ONNX export's metadata in rt_info
            text = read_export_metadata(path).get(TRUST_TENSORS_KEY)
            return decode_tensors(text) if text else {}
        if suffix == ENGINE_SUFFIX:
            from cxrtool.modelfile import read_sidecar

            sidecar = read_sidecar(path)
            onnx_path = Path(sidecar.source_onnx)
            if not onnx_path.is_absolute():
                onnx_path = path.parent / onnx_path
            if onnx_path.is_file() and file_sha256(onnx_path) == sidecar.source_onnx_sha256:
                return stored_tensors(onnx_path)
            return {}
        return checkpoint_tensors(path)
    except CxrError:
        raise
    except Exception as exc:  # a damaged blob: the file's statistics cannot be trusted
        raise CxrError(
            f"{path}: unreadable OOD statistics ({one_line(exc)}); refit them with `cxrtool calibrate`"
        ) from None


def model_tensors(model: LoadedModel) -> dict[str, np.ndarray]:
    """:func:`stored_tensors` of a model file already opened (:mod:`cxrtool.modelfile.loaded`): no second read."""
    try:
        if model.is_engine:
            source = model.engine_source()
            return model_tensors(source) if source is not None else {}
        if model.is_checkpoint:
            from safetensors.numpy import load

            return {k: v for k, v in load(model.data).items() if k.startswith(TRUST_PREFIX)}
        text = model.metadata.get(TRUST_TENSORS_KEY)
        return decode_tensors(text) if text else {}
    except CxrError:
        raise
    except Exception as exc:  # a damaged blob: the file's statistics cannot be trusted
        why = f"unreadable OOD statistics ({one_line(exc)}); refit them with `cxrtool calibrate`"
        raise CxrError(f"{model.path}: {why}") from None
