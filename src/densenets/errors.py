"""Exceptions that mean "the user asked for something impossible", not "the code broke".

The CLI prints these as one line and exits with status 2; anything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """Base class for problems the user can fix (bad name, bad file, bad setting)."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """An invalid model or training setting; the message names the field and valid values."""


class DataError(UserError):
    """A data set is missing, incomplete or unreadable."""


class CheckpointError(UserError):
    """A checkpoint or weights file is missing, corrupt, unsafe or for another model."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the message names the step and what to try."""


class TrainingInterrupted(UserError):
    """Ctrl-C: a resumable checkpoint was saved."""

    exit_code = 130


def reject_unknown_fields(given, cls, what: str) -> None:
    """Raise one :class:`ConfigError` naming the keys of ``given`` that are not fields of dataclass ``cls``.

    The one place that checks user-supplied field names (recipe, model config, overrides);
    close matches are suggested.
    """
    import difflib
    from dataclasses import fields

    valid = sorted(f.name for f in fields(cls))
    unknown = sorted(set(given) - set(valid))
    if unknown:
        close = sorted({m for name in unknown for m in difflib.get_close_matches(name, valid, n=1)})
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"unknown {what} field(s) {unknown}; {hint}valid fields: {', '.join(valid)}")
