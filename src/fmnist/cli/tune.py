"""`fmnist tune`: KerasTuner search on the validation split."""

from __future__ import annotations

import os

from fmnist.cli.args import add_data_dir, add_split_sizes, int_at_least, positive_float
from fmnist.config import TUNERS
from fmnist.errors import FmnistError


def add_parser(commands) -> None:
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
    tune.add_argument("--tuner", choices=TUNERS, default="hyperband",
                      help="(default: hyperband)")
    tune.add_argument("--max-trials", type=int_at_least(1), default=10,
                      help="trials at most, over all runs of this search (default: 10)")
    tune.add_argument("--budget-seconds", type=positive_float, metavar="S",
                      help="start no new trial after S seconds")
    tune.add_argument("--max-epochs", type=int_at_least(1), default=9,
                      help="epochs of the longest trial (hyperband) or of every trial "
                           "(default: 9)")
    tune.add_argument("--out", metavar="DIR", help="search directory (default: runs/tune-MODEL)")
    tune.add_argument("--seed", type=int_at_least(0), default=0, help="(default: 0)")
    add_split_sizes(tune, "search on a stratified subset of this many training images")
    add_data_dir(tune)


def run(args) -> int:
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
