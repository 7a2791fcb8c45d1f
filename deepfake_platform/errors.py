"""The one exception type for mistakes a user can make and fix: a flag, a path, a config value, an input.

A command shows a `UserError` as its sentence (see `orchestration.cli.run_command`); any other exception is
a bug and keeps its traceback. The project's own sentence-errors (ConfigError, CheckpointError, DatasetError,
BadImageError, ...) subclass it; the two below stand where a plain ValueError or FileNotFoundError was raised.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix, told as a sentence that says what happened and what to do."""


class InvalidInput(UserError, ValueError):
    """A flag, an option or an input that the command cannot use."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the user named that does not exist."""
