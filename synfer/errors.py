"""The errors synfer raises for bad input.

Every ``SynferError`` carries one line that says what was wrong and what is accepted; the CLI prints
that line and exits with status 2. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class SynferError(Exception):
    """Base class: a problem with what the user asked for, explained in one line."""

    exit_code = 2


class AUError(SynferError, ValueError):
    """An AU specification that cannot be parsed or is out of range."""


class LabelError(SynferError, ValueError):
    """An expression label that is unknown or not in the label set at hand."""


class ConfigError(SynferError, ValueError):
    """An option or configuration value that is invalid."""


class ModelLoadError(SynferError):
    """A model that cannot be found or loaded."""


class DatasetError(SynferError):
    """A dataset folder that is missing, malformed or inconsistent with the request."""
