"""``cxrtool evaluate`` hands the core exactly the core's own defaults when no option is typed.

The core is replaced by a recorder (which then stops the command), so this checks only the CLI's
job: its defaults come from :data:`cxrtool.train.config.EVAL_DEFAULTS`, the values in
:func:`cxrtool.train.evaluate.evaluate`'s signature, and are never retyped.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import cxrtool.train.evaluate
from cxrtool.cli.main import app
from cxrtool.errors import CxrError


def test_cli_defaults_are_the_core_signature_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signature = inspect.signature(cxrtool.train.evaluate.evaluate)
    seen: list[dict[str, Any]] = []

    def record(checkpoint: Path, manifest: Path, out_dir: Path, **kwargs: Any) -> None:
        seen.append(kwargs)
        raise CxrError("stopped by the test")

    monkeypatch.setattr(cxrtool.train.evaluate, "evaluate", record)
    for name in ("m.safetensors", "m.csv"):
        (tmp_path / name).write_text("x")
    args = ["evaluate", str(tmp_path / "m.safetensors"), str(tmp_path / "m.csv"), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "stopped by the test" in result.stderr, result.output
    [kwargs] = seen
    passed = {k: v for k, v in kwargs.items() if k != "on_batch"}
    assert set(passed) == {"split", "batch_size", "device", "workers", "bootstrap", "seed", "threshold"}
    assert passed == {k: signature.parameters[k].default for k in passed}
