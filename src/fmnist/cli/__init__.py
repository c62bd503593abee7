"""The `fmnist` command line: one module per command, each with ``add_parser`` and ``run``.

Heavy imports (NumPy aside: TensorFlow, Keras, matplotlib, pooch) happen inside the
commands, so `fmnist --help` and every `fmnist CMD --help` answer at once.

Exit codes: 0 success, 1 a failure the message explains (bad data, missing run
directory, a missing extra), 2 a usage error (unknown model, bad flag value). Errors are
one line; an unexpected exception is one line too, with its traceback behind
``FMNIST_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import os
import sys

from fmnist import __version__
from fmnist.cli import (bench, calibrate, compare, data, ensemble, evaluate, export, models,
                        predict, serve, train, tune)
from fmnist.cli.args import Parser
from fmnist.errors import FmnistError, missing_extra_message

# In the order `fmnist --help` lists them.
COMMANDS = {"data": data, "train": train, "evaluate": evaluate, "calibrate": calibrate,
            "models": models,
            "compare": compare, "ensemble": ensemble, "tune": tune, "predict": predict,
            "export": export, "serve": serve, "bench": bench}
# Set to 1 to let an unexpected exception show its traceback instead of one line.
DEBUG_ENV = "FMNIST_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fmnist", description="Fashion-MNIST classification: "
                    "verified data, honest validation, fast CPU models.")
    parser.add_argument("--version", action="version", version=f"fmnist {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    for group in COMMANDS.values():
        group.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from fmnist.runtime import prepare_tensorflow, quiet_tensorflow_import

    prepare_tensorflow()  # environment defaults, before any command imports TensorFlow
    quiet_tensorflow_import()  # TensorFlow's import notices are not for users' terminals
    try:
        return COMMANDS[args.command].run(args)
    except FmnistError as error:
        print(f"fmnist {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fmnist {args.command}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as error:  # a core-only install running a `train` command
        message = missing_extra_message(error)
        if message is None:
            return _unexpected(args.command, error)
        print(f"fmnist {args.command}: error: {message}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `fmnist ... | head`: the reader left; nothing more to say
        _silence_stdout()
        return 0
    except Exception as error:  # noqa: BLE001 -- a bug, or a failure no check foresaw
        return _unexpected(args.command, error)


def _unexpected(command: str, error: Exception) -> int:
    if os.environ.get(DEBUG_ENV) == "1":
        raise error
    print(f"fmnist {command}: error: unexpected {type(error).__name__}: "
          f"{_one_line(error)} (set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr)
    return 1


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:300] + "...") if len(text) > 300 else (text or "no message")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit flush does not fail on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
