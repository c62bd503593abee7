"""The `fmnist` command line.

Heavy imports (NumPy aside: TensorFlow, Keras, matplotlib, pooch) happen inside the
commands, so `fmnist --help` and every `fmnist CMD --help` answer at once.

Exit codes: 0 success, 1 a failure the message explains (bad data, missing run
directory), 2 a usage error (unknown model, bad flag value). Errors are one line; an
unexpected exception is one line too, with its traceback behind ``FMNIST_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import os
import sys

from fmnist import __version__
from fmnist.errors import FmnistError, missing_extra_message
from fmnist.hardware import PRECISIONS

DEFAULT_MODEL = "cnn-fast"
# Set to 1 to let an unexpected exception show its traceback instead of one line.
DEBUG_ENV = "FMNIST_DEBUG"


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


def _float_where(accept, requirement: str):
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


_positive_float = _float_where(lambda value: value > 0, "must be a positive number")
_non_negative_float = _float_where(lambda value: value >= 0, "must be a number >= 0")


def _key_value(text: str) -> tuple[str, object]:
    import json

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw  # a bare word: a string


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", metavar="DIR",
        help="folder with the four Fashion-MNIST .gz files, used as is "
             "(default: $FMNIST_DATA_DIR, else download into the user cache)",
    )


def _add_split_sizes(parser: argparse.ArgumentParser, train_help: str) -> None:
    """--val-size and --train-size (None: the split's defaults, 6,000 and the rest)."""
    parser.add_argument("--val-size", type=_int_at_least(10),
                        help="validation images held out of the 60,000 (default: 6000)")
    parser.add_argument("--train-size", type=_int_at_least(10), help=train_help)


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    """MODEL (a run directory, .keras or .onnx file) and --engine, for predict and serve."""
    parser.add_argument("model", metavar="MODEL", help="run directory, .keras or .onnx file")
    parser.add_argument("--engine", choices=("keras", "onnx"),
                        help="for a run directory: keras (default) or onnx (needs `fmnist export`)")


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
    data.add_argument("--show", action="store_true",
                      help="also draw a grid of sample images per class (PNG)")
    data.add_argument("--out", metavar="FILE", default="samples.png",
                      help="where --show writes its grid (default: samples.png)")
    _add_data_dir(data)

    models_help = "; ".join(f"{name}: {describe(name)}" for name in model_names())
    train = commands.add_parser(
        "train", help="train a model and evaluate it on the test set",
        description="Train on a seeded split of the 60,000 training images, validate on the "
                    "held-out part, then evaluate once on the test set. Writes a run directory.",
        epilog=f"models: {models_help}",
    )
    train.add_argument("--model", help=f"registered model name (default: {DEFAULT_MODEL})")
    train.add_argument("--model-option", metavar="KEY=VALUE", action="append", type=_key_value,
                       dest="model_options", help="factory argument, VALUE as JSON (repeatable)")
    recipe = train.add_argument_group("recipe (defaults: the model's preset, see `fmnist models`)")
    recipe.add_argument("--epochs", type=_int_at_least(1), help="epochs to train (an upper "
                        "bound with --time-budget)")
    recipe.add_argument("--time-budget", type=_positive_float, metavar="SECONDS",
                        help="fit the training into this many seconds: a short speed probe "
                             "picks the epoch count, and the schedule is laid over it")
    recipe.add_argument("--batch-size", type=_int_at_least(1), help="images per step")
    recipe.add_argument("--optimizer", choices=("adam", "adamw", "sgd"))
    recipe.add_argument("--learning-rate", type=_positive_float, help="(peak) learning rate")
    recipe.add_argument("--schedule", choices=("constant", "onecycle"))
    recipe.add_argument("--weight-decay", type=_non_negative_float)
    recipe.add_argument("--label-smoothing", type=_non_negative_float)
    recipe.add_argument("--ema", type=_positive_float, metavar="MOMENTUM",
                        help="average the weights with this momentum (e.g. 0.999)")
    recipe.add_argument("--precision", choices=PRECISIONS,
                        help="auto (every preset): bfloat16 where the hardware computes it "
                             "natively (CPUs with avx512_bf16 or amx_bf16, GPUs of compute "
                             "capability >= 8.0), float32 elsewhere")
    recipe.add_argument("--flip", action=argparse.BooleanOptionalAction,
                        help="augment with random left-right flips")
    recipe.add_argument("--translate", type=_int_at_least(0), metavar="PIXELS",
                        help="augment with random shifts of up to PIXELS")
    recipe.add_argument("--erase", type=_non_negative_float, metavar="P",
                        help="augment with random erasing, probability P")
    train.add_argument("--seed", type=_int_at_least(0),
                       help="fixes split, initialization and shuffling (default: 0)")
    _add_split_sizes(train, "use a stratified subset of this many training images (quick runs)")
    train.add_argument("--test-size", type=_int_at_least(1),
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
    scale.add_argument("--distribute", choices=("none", "mirrored", "multiworker"),
                       help="data-parallel training: mirrored (local GPUs, or --cpu-replicas), "
                            "multiworker (one process per worker, cluster in TF_CONFIG)")
    scale.add_argument("--cpu-replicas", type=_int_at_least(1), metavar="N",
                       help="without GPUs, split the CPU into N logical devices for the replicas")
    scale.add_argument("--tensorboard", action="store_const", const=True,
                       help="write TensorBoard logs (losses, accuracy, learning rate) to RUN_DIR/logs")
    scale.add_argument("--tensorboard-histograms", action="store_const", const=True,
                       help="with --tensorboard, also weight histograms every epoch")
    train.add_argument("--tta", action="store_true",
                       help="also evaluate with test-time augmentation (image + mirror)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(subparser=train)  # lets the command report usage errors found later
    _add_data_dir(train)

    bench = commands.add_parser(
        "bench", help="benchmark models over seeds; writes BENCHMARKS.md and bench.json",
        description="Train each model with its preset for several seeds (each run a separate "
                    "process), evaluate on the test set with and without flip TTA, time "
                    "prediction, and regenerate BENCHMARKS.md, bench.json and the README's "
                    "results table. Rows of models not benchmarked this time are kept.")
    bench.add_argument("--models", nargs="+", metavar="MODEL",
                       help="models to benchmark (default: mlp mlp-plus cnn-tfdocs cnn-fast)")
    bench.add_argument("--seeds", type=_int_at_least(1), default=3, help="how many seeds (default: 3)")
    bench.add_argument("--seed-start", type=_int_at_least(0), default=0,
                       help="first seed (default: 0); stored runs of other seeds are kept and "
                            "summarized with these, so a slow model can be run a seed at a time")
    bench.add_argument("--runs-dir", default="runs/bench", metavar="DIR",
                       help="where the runs go (default: runs/bench)")
    bench.add_argument("--json", default="bench.json", metavar="FILE", help="(default: bench.json)")
    bench.add_argument("--markdown", default="BENCHMARKS.md", metavar="FILE",
                       help="(default: BENCHMARKS.md)")
    bench.add_argument("--readme", default="README.md", metavar="FILE",
                       help="README whose bench block to refresh (default: README.md; '' for none)")
    bench.add_argument("--train-arg", action="append", default=[], metavar="ARG",
                       help="extra `fmnist train` argument for every run, e.g. --train-arg=--epochs=1 "
                            "(for smoke tests; the table then no longer shows the presets)")
    bench.add_argument("--render", action="store_true",
                       help="train nothing: regenerate BENCHMARKS.md and the README table from "
                            "the stored bench.json")
    bench.add_argument("--inference", action="store_true",
                       help="train nothing: export each benchmarked model's first run to ONNX "
                            "(checked on the test set) and time Keras against onnxruntime")
    bench.add_argument("--serve", metavar="MODEL",
                       help="train nothing: load-test `fmnist serve MODEL` (run directory, "
                            ".keras or .onnx) over loopback")
    bench.add_argument("--engine", choices=("keras", "onnx"), help="engine for --serve")
    bench.add_argument("--workers", type=_int_at_least(1), default=1,
                       help="server processes for --serve (default: 1)")
    bench.add_argument("--requests", type=_int_at_least(1), default=10_000,
                       help="requests per concurrency level for --serve (default: 10000)")
    bench.add_argument("--burst-seconds", type=_positive_float, default=30.0,
                       help="--serve also runs the burst scenario for this long: 8 clients "
                            "sending the largest requests allowed while /health is probed "
                            "(default: 30)")
    bench.add_argument("--clients", type=_int_at_least(1), nargs="+", default=[8, 16],
                       help="concurrency levels for --serve (default: 8 16)")
    bench.set_defaults(subparser=bench)
    _add_data_dir(bench)

    compare = commands.add_parser(
        "compare", help="compare evaluated runs side by side",
        description="A table of evaluated runs (model, parameters, epochs, training seconds, "
                    "test accuracy, per-class accuracy) in the terminal and as compare.md, and "
                    "a plot of test accuracy against training time as compare.png.")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--out", metavar="DIR", default=".",
                         help="folder for compare.md and compare.png (default: .)")

    listing = commands.add_parser("models", help="list the registered models and their recipes",
                                  description="List the registered models, what each is, and "
                                  "the training preset `fmnist train --model NAME` uses.")
    listing.set_defaults(subparser=listing)

    evaluate = commands.add_parser("evaluate", help="(re)evaluate a run on the test set",
                                   description="Evaluate RUN_DIR/model.keras on the test set "
                                   "and update RUN_DIR/metrics.json.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--tta", action="store_true",
                          help="also report test-time augmentation (mean of image and its mirror)")
    _add_data_dir(evaluate)

    from fmnist.models import search_families

    tune = commands.add_parser(
        "tune", help="search hyperparameters with KerasTuner (validation split only)",
        description="Search a model family's hyperparameters with KerasTuner. Trials train on "
                    "the training split and are scored on the validation split; the test set "
                    "is never read. Running the same command again resumes the search in "
                    "--out. The best trial is written as DIR/best_config.json for "
                    "`fmnist train --config`. For a distributed search set "
                    "KERASTUNER_TUNER_ID (chief, tuner0, tuner1...), KERASTUNER_ORACLE_IP "
                    "and KERASTUNER_ORACLE_PORT; every process gets the same command.")
    tune.add_argument("--model", required=True, choices=search_families(),
                      help="search space (declared next to the model in the registry)")
    tune.add_argument("--tuner", choices=("hyperband", "random", "bayesian"), default="hyperband",
                      help="(default: hyperband)")
    tune.add_argument("--max-trials", type=_int_at_least(1), default=10,
                      help="trials at most, over all runs of this search (default: 10)")
    tune.add_argument("--budget-seconds", type=_positive_float, metavar="S",
                      help="start no new trial after S seconds")
    tune.add_argument("--max-epochs", type=_int_at_least(1), default=9,
                      help="epochs of the longest trial (hyperband) or of every trial "
                           "(default: 9)")
    tune.add_argument("--out", metavar="DIR", help="search directory (default: runs/tune-MODEL)")
    tune.add_argument("--seed", type=_int_at_least(0), default=0, help="(default: 0)")
    _add_split_sizes(tune, "search on a stratified subset of this many training images")
    _add_data_dir(tune)

    predict = commands.add_parser(
        "predict", help="classify image files with a trained model",
        description="Classify image files (PNG, JPEG, ...: photos, scans, drawings). Each "
                    "image is converted like Fashion-MNIST's own: grayscale, inverted when "
                    "its background is light, cropped to the object, fitted into 28x28.")
    _add_model_source(predict)
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--top-k", type=_int_at_least(1), default=3,
                         help="classes to show per image (default: 3)")
    predict.add_argument("--json", action="store_true",
                         help="one JSON object per image and line, instead of a table")
    predict.set_defaults(subparser=predict)

    export = commands.add_parser(
        "export", help="export a trained model to ONNX, verified against Keras",
        description="Write RUN_DIR/model.onnx (float32, dynamic batch, raw 0..255 pixels in, "
                    "probabilities out) and check it against the Keras model on the run's "
                    "validation images (rebuilt from its seed; the test set is left to "
                    "`evaluate`): probabilities within the tolerance and the same class for "
                    "every image, or nothing is written.")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--format", choices=("onnx",), default="onnx", help="(default: onnx)")
    export.add_argument("--out", metavar="FILE", help="(default: RUN_DIR/model.onnx)")
    export.add_argument("--tolerance", type=_positive_float, default=1e-4,
                        help="largest allowed probability difference (default: 1e-4)")
    export.add_argument("--quantize", choices=("int8",),
                        help="also write model.int8.onnx: onnxruntime static quantization "
                             "calibrated on the run's training images, kept if it picks the "
                             "float model's class for >= 99%% of the validation images")
    _add_data_dir(export)

    serve = commands.add_parser(
        "serve", help="serve a model over HTTP: REST API and a web page",
        description="Serve MODEL with FastAPI/uvicorn: the web page at /, the API under /v1 "
                    "(POST /v1/predict, POST /v1/predict/pixels, GET /v1/model), /health, "
                    "OpenAPI docs at /docs.")
    _add_model_source(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=_int_at_least(0), default=8000, help="(default: 8000)")
    serve.add_argument("--threads", type=_int_at_least(1), default=1,
                       help="onnxruntime threads per prediction (default: 1; requests run "
                            "concurrently, so more rarely pays)")
    serve.add_argument("--workers", type=_int_at_least(1), default=1,
                       help="server processes, each with its own copy of the model (default: 1)")
    serve.add_argument("--access-log", action="store_true",
                       help="log a line per request (off by default: it costs ~0.3 ms each)")
    serve.add_argument("--max-upload-mb", type=_positive_float, default=5.0,
                       help="largest request body in MB (default: 5)")
    serve.add_argument("--max-images", type=_int_at_least(1), default=64,
                       help="most images per request (default: 64)")
    serve.add_argument("--max-request-mp", type=_positive_float, default=40.0,
                       help="most pixels per request, in millions, all images together, "
                            "read from their headers before decoding (default: 40)")
    serve.add_argument("--decode-threads", type=_int_at_least(1), default=None,
                       help="threads decoding large images; when they and a short queue "
                            "are busy, requests get 503 + Retry-After (default: cores - 1, "
                            "1..4)")
    serve.add_argument("--max-connections", type=_int_at_least(1), default=1000,
                       help="open connections per server process; over it the longest-idle "
                            "one is closed (default: 1000). Headers must arrive within 10 s, "
                            "a body within 60 s, idle keep-alive ends after 5 s")
    serve.set_defaults(subparser=serve)
    return parser


# Flags that define a run; with --resume they come from the run's config.json instead.
_RUN_FLAGS = ("model", "model_options", "epochs", "time_budget", "batch_size", "optimizer",
              "learning_rate", "schedule", "weight_decay", "label_smoothing", "ema",
              "precision", "flip", "translate", "erase", "seed", "val_size",
              "train_size", "test_size", "distribute", "cpu_replicas", "tensorboard",
              "tensorboard_histograms", "out")


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
    arrays = {(r.spec.split, r.spec.kind): r.array for r in reports if r.array is not None}
    counts = {split: labels for (split, kind), labels in arrays.items() if kind == "labels"}
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
    if args.show:
        from fmnist.plots import plot_samples

        images, labels = arrays[("train", "images")], arrays[("train", "labels")]
        print(f"\nsamples: {plot_samples(images, labels, CLASS_NAMES, args.out)}")
    return 0


def _cmd_train(args) -> int:
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
    # Check every input before TensorFlow is imported: errors come in a second, on one
    # line, and a bad test file is caught before training rather than after it.
    from fmnist.data import load_data
    from fmnist.distribute import tf_config

    if (config.distribute if config else args.distribute) == "multiworker" and tf_config() is None:
        raise FmnistError("--distribute multiworker needs TF_CONFIG describing the cluster "
                          "(see README, 'Scale out')")

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
    _say_if_tta_does_not_apply(args, config_used)
    metrics = evaluate_run(run_dir, test_data=test_data, tta=args.tta)
    print(f"run: {run_dir}")
    print(f"validation accuracy: {metrics['val_accuracy']:.4f}  "
          f"training: {metrics['train_seconds']:.1f} s, {metrics['epochs']} epochs")
    _print_test_metrics(metrics)
    return 0


def _say_if_tta_does_not_apply(args, config: dict) -> None:
    from fmnist.evaluate import tta_applies

    if args.tta and not tta_applies(config):
        print(f"fmnist {args.command}: --tta does not apply: {config.get('model')} was trained "
              "without flips, so only the plain test accuracy is reported")


def _print_test_metrics(metrics: dict) -> None:
    print(f"test accuracy: {metrics['test_accuracy']:.4f}  (test loss {metrics['test_loss']:.4f}, "
          f"{metrics['n_test']} images)")
    if metrics.get("tta"):
        print(f"test accuracy with flip TTA: {metrics['test_accuracy_tta']:.4f}")


def _cmd_models(args) -> int:
    from fmnist.models import describe, model_names, model_preset

    import inspect

    from fmnist.models import get_factory

    for name in model_names():
        preset = ", ".join(f"{k}={v}" for k, v in model_preset(name).items()) or "the defaults"
        options = ", ".join(f"{p.name}={p.default!r}"
                            for p in inspect.signature(get_factory(name)).parameters.values())
        print(f"{name:<12} {describe(name)}\n{'':<12} recipe: {preset}\n"
              f"{'':<12} options (--model-option KEY=VALUE): {options or 'none'}")
    return 0


def _cmd_compare(args) -> int:
    from pathlib import Path

    from fmnist.plots import plot_accuracy_vs_time
    from fmnist.report import compare_runs

    table, points = compare_runs([Path(d) for d in args.run_dirs])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(table + "\n")
    plot_accuracy_vs_time(points, out / "compare.png")
    print(table)
    print(f"\nwrote {out / 'compare.md'} and {out / 'compare.png'}")
    return 0


def _cmd_bench(args) -> int:
    from pathlib import Path

    from fmnist.data import load_data
    from fmnist.models import get_factory

    from fmnist.bench import DEFAULT_MODELS

    if args.render:
        import json

        from fmnist import rundir
        from fmnist.bench import render, upgrade

        if not Path(args.json).is_file():
            raise FmnistError(f"{args.json} does not exist; run `fmnist bench` first")
        stored = json.loads(Path(args.json).read_text())
        report = upgrade(stored)
        if report is not stored:
            rundir.write_json(Path(args.json), report)  # an older layout, upgraded once
            print(f"upgraded {args.json} to the per-machine layout")
        render(report, Path(args.markdown), Path(args.readme) if args.readme else None)
        print(f"wrote {args.markdown} from {args.json}")
        return 0
    from fmnist.bench import repo_relative_command

    # As typed, minus any absolute path: bench files are committed, and rerun from the repo.
    command = (repo_relative_command(sys.argv[1:]) if sys.argv[1:2] == ["bench"]
               else "fmnist bench")
    readme = Path(args.readme) if args.readme else None
    if args.serve:
        from fmnist.data import load_split
        from fmnist.predict import locate

        locate(args.serve, args.engine)
        images, _ = load_split("train", args.data_dir)  # traffic: training images, never test

        from fmnist.bench import run_serve_bench

        run_serve_bench(args.serve, args.engine, Path(args.json), Path(args.markdown), readme,
                        images[:1000], args.requests, args.clients, command, workers=args.workers,
                        burst_seconds=args.burst_seconds)
        print(f"wrote {args.markdown} and {args.json}")
        return 0
    if args.inference:
        from fmnist.data import load_split

        train_data = load_split("train", args.data_dir)  # the test set is left to evaluate

        from fmnist.bench import run_inference_bench

        run_inference_bench(Path(args.json), Path(args.markdown), readme, Path(args.runs_dir),
                            train_data, command)
        print(f"wrote {args.markdown} and {args.json}")
        return 0
    models = args.models or list(DEFAULT_MODELS)
    for name in models:
        try:
            get_factory(name)
        except FmnistError as error:
            args.subparser.error(str(error))
    load_data(args.data_dir)  # verify the data once, before hours of training

    from fmnist.bench import run_bench

    report = run_bench(models, args.seeds, Path(args.runs_dir), Path(args.json), Path(args.markdown),
                       Path(args.readme) if args.readme else None, data_dir=args.data_dir,
                       extra=args.train_arg, command=command, seed_start=args.seed_start)
    from fmnist.bench import readme_tables

    print(readme_tables(report))
    print(f"wrote {args.markdown} and {args.json}")
    return 0


def _cmd_evaluate(args) -> int:
    from pathlib import Path

    from fmnist import rundir
    from fmnist.data import load_split

    rundir.require_run_dir(args.run_dir, needs=rundir.MODEL)  # before TensorFlow loads
    test_data = load_split("test", args.data_dir)

    from fmnist.evaluate import evaluate_run

    _say_if_tta_does_not_apply(args, rundir.read_json(Path(args.run_dir) / rundir.CONFIG))
    metrics = evaluate_run(args.run_dir, test_data=test_data, tta=args.tta)
    _print_test_metrics(metrics)
    return 0


def _cmd_predict(args) -> int:
    import json
    from pathlib import Path

    from fmnist.images import ImageInputError, load_for_model, quiet_pillow_warnings
    from fmnist.predict import Predictor, locate

    quiet_pillow_warnings()
    locate(args.model, args.engine)  # a bad path fails here, before TensorFlow loads
    missing = [name for name in args.images if not Path(name).is_file()]
    if missing:
        raise FmnistError(f"no such image file: {missing[0]}" +
                          (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    processed, failures = {}, 0
    for name in args.images:
        try:
            processed[name] = load_for_model(name, name)
        except ImageInputError as error:
            failures += 1
            print(json.dumps({"image": name, "error": str(error)}) if args.json else
                  f"fmnist predict: error: {error}", file=sys.stdout if args.json else sys.stderr)
    if processed:
        predictor = Predictor.load(args.model, args.engine)
        predictions = predictor.predict(list(processed.values()), k=args.top_k)
        for name, prediction in zip(processed, predictions):
            if args.json:
                print(json.dumps({"image": name, **prediction.to_dict()}))
                continue
            print(name)
            for rank, score in enumerate(prediction.top_k, 1):
                print(f"  {rank}. {score.label:<12} {100 * score.probability:6.2f}%")
    return 1 if failures else 0


def _cmd_tune(args) -> int:
    from pathlib import Path

    from fmnist.data import load_split

    if "KERASTUNER_ORACLE_IP" in os.environ and "KERASTUNER_ORACLE_PORT" not in os.environ:
        raise FmnistError("KERASTUNER_ORACLE_IP is set but KERASTUNER_ORACLE_PORT is not; set both")
    train_data = load_split("train", args.data_dir)  # verified before TensorFlow loads
    out = Path(args.out or f"runs/tune-{args.model}")

    from fmnist.split import DEFAULT_VAL_SIZE
    from fmnist.tune import run_search

    summary = run_search(args.model, train_data, out, kind=args.tuner, max_trials=args.max_trials,
                         budget_seconds=args.budget_seconds, max_epochs=args.max_epochs,
                         seed=args.seed, val_size=args.val_size or DEFAULT_VAL_SIZE,
                         train_size=args.train_size)
    if summary is None:
        print(f"worker {os.environ.get('KERASTUNER_TUNER_ID')}: no more trials; the chief "
              "writes the summary")
        return 0
    print((out / "trials.md").read_text())
    print(f"best validation accuracy {summary['best_val_accuracy']:.4f} (trial "
          f"{summary['best_trial']}) of {summary['finished_trials']} trials, "
          f"{summary['search_seconds']:.0f} s")
    print(f"wrote {out / 'best_config.json'}; train it: fmnist train --config {out / 'best_config.json'}")
    return 0


def _cmd_export(args) -> int:
    from fmnist import rundir
    from fmnist.data import load_split

    rundir.require_run_dir(args.run_dir, needs=rundir.MODEL)  # before TensorFlow loads
    train_data = load_split("train", args.data_dir)  # never the test set: only evaluate reads it

    from fmnist.export import export_images, export_onnx

    validation, calibration = export_images(args.run_dir, train_data)
    report = export_onnx(args.run_dir, validation, out=args.out, tolerance=args.tolerance)
    print(f"wrote {report['onnx']} (opset {report['opset']}): on the run's {report['images']:,} "
          f"validation images max |p_keras - p_onnx| = {report['max_abs_difference']:.1e} "
          f"(limit {report['tolerance']:.0e}), {report['class_mismatches']} class differences")
    if report["mixed_precision_trained"]:
        print(f"the model was trained in mixed bfloat16; the float32 export agrees with it on "
              f"{100 * report['agreement_with_trained_model']:.2f}% of the classes")
    if args.quantize:
        from fmnist.export import quantize_int8

        quantized = quantize_int8(report["onnx"], calibration, validation)
        print(f"wrote {quantized['onnx']}: same class as the float model for "
              f"{100 * quantized['class_agreement']:.2f}% of {quantized['images']:,} validation "
              f"images, max |p_float - p_int8| = {quantized['max_abs_difference']:.3f}")
    return 0


def _cmd_serve(args) -> int:
    from fmnist.predict import locate

    locate(args.model, args.engine)  # a bad path fails here, before TensorFlow loads
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"fmnist serve: warning: binding {args.host} exposes the server beyond this "
              "machine; there is no authentication", file=sys.stderr)

    from fmnist.connections import ConnectionLimits
    from fmnist.serve import serve

    serve(args.model, args.engine, threads=args.threads, host=args.host, port=args.port,
          workers=args.workers, access_log=args.access_log,
          connections=ConnectionLimits(max_connections=args.max_connections),
          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_images=args.max_images,
          max_request_pixels=int(args.max_request_mp * 1_000_000),
          decode_threads=args.decode_threads)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from fmnist.runtime import prepare_tensorflow, quiet_tensorflow_import

    prepare_tensorflow()  # environment defaults, before any command imports TensorFlow
    quiet_tensorflow_import()  # TensorFlow's import notices are not for users' terminals
    commands = {"data": _cmd_data, "train": _cmd_train, "evaluate": _cmd_evaluate,
                "models": _cmd_models, "bench": _cmd_bench, "compare": _cmd_compare,
                "predict": _cmd_predict, "export": _cmd_export, "serve": _cmd_serve,
                "tune": _cmd_tune}
    try:
        return commands[args.command](args)
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


if __name__ == "__main__":
    sys.exit(main())
