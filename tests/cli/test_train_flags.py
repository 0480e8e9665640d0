"""``train`` shows TrainConfig's defaults in --help, yet a default never overrides the --config TOML.

The config the command hands to the core is captured at ``fit`` (which then stops the run), so
this checks the CLI's own job: defaults < TOML < typed flags, flag names mapped to config keys.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import cxrtool.train.loop
from cxrtool.cli.main import app
from cxrtool.errors import CxrError
from cxrtool.train.config import TrainConfig

runner = CliRunner()


@pytest.fixture()
def captured(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    seen: list[TrainConfig] = []

    def fit(cfg: TrainConfig, **_: object) -> None:
        seen.append(cfg)
        raise CxrError("stopped by the test")

    monkeypatch.setattr(cxrtool.train.loop, "fit", fit)
    return seen


def test_toml_values_survive_and_typed_flags_win(tmp_path: Path, captured: list[TrainConfig]) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text(
        f'manifest = "{tmp_path / "m.csv"}"\nout_dir = "{tmp_path / "run"}"\ninit = "none"\n'
        'epochs = 7\nlr = 0.5\naugment = false\nbalance = "sampler"\naug_rotate = 9.0\n'
    )
    result = runner.invoke(app, ["train", "--config", str(toml), "--lr", "0.01", "--amp", "none", "--seed", "0"])
    assert result.exit_code == 2 and "stopped by the test" in result.stderr, result.output
    [cfg] = captured
    defaults = TrainConfig()
    assert (cfg.epochs, cfg.augment, cfg.balance, cfg.aug_rotate) == (7, False, "sampler", 9.0)  # from the TOML
    assert (cfg.lr, cfg.amp, cfg.seed) == (0.01, "none", 0)  # typed flags, even one equal to its default
    assert (cfg.batch_size, cfg.optimizer, cfg.workers) == (defaults.batch_size, defaults.optimizer, defaults.workers)


def test_flags_map_to_config_keys(tmp_path: Path, captured: list[TrainConfig]) -> None:
    args = [
        "train",
        str(tmp_path / "m.csv"),
        "--out",
        str(tmp_path / "run"),
        "--init",
        "none",
        "--rotate",
        "2.5",
        "--no-augment",
        "--balance",
        "loss",
        "--keep-map",
        "viral_pneumonia=Pneumonia",
        "--resize",
        "letterbox",
        "--init-classes",
        "a, b",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    [cfg] = captured
    assert cfg.manifest == str(tmp_path / "m.csv") and cfg.out_dir == str(tmp_path / "run")
    assert (cfg.aug_rotate, cfg.augment, cfg.balance, cfg.resize) == (2.5, False, "loss", "letterbox")
    assert cfg.keep_map == {"viral_pneumonia": "Pneumonia"} and cfg.init_classes == ["a", "b"]
    assert cfg.arch is None and cfg.input_size is None  # left to the parent checkpoint / PreprocessCfg


def test_choice_flags_are_checked_before_anything_runs(tmp_path: Path, captured: list[TrainConfig]) -> None:
    result = runner.invoke(app, ["train", str(tmp_path / "m.csv"), "--init", "none", "--optimizer", "adam"])
    assert result.exit_code == 2 and "--optimizer" in result.output and "adamw" in result.output
    assert captured == []
