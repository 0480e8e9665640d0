"""Every number a model file carries, checked once where it is read: a damaged file is refused, never used.

A model card drives decisions (the temperature divides every logit, the OOD threshold decides
``flag``), so a NaN, an infinity, a zero scale or an absurd size in it would not fail loudly: it
would switch the trust gate off or allocate gigabytes per film.  The card parser
(:meth:`cxrtool.modelfile.ModelCard.from_dict`, so checkpoints, ONNX and IR metadata and TensorRT
sidecars alike) calls :func:`check_card`, and the trust loader
(:meth:`cxrtool.trust.assess.Trust.from_card`) calls :func:`check_trust_tensors`.  Both raise
``ValueError`` naming the field; the callers add the file name.

The rules are a table (:data:`CARD_RULES`, :data:`DEPTH_RULES`): to check a new card field, add a
row.  JSON text is parsed with :func:`loads_bounded`, which refuses deep nesting before Python's
recursive parser sees it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

#: deepest JSON nesting a card or sidecar may have (a real card is 4 deep)
MAX_JSON_DEPTH = 32
#: the smallest input side :class:`~cxrtool.config.PreprocessCfg` accepts, up to a side no CXR model needs
INPUT_SIZE_RANGE = (8, 2048)
#: widest feature vector the OOD statistics may describe (a DenseNet-201 has 1920 + transitions)
MAX_FEATURE_WIDTH = 1 << 16


@dataclass(frozen=True)
class Rule:
    """One numeric field: ``kind`` ``"int"`` or ``"float"``; bounds inclusive unless ``*_open``.

    Floats must be finite; ints must be JSON integers (``32.5`` and ``1e9`` are not).
    """

    path: str  # dotted path in the card dict, e.g. "calibration.temperature"
    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    required: bool = False


#: the card fields every command relies on (``ood.*`` rows apply only when the card has OOD statistics)
CARD_RULES: tuple[Rule, ...] = (
    Rule("preprocess.input_size", "int", *INPUT_SIZE_RANGE),
    Rule("preprocess.channels", "int", 1, 3),
    Rule("calibration.temperature", "float", 0.0, None, low_open=True),
    Rule("calibration.n", "int", 0),
    Rule("ood.threshold", "float", required=True),
    Rule("ood.quantile", "float", 0.5, 1.0, high_open=True, required=True),
    Rule("ood.n_train", "int", 0),
    Rule("ood.n_val", "int", 0),
)

#: a TensorRT sidecar's batch profile
PROFILE_RULES: tuple[Rule, ...] = tuple(Rule(k, "int", 1, 65536, required=True) for k in ("min", "opt", "max"))

#: each entry of ``ood.depths``
DEPTH_RULES: tuple[Rule, ...] = (
    Rule("start", "int", 0, MAX_FEATURE_WIDTH, required=True),
    Rule("stop", "int", 1, MAX_FEATURE_WIDTH, required=True),
    Rule("classes", "int", 1, 100_000),
    Rule("shrinkage", "float", 0.0, 1.0),
    Rule("center", "float", required=True),
    Rule("scale", "float", 0.0, None, low_open=True, required=True),
)


_MEAN = Rule("mean", "float")
_STD = Rule("std", "float", 0.0, None, low_open=True)


def loads_bounded(text: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that refuses nesting deeper than ``max_depth`` (a clean ``ValueError``, not RecursionError)."""
    depth = 0
    for token in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        c = token.group()
        if c in "[{":
            depth += 1
            if depth > max_depth:
                raise ValueError(f"JSON nested deeper than {max_depth} levels")
        elif c in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at position {exc.pos})") from None


def _lookup(data: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = data
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return False, None
        node = node[key]
    return True, node


def check_value(name: str, value: Any, rule: Rule) -> None:
    """``ValueError("field 'name' ...")`` unless ``value`` satisfies ``rule``."""
    if rule.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"field {name!r} must be an integer, not {value!r}")
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"field {name!r} must be a number, not {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"field {name!r} must be finite, not {value!r}")
    if rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low):
        raise ValueError(f"field {name!r} must be {'>' if rule.low_open else '>='} {rule.low:g}, not {value!r}")
    if rule.high is not None and (value >= rule.high if rule.high_open else value > rule.high):
        raise ValueError(f"field {name!r} must be {'<' if rule.high_open else '<='} {rule.high:g}, not {value!r}")


