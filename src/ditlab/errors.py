"""User-facing errors.

A ``UserError`` is a mistake the user can fix (bad path, bad flag, wrong checkpoint). Its message
is one line that names the problem and the fix; the CLI prints it and exits with code 2, without a
traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input; the message names the problem and the fix."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep messages to one line: the CLI prints them as-is.
        super().__init__(" ".join(str(message).split()))


class ConfigError(UserError):
    """Unknown preset or config key, wrong type, or a value out of range."""


class DataError(UserError):
    """Missing, empty or unreadable dataset."""


class CheckpointError(UserError):
    """Missing, corrupt or mismatched checkpoint / run directory."""


class ModelError(UserError):
    """Unknown model name or an impossible model geometry."""


class ProcessError(UserError):
    """Unknown process, schedule or sampler, or bad sampling arguments."""
