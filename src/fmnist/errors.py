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


# Which extra brings each third-party module the core lacks (pyproject.toml: the core
# serves and predicts with ONNX; `fmnist[train]` trains, exports and reports).
EXTRA_OF_MODULE = {**dict.fromkeys(("keras", "tensorflow", "pooch", "tqdm", "sklearn", "matplotlib",
                                    "tf2onnx", "onnx", "tensorboard"), "train"),
                   "keras_tuner": "tune"}


def missing_extra_message(error: ModuleNotFoundError) -> str | None:
    """One line naming the extra to install for a module that is not installed, or None
    when the module is not one an extra brings (a real bug, reported as such)."""
    module = (error.name or "").partition(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return (f"this needs fmnist's {extra!r} extra ({module} is not installed); "
            f"install it with: pip install 'fmnist[{extra}]'")
