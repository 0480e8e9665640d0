"""Help labels in the style of git, pip and click: ``PATHS...``, ``--model PATH``, ``--device TEXT``, ``[a|b]``.

Typer labels values with Python types (``<list[Path]>``, ``<int range>``) and writes required
arguments as ``{paths}...``; :func:`tidy` relabels every parameter of a command once, when the
root group builds it, so no command spells its own labels (a ``metavar`` given in a command wins),
and an option without a default says ``[default: (none)]`` unless it names its own (``show_default``).
"""

from __future__ import annotations

from enum import Enum
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, get_args

from typer import Context
from typer._coercion import PassThroughRuntimeParam
from typer.core import TyperArgument

if TYPE_CHECKING:
    import click

#: Value labels by the element type (a repeatable option says "repeatable" in its help).
_TYPE_LABELS = {int: "INTEGER", float: "FLOAT", str: "TEXT"}
_PATH_LABELS = {"dir": "DIR", "file": "FILE"}


class _Argument(TyperArgument):
    """A positional argument shown as ``NAME`` (required) or ``[NAME]`` (optional), ``...`` when repeatable."""

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return f"{name}..." if self.nargs != 1 else name

    def display_type_rich(self, ctx: click.Context) -> str | None:
        return None  # the name says it; the help text says what it is


def plain_help(option: Any) -> Any:
    """Make a command's ``--help`` a plain flag, without a validator; returns it.

    Typer 0.29 coerces an unset ``--help`` (value None) through a pydantic adapter it builds on
    first use: 0.2 s of CPU on every command, spent before any help is printed.
    """
    if option is not None and option._runtime_param is None:
        option._runtime_param = PassThroughRuntimeParam(option.type_descriptor.parameter_info, bool)
    return option


def value_label(param: Any) -> str:
    """``PATH``/``DIR``/``FILE``, ``INTEGER``/``FLOAT``/``TEXT``, or ``[a|b|c]`` for a choice."""
    desc = param.type_descriptor  # every Typer parameter has one
    if desc.is_choice:
        return "[" + "|".join(str(c.value if isinstance(c, Enum) else c) for c in desc.choices) + "]"
    leaf = get_args(desc.annotation)[0] if desc.is_list else desc.annotation
    if desc.is_path or (isinstance(leaf, type) and issubclass(leaf, PurePath)):
        return _PATH_LABELS.get(desc.path_type if desc.is_path else "", "PATH")
    return _TYPE_LABELS.get(leaf, "TEXT")


def tidy(command: click.Command) -> click.Command:
    """Relabel ``command``'s parameters (and its subcommands', for a group) in place; returns it."""
    plain_help(command.get_help_option(Context(command)))
    for param in command.params:
        if isinstance(param, TyperArgument):
            param.__class__ = _Argument
            param.metavar = param.metavar or param.name.upper()
        elif param.param_type_name == "option" and not (param.is_flag or param.count):
            param.metavar = param.metavar or value_label(param)
            if param.default is None and not (param.required or param.multiple or isinstance(param.show_default, str)):
                param.show_default = "none"  # every value option says what happens without it
    for sub in getattr(command, "commands", {}).values():
        tidy(sub)
    return command
