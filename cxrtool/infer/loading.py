"""Loading a model with a named backend or ``auto``'s choice: the one door from a model file to a runnable backend.

Kept apart from :mod:`cxrtool.infer.backends` (the interface and registry) so that ``auto``, which
ranks the registered backends, and the loader, which asks ``auto``, do not import each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrtool.errors import CxrError
from cxrtool.infer.auto import candidates, load_auto
from cxrtool.infer.backends import Backend, backend_class
from cxrtool.modelfile.loaded import LoadedModel, open_model


def available_backends(model: str | Path | LoadedModel, device: str = "cpu") -> list[str]:
    """Backends that can run this model on ``device`` here (directly or via its current exports)."""
    loaded = model if isinstance(model, LoadedModel) else open_model(model)
    return list(dict.fromkeys(c.backend for c in candidates(loaded, device)))


def load_backend(
    model: str | Path | LoadedModel, *, backend: str = "auto", device: str = "cpu", **options: Any
) -> Backend:
    """A backend for ``model`` with the named runtime, or with ``auto``'s choice (:mod:`cxrtool.infer.auto`).

    ``model`` is a :class:`~cxrtool.modelfile.loaded.LoadedModel` (a path is opened here, once).  A
    checkpoint runs on onnxruntime/openvino/tensorrt through its export in ``engines/`` (see
    :meth:`~cxrtool.modelfile.loaded.LoadedModel.exports`); the returned backend's ``path`` and
    ``loaded`` are the file actually run.  Options a backend does not use are ignored, so callers can
    pass one set to ``auto``.
    """
    loaded = model if isinstance(model, LoadedModel) else open_model(model)
    if backend == "auto":
        return load_auto(loaded, device, **options)
    cls = backend_class(backend)
    path = loaded.path
    if loaded.suffix in cls.suffixes:
        chosen: LoadedModel | None = loaded
    else:
        match = next(((f, m) for f, m in loaded.exports() if f.suffix.lower() in cls.suffixes), None)
        if match is None:
            exportable = path.suffix.lower() in (".safetensors", ".onnx")
            hint = (
                "give it the checkpoint (.safetensors) the export was made from"
                if ".safetensors" in cls.suffixes
                else "run `cxrtool export` on it first"
                if exportable
                else "give it another model file"
            )
            raise CxrError(f"{path}: backend {backend!r} loads {', '.join(cls.suffixes)} files; {hint}")
        found, chosen = match
        if chosen is None:
            raise CxrError(f"{found} was made from a different version of {path.name}; export it again")
    if not cls.is_available(device):
        why = cls.unavailable_reason(device)
        raise CxrError(f"backend {backend!r} is not available on {device} here ({why or 'see `cxrtool doctor`'})")
    return cls.build(chosen, device=device, **options)
