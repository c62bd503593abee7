"""`fmnist bench train|inference|serve|render`: measure on this machine.

Each subcommand takes only its own flags; all of them store their figures in bench.json,
per machine kind, and rewrite the benchmarks page (BENCHMARKS.md) from it. Both files
go to the current folder unless --json and --markdown say otherwise; nothing else is
written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fmnist.cli.args import Parser, add_data_dir, int_at_least, positive_float
from fmnist.errors import FmnistError
from fmnist.rundir import ENGINES


def add_parser(commands) -> None:
    from fmnist.bench.targets import BURST_TARGETS, DEFAULT_MODELS

    bench = commands.add_parser(
        "bench", help="benchmark models, engines and the server; writes BENCHMARKS.md and bench.json",
        description="Measure on this machine, store the figures in bench.json and regenerate "
                    "the benchmarks page from it. Figures are kept per machine kind: a bench "
                    "replaces its own kind's rows and keeps the others.")
    kinds = bench.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", parser_class=Parser)
    kinds.required = True

    def reports(parser, data_dir: bool = True):
        """The report files every subcommand rewrites, and (measuring ones) --data-dir."""
        parser.add_argument("--json", default="bench.json", metavar="FILE", help="(default: bench.json)")
        parser.add_argument("--markdown", default="BENCHMARKS.md", metavar="FILE",
                            help="the benchmarks page to write (default: BENCHMARKS.md)")
        parser.set_defaults(subparser=parser)
        if data_dir:
            add_data_dir(parser)

    def trained_runs(parser):
        parser.add_argument("--runs-dir", default="runs/bench", metavar="DIR",
                            help="where `fmnist bench train` put the runs (default: runs/bench)")

    train = kinds.add_parser(
        "train", help="train each model over seeds and evaluate it",
        description="Train each model with its preset for several seeds (each run a separate "
                    "`fmnist train` process), evaluate on the test set with and without flip "
                    "TTA, and time prediction. Rows of models not benchmarked this time are kept.")
    train.add_argument("--models", nargs="+", metavar="MODEL",
                       help=f"models to benchmark with their presets (default: "
                            f"{' '.join(DEFAULT_MODELS)}; none when --variant is given)")
    train.add_argument("--variant", action="append", default=[], metavar="'MODEL ARG...'",
                       help="also benchmark MODEL trained with these `fmnist train` arguments "
                            "(--teacher RUN_DIR among them: distilled), into rows and folders "
                            "of its own; repeatable. Its seeds alternate with those of "
                            "--models and the other variants, so their times compare, e.g. "
                            "--models cnn-fast --variant 'cnn-fast --epochs 14'")
    train.add_argument("--seeds", type=int_at_least(1), default=3, help="how many seeds (default: 3)")
    train.add_argument("--seed-start", type=int_at_least(0), default=0,
                       help="first seed (default: 0); stored runs of other seeds are kept and "
                            "summarized with these, so a slow model can be run a seed at a time")
    train.add_argument("--runs-dir", default="runs/bench", metavar="DIR",
                       help="where the runs go (default: runs/bench)")
    train.add_argument("--resume", action="store_true",
                       help="take the seeds whose runs are already finished and evaluated in "
                            "--runs-dir as they are, continue interrupted ones from their last "
                            "checkpoint, and train only the rest (default: train every seed afresh)")
    train.add_argument("--teacher", metavar="RUN_DIR",
                       help="train every one of --models distilled from this run, into rows of their own "
                            "(runs named MODEL-distilled-HASH-seedN, HASH from the teacher's path); "
                            "{seed} in it is replaced by each seed, so that each student has the "
                            "teacher of its own seed and split")
    train.add_argument("--train-arg", action="append", default=[], metavar="ARG",
                       help="extra `fmnist train` argument for every run of --models, e.g. --train-arg=--epochs=1 "
                            "(a recipe off the preset: its runs make rows and folders of their own)")
    reports(train)

    inference = kinds.add_parser(
        "inference", help="export each benchmarked model to ONNX and time Keras against onnxruntime",
        description="For each model benchmarked here, export its first run to ONNX (checked on "
                    "the run's validation images; the test set is not read), quantize it to "
                    "int8, and time the engines on the same batch.")
    trained_runs(inference)
    reports(inference)

    serve = kinds.add_parser(
        "serve", help="load-test `fmnist serve MODEL` over loopback, then the burst scenario",
        description="Start `fmnist serve MODEL`, send it training images from concurrent "
                    "clients, then run the burst scenario: clients sending the largest "
                    "requests allowed while /health is probed.")
    serve.add_argument("model", metavar="MODEL", help="run directory, .keras or .onnx file")
    serve.add_argument("--engine", choices=ENGINES, help="(default: keras for a run directory)")
    serve.add_argument("--workers", type=int_at_least(1), default=1,
                       help="server processes (default: 1)")
    serve.add_argument("--requests", type=int_at_least(1), default=10_000,
                       help="requests per concurrency level (default: 10000)")
    serve.add_argument("--clients", type=int_at_least(1), nargs="+", default=[8, 16],
                       help="concurrency levels (default: 8 16)")
    serve.add_argument("--soak", type=positive_float, metavar="MINUTES",
                       help="instead of the load levels and the burst: steady traffic from 8 "
                            "clients for MINUTES (small and photo-sized images), RSS sampled "
                            "throughout")
    serve.add_argument("--burst-seconds", type=positive_float, default=30.0,
                       help=f"length of the burst scenario: {BURST_TARGETS['clients']} clients "
                            "sending the largest requests allowed (default: 30)")
    reports(serve)

    ood = kinds.add_parser(
        "ood", help="measure a model's out-of-distribution flag (`fmnist evaluate --ood`)",
        description="Score Fashion-MNIST test images and sets of other images (digits, photo "
                    "crops, text, noise...), all sent through the upload path, with MODEL's "
                    "out-of-distribution score: AUROC, FPR at 95%% TPR, shares flagged.")
    ood.add_argument("model", metavar="MODEL", nargs="?", default=None,
                     help="run directory, .keras or .onnx file (default: the bundled model)")
    ood.add_argument("--count", type=int_at_least(10), default=500,
                     help="images per out-of-distribution set (default: 500)")
    reports(ood)

    render = kinds.add_parser(
        "render", help="measure nothing: regenerate the reports from bench.json",
        description="Regenerate the benchmarks page from the stored bench.json.")
    reports(render, data_dir=False)


def run(args) -> int:
    return {"train": _train, "inference": _inference, "serve": _serve, "ood": _ood,
            "render": _render}[args.bench_command](args)


def _command() -> str:
    """As typed, minus any absolute path: bench files are committed, and rerun from the repo."""
    from fmnist.bench.store import repo_relative_command

    return repo_relative_command(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "fmnist bench"


def _train(args) -> int:
    from fmnist.bench.targets import DEFAULT_MODELS
    from fmnist.data import load_data

    from fmnist import rundir
    from fmnist.bench.runs import bench_entries, entry_teacher, teacher_for_seed

    models = args.models or ([] if args.variant else list(DEFAULT_MODELS))
    try:
        entries = bench_entries(models, args.train_arg, args.teacher, args.variant)
    except FmnistError as error:
        args.subparser.error(str(error))
    _require_models(args, [entry["model"] for entry in entries])
    _require_train_args(args, entries)
    load_data(args.data_dir)  # verify the data once, before hours of training
    for entry in entries:
        teacher = entry_teacher(entry)
        for seed in range(args.seed_start, args.seed_start + args.seeds) if teacher else ():
            rundir.require_run_dir(teacher_for_seed(teacher, seed), needs=rundir.MODEL)

    from fmnist.bench.render import presets_table
    from fmnist.bench.runs import run_bench

    report = run_bench(models, args.seeds, Path(args.runs_dir), Path(args.json), Path(args.markdown),
                       data_dir=args.data_dir, extra=args.train_arg,
                       command=_command(), seed_start=args.seed_start, teacher=args.teacher,
                       resume=args.resume, variants=args.variant)
    print(presets_table(report))
    print(f"wrote {args.markdown} and {args.json}")
    return 0


def _inference(args) -> int:
    from fmnist.data import load_split

    train_data = load_split("train", args.data_dir)  # the test set is left to evaluate

    from fmnist.bench.runs import run_inference_bench

    run_inference_bench(Path(args.json), Path(args.markdown), Path(args.runs_dir),
                        train_data, _command())
    print(f"wrote {args.markdown} and {args.json}")
    return 0


def _serve(args) -> int:
    from fmnist.data import load_split
    from fmnist.predict import locate

    locate(args.model, args.engine)  # a bad path fails here, before anything starts
    images, _ = load_split("train", args.data_dir)  # traffic: training images, never test

    if args.soak:
        from fmnist.bench.runs import run_soak_bench

        run_soak_bench(args.model, args.engine, Path(args.json), Path(args.markdown), images[:1000],
                       args.soak, _command(), workers=args.workers)
        print(f"wrote {args.markdown} and {args.json}")
        return 0

    from fmnist.bench.runs import run_serve_bench

    run_serve_bench(args.model, args.engine, Path(args.json), Path(args.markdown),
                    images[:1000], args.requests, args.clients, _command(), workers=args.workers,
                    burst_seconds=args.burst_seconds)
    print(f"wrote {args.markdown} and {args.json}")
    return 0


def _ood(args) -> int:
    from fmnist.data import load_split
    from fmnist.predict import locate

    locate(args.model)  # a bad path fails here, before anything loads
    test_data = load_split("test", args.data_dir)

    from fmnist.bench.runs import run_ood_bench

    run_ood_bench(args.model, Path(args.json), Path(args.markdown), test_data, args.count,
                  _command())
    print(f"wrote {args.markdown} and {args.json}")
    return 0


def _require_models(args, models: list[str]) -> None:
    """A usage error (exit 2) naming the choices for a model that is not registered."""
    from fmnist.models import get_factory

    for name in models:
        try:
            get_factory(name)
        except FmnistError as error:
            args.subparser.error(str(error))


def _require_train_args(args, entries: list[dict]) -> None:
    """A usage error (exit 2) for a run's `fmnist train` arguments that `fmnist train`
    would refuse, said before the first run starts rather than when that run does."""
    import contextlib
    import io

    from fmnist.bench.runs import entry_label
    from fmnist.cli import build_parser

    parser = build_parser()
    for entry in entries:
        refused = io.StringIO()
        try:
            with contextlib.redirect_stderr(refused):
                parser.parse_args(["train", "--model", entry["model"], *entry["extra"]])
        except SystemExit:
            reason = refused.getvalue().strip().removeprefix("fmnist train: error: ")
            args.subparser.exit(2, f"{args.subparser.prog}: error: `fmnist train` refuses "
                                   f"'{entry_label(entry)}': {reason}\n")


def _render(args) -> int:
    from fmnist.bench.render import render
    from fmnist.bench.store import load_report

    if not Path(args.json).is_file():
        raise FmnistError(f"{args.json} does not exist; run `fmnist bench train` first")
    render(load_report(Path(args.json)), Path(args.markdown))
    print(f"wrote {args.markdown} from {args.json}")
    return 0
