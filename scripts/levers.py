"""Summarize training runs of a lever against their baselines, one row per run.

usage: python scripts/levers.py RUN_DIR [RUN_DIR ...] [--target 0.93]

For each run: its seed, validation and test accuracy, training seconds, steady epoch
seconds, the first epoch whose validation accuracy reaches ``--target`` (and the training
seconds up to its end), and the test ECE after temperature scaling, read from the run's
metrics.json and history.json. Lab tooling for the time-to-accuracy notes: the paired
test of two recipes is `scripts/pairedruns.py`; this prints what each run measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fmnist.bench.summary import crossings


def summary(run: Path, target: float) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    history = json.loads((run / "history.json").read_text())
    reached = crossings(history, (target,))[f"{target:.2f}"] or {"epoch": None, "seconds": None}
    epoch, seconds = reached["epoch"], reached["seconds"]
    return {"run": str(run), "seed": metrics["seed"], "epochs": metrics["epochs"],
            "val": metrics["val_accuracy"], "test": metrics["test_accuracy"],
            "train_s": metrics["train_seconds"], "epoch_s": metrics["steady_epoch_seconds"],
            "first_epoch_at_target": epoch, "seconds_to_target": seconds,
            "test_ece_calibrated": metrics.get("test_ece_calibrated")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--target", type=float, default=0.93)
    args = parser.parse_args()
    print(f"{'run':44s} seed  val     test    train s  epoch s  at {args.target}   ECE")
    for run in args.runs:
        metrics = run / "metrics.json"
        if not metrics.exists() or "test_accuracy" not in json.loads(metrics.read_text()):
            print(f"{str(run)[-44:]:44s} (unfinished)")
            continue
        row = summary(run, args.target)
        reach = ("never" if row["first_epoch_at_target"] is None else
                 f"ep {row['first_epoch_at_target']:2d} {row['seconds_to_target']:5.1f}s")
        ece = row["test_ece_calibrated"]
        print(f"{row['run'][-44:]:44s} {row['seed']:4d}  {row['val']:.4f}  {row['test']:.4f}  "
              f"{row['train_s']:7.1f}  {row['epoch_s']:7.2f}  {reach:12s} "
              f"{'—' if ece is None else f'{ece:.4f}'}")


if __name__ == "__main__":
    main()
