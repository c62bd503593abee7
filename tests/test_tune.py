"""`fmnist tune`: KerasTuner searches on a small slice, resumed, budgeted, distributed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import run_cli, run_main
from fmnist.bench.loadtest import free_port

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

TINY = ["--model", "mlp", "--max-epochs", "2", "--train-size", "2000", "--val-size", "500"]


@pytest.fixture
def train_only_data(train_only_data_dir):
    """Only the training files (conftest): a search must never need the test set."""
    return train_only_data_dir


def trials_in(directory):
    return json.loads((directory / "summary.json").read_text())


def test_hyperband_search_writes_summary_and_best_config_and_resumes(train_only_data, tmp_path):
    out = tmp_path / "search"
    # Hyperband over 3 epochs makes a bracket of 6 trials; --max-trials cuts it short.
    first = run_main("tune", *TINY, "--max-epochs", "3", "--max-trials", "2", "--out", str(out), "--data-dir", str(train_only_data))
    assert first.returncode == 0, first.stderr[-2000:]
    summary = trials_in(out)
    assert summary["trials"] == 2 and summary["finished_trials"] == 2 and summary["n_val"] == 500
    assert 0.3 < summary["best_val_accuracy"] <= 1.0
    for name in ("trials.md", "trials.csv", "trials.png", "best_config.json"):
        assert (out / name).is_file()
    table = (out / "trials.md").read_text()
    assert "val_accuracy" in table and "learning_rate" in table and table.count("\n") == 4
    best = json.loads((out / "best_config.json").read_text())
    assert best["model"] == "mlp-plus" and "train_size" not in best and "seed" not in best
    assert len(best["model_options"]["hidden_units"]) in (1, 2, 3)

    again = run_main("tune", *TINY, "--max-epochs", "3", "--max-trials", "3", "--out", str(out), "--data-dir", str(train_only_data))
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = trials_in(out)
    assert resumed["trials"] == 3  # the first two were kept, one more ran
    assert resumed["best_val_accuracy"] >= summary["best_val_accuracy"]


def test_best_config_trains_with_train_config(real_data_dir, tmp_path):
    config = tmp_path / "best_config.json"
    config.write_text(json.dumps({"model": "mlp-plus", "model_options": {"hidden_units": [64], "dropout": 0.1},
                                  "learning_rate": 0.004, "batch_size": 128, "epochs": 5}))
    run = tmp_path / "run"
    result = run_main("train", "--config", str(config), "--epochs", "1", "--train-size", "1000",
                     "--val-size", "200", "--test-size", "200", "--out", str(run), "--quiet",
                     "--data-dir", str(real_data_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"] == "mlp-plus" and saved["model_options"]["hidden_units"] == [64]
    assert saved["learning_rate"] == 0.004 and saved["batch_size"] == 128
    assert saved["epochs"] == 1  # the flag overrides the file
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    failed = run_cli("train", "--config", str(bad), "--data-dir", str(real_data_dir))
    assert failed.returncode == 1 and "not valid JSON" in failed.stderr


def test_bayesian_search_respects_max_trials(train_only_data, tmp_path):
    out = tmp_path / "bayesian"
    result = run_main("tune", *TINY, "--tuner", "bayesian", "--max-trials", "2", "--max-epochs", "1",
                     "--out", str(out), "--data-dir", str(train_only_data))
    assert result.returncode == 0, result.stderr[-2000:]
    assert trials_in(out)["trials"] == 2 and trials_in(out)["tuner"] == "bayesian"


def test_budget_stops_the_search_early_with_random_search(train_only_data, tmp_path):
    out = tmp_path / "budget"
    result = run_main("tune", *TINY, "--tuner", "random", "--max-trials", "50", "--budget-seconds", "1",
                     "--out", str(out), "--data-dir", str(train_only_data))
    assert result.returncode == 0, result.stderr[-2000:]
    assert 1 <= trials_in(out)["trials"] <= 2


def test_distributed_search_one_chief_two_workers(train_only_data, tmp_path):
    out = tmp_path / "distributed"
    port = free_port()
    processes = {}
    for tuner_id in ("chief", "tuner0", "tuner1"):
        env = dict(os.environ, KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP="127.0.0.1",
                   KERASTUNER_ORACLE_PORT=str(port))
        processes[tuner_id] = subprocess.Popen(
            [sys.executable, "-m", "fmnist.cli", "tune", *TINY, "--tuner", "random", "--max-trials", "2",
             "--out", str(out), "--data-dir", str(train_only_data)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = {tuner_id: process.communicate(timeout=400) for tuner_id, process in processes.items()}
    for tuner_id, process in processes.items():
        assert process.returncode == 0, f"{tuner_id}: {outputs[tuner_id][1][-2000:]}"
    assert "best validation accuracy" in outputs["chief"][0]
    assert "the chief writes the summary" in outputs["tuner0"][0]
    summary = trials_in(out)
    assert summary["trials"] == 2 and summary["finished_trials"] == 2
    # Trials ran in the workers (the chief only serves the oracle).
    timed = {path.name for path in (out / "search").glob("fmnist_seconds_*.json")}
    assert timed and timed <= {"fmnist_seconds_tuner0.json", "fmnist_seconds_tuner1.json"}
    ran = sum(sum(1 for line in outputs[w][0].splitlines() if line.startswith("trial ")) for w in ("tuner0", "tuner1"))
    assert ran == 2
    shutil.rmtree(out)


def test_an_unknown_tuner_is_refused_not_run_as_bayesian(tmp_path):
    from fmnist.errors import ConfigError
    from fmnist.tune import make_tuner

    with pytest.raises(ConfigError, match="tuner: 'grid' is not one of hyperband, random, bayesian"):
        make_tuner("grid", None, tmp_path, max_trials=1, budget_seconds=None, max_epochs=1, seed=0)
