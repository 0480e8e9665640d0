"""Read a PyTorch ``.pt``/``.pth`` file without running any code from it, whole pickled models included.

``torch.load(weights_only=True)`` refuses files saved with ``torch.save(model)`` (torchxrayvision's
published weights, for one), because their pickle names module classes; loading them the usual way
imports and calls whatever the file names.  This reader interprets the pickle opcodes itself
(:func:`pickletools.genops` only decodes them) and never imports a module or calls a named global:

* a global is looked up in a fixed table: tensor rebuild functions (reimplemented here from the
  storage bytes) and plain containers (``OrderedDict``, ``set``); every other global becomes an
  inert :class:`Global` marker;
* calling (``REDUCE``) anything outside the table is refused before it could happen, so a
  ``__reduce__`` that names ``os.system`` or ``builtins.exec`` ends the read with an error;
* instantiating (``NEWOBJ``) a marker gives a :class:`PickledObject` that only records the state it is
  given (``BUILD``), which is how a pickled ``nn.Module`` arrives; :func:`module_state_dict` walks
  those records' ``_parameters``/``_buffers``/``_modules`` into a state dict.

Both of torch's formats are read: the zip archive (``*/data.pkl`` + ``*/data/<key>``, torch >= 1.6)
and the older stream of pickles followed by raw storages (``_use_new_zipfile_serialization=False``).
"""

from __future__ import annotations

import io
import pickletools
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from cxrtool.errors import CxrError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_MAX_DEPTH = 64  # module nesting; DenseNet-121 is 4 deep
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class UnsafePickleError(CxrError):
    """The file asks for something this reader will not do (call a function, use an unknown opcode)."""


class Global:
    """An inert stand-in for a global the file names (``module``, ``name``): never imported, never called."""

    def __init__(self, module: str, name: str):
        self.qualname = f"{module}.{name}"

    def __repr__(self) -> str:
        return f"<global {self.qualname}>"


class PickledObject:
    """An instance of a :class:`Global` class: its class name and the state the pickle gave it."""

    def __init__(self, cls: Global):
        self.qualname = cls.qualname
        self.attrs: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<pickled {self.qualname}>"


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _Storage:
    """A storage's elements as a flat tensor (bytes read from the file, never a pickled object)."""

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int for v in value):
        raise UnsafePickleError(f"malformed tensor record ({what} is not a tuple of integers)")
    return tuple(value)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    """torch._utils._rebuild_tensor(_v2): a strided view of the storage, bounds checked first."""
    if not isinstance(storage, _Storage) or type(offset) is not int:
        raise UnsafePickleError("malformed tensor record (no storage or offset)")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in (*size, *stride)):
        raise UnsafePickleError("malformed tensor record (negative or mismatched size/stride)")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= storage.flat.numel():
        raise UnsafePickleError("malformed tensor record (view runs past its storage)")
    return storage.flat.as_strided(size, stride, offset)


def _rebuild_parameter(data: Any, *_: Any) -> torch.Tensor:
    """torch._utils._rebuild_parameter(_with_state): the data only (requires_grad, hooks and state dropped)."""
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("malformed parameter record (its data is not a tensor)")
    return data


def _rebuild_from_type(func: Any, _new_type: Any, args: Any, _state: Any) -> torch.Tensor:
    """torch._tensor._rebuild_from_type_v2: a tensor subclass; rebuilt as a plain tensor by an allowed function."""
    if func not in (_rebuild_tensor, _rebuild_parameter) or not isinstance(args, tuple):
        raise UnsafePickleError(f"tensor record asks for {func!r}, not a tensor rebuild function")
    return func(*args)


def _container(kind: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if len(args) > 1 or any(isinstance(a, (PickledObject, Global)) for a in args):
            raise UnsafePickleError(f"malformed {kind.__name__} record")
        return kind(*args)

    return build


#: the only globals the file may call: (module, name) -> what is called instead
_CALLABLE: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("collections", "OrderedDict"): _container(OrderedDict),
    ("builtins", "set"): _container(set),
    ("builtins", "frozenset"): _container(frozenset),
}
_ALLOWED = frozenset(_CALLABLE.values())


