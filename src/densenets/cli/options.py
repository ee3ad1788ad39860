"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing

from ..errors import ConfigError


def parse_overrides(pairs: list[str]) -> dict:
    """``["growth_rate=24", "bottleneck=false"]`` -> ``{"growth_rate": 24, "bottleneck": False}``.

    Values are read as JSON where they parse (numbers, true/false, lists), else as strings.
    """
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected FIELD=VALUE, got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(value, list):
            value = tuple(value)
        out[key.strip()] = value
    return out


class FlagOrValue(argparse.Action):
    """``--x`` (true) or ``--x VALUE`` with VALUE one of ``values``; anything else a clear error."""

    def __init__(self, option_strings, dest, values: tuple[str, ...] = (), **kwargs) -> None:
        kwargs.update(nargs="?", default=None, metavar="|".join(values))
        super().__init__(option_strings, dest, **kwargs)
        self.values = values

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        if value is not None and value not in self.values:
            named, off = " or ".join(repr(v) for v in self.values), "--no-" + self.option_strings[0][2:]
            parser.error(f"{option_string} takes no value (on) or {named}, got {value!r} (off: {off})")
        setattr(namespace, self.dest, True if value is None else value)


def add_dataclass_options(
    parser,
    cls,
    describe_default: typing.Callable[[str], str] | None = None,
    flag_values: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """One ``--field-name`` option per dataclass field, typed from its annotation.

    Defaults are ``None`` ("not given") so only what the user typed overrides the recipe;
    ``describe_default(name)`` says in the help what a run uses when it is not given.
    ``flag_values`` names fields that are a flag or a named value (``--memory-efficient [full]``).
    """
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for name, hint in hints.items():
        flag = "--" + name.replace("_", "-")
        kind = _base_type(hint)
        text = describe_default(name) if describe_default else f"default: {defaults[name]}"
        text = text.replace("%", "%%")
        if name in (flag_values or {}):
            parser.add_argument(flag, dest=name, action=FlagOrValue, values=flag_values[name], help=text)
            parser.add_argument("--no-" + flag[2:], dest=name, action="store_const", const=False, help="off")
        elif kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind is tuple:
            parser.add_argument(flag, dest=name, type=float, nargs="+", default=None, metavar="F", help=text)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=None, metavar=name.upper(), help=text)


def collect_overrides(args, cls) -> dict:
    """The dataclass fields the user set on the command line."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def _base_type(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args and typing.get_origin(hint) is not tuple:
        hint = args[0]
    return typing.get_origin(hint) or hint