def check_rules(data: Mapping[str, Any], rules: tuple[Rule, ...], prefix: str = "") -> None:
    for rule in rules:
        found, value = _lookup(data, rule.path)
        if not found or value is None:
            if rule.required:
                raise ValueError(f"field {prefix + rule.path!r} is missing")
            continue
        check_value(prefix + rule.path, value, rule)


def check_card(data: Mapping[str, Any]) -> None:
    """Refuse a card dict (as parsed from JSON) whose numbers cannot be trusted; ``ValueError`` names the field."""
    rules = CARD_RULES if data.get("ood") else tuple(r for r in CARD_RULES if not r.path.startswith("ood."))
    check_rules(data, rules)
    pre = data.get("preprocess")
    if isinstance(pre, Mapping):
        channels = pre.get("channels", 3)
        for key in ("mean", "std"):
            if key not in pre or pre[key] is None:
                continue
            values = pre[key]
            if not isinstance(values, (list, tuple)) or len(values) != channels:
                raise ValueError(f"field 'preprocess.{key}' must be a list of {channels} numbers (one per channel)")
            for i, v in enumerate(values):
                check_value(f"preprocess.{key}[{i}]", v, _STD if key == "std" else _MEAN)
    ood = data.get("ood")
    if ood:
        _check_depths(ood.get("depths") if isinstance(ood, Mapping) else None)


def _check_depths(depths: Any) -> None:
    if not isinstance(depths, list) or not depths:
        raise ValueError("field 'ood.depths' must be a non-empty list")
    names: set[str] = set()
    expected_start = 0
    for i, depth in enumerate(depths):
        where = f"ood.depths[{i}]."
        if not isinstance(depth, Mapping):
            raise ValueError(f"field 'ood.depths[{i}]' must be a JSON object")
        name = depth.get("name")
        if not isinstance(name, str) or not name or name in names:
            raise ValueError(f"field '{where}name' must be a non-empty name used once, not {name!r}")
        names.add(name)
        check_rules(depth, DEPTH_RULES, where)
        if depth["start"] != expected_start or depth["stop"] <= depth["start"]:
            span = f"{depth['start']}..{depth['stop']}"
            raise ValueError(f"field '{where}start/stop' ({span}) does not continue the features at {expected_start}")
        expected_start = depth["stop"]


def check_trust_tensors(
    ood: Mapping[str, Any], tensors: Mapping[str, np.ndarray], prefix: str, n_classes: int | None = None
) -> None:
    """The OOD means and precision matrices: present, of the shapes the card's depths give, and finite.

    ``ood`` is a card's (already :func:`check_card`-ed) ``ood`` dict; ``n_classes``, when given, bounds
    the class means of a depth (one per class present in the fitting split; multilabel models fit one).
    """
    import numpy as np

    for depth in ood["depths"]:
        width = depth["stop"] - depth["start"]
        classes = depth.get("classes")
        for part, shape in (("means", (classes, width)), ("precision", (width, width))):
            key = f"{prefix}ood.{depth['name']}.{part}"
            if key not in tensors:
                raise ValueError(f"OOD tensor {key} is missing")
            array = np.asarray(tensors[key])
            if not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"OOD tensor {key} has dtype {array.dtype}, not floating point")
            want_rows = shape[0] if shape[0] is not None else array.shape[0] if array.ndim == 2 else -1
            if array.ndim != 2 or array.shape != (want_rows, shape[1]):
                need = (want_rows, shape[1])
                found = tuple(array.shape)
                raise ValueError(f"OOD tensor {key} has shape {found}; the card's depth {depth['name']!r} needs {need}")
            if part == "means" and n_classes is not None and not 1 <= array.shape[0] <= n_classes:
                raise ValueError(f"OOD tensor {key} has {array.shape[0]} class means for a {n_classes}-class model")
            if not np.isfinite(array).all():
                raise ValueError(f"OOD tensor {key} holds NaN or infinite values")
