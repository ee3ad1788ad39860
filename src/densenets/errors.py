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
