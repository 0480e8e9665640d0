"""Every command documents itself (in the style of sqlite-utils' ``tests/test_docs.py``).

Walks the real command tree, so a command added later is checked without editing this file:
each ``--help`` renders, says what the command does, and shows every option's default exactly
once, read from the code (not retyped into the help text, where Rich markup used to eat it).
"""

from __future__ import annotations

import importlib.util
import re
from enum import Enum

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from cxrtool.cli.main import app

runner = CliRunner()


def _commands(command, path=()):
    """(path, command) for every command and group under ``command`` (the root loads its commands lazily)."""
    yield path, command
    if isinstance(command, TyperGroup):
        ctx = typer.Context(command)
        for name in command.list_commands(ctx):
            yield from _commands(command.get_command(ctx, name), (*path, name))


_TREE = dict(_commands(typer.main.get_command(app)))
COMMANDS = [path for path in _TREE if path]
LEAVES = [path for path, command in _TREE.items() if path and not isinstance(command, TyperGroup)]


def _expected_default(option) -> str | None:
    """What ``[default: ...]`` must say for ``option``, or None when no default should be shown."""
    if isinstance(option.show_default, str):
        return f"({option.show_default})"
    default = option.default
    if option.is_flag and option.secondary_opts:  # --x/--no-x
        return option.opts[0].lstrip("-") if default else option.secondary_opts[0].lstrip("-")
    if default is None or option.is_flag or option.multiple:
        return None
    return str(default.value if isinstance(default, Enum) else default)


def _option_blocks(help_text: str, options) -> dict[str, str]:
    """The help block of each option (its lines up to the next option), whitespace collapsed."""
    lines = help_text.splitlines()
    starts = []
    for option in options:
        pattern = re.compile(rf"^\s{{2}}(-\w, )?{re.escape(option.opts[-1] if option.opts[-1].startswith('--') else option.opts[0])}(\W|$)")
        index = next((i for i, line in enumerate(lines) if pattern.match(line)), None)
        assert index is not None, f"{option.opts} is missing from the help"
        starts.append((index, option.name))
    starts.sort()
    blocks = {}
    for (start, name), (end, _) in zip(starts, [*starts[1:], (len(lines), None)]):
        blocks[name] = " ".join(" ".join(lines[start:end]).split())
    return blocks


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_help_renders_with_defaults_visible(path: tuple[str, ...]) -> None:
    command = _TREE[path]
    result = runner.invoke(app, [*path, "--help"], terminal_width=1000)
    assert result.exit_code == 0, result.output
    assert command.help and command.help.split("\n")[0].strip() in result.output  # says what it does
    options = [p for p in command.params if p.param_type_name == "option" and p.name != "help" and not p.hidden]
    for name, block in _option_blocks(result.output, options).items():
        option = next(o for o in options if o.name == name)
        expected = _expected_default(option)
        if expected is None:
            assert "[default:" not in block, f"{' '.join(path)} {option.opts}: {block}"
        else:
            assert f"[default: {expected}" in block, f"{' '.join(path)} {option.opts}: {block}"
            assert block.count("default:") == 1, f"default retyped in the help text: {block}"


def test_retyped_defaults_are_gone_and_brackets_survive() -> None:
    """Markup used to eat ``[default: ...]`` from these two help texts."""
    train = runner.invoke(app, ["train", "--help"], terminal_width=1000).output
    assert "Input side in px.  [default: (the parent's, else 224)]" in train
    assert "Input side in px ." not in train
    export = runner.invoke(app, ["export", "--help"], terminal_width=1000).output
    assert "[default: (engines/ next to the checkpoint)]" in export


def test_root_help_lists_every_command_and_the_exit_codes() -> None:
    result = runner.invoke(app, ["--help"], terminal_width=1000)
    assert result.exit_code == 0
    for path in COMMANDS:
        if len(path) == 1:
            assert f"  {path[0]} " in result.output
    assert "0 all good, 1 some inputs failed" in " ".join(result.output.split())
    assert "--debug" in result.output and "CXRTOOL_DEBUG" in result.output


def test_version() -> None:
    from cxrtool import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"cxrtool {__version__}"


def test_doctor_runs_and_prints_brackets_literally() -> None:
    result = runner.invoke(app, ["doctor"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for section in ("Libraries", "Compute", "DICOM transfer syntaxes"):
        assert section in result.output
    if importlib.util.find_spec("tensorrt") is None:
        assert "pip install 'cxrtool[trt]'" in result.output  # "[trt]" is not eaten as markup
