"""Data-parallel training on tf.distribute, for real: logical CPU replicas and worker
processes on loopback ports; and TensorBoard logs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import run_cli

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SLICE = ["--model", "mlp", "--epochs", "4", "--train-size", "6000", "--val-size", "1000",
         "--test-size", "1000", "--quiet"]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def read(run, name):
    return json.loads((run / name).read_text())


@pytest.fixture(scope="module")
def single(real_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    result = run_cli("train", *SLICE, "--out", str(out), "--data-dir", str(real_data_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def mirrored(real_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored") / "run"
    result = run_cli("train", *SLICE, "--distribute", "mirrored", "--cpu-replicas", "2",
                     "--tensorboard", "--out", str(out), "--data-dir", str(real_data_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_mirrored_over_two_logical_cpus_scales_batch_and_rate(mirrored, single):
    config = read(mirrored, "config.json")
    assert (config["replicas"], config["global_batch_size"]) == (2, 256)
    assert config["scaled_learning_rate"] == pytest.approx(2 * config["learning_rate"])
    history = read(mirrored, "history.json")
    assert len(history) == 4 and history[-1]["learning_rate"] == pytest.approx(2e-3)
    # Same data, same epochs, twice the batch: the same accuracy range as one process.
    ours, theirs = read(mirrored, "metrics.json"), read(single, "metrics.json")
    assert ours["test_accuracy"] > 0.75 and abs(ours["test_accuracy"] - theirs["test_accuracy"]) < 0.04
    assert abs(ours["val_accuracy"] - theirs["val_accuracy"]) < 0.04


def test_mirrored_training_sets_the_default_models_whitening_stem(real_data_dir, tmp_path):
    """cnn-fast's preset stem is set from the training images inside the strategy's scope:
    the saved stem holds the whitening filters (each direction with both signs), not its
    random initialization."""
    import numpy as np

    out = tmp_path / "run"
    result = run_cli("train", "--model", "cnn-fast", "--batch-size", "128", "--epochs", "1",
                     "--train-size", "2048", "--val-size", "1000", "--test-size", "1000",
                     "--quiet", "--distribute", "mirrored", "--cpu-replicas", "2",
                     "--out", str(out), "--data-dir", str(real_data_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    import keras

    kernel = np.asarray(keras.saving.load_model(out / "model.keras", compile=False)
                        .get_layer("stem").kernel)  # (3, 3, 1, 16)
    half = kernel.shape[-1] // 2
    np.testing.assert_array_equal(kernel[..., half:], -kernel[..., :half])


def test_tensorboard_logs_hold_losses_accuracy_and_learning_rate(mirrored):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_log = EventAccumulator(str(mirrored / "logs" / "train")).Reload()
    tags = set(train_log.Tags()["tensors"]) | set(train_log.Tags()["scalars"])
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= tags
    validation = EventAccumulator(str(mirrored / "logs" / "validation")).Reload()
    assert "epoch_accuracy" in set(validation.Tags()["tensors"]) | set(validation.Tags()["scalars"])


def test_two_workers_on_loopback_train_one_model(mirrored, real_data_dir, tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster,
                                                     "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "fmnist.cli", "train", *SLICE, "--distribute", "multiworker",
             "--out", str(tmp_path / f"worker{index}"), "--data-dir", str(real_data_dir)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-2000:]
    assert "test accuracy" in outputs[0][0] and "the chief evaluates" in outputs[1][0]
    chief, other = tmp_path / "worker0", tmp_path / "worker1"
    assert read(chief, "config.json")["replicas"] == 2
    # One synchronous model: both workers log the same epochs, and two workers of one
    # replica each see exactly the batches of one process with two replicas.
    assert read(chief, "history.json")[-1]["val_accuracy"] == read(other, "history.json")[-1]["val_accuracy"]
    assert read(chief, "metrics.json")["test_accuracy"] == pytest.approx(
        read(mirrored, "metrics.json")["test_accuracy"], abs=0.01)
    assert (chief / "model.keras").is_file() and (chief / "checkpoints").is_dir()


@pytest.mark.parametrize("tf_config, words", [
    (None, "needs TF_CONFIG"),
    ("{not json", "not a valid cluster description"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "not a valid cluster description"),
])
def test_multiworker_without_a_valid_cluster_fails_in_one_line(tf_config, words, real_data_dir, tmp_path):
    env = {"TF_CONFIG": tf_config} if tf_config else {}
    if tf_config is None:
        env = {"TF_CONFIG": ""}
    result = run_cli("train", *SLICE, "--distribute", "multiworker", "--out", str(tmp_path / "r"),
                     "--data-dir", str(real_data_dir), env_extra=env)
    assert result.returncode == 1
    assert words in result.stderr.strip().splitlines()[-1]
