"""The package layout the README's "Layout" section describes, checked on the code's own imports.

Every import counts, also one inside a function (it runs as soon as the function does); only
``if TYPE_CHECKING:`` blocks are left out (they never run).  Two rules:

* no circle between modules;
* each package imports only the packages its row of :data:`MAY_IMPORT` names (the shared
  top-level modules in :data:`SHARED` are open to all), and ``export`` and ``infer`` never reach
  each other, not even through a third package.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cxrtool"

#: top-level modules every package may use: they import only each other (and ``cxrtool`` itself)
SHARED = {
    "cxrtool",
    "errors",
    "config",
    "task",
    "labels",
    "workers",
    "fsutil",
    "locks",
    "manifest",
    "privacy",
    "inputs",
    "cpu",
    "devices",
}

#: unit -> the units it may import (besides :data:`SHARED`); a unit is a package or a top-level module
MAY_IMPORT: dict[str, set[str]] = {
    "dicom": set(),
    "images": {"dicom"},
    "preprocess": {"images"},
    "modelfile": set(),
    "runtimes": {"modelfile"},
    "models": {"modelfile"},
    "data": {"images", "preprocess"},
    "prep": {"images", "preprocess"},
    "trust": {"dicom", "images", "preprocess", "modelfile", "models", "data"},
    "train": {"images", "preprocess", "modelfile", "models", "data", "trust"},
    "explain": {"images", "preprocess", "modelfile", "models", "trust"},
    "export": {"images", "preprocess", "modelfile", "models", "runtimes", "trust", "train"},
    "infer": {"dicom", "images", "preprocess", "modelfile", "models", "runtimes", "trust"},
    "results": {"dicom", "images", "preprocess", "modelfile", "models", "explain", "trust"},
    "report": {"images", "modelfile", "trust"},
    "dicomweb": {"dicom", "images", "preprocess", "modelfile", "trust", "results", "report"},
    "listen": {"dicom", "images", "modelfile", "infer", "results", "explain", "trust", "dicomweb"},
    "envinfo": {"dicom", "models"},
    "demo": {
        "dicom",
        "images",
        "prep",
        "models",
        "modelfile",
        "train",
        "trust",
        "export",
        "infer",
        "explain",
        "report",
    },
    "cli": {"*"},
    "__main__": {"cli"},
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cxrtool"


@cache
def _modules() -> dict[str, Path]:
    found = {}
    for file in PACKAGE.rglob("*.py"):
        parts = list(file.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = file
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str) -> str | None:
    modules = _modules()
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in modules else None


@cache
def _imports(module: str) -> frozenset[str]:
    """The cxrtool modules ``module`` imports, wherever the import stands (function bodies included)."""
    file = _modules()[module]
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                names.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names.update(
                    f"{base}.{a.name}" if _resolve(f"{base}.{a.name}") == f"{base}.{a.name}" else base
                    for a in child.names
                )
            visit(child)

    visit(ast.parse(file.read_text(encoding="utf-8")))
    return frozenset(r for n in names if n.startswith("cxrtool") and (r := _resolve(n)) and r != module)


def test_the_walk_sees_imports_inside_functions():
    # cxrtool.images imports cxrtool.dicom only inside load_image: the rule must still see it
    assert "cxrtool.dicom" in _imports("cxrtool.images")
    assert len(_modules()) > 100


def test_no_circle_between_modules():
    graph = {m: _imports(m) for m in _modules()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def strongconnect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    assert not circles, circles


def test_every_unit_imports_only_what_its_row_allows():
    wrong = []
    for module in _modules():
        unit = _unit(module)
        allowed = MAY_IMPORT.get(unit, set()) if unit not in SHARED else SHARED
        for target in _imports(module):
            to = _unit(target)
            if to == unit or to in SHARED or "*" in allowed or to in allowed:
                continue
            wrong.append(f"{module} -> {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_every_unit_has_a_row():
    units = {_unit(m) for m in _modules()}
    assert units - SHARED <= set(MAY_IMPORT), sorted(units - SHARED - set(MAY_IMPORT))


def test_export_and_infer_never_reach_each_other():
    def reach(unit: str) -> set[str]:
        seen, todo = set(), [m for m in _modules() if _unit(m) == unit]
        while todo:
            m = todo.pop()
            for t in _imports(m):
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return {_unit(m) for m in seen}

    assert "infer" not in reach("export")
    assert "export" not in reach("infer")


def test_the_core_never_imports_the_cli_or_its_libraries():
    for module, file in _modules().items():
        if _unit(module) in ("cli", "__main__"):
            continue
        text = file.read_text(encoding="utf-8")
        tree = ast.parse(text)
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not [n for n in names if n.split(".")[0] in ("typer", "rich", "click")], module
