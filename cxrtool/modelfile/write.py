"""Writing what a model file carries, beside :mod:`cxrtool.modelfile` (reading) and :mod:`.loaded` (opening).

* ONNX ``metadata_props``: :func:`set_onnx_metadata` (the export and the Q/DQ INT8 ONNX);
* OpenVINO IR ``rt_info``: :func:`set_ir_metadata` (the INT8 IR), read back by
  :func:`cxrtool.modelfile.read_ir_metadata`;
* trust statistics as an ONNX metadata string: :func:`encode_tensors`, read back by
  :func:`cxrtool.trust.store.decode_tensors`.

The checkpoint's header strings are :func:`cxrtool.modelfile.checkpoint_metadata`; the engine
sidecar is :func:`cxrtool.modelfile.write_sidecar`.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

#: the ``rt_info`` section the ``cxrtool.*`` keys go under (``<rt_info><cxrtool><key value=.../>``)
IR_SECTION = "cxrtool"


def set_onnx_metadata(proto: Any, values: dict[str, str]) -> None:
    """Replace our keys in an ONNX ``ModelProto``'s ``metadata_props``, keeping any the exporter wrote."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def set_ir_metadata(model: Any, values: dict[str, str]) -> None:
    """Put the ``cxrtool.*`` entries of ``values`` into an OpenVINO ``Model``'s ``rt_info`` (others are not ours)."""
    prefix = f"{IR_SECTION}."
    for key, value in values.items():
        if key.startswith(prefix):
            model.set_rt_info(value, [IR_SECTION, key.removeprefix(prefix)])


def encode_tensors(tensors: dict[str, np.ndarray]) -> str:
    """Tensors -> one ASCII string (a base64 safetensors blob) for ONNX ``metadata_props``."""
    from safetensors.numpy import save

    return base64.b64encode(save({k: np.ascontiguousarray(v) for k, v in tensors.items()})).decode("ascii")
