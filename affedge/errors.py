"""User-facing errors.

Every problem a user can cause (bad input file, unknown task, missing or corrupt model) is
raised as an :class:`AffedgeError`. The CLI turns it into one line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AffedgeError(Exception):
    """A problem with the user's input, options or files (exit status 2 in the CLI)."""


class InputError(AffedgeError):
    """An input file that cannot be read as the format it claims to be."""


class DataError(AffedgeError):
    """A benchmark dataset that is missing, unknown or malformed."""


class ModelError(AffedgeError):
    """A model that cannot be found, is not a supported format, or is corrupt."""
