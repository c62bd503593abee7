"""The `fmnist` command line.

Heavy imports (NumPy aside: TensorFlow, Keras, matplotlib, pooch) happen inside the
commands, so `fmnist --help` and every `fmnist CMD --help` answer at once.

Exit codes: 0 success, 1 a failure the message explains (bad data, missing run
directory), 2 a usage error (unknown model, bad flag value). Errors are one line.
"""

from __future__ import annotations

import argparse
import sys

from fmnist import __version__
from fmnist.errors import FmnistError

DEFAULT_MODEL = "mlp"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line instead of usage + error."""

    def error(self, message: str):  # noqa: D401 (argparse's name)
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", metavar="DIR",
        help="folder with the four Fashion-MNIST .gz files, used as is "
             "(default: $FMNIST_DATA_DIR, else download into the user cache)",
    )


def build_parser() -> argparse.ArgumentParser:
    from fmnist.models import describe, model_names

    parser = _Parser(prog="fmnist", description="Fashion-MNIST classification: "
                     "verified data, honest validation, fast CPU models.")
    parser.add_argument("--version", action="version", version=f"fmnist {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    data = commands.add_parser("data", help="locate, verify and summarize the dataset",
                               description="Show where the data is, verify every file "
                               "(downloading into the cache if needed) and count each class.")
    _add_data_dir(data)

    models_help = "; ".join(f"{name}: {describe(name)}" for name in model_names())
    train = commands.add_parser(
        "train", help="train a model and evaluate it on the test set",
        description="Train on a seeded split of the 60,000 training images, validate on the "
                    "held-out part, then evaluate once on the test set. Writes a run directory.",
        epilog=f"models: {models_help}",
    )
    train.add_argument("--model", help=f"registered model name (default: {DEFAULT_MODEL})")
    train.add_argument("--epochs", type=_int_at_least(1), help="epochs to train (default: 10)")
    train.add_argument("--batch-size", type=_int_at_least(1), help="images per step (default: 128)")
    train.add_argument("--learning-rate", type=_positive_float, help="Adam's step size (default: 0.001)")
    train.add_argument("--seed", type=_int_at_least(0),
                       help="fixes split, initialization and shuffling (default: 0)")
    train.add_argument("--val-size", type=_int_at_least(10),
                       help="validation images held out of the 60,000 (default: 6000)")
    train.add_argument("--train-size", type=_int_at_least(10),
                       help="use a stratified subset of this many training images (quick runs)")
    train.add_argument("--test-size", type=_int_at_least(1),
                       help="evaluate on the first N test images only (quick runs)")
    train.add_argument("--out", metavar="DIR",
                       help="run directory to create (default: runs/MODEL-seedN-TIMESTAMP)")
    train.add_argument("--resume", metavar="DIR",
                       help="continue the run in DIR from its last checkpoint; takes its settings "
                            "from DIR/config.json, so no other training flag may be given")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(subparser=train)  # lets the command report usage errors found later
    _add_data_dir(train)

    evaluate = commands.add_parser("evaluate", help="(re)evaluate a run on the test set",
                                   description="Evaluate RUN_DIR/model.keras on the test set "
                                   "and update RUN_DIR/metrics.json.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    _add_data_dir(evaluate)
    return parser


# Flags that define a run; with --resume they come from the run's config.json instead.
_RUN_FLAGS = ("model", "epochs", "batch_size", "learning_rate", "seed", "val_size",
              "train_size", "test_size", "out")


def _cmd_data(args) -> int:
    from fmnist.data import CLASS_NAMES, inspect

    source, reports = inspect(args.data_dir)
    print(f"data: {source.directory} ({source.origin})")
    failed = 0
    for report in reports:
        if report.verified:
            print(f"  ok    {report.spec.name}  (verified: {report.verified} SHA-256)")
        else:
            failed += 1
            print(f"  BAD   {report.problem}")
    counts = {r.spec.split: r.labels for r in reports if r.labels is not None}
    if counts:
        import numpy as np

        splits = list(counts)
        print(f"\n  {'class':<14}" + "".join(f"{s:>8}" for s in splits))
        tallies = {s: np.bincount(counts[s], minlength=len(CLASS_NAMES)) for s in splits}
        for index, name in enumerate(CLASS_NAMES):
            print(f"  {index} {name:<12}" + "".join(f"{tallies[s][index]:>8}" for s in splits))
        print(f"  {'total':<14}" + "".join(f"{tallies[s].sum():>8}" for s in splits))
    if failed:
        print(f"fmnist data: error: {failed} file(s) failed verification (see above)",
              file=sys.stderr)
        return 1
    return 0


def _cmd_train(args) -> int:
    from fmnist.models import get_factory

    train_parser = args.subparser
    if args.resume:
        given = [f"--{name.replace('_', '-')}" for name in _RUN_FLAGS if getattr(args, name) is not None]
        if given:
            train_parser.error(f"--resume takes the run's settings from its config.json; "
                               f"drop {', '.join(given)}")
    else:
        try:
            get_factory(args.model or DEFAULT_MODEL)
        except FmnistError as error:
            train_parser.error(str(error))

    # Check every input before TensorFlow is imported: errors come in a second, on one
    # line, and a bad test file is caught before training rather than after it.
    from fmnist import rundir
    from fmnist.data import load_data

    if args.resume:
        rundir.require_run_dir(args.resume)
    train_data, test_data = load_data(args.data_dir)

    from fmnist import train as training
    from fmnist.evaluate import evaluate_run

    verbose = 0 if args.quiet else "auto"
    if args.resume:
        run_dir = training.resume(args.resume, verbose=verbose, train_data=train_data)
    else:
        config = training.TrainConfig()
        for name in _RUN_FLAGS[:-1]:
            value = getattr(args, name)
            if value is not None:
                setattr(config, name, value)
        run_dir = training.train(config, out_dir=args.out, verbose=verbose, train_data=train_data)
    metrics = evaluate_run(run_dir, test_data=test_data)
    print(f"run: {run_dir}")
    print(f"validation accuracy: {metrics['val_accuracy']:.4f}  "
          f"training: {metrics['train_seconds']:.1f} s, {metrics['epochs']} epochs")
    print(f"test accuracy: {metrics['test_accuracy']:.4f}  (test loss {metrics['test_loss']:.4f}, "
          f"{metrics['n_test']} images)")
    return 0


def _cmd_evaluate(args) -> int:
    from fmnist import rundir
    from fmnist.data import load_split

    rundir.require_run_dir(args.run_dir, needs=rundir.MODEL)  # before TensorFlow loads
    test_data = load_split("test", args.data_dir)

    from fmnist.evaluate import evaluate_run

    metrics = evaluate_run(args.run_dir, test_data=test_data)
    print(f"test accuracy: {metrics['test_accuracy']:.4f}  (test loss {metrics['test_loss']:.4f}, "
          f"{metrics['n_test']} images)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "data":
            return _cmd_data(args)
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "evaluate":
            return _cmd_evaluate(args)
    except FmnistError as error:
        print(f"fmnist {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fmnist {args.command}: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
