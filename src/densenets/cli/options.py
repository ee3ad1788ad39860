"""Argument helpers shared by subcommands."""

from __future__ import annotations

import json

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