def _find_global(module: str, name: str) -> Any:
    module = "builtins" if module == "__builtin__" else module  # protocol 2 spells it the Python 2 way
    if (module, name) in _CALLABLE:
        return _CALLABLE[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
        return _StorageType(_STORAGE_DTYPES[name])
    return Global(module, name)


_MARK = object()


class _Machine:
    """A pickle stack machine for the opcodes torch writes; anything that would run code raises."""

    def __init__(self, persistent_load: Callable[[Any], Any]):
        self.persistent_load = persistent_load

    def run(self, ops: Iterator[tuple[pickletools.OpcodeInfo, Any, int | None]]) -> Any:
        stack: list[Any] = []
        memo: dict[int, Any] = {}

        def pop_mark() -> list[Any]:
            for i in range(len(stack) - 1, -1, -1):
                if stack[i] is _MARK:
                    items = stack[i + 1 :]
                    del stack[i:]
                    return items
            raise UnsafePickleError("malformed pickle (MARK missing)")

        for op, arg, _pos in ops:
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                if len(stack) != 1:
                    raise UnsafePickleError("malformed pickle (stack not empty at STOP)")
                return stack.pop()
            if name in _CONSTANTS:
                stack.append(_CONSTANTS[name])
            elif name in _LITERALS:
                stack.append(arg)
            elif name == "MARK":
                stack.append(_MARK)
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                if arg not in memo:
                    raise UnsafePickleError(f"malformed pickle (memo {arg} read before it was written)")
                stack.append(memo[arg])
            elif name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1])
            elif name in ("EMPTY_TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"):
                n = ("EMPTY_TUPLE", "TUPLE1", "TUPLE2", "TUPLE3").index(name)
                items = stack[len(stack) - n :] if n else []
                del stack[len(stack) - n :]
                stack.append(tuple(items))
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "LIST":
                stack.append(pop_mark())
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "DICT":
                items = pop_mark()
                stack.append(dict(zip(items[::2], items[1::2])))
            elif name == "EMPTY_SET":
                stack.append(set())
            elif name == "FROZENSET":
                stack.append(frozenset(pop_mark()))
            elif name in ("APPEND", "APPENDS"):
                items = [stack.pop()] if name == "APPEND" else pop_mark()
                _target(stack, list, name).extend(items)
            elif name in ("SETITEM", "SETITEMS"):
                items = stack[-2:] if name == "SETITEM" else pop_mark()
                if name == "SETITEM":
                    del stack[-2:]
                target = _target(stack, dict, name)
                for key, value in zip(items[::2], items[1::2]):
                    target[key] = value
            elif name == "ADDITEMS":
                items = pop_mark()
                _target(stack, set, name).update(items)
            elif name == "GLOBAL":
                module, _, attr = arg.partition(" ")
                stack.append(_find_global(module, attr))
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                if not isinstance(module, str) or not isinstance(attr, str):
                    raise UnsafePickleError("malformed pickle (STACK_GLOBAL without names)")
                stack.append(_find_global(module, attr))
            elif name == "REDUCE":
                args, func = stack.pop(), stack.pop()
                stack.append(_call(func, args))
            elif name in ("NEWOBJ", "NEWOBJ_EX"):
                if name == "NEWOBJ_EX":
                    stack.pop()  # kwargs: an inert object takes none
                stack.pop()
                cls = stack.pop()
                if not isinstance(cls, Global):
                    raise UnsafePickleError(f"refused to instantiate {cls!r} (only inert stand-ins are built)")
                stack.append(PickledObject(cls))
            elif name == "BUILD":
                state = stack.pop()
                _build(stack[-1], state)
            elif name in ("BINPERSID", "PERSID"):
                stack.append(self.persistent_load(stack.pop() if name == "BINPERSID" else arg))
            else:  # INST, OBJ, EXT1/2/4 and anything newer: they import or call, or torch never writes them
                raise UnsafePickleError(f"refused pickle opcode {name}")
        raise UnsafePickleError("malformed pickle (no STOP)")


_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_LITERALS = frozenset(
    {
        "INT",
        "BININT",
        "BININT1",
        "BININT2",
        "LONG",
        "LONG1",
        "LONG4",
        "FLOAT",
        "BINFLOAT",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "UNICODE",
        "BINUNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE8",
        "BINBYTES",
        "SHORT_BINBYTES",
        "BINBYTES8",
    }
)


