"""Errors that name the problem and the fix.

Every check in the lab raises one of these before work starts, so a user
sees one clear sentence instead of a stack trace from deep inside torch.
"""


class KDError(Exception):
    """Base class for the lab's own errors."""


class MissingDataError(KDError, FileNotFoundError):
    """A data set, annotation file or weight file is not where it was expected."""

    def __init__(self, what: str, path, how_to_get: str):
        self.what, self.path, self.how_to_get = what, str(path), how_to_get
        super().__init__(f"{what} not found at '{path}'. {how_to_get}")


class CorruptFileError(KDError, ValueError):
    """A file is there but cannot be read: truncated, corrupt or in another format. The message names it."""


class ConfigError(KDError, ValueError):
    """A parameter is unknown, has the wrong type or an invalid value."""


class NonFiniteLossError(KDError, FloatingPointError):
    """Training produced a NaN or infinite loss."""
