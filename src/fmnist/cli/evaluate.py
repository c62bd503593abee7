"""`fmnist evaluate`: (re)evaluate a run on the test set, the only reader of it."""

from __future__ import annotations

from fmnist.cli.args import add_data_dir, int_at_least


def add_parser(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="(re)evaluate a run on the test set",
                                   description="Evaluate RUN_DIR/model.keras on the test set "
                                   "and update RUN_DIR/metrics.json.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--tta", action="store_true",
                          help="also report test-time augmentation (mean of image and its mirror)")
    evaluate.add_argument("--ood", action="store_true",
                          help="also measure the out-of-distribution flag: AUROC and FPR at 95%% "
                               "TPR against sets of non-garment images (digits, photo crops, "
                               "text, noise...), all sent through the upload path")
    evaluate.add_argument("--ood-count", type=int_at_least(10), default=500, metavar="N",
                          help="images per out-of-distribution set (default: 500)")
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
    if args.ood:
        run_ood(args.run_dir, test_data, args.ood_count)
    return 0


def run_ood(run_dir, test_data, count: int) -> dict:
    """Measure the run's out-of-distribution flag and record it in metrics.json (``ood``)."""
    from pathlib import Path

    from fmnist import rundir
    from fmnist.oodeval import evaluate_ood, print_report
    from fmnist.predict import Predictor

    report = evaluate_ood(Predictor.load(run_dir), test_data, count=count)
    print_report(report)
    with rundir.exclusive(run_dir):
        metrics = rundir.read_metrics(Path(run_dir))
        metrics["ood"] = report
        rundir.write_json(Path(run_dir) / rundir.METRICS, metrics)
    return report


def say_if_tta_does_not_apply(args, config: dict) -> None:
    from fmnist.evaluate import tta_applies

    if args.tta and not tta_applies(config):
        print(f"fmnist {args.command}: --tta does not apply: {config.get('model')} was trained "
              "without flips, so only the plain test accuracy is reported")


def print_test_metrics(metrics: dict) -> None:
    print(f"test accuracy: {metrics['test_accuracy']:.4f}  (test loss {metrics['test_loss']:.4f}, "
          f"{metrics['n_test']} images)")
    if metrics.get("test_ece_calibrated") is not None:
        print(f"calibration (temperature {metrics['temperature']:.3f}): test ECE "
              f"{metrics['test_ece']:.4f} -> {metrics['test_ece_calibrated']:.4f}, NLL "
              f"{metrics['test_nll']:.4f} -> {metrics['test_nll_calibrated']:.4f}")
    if metrics.get("tta"):
        print(f"test accuracy with flip TTA: {metrics['test_accuracy_tta']:.4f}")