def _target(stack: list[Any], kind: type, op: str) -> Any:
    if not stack or not isinstance(stack[-1], kind):
        raise UnsafePickleError(f"malformed pickle ({op} on {type(stack[-1]).__name__ if stack else 'nothing'})")
    return stack[-1]


def _call(func: Any, args: Any) -> Any:
    if func not in _ALLOWED:
        what = func.qualname if isinstance(func, Global) else repr(func)
        raise UnsafePickleError(f"refused to call {what} (only tensor rebuild functions and plain containers)")
    if not isinstance(args, tuple):
        raise UnsafePickleError("malformed pickle (REDUCE arguments are not a tuple)")
    return func(*args)


def _build(obj: Any, state: Any) -> None:
    """BUILD: a stand-in records the state; a dict's attributes (a state dict's ``_metadata``) are dropped."""
    if isinstance(obj, PickledObject):
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise UnsafePickleError(f"malformed pickle (state of {obj.qualname} is not a dict)")
        obj.attrs.update(state)
    elif state and not (isinstance(obj, dict) and isinstance(state, dict)):
        raise UnsafePickleError(f"refused to set state on {type(obj).__name__}")


# ------------------------------------------------------------------ file formats


def read_torch_file(path: str | Path) -> Any:
    """The object a ``torch.save`` file holds, rebuilt from plain data (see the module docstring).

    Raises
    ------
    CxrError
        Naming ``path``: not a torch file, an unsupported variant, or (:class:`UnsafePickleError`)
        a pickle that asks for a call or an opcode this reader refuses.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        data = path.read_bytes()
        if data[:1] != b"\x80":
            raise CxrError("not a PyTorch file (neither zip archive nor pickle)")
        return _read_legacy(io.BytesIO(data), len(data))
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: refused to load: {exc}") from None
    except CxrError as exc:
        raise CxrError(f"{path}: {exc}") from None
    except (OSError, EOFError, ValueError, TypeError, struct.error, zipfile.BadZipFile, KeyError, IndexError) as exc:
        raise CxrError(f"{path}: damaged PyTorch file ({type(exc).__name__}: {exc})") from None


def _read_zip(path: Path) -> Any:
    archive_size = path.stat().st_size  # torch stores storages uncompressed: a larger entry is a zip bomb
    with zipfile.ZipFile(path) as zf:
        pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CxrError("zip archive without exactly one <archive>/data.pkl (a TorchScript file is not read)")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(zf.namelist())
        if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").strip() != b"little":
            raise CxrError("big-endian files are not supported")
        storages: dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage:
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                raise UnsafePickleError(f"unknown persistent id {str(pid)[:60]!r}")
            _, stype, key, _location, numel = pid
            if not isinstance(stype, _StorageType) or not isinstance(key, str) or type(numel) is not int:
                raise UnsafePickleError("malformed storage record")
            if key not in storages:
                entry = zf.getinfo(f"{prefix}data/{key}")
                if entry.file_size > archive_size or numel * _itemsize(stype.dtype) > entry.file_size:
                    raise CxrError(f"storage {key}: its size does not fit the archive")
                storages[key] = _Storage(_flat(zf.read(entry), stype.dtype, numel))
            return storages[key]

        data = zf.read(pickles[0])
        return _Machine(persistent_load).run(pickletools.genops(data))


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _flat(raw: bytes | bytearray, dtype: torch.dtype, numel: int) -> torch.Tensor:
    """The storage's elements as a 1-D tensor sharing memory with ``raw`` (a copy when ``raw`` is read-only)."""
    size = _itemsize(dtype)
    if len(raw) < numel * size:
        raise CxrError(f"storage holds {len(raw)} bytes, its record says {numel} x {size}")
    buf = raw if isinstance(raw, bytearray) else bytearray(raw)
    return torch.frombuffer(buf, dtype=dtype, count=numel) if numel else torch.empty(0, dtype=dtype)


