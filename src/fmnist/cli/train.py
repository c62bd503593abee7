"""`fmnist train`: train a model (or resume a run), then evaluate it on the test set."""

from __future__ import annotations

import argparse
import sys

from fmnist.cli.args import add_data_dir, float_where, int_at_least, key_value
from fmnist.cli.evaluate import print_test_metrics, say_if_tta_does_not_apply
from fmnist.config import GROUPS, TrainConfig, field_kind, flag_of, users_of
from fmnist.errors import FmnistError
from fmnist.models import DEFAULT_MODEL

# The flags that steer this invocation rather than define the run; every other flag of
# `fmnist train` is a TrainConfig field (add_setting_flags), and a test holds both lists
# to that.
RUN_CONTROL = ("out", "resume", "config", "tta", "quiet", "data_dir")


def add_parser(commands) -> None:
    from fmnist.models import describe, model_names

    models_help = "; ".join(f"{name}: {describe(name)}" for name in model_names())
    train = commands.add_parser(
        "train", help="train a model and evaluate it on the test set",
        description="Train on a seeded split of the 60,000 training images, validate on the "
                    "held-out part, then evaluate once on the test set. Writes a run directory. "
                    "Every setting can also come from a --config JSON file; flags override it.",
        epilog=f"models: {models_help}",
    )
    add_setting_flags(train)
    train.add_argument("--out", metavar="DIR",
                       help="run directory to create (default: runs/MODEL-seedN-TIMESTAMP)")
    train.add_argument("--resume", metavar="DIR",
                       help="continue the run in DIR from its last checkpoint; takes its settings "
                            "from DIR/config.json, so no other training flag may be given")
    train.add_argument("--config", metavar="FILE",
                       help="start from the settings in this JSON file (e.g. the best_config.json "
                            "of `fmnist tune`, or a run's config.json); flags override it")
    train.add_argument("--tta", action="store_true",
                       help="also evaluate with test-time augmentation (image + mirror)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(subparser=train)  # lets the command report usage errors found later
    add_data_dir(train)


def add_setting_flags(parser) -> None:
    """One flag per TrainConfig field, in the help group its field names, with the field's
    description as help. Every default is None (not given): the config's precedence, not
    argparse, decides what an absent flag means. A flag's type checks what can be checked
    before the config is built (a number, its lower bound, a choice); the config checks
    the rest, with the same one-line errors."""
    groups = {name: parser.add_argument_group(title) if title else parser
              for name, title in GROUPS.items()}
    for name, field in TrainConfig.model_fields.items():
        extra = field.json_schema_extra
        kind, choices, _ = field_kind(name)
        options = {"dest": name, "default": None, "help": field.description,
                   "metavar": extra["metavar"]}
        if kind is bool:
            options.update(action=argparse.BooleanOptionalAction)
            options.pop("metavar")
        elif kind is dict:
            options.update(action="append", type=key_value)
        elif choices:
            options.update(choices=choices)
            options.pop("metavar")
        elif kind in (int, float):
            options.update(type=_number_type(kind, field.metadata))
        groups[extra["group"]].add_argument(flag_of(name), **options)


def _number_type(kind: type, metadata: list):
    """An argparse type for a numeric field: its lower bound, checked at parse time."""
    bounds = {key: getattr(item, key) for item in metadata for key in ("ge", "gt")
              if getattr(item, key, None) is not None}
    if kind is int:
        return int_at_least(bounds.get("ge", 0) if "gt" not in bounds else bounds["gt"] + 1)
    if "gt" in bounds:
        return float_where(lambda value: value > bounds["gt"],
                           "must be a positive number" if bounds["gt"] == 0
                           else f"must be above {bounds['gt']}")
    low = bounds.get("ge", float("-inf"))
    return float_where(lambda value: value >= low,
                       "must be a number >= 0" if low == 0 else f"must be at least {low}")


def run(args) -> int:
    from pathlib import Path

    from fmnist import rundir

    train_parser = args.subparser
    config = None
    if args.resume:
        given = [flag_of(name) for name in TrainConfig.model_fields if getattr(args, name) is not None]
        given += ["--out"] if args.out is not None else []
        if given:
            train_parser.error(f"--resume takes the run's settings from its config.json; "
                               f"drop {', '.join(given)}")
        rundir.require_unlocked(args.resume)  # a run still training: say so before the imports
    else:
        if args.out:
            rundir.require_new_run_dir(args.out)  # before minutes of training, and of imports
            rundir.require_unlocked(args.out)
        config = _config_from(args)
        if config.teacher is not None:
            rundir.require_teacher(config.teacher, config.distill_tta)
            from fmnist.distill import warn_if_teacher_saw_validation  # imports Keras

            warn_if_teacher_saw_validation(config)  # before the data is read: a user can stop
    # Check every input before TensorFlow is imported: errors come in a second, on one
    # line, and a bad test file is caught before training rather than after it.
    from fmnist.data import load_data
    from fmnist.distribute import tf_config

    if (config.distribute if config else args.distribute) == "multiworker" and tf_config() is None:
        raise FmnistError("--distribute multiworker needs TF_CONFIG describing the cluster "
                          "(see the Scaling page of the docs)")

    if args.resume:
        rundir.require_run_dir(args.resume)
    train_data, test_data = load_data(args.data_dir)

    from fmnist import train as training
    from fmnist.evaluate import evaluate_run

    verbose = 0 if args.quiet else "auto"
    if args.resume:
        run_dir = training.resume(args.resume, verbose=verbose, train_data=train_data)
    else:
        run_dir = training.train(config, out_dir=args.out, verbose=verbose, train_data=train_data)
    from fmnist.distribute import is_chief

    config_used = rundir.read_json(Path(run_dir) / rundir.CONFIG)
    if config_used.get("distribute") == "multiworker" and not is_chief():
        print(f"run: {run_dir} (worker; the chief evaluates on the test set)")
        return 0
    say_if_tta_does_not_apply(args, config_used)
    metrics = evaluate_run(run_dir, test_data=test_data, tta=args.tta)
    print(f"run: {run_dir}")
    print(f"validation accuracy: {metrics['val_accuracy']:.4f}  "
          f"training: {metrics['train_seconds']:.1f} s, {metrics['epochs']} epochs")
    print_test_metrics(metrics)
    if not args.quiet:
        print(next_steps(run_dir))
    return 0


def next_steps(run_dir) -> str:
    """What to try with a finished run, its directory filled in, one command a line."""
    import shlex

    run = shlex.quote(str(run_dir))
    steps = [(f"fmnist predict {run} photo.jpg", "classify an image file of your own"),
             (f"python -m webbrowser {run}/report.html", "the report: curves, confusion, mistakes"),
             (f"fmnist serve {run}", "REST API and web page on http://127.0.0.1:8000/"),
             (f"fmnist export {run}", "ONNX, to serve without TensorFlow")]
    width = max(len(command) for command, _ in steps)
    return "\n".join(["next:", *(f"  {command:<{width}}  # {why}" for command, why in steps)])


def _read_config_file(path: str) -> dict:
    """Training settings from a JSON object; keys that are not settings are ignored later
    (a run's config.json also records versions and derived values)."""
    import json
    from pathlib import Path

    try:
        payload = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FmnistError(f"config file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FmnistError(f"config file {path} is not valid JSON ({error}); fix or regenerate it") from None
    if not isinstance(payload, dict):
        raise FmnistError(f"config file {path} must hold a JSON object of training settings")
    return payload


def _config_from(args):
    """The run's TrainConfig: defaults < preset < --config file < flags, checked strictly.

    Any unknown key or bad value is a usage error (exit 2) naming it, before anything is
    written or TensorFlow is imported.
    """
    import inspect

    from fmnist.models import get_factory

    train_parser = args.subparser
    file = _read_config_file(args.config) if args.config else {}
    model = args.model or file.get("model") or DEFAULT_MODEL
    flags = {name: getattr(args, name) for name in TrainConfig.model_fields if name != "model"}
    if flags["model_options"] is not None:
        flags["model_options"] = dict(flags["model_options"])
    try:
        factory = get_factory(model)
        config = TrainConfig.resolve(model, {k: v for k, v in file.items() if k != "model"},
                                     flags, file_name=f"config file {args.config}")
    except FmnistError as error:  # ConfigError, UnknownModelError
        train_parser.error(str(error))
    accepted = inspect.signature(factory).parameters
    for key in config.model_options:
        if key not in accepted:
            train_parser.error(f"model {model!r} has no option {key!r}; "
                               f"it takes: {', '.join(accepted) or 'none'}")
    for name in config.unused(key for key, value in flags.items() if value is not None):
        print(f"fmnist: warning: {config.optimizer} does not use {flag_of(name)} "
              f"({users_of(name)}); pass --optimizer to choose one that does, or drop it",
              file=sys.stderr)
    return config
