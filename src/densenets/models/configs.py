"""What the three architecture configs share (DenseNetConfig, CifarResNetConfig,
TorchvisionResNetConfig): a plain JSON dict out and back in, and the checks of their fields."""

from __future__ import annotations

from dataclasses import fields
from typing import ClassVar

from ..errors import ConfigError, reject_unknown_fields

# Fields older files carry that are no longer part of any architecture; dropped on load.
# memory_efficient: recomputation became a runtime switch (model.set_memory_efficient).
RETIRED_FIELDS = ("memory_efficient",)


class ArchitectureConfig:
    """Base of the frozen config dataclasses: ``to_dict`` / ``from_dict`` for config.json."""

    family: ClassVar[str]

    def to_dict(self) -> dict:
        """Plain JSON-able dict: the family, then every field (tuples as lists)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"family": self.family, **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}

    @classmethod
    def from_dict(cls, data: dict):
        """Inverse of :meth:`to_dict`; unknown keys are one error, retired ones are dropped."""
        data = {k: v for k, v in data.items() if k != "family" and k not in RETIRED_FIELDS}
        reject_unknown_fields(data, cls, cls.__name__)
        return cls(**data)


def check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def check_num_classes(value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"num_classes must be an integer >= 0 (0 = no classifier), got {value!r}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def check_fraction(name: str, value: object, *, zero: bool, one: bool, note: str = "") -> None:
    """``value`` in [0, 1) / (0, 1] / ...: ``zero`` and ``one`` say whether the ends are allowed."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and (value >= 0 if zero else value > 0) and (value <= 1 if one else value < 1)):
        interval = f"{'[' if zero else '('}0, 1{']' if one else ')'}"
        raise ConfigError(f"{name} must be in {interval}{note}, got {value!r}")