def _read_legacy(fh: IO[bytes], file_size: int) -> Any:
    """torch's pre-1.6 stream: magic, protocol, sys info, the object, storage keys, then raw storages.

    The object comes before the storage bytes, so each storage is allocated (zeros, at most the
    file's size) when the object first names it and filled in place afterwards; tensors are views.
    """
    plain = _Machine(_refuse_pid)
    if plain.run(pickletools.genops(fh)) != _LEGACY_MAGIC:
        raise CxrError("not a PyTorch file (pickle without torch's magic number)")
    if plain.run(pickletools.genops(fh)) != _LEGACY_PROTOCOL:
        raise CxrError("unsupported legacy torch file version")
    info = plain.run(pickletools.genops(fh))
    if isinstance(info, Mapping) and info.get("little_endian") is False:
        raise CxrError("big-endian files are not supported")
    buffers: dict[str, bytearray] = {}  # each root storage's bytes; its tensors view them
    roots: dict[str, _Storage] = {}
    views: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            return pid[1]  # (class, source file, source): the class is an inert Global; the source is never run
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise UnsafePickleError(f"unknown persistent id {str(pid)[:60]!r}")
        _, stype, key, _location, numel, view = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise UnsafePickleError("malformed storage record")
        if key not in roots:
            if numel * _itemsize(stype.dtype) > file_size:
                raise CxrError(f"storage {key} claims {numel} elements, more than the file holds")
            buffers[key] = bytearray(numel * _itemsize(stype.dtype))
            roots[key] = _Storage(_flat(buffers[key], stype.dtype, numel))
        root = roots[key]
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3):
            raise UnsafePickleError("malformed storage view")
        offset, view_size = _ints(view[1:], "storage view")
        if offset < 0 or view_size < 0 or offset + view_size > root.flat.numel():
            raise UnsafePickleError("malformed storage view")
        return views.setdefault(str(view[0]), _Storage(root.flat[offset : offset + view_size]))

    result = _Machine(persistent_load).run(pickletools.genops(fh))
    keys = plain.run(pickletools.genops(fh))
    if not isinstance(keys, list) or set(keys) != set(roots):
        raise CxrError("storage list does not match the storages the object uses")
    for key in keys:
        (count,) = struct.unpack("<q", fh.read(8))
        if count != roots[key].flat.numel():
            raise CxrError(f"storage {key} holds {count} elements, its record says {roots[key].flat.numel()}")
        if fh.readinto(buffers[key]) != len(buffers[key]):
            raise CxrError(f"storage {key} is cut short")
    return result


def _refuse_pid(pid: Any) -> Any:
    raise UnsafePickleError(f"unexpected persistent id {str(pid)[:60]!r}")


# ------------------------------------------------------------------ module trees


def module_state_dict(root: PickledObject) -> dict[str, torch.Tensor]:
    """``root.state_dict()`` of a pickled ``nn.Module``, read from the recorded attributes only.

    Parameters and persistent buffers that are not None, named as torch names them
    (``features.conv0.weight``); a child that is not a pickled object, or a loop, is an error.
    """
    out: dict[str, torch.Tensor] = {}

    def walk(obj: PickledObject, prefix: str, path: tuple[int, ...]) -> None:
        if id(obj) in path or len(path) > _MAX_DEPTH:
            raise CxrError(f"module {prefix!r} contains itself or nests deeper than {_MAX_DEPTH}")
        attrs = obj.attrs
        skip = attrs.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            entries = attrs.get(group) or {}
            if not isinstance(entries, Mapping):
                raise CxrError(f"module {prefix or obj.qualname!r}: {group} is not a mapping")
            for name, value in entries.items():
                if value is None or (group == "_buffers" and name in skip):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise CxrError(f"module {prefix or obj.qualname!r}: {group}[{name!r}] is not a tensor")
                out[prefix + str(name)] = value
        children = attrs.get("_modules") or {}
        if not isinstance(children, Mapping):
            raise CxrError(f"module {prefix or obj.qualname!r}: _modules is not a mapping")
        for name, child in children.items():
            if child is None:
                continue
            if not isinstance(child, PickledObject):
                raise CxrError(f"module {prefix + str(name)!r} is not a pickled module")
            walk(child, f"{prefix}{name}.", (*path, id(obj)))

    walk(root, "", ())
    return out


__all__ = ["Global", "PickledObject", "UnsafePickleError", "module_state_dict", "read_torch_file"]
