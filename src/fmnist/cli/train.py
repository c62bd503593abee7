"""`fmnist train`: train a model (or resume a run), then evaluate it on the test set."""

from __future__ import annotations

import argparse

from fmnist.cli.args import (add_data_dir, add_split_sizes, int_at_least, key_value,
                             non_negative_float, positive_float)
from fmnist.cli.evaluate import print_test_metrics, say_if_tta_does_not_apply
from fmnist.config import OPTIMIZERS, SCHEDULES
from fmnist.distribute import STRATEGIES
from fmnist.errors import FmnistError
from fmnist.hardware import PRECISIONS
from fmnist.models import DEFAULT_MODEL


def add_parser(commands) -> None:
    from fmnist.models import describe, model_names

    models_help = "; ".join(f"{name}: {describe(name)}" for name in model_names())
    train = commands.add_parser(
        "train", help="train a model and evaluate it on the test set",
        description="Train on a seeded split of the 60,000 training images, validate on the "
                    "held-out part, then evaluate once on the test set. Writes a run directory.",
        epilog=f"models: {models_help}",
    )
    train.add_argument("--model", help=f"registered model name (default: {DEFAULT_MODEL})")
    train.add_argument("--model-option", metavar="KEY=VALUE", action="append", type=key_value,
                       dest="model_options", help="factory argument, VALUE as JSON (repeatable)")
    recipe = train.add_argument_group("recipe (defaults: the model's preset, see `fmnist models`)")
    recipe.add_argument("--epochs", type=int_at_least(1), help="epochs to train (an upper "
                        "bound with --time-budget)")
    recipe.add_argument("--time-budget", type=positive_float, metavar="SECONDS",
                        help="fit the training into this many seconds: a short speed probe "
                             "picks the epoch count, and the schedule is laid over it")
    recipe.add_argument("--batch-size", type=int_at_least(1), help="images per step")
    recipe.add_argument("--optimizer", choices=OPTIMIZERS)
    recipe.add_argument("--learning-rate", type=positive_float, help="(peak) learning rate")
    recipe.add_argument("--schedule", choices=SCHEDULES)
    recipe.add_argument("--weight-decay", type=non_negative_float)
    recipe.add_argument("--label-smoothing", type=non_negative_float)
    recipe.add_argument("--ema", type=positive_float, metavar="MOMENTUM",
                        help="average the weights with this momentum (e.g. 0.999)")
    recipe.add_argument("--precision", choices=PRECISIONS,
                        help="auto (every preset): bfloat16 where the hardware computes it "
                             "natively (CPUs with avx512_bf16 or amx_bf16, GPUs of compute "
                             "capability >= 8.0), float32 elsewhere")
    recipe.add_argument("--flip", action=argparse.BooleanOptionalAction,
                        help="augment with random left-right flips")
    recipe.add_argument("--translate", type=int_at_least(0), metavar="PIXELS",
                        help="augment with random shifts of up to PIXELS")
    recipe.add_argument("--erase", type=non_negative_float, metavar="P",
                        help="augment with random erasing, probability P")
    recipe.add_argument("--cutmix", type=non_negative_float, metavar="P",
                        help="CutMix: paste a box of another image into each image with "
                             "probability P, mixing their targets by area")
    recipe.add_argument("--teacher", metavar="RUN_DIR",
                        help="distil: train against this run's probabilities on the training "
                             "images mixed with the true labels (its cost is reported apart)")
    recipe.add_argument("--distill-weight", type=non_negative_float, metavar="W",
                        help="the teacher's share of the loss, 0..1 (default: 0.5)")
    recipe.add_argument("--distill-temperature", type=positive_float, metavar="T",
                        help="soften teacher and student by T in the teacher's share of the "
                             "loss, scaled by T^2 (Hinton's distillation; default: 1)")
    recipe.add_argument("--distill-tta", action=argparse.BooleanOptionalAction,
                        help="the teacher's probabilities averaged over each image and its mirror "
                             "(a teacher trained with flips; one pass more, reported apart)")
    train.add_argument("--seed", type=int_at_least(0),
                       help="fixes split, initialization and shuffling (default: 0)")
    train.add_argument("--split-seed", type=int_at_least(0), metavar="N",
                       help="hold out seed N's validation images instead of --seed's: runs of "
                            "several seeds on one split, so that their ensemble, or a student "
                            "taught by it, validates on images none of them trained on")
    add_split_sizes(train, "use a stratified subset of this many training images (quick runs)")
    train.add_argument("--test-size", type=int_at_least(1),
                       help="evaluate on the first N test images only (quick runs)")
    train.add_argument("--out", metavar="DIR",
                       help="run directory to create (default: runs/MODEL-seedN-TIMESTAMP)")
    train.add_argument("--resume", metavar="DIR",
                       help="continue the run in DIR from its last checkpoint; takes its settings "
                            "from DIR/config.json, so no other training flag may be given")
    train.add_argument("--config", metavar="FILE",
                       help="start from the settings in this JSON file (e.g. the best_config.json "
                            "of `fmnist tune`, or a run's config.json); flags override it")
    scale = train.add_argument_group("scale and tracking")
    scale.add_argument("--distribute", choices=STRATEGIES,
                       help="data-parallel training: mirrored (local GPUs, or --cpu-replicas), "
                            "multiworker (one process per worker, cluster in TF_CONFIG)")
    scale.add_argument("--cpu-replicas", type=int_at_least(1), metavar="N",
                       help="without GPUs, split the CPU into N logical devices for the replicas")
    scale.add_argument("--tensorboard", action="store_const", const=True,
                       help="write TensorBoard logs (losses, accuracy, learning rate) to RUN_DIR/logs")
    scale.add_argument("--tensorboard-histograms", action="store_const", const=True,
                       help="with --tensorboard, also weight histograms every epoch")
    train.add_argument("--tta", action="store_true",
                       help="also evaluate with test-time augmentation (image + mirror)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(subparser=train)  # lets the command report usage errors found later
    add_data_dir(train)


def run(args) -> int:
    from pathlib import Path

    from fmnist import rundir

    train_parser = args.subparser
    config = None
    if args.resume:
        given = [f"--{name.replace('_', '-')}" for name in _RUN_FLAGS if getattr(args, name) is not None]
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
            _say_if_teacher_saw_validation(config)
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


def _say_if_teacher_saw_validation(config) -> None:
    """Warn (stderr) when the teacher, or a member of it, trained on another split: most of
    this run's validation images were its training images, so the student's validation
    accuracy (and any choice made on it) is flattered; test accuracy is not."""
    import dataclasses
    import sys

    from fmnist import rundir

    if not rundir.teacher_shares_split(config.teacher, dataclasses.asdict(config)):
        print(f"fmnist: warning: the teacher {config.teacher} trained on another split than this "
              "run's, so on most of its validation images: validation accuracy will flatter the "
              "student; for a fair one, train the teacher (each member) and the student with "
              "one --split-seed", file=sys.stderr)


# Flags that define a run; with --resume they come from the run's config.json instead.
_RUN_FLAGS = ("model", "model_options", "epochs", "time_budget", "batch_size", "optimizer",
              "learning_rate", "schedule", "weight_decay", "label_smoothing", "ema",
              "precision", "flip", "translate", "erase", "cutmix", "seed", "split_seed", "val_size",
              "train_size", "test_size", "distribute", "cpu_replicas", "tensorboard",
              "tensorboard_histograms", "teacher", "distill_weight", "distill_tta", "distill_temperature", "out")


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

    from fmnist.config import TrainConfig
    from fmnist.models import get_factory

    train_parser = args.subparser
    file = _read_config_file(args.config) if args.config else {}
    model = args.model or file.get("model") or DEFAULT_MODEL
    flags = {name: getattr(args, name) for name in _RUN_FLAGS[1:-1]}
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
    return config
