"""`fmnist calibrate`: fit a run's temperature and out-of-distribution threshold."""

from __future__ import annotations

from fmnist.cli.args import add_data_dir


def add_parser(commands) -> None:
    calibrate = commands.add_parser(
        "calibrate", help="fit a run's temperature and out-of-distribution threshold",
        description="Write RUN_DIR/trust.json: the temperature that calibrates the model's "
                    "probabilities (fitted on the run's validation split) and the "
                    "out-of-distribution score with its threshold (95%% of validation "
                    "images, sent through the upload path, are accepted). `fmnist train` "
                    "does this itself; this is for a run that has no trust.json. Then "
                    "re-evaluate and re-export the run to use it.")
    calibrate.add_argument("run_dir", metavar="RUN_DIR")
    add_data_dir(calibrate)


def run(args) -> int:
    from fmnist import rundir
    from fmnist.data import load_split

    rundir.require_run_dir(args.run_dir, needs=rundir.MODEL)  # before TensorFlow loads
    train_data = load_split("train", args.data_dir)  # never the test set

    from fmnist.trust import calibrate_run

    calibrate_run(args.run_dir, train_data)
    print(f"next: fmnist evaluate {args.run_dir}; fmnist export {args.run_dir}")
    return 0
