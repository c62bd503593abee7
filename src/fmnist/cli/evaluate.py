"""`fmnist evaluate`: (re)evaluate a run on the test set, the only reader of it."""

from __future__ import annotations

from fmnist.cli.args import add_data_dir


def add_parser(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="(re)evaluate a run on the test set",
                                   description="Evaluate RUN_DIR/model.keras on the test set "
                                   "and update RUN_DIR/metrics.json.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--tta", action="store_true",
                          help="also report test-time augmentation (mean of image and its mirror)")
    add_data_dir(evaluate)


def run(args) -> int:
    from pathlib import Path

    from fmnist import rundir
    from fmnist.data import load_split

    rundir.require_run_dir(args.run_dir, needs=rundir.MODEL)  # before TensorFlow loads
    test_data = load_split("test", args.data_dir)

    from fmnist.evaluate import evaluate_run

    say_if_tta_does_not_apply(args, rundir.read_json(Path(args.run_dir) / rundir.CONFIG))
    metrics = evaluate_run(args.run_dir, test_data=test_data, tta=args.tta)
    print_test_metrics(metrics)
    return 0


def say_if_tta_does_not_apply(args, config: dict) -> None:
    from fmnist.evaluate import tta_applies

    if args.tta and not tta_applies(config):
        print(f"fmnist {args.command}: --tta does not apply: {config.get('model')} was trained "
              "without flips, so only the plain test accuracy is reported")


def print_test_metrics(metrics: dict) -> None:
    print(f"test accuracy: {metrics['test_accuracy']:.4f}  (test loss {metrics['test_loss']:.4f}, "
          f"{metrics['n_test']} images)")
    if metrics.get("tta"):
        print(f"test accuracy with flip TTA: {metrics['test_accuracy_tta']:.4f}")
