"""`fmnist tune`: hyperparameter search with KerasTuner over a registry search space.

Trials train on the training split with the model's recipe (fmnist's input pipeline,
augmentation and schedules) and are scored on the validation split only; the test set
is never read. The search lives in a directory that KerasTuner resumes when the same
command runs again. When it ends, the directory also holds:

    best_config.json   the best trial as `fmnist train --config` settings
    trials.md/.csv     every trial: hyperparameters, validation accuracy, epochs, seconds
    trials.png         validation accuracy per trial, the best one marked

Distributed search is KerasTuner's own: the process with ``KERASTUNER_TUNER_ID=chief``
serves the oracle at ``KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT`` and writes the
summary; processes with other ids (``tuner0``, ``tuner1``...) run trials. All share the
search directory.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

from fmnist.runtime import prepare_tensorflow

prepare_tensorflow()  # before Keras' first import: backend and oneDNN defaults

import keras  # noqa: E402
import keras_tuner as kt  # noqa: E402

from fmnist import rundir
from fmnist.config import TUNERS
from fmnist.errors import ConfigError
from fmnist.models import get_search_space
from fmnist.split import DEFAULT_VAL_SIZE, train_val_split
from fmnist.hardware import choose_precision, dtype_policy
from fmnist.config import TrainConfig, searched_settings
from fmnist.pipeline import fit_targets, steps_per_epoch, training_batches, validation_batches
from fmnist.recipe import new_model

PROJECT = "search"


def trial_config(family: str, hp, seed: int, epochs: int) -> TrainConfig:
    """The TrainConfig of one point of ``family``'s search space."""
    model, space = get_search_space(family)
    options, recipe = space(hp)
    return TrainConfig.for_model(model, model_options=options, seed=seed, epochs=epochs, **recipe)


class SearchSpace(kt.HyperModel):
    """A registry search space as a KerasTuner hypermodel, trained the fmnist way."""

    def __init__(self, family: str, train, validation, seed: int, epochs: int):
        super().__init__(name=family)
        self.family, self.seed, self.epochs = family, seed, epochs
        self.x_train, self.y_train = train
        self.x_val, self.y_val = validation

    def config(self, hp) -> TrainConfig:
        # Hyperband tells each trial its epoch count; other tuners use --max-epochs.
        return trial_config(self.family, hp, self.seed, hp.values.get("tuner/epochs", self.epochs))

    def build(self, hp):
        config = self.config(hp)
        # Trials train in the precision a run of the same config would (auto: by hardware).
        keras.config.set_dtype_policy(dtype_policy(choose_precision(config.precision).precision))
        try:
            total = config.epochs * steps_per_epoch(len(self.y_train), config.batch_size)
            # the schedule spans the trial's epochs
            return new_model(config, total, images=self.x_train)
        finally:
            keras.config.set_dtype_policy("float32")

    def fit(self, hp, model, *args, epochs=None, initial_epoch=0, callbacks=None, **kwargs):
        config = self.config(hp)
        epochs = epochs or config.epochs
        y_val = fit_targets(self.y_val, config)
        return model.fit(
            training_batches(self.x_train, self.y_train, config, initial_epoch, epochs),
            steps_per_epoch=steps_per_epoch(len(self.y_train), config.batch_size),
            epochs=epochs, initial_epoch=initial_epoch,
            validation_data=validation_batches(self.x_val, y_val), callbacks=callbacks, verbose=0)


def _limited(oracle_class):
    """``oracle_class`` that stops handing out trials after ``trial_limit`` trials or
    once ``deadline`` (time.monotonic) has passed: --max-trials and --budget-seconds for
    every tuner, Hyperband included (its own oracle knows neither)."""

    class Limited(oracle_class):
        def __init__(self, *args, trial_limit=None, deadline=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.trial_limit, self.deadline = trial_limit, deadline

        def populate_space(self, trial_id):
            if self.trial_limit is not None and len(self.trials) >= self.trial_limit:
                return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
            if self.deadline is not None and time.monotonic() > self.deadline:
                return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
            return super().populate_space(trial_id)

    Limited.__name__ = f"Limited{oracle_class.__name__}"
    return Limited


def make_tuner(kind: str, hypermodel: SearchSpace, directory: Path, max_trials: int,
               budget_seconds: float | None, max_epochs: int, seed: int):
    """A KerasTuner tuner of ``kind`` with the trial and time limits, timing each trial."""
    deadline = time.monotonic() + budget_seconds if budget_seconds else None
    common = dict(objective=kt.Objective("val_accuracy", direction="max"), seed=seed,
                  trial_limit=max_trials, deadline=deadline)
    if kind == "hyperband":
        base, oracle = kt.Hyperband, _limited(kt.oracles.HyperbandOracle)(
            max_epochs=max_epochs, factor=3, **common)
    elif kind == "random":
        base, oracle = kt.RandomSearch, _limited(kt.oracles.RandomSearchOracle)(
            max_trials=max_trials, **common)
    elif kind == "bayesian":
        base, oracle = kt.BayesianOptimization, _limited(kt.oracles.BayesianOptimizationOracle)(
            max_trials=max_trials, **common)
    else:  # an unknown kind used to fall through to Bayesian search
        raise ConfigError(f"tuner: {kind!r} is not one of {', '.join(TUNERS)}")

    class TimedTuner(base):
        def __init__(self):
            # The tuner classes only build their oracle and pass it on; ours has the limits.
            kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, directory=str(directory),
                              project_name=PROJECT, overwrite=False)

        def run_trial(self, trial, *args, **kwargs):
            started = time.perf_counter()
            result = super().run_trial(trial, *args, **kwargs)
            seconds = time.perf_counter() - started
            _record_seconds(Path(self.project_dir), self.tuner_id, trial.trial_id, seconds)
            values = {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}
            scores = [max(h.history.get("val_accuracy", [0])) for h in
                      (result if isinstance(result, list) else [result]) if hasattr(h, "history")]
            print(f"trial {trial.trial_id} ({self.tuner_id}): val_accuracy "
                  f"{max(scores) if scores else float('nan'):.4f}, {seconds:.1f} s, {values}", flush=True)
            return result

    return TimedTuner()


