"""`fmnist ensemble`: several runs as one model averaging their probabilities, evaluated."""

from __future__ import annotations

from fmnist.cli.args import add_data_dir


def add_parser(commands) -> None:
    ensemble = commands.add_parser(
        "ensemble", help="combine trained runs into one model that averages them, and evaluate it",
        description="Write a run directory whose model averages the probabilities of the "
                    "given runs' models, then evaluate it on the test set like any run. "
                    "`fmnist predict`, `serve` and `export` (one ONNX graph) take it too.")
    ensemble.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more runs")
    ensemble.add_argument("--out", required=True, metavar="DIR", help="run directory to create")
    ensemble.add_argument("--tta", action="store_true",
                          help="also evaluate with flip TTA (when every member was trained with flips)")
    add_data_dir(ensemble)


def run(args) -> int:
    from pathlib import Path

    from fmnist import rundir
    from fmnist.cli.evaluate import print_test_metrics, say_if_tta_does_not_apply
    from fmnist.data import load_split

    for run_dir in args.run_dirs:  # every path, before TensorFlow loads
        rundir.require_run_dir(run_dir, needs=rundir.MODEL)
    rundir.require_new_run_dir(args.out)
    test_data = load_split("test", args.data_dir)

    from fmnist.ensemble import create_ensemble, shared_split
    from fmnist.evaluate import evaluate_run

    # Members that held out the same images: the ensemble is scored on them too.
    configs = [rundir.read_json(Path(run_dir) / rundir.CONFIG) for run_dir in args.run_dirs]
    train_data = load_split("train", args.data_dir) if shared_split(configs) else None
    out = create_ensemble(args.run_dirs, args.out, train_data)
    config = rundir.read_json(out / rundir.CONFIG)
    say_if_tta_does_not_apply(args, config)
    metrics = evaluate_run(out, test_data=test_data, tta=args.tta)
    print(f"ensemble: {out} ({len(args.run_dirs)} members; their test accuracies: "
          + ", ".join("?" if a is None else f"{a:.4f}" for a in metrics["members_test_accuracy"]) + ")")
    if metrics.get("val_accuracy") is not None:
        print(f"validation accuracy: {metrics['val_accuracy']:.4f} (the split its members share, "
              f"{metrics['n_val']} images)")
    print_test_metrics(metrics)
    return 0
