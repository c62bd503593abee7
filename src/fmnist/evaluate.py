"""Test-set evaluation: the only code in fmnist that reads the test set.

Training validates on its own split of the training images (see split.py); this module
runs once a model is final and writes the test metrics into the run's metrics.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmnist import rundir
from fmnist.data import load_split
from fmnist.metrics import classification_metrics, mirrored, predict_proba


def evaluate_run(run_dir: str | Path, data_dir=None, test_data=None, tta: bool = False) -> dict:
    """Evaluate a run's final model on the test set and record it in metrics.json.

    Uses the first ``test_size`` test images when the run's config limits them (quick
    runs); otherwise all 10,000. ``test_data``: the test ``(images, labels)`` if already
    loaded. ``tta``: also score the mean of the probabilities of each image and its
    mirror (``test_accuracy_tta``); ``test_accuracy`` is always the plain score.
    Returns the updated metrics.
    """
    import keras

    run_dir = rundir.require_run_dir(run_dir, needs=rundir.MODEL)
    config = rundir.read_json(run_dir / rundir.CONFIG)
    x_test, y_test = test_data if test_data is not None else load_split("test", data_dir)
    test_size = config.get("test_size")
    if test_size:
        x_test, y_test = x_test[:test_size], y_test[:test_size]

    model = keras.saving.load_model(run_dir / rundir.MODEL, compile=False, safe_mode=True)
    probabilities = predict_proba(model, x_test)
    scores = classification_metrics(probabilities, y_test)

    metrics_path = run_dir / rundir.METRICS
    metrics = rundir.read_json(metrics_path) if metrics_path.exists() else {}
    metrics.update({
        "test_accuracy": scores["accuracy"],
        "test_loss": scores["loss"],
        "n_test": int(len(y_test)),
        "tta": tta,
    })
    if tta:
        averaged = (probabilities + predict_proba(model, mirrored(x_test))) / 2
        tta_scores = classification_metrics(averaged, y_test)
        metrics.update({"test_accuracy_tta": tta_scores["accuracy"],
                        "test_loss_tta": tta_scores["loss"]})
    else:
        metrics.pop("test_accuracy_tta", None)
        metrics.pop("test_loss_tta", None)
    rundir.write_json(metrics_path, metrics)
    return metrics