def _record_seconds(project_dir: Path, tuner_id: str, trial_id: str, seconds: float) -> None:
    path = project_dir / f"fmnist_seconds_{tuner_id}.json"
    times = json.loads(path.read_text()) if path.exists() else {}
    times[trial_id] = times.get(trial_id, 0.0) + seconds
    rundir.write_json(path, times)


def _all_seconds(project_dir: Path) -> dict:
    times = {}
    for path in sorted(project_dir.glob("fmnist_seconds_*.json")):
        times.update(json.loads(path.read_text()))
    return times


def is_chief() -> bool:
    return os.environ.get("KERASTUNER_TUNER_ID", "chief") == "chief"


def is_distributed() -> bool:
    return "KERASTUNER_ORACLE_IP" in os.environ


def run_search(family: str, train_data, directory: Path, kind: str = "hyperband",
               max_trials: int = 10, budget_seconds: float | None = None, max_epochs: int = 9,
               seed: int = 0, val_size: int = DEFAULT_VAL_SIZE, train_size: int | None = None) -> dict | None:
    """Search ``family``'s space; on the chief (or alone), write and return the summary."""
    x, y = train_data
    train_idx, val_idx = train_val_split(y, val_size, seed, train_size)
    hypermodel = SearchSpace(family, (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx]),
                             seed, max_epochs)
    directory.mkdir(parents=True, exist_ok=True)
    tuner = make_tuner(kind, hypermodel, directory, max_trials, budget_seconds, max_epochs, seed)
    started = time.perf_counter()
    tuner.search(verbose=0)
    if is_distributed() and not is_chief():
        return None
    return write_summary(tuner, hypermodel, directory, {
        "family": family, "tuner": kind, "max_trials": max_trials,
        "budget_seconds": budget_seconds, "max_epochs": max_epochs, "seed": seed,
        "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
        "search_seconds": time.perf_counter() - started})


def write_summary(tuner, hypermodel: SearchSpace, directory: Path, search: dict) -> dict:
    """best_config.json, trials.md, trials.csv and trials.png from the oracle's trials."""
    seconds = _all_seconds(Path(tuner.project_dir))
    rows = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        values = {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}
        rows.append({"trial": trial_id, "status": str(trial.status),
                     "val_accuracy": trial.score,
                     "epochs": trial.hyperparameters.values.get("tuner/epochs", hypermodel.epochs),
                     "seconds": seconds.get(trial_id), **values})
    finished = [row for row in rows if row["val_accuracy"] is not None]
    if not finished:
        raise RuntimeError("no trial finished; see the tuner's directory for the errors")
    best = tuner.oracle.get_best_trials(1)[0]
    config = hypermodel.config(best.hyperparameters)
    best_config = searched_settings(config)  # the model it found, not the run that found it
    rundir.write_json(directory / "best_config.json", best_config)
    summary = {**search, "trials": len(rows), "finished_trials": len(finished),
               "best_trial": best.trial_id, "best_val_accuracy": best.score,
               "best_config": best_config,
               "trial_seconds_total": sum(row["seconds"] or 0 for row in rows)}
    rundir.write_json(directory / "summary.json", summary)
    _write_tables(rows, directory)
    from fmnist.plots import plot_trials

    plot_trials([row["val_accuracy"] for row in rows], rows.index(
        next(row for row in rows if row["trial"] == best.trial_id)), directory / "trials.png")
    return summary


def _write_tables(rows: list[dict], directory: Path) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(directory / "trials.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return "-" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    (directory / "trials.md").write_text("\n".join(lines) + "\n")
