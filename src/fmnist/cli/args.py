"""argparse pieces shared by the command groups: the one-line-error parser, value types,
and the arguments several commands take."""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line instead of usage + error."""

    def error(self, message: str):  # noqa: D401 (argparse's name)
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def int_at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def float_where(accept, requirement: str):
    """An argparse type: a finite float for which ``accept(value)`` holds."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (accept(value) and value < float("inf")):  # NaN fails every comparison
            raise argparse.ArgumentTypeError(f"{requirement}, got {text}")
        return value

    return parse


positive_float = float_where(lambda value: value > 0, "must be a positive number")
non_negative_float = float_where(lambda value: value >= 0, "must be a number >= 0")


def key_value(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE as JSON, or as a string when it is a bare word."""
    import json

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw  # a bare word: a string


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", metavar="DIR",
        help="folder with the four Fashion-MNIST .gz files, used as is "
             "(default: $FMNIST_DATA_DIR, else download into the user cache)",
    )


def add_split_sizes(parser: argparse.ArgumentParser, train_help: str) -> None:
    """--val-size and --train-size (None: the split's defaults, 6,000 and the rest)."""
    parser.add_argument("--val-size", type=int_at_least(10),
                        help="validation images held out of the 60,000 (default: 6000)")
    parser.add_argument("--train-size", type=int_at_least(10), help=train_help)


def add_model_source(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    """[MODEL] (a run directory, .keras or .onnx file; default: the bundled model) and
    --engine, for predict and serve. ``positional`` False: the caller parses MODEL itself."""
    from fmnist.rundir import ENGINES  # not fmnist.predict: --help must not load Pillow

    if positional:
        parser.add_argument("model", metavar="MODEL", nargs="?", default=None,
                            help="run directory, .keras or .onnx file (default: the model "
                                 "bundled with fmnist, cnn-fast)")
    parser.add_argument("--engine", choices=ENGINES,
                        help="for a run directory: keras (default) or onnx (needs `fmnist export`)")
