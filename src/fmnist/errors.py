"""Exceptions the command line turns into a one-line message and a non-zero exit.

Every message says what is wrong and what to do about it, on one line.
"""


class FmnistError(Exception):
    """A failure the user can act on (exit code 1 from the CLI)."""


class DataError(FmnistError):
    """A data file is missing, corrupt, or not Fashion-MNIST."""


class RunDirError(FmnistError):
    """A run directory is missing, incomplete, or would be overwritten."""


class UnknownModelError(FmnistError, ValueError):
    """A model name that is not in the registry."""


class ConfigError(FmnistError, ValueError):
    """A training setting with a value fmnist does not know (e.g. in a --config file)."""
