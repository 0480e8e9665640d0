"""Every command documents itself (in the style of sqlite-utils' ``tests/test_docs.py``).

Walks the real command tree, so a command added later is checked without editing this file:
each ``--help`` renders, says what the command does, and shows every option's default exactly
once, read from the code (not retyped into the help text, where Rich markup used to eat it).
"""

from __future__ import annotations

import importlib
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
        pattern = re.compile(
            r"^\s{2}(-\w, )?"
            rf"{re.escape(option.opts[-1] if option.opts[-1].startswith('--') else option.opts[0])}(\W|$)"
        )
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


def _ctx(path: tuple[str, ...]) -> typer.Context:
    return typer.Context(_TREE[path], info_name=path[-1])


@pytest.mark.parametrize("path", LEAVES, ids=[" ".join(p) for p in LEAVES])
def test_labels_are_words_not_python_types(path: tuple[str, ...]) -> None:
    """``--model PATH``, ``--backend [a|b]``, ``PATHS...``: never ``<list[Path]>``, ``<int range>`` or ``{inputs}``."""
    command, ctx = _TREE[path], _ctx(path)
    for param in command.params:
        record = param.get_help_record(ctx)
        if record is None:
            continue
        label = record[0]
        assert not re.search(r"<|>|list\[|\{", label), f"{' '.join(path)}: {label!r}"
    usage = " ".join(command.collect_usage_pieces(ctx))
    assert "{" not in usage and "<" not in usage, usage
    for argument in (p for p in command.params if p.param_type_name == "argument"):
        assert argument.metavar and argument.metavar.isupper(), argument.name
        assert argument.metavar in usage  # the name the text uses is the name the usage shows


#: Names a docstring may use for a command's positional arguments (in capitals, as git and click write them).
_ARGUMENT_WORDS = {p.metavar for path in LEAVES for p in _TREE[path].params if p.param_type_name == "argument"} | {
    "INPUTS",
    "FILES",
}


@pytest.mark.parametrize("path", LEAVES, ids=[" ".join(p) for p in LEAVES])
def test_the_text_names_the_arguments_the_usage_shows(path: tuple[str, ...]) -> None:
    command = _TREE[path]
    own = {p.metavar for p in command.params if p.param_type_name == "argument"}
    named = set(re.findall(r"\b[A-Z][A-Z_]{2,}\b", command.help or "")) & _ARGUMENT_WORDS
    assert named <= own, f"{' '.join(path)} text names {sorted(named - own)}; its usage has {sorted(own)}"


@pytest.mark.parametrize("path", LEAVES, ids=[" ".join(p) for p in LEAVES])
def test_every_value_option_shows_its_default_or_required(path: tuple[str, ...]) -> None:
    """An option that takes a value says what happens without it (repeatable ones start empty)."""
    result = runner.invoke(app, [*path, "--help"], terminal_width=1000)
    options = [p for p in _TREE[path].params if p.param_type_name == "option" and p.name != "help" and not p.hidden]
    blocks = _option_blocks(result.output, options)
    for option in options:
        if option.is_flag or option.multiple:
            continue
        block = blocks[option.name]
        assert "[default:" in block or "[required]" in block, f"{' '.join(path)} {option.opts[0]}: {block}"


@pytest.mark.parametrize("dataset", ["radiography", "covidx", "kermany"])
def test_prep_examples_name_classes_of_that_dataset(dataset: str) -> None:
    """``--map`` and ``--exclude`` examples in each ``prep`` command are classes its dataset really has."""
    from cxrtool.prep.layouts import norm_class

    classes = {norm_class(name) for name in importlib.import_module(f"cxrtool.prep.{dataset}").DEFAULT_MAP}
    options = {p.name: p for p in _TREE[("prep", dataset)].params}
    [mapped] = re.findall(r"e\.g\. '([^=']+)=", options["label_map"].help)
    [excluded] = re.findall(r"e\.g\. ([^)]+)\)", options["exclude"].help)
    assert norm_class(mapped) in classes and norm_class(excluded) in classes, (mapped, excluded, classes)


def test_radiography_val_split_does_not_promise_patients() -> None:
    """The database has no patient ids: its --val-fraction help must not say the split is patient-wise."""
    text = _TREE[("prep", "radiography")].params
    val = next(p for p in text if p.name == "val_fraction")
    assert "patient" not in val.help.replace("no patient ids", "") and "near-duplicates" in val.help
