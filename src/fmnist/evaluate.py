"""Test-set evaluation: the only code in fmnist that reads the test set.

Training validates on its own split of the training images (see split.py); this module
runs once a model is final and writes the test metrics into the run's metrics.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmnist import rundir
from fmnist.data import load_split


def predict_proba(model, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities, float32 (N, 10), for uint8 ``images`` (N, 28, 28)."""
    return np.asarray(model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float32)


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy and mean cross-entropy of ``probabilities`` (N, 10) against ``labels`` (N,)."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probabilities.argmax(axis=1)
    # Clip like Keras' cross-entropy does, so a confident mistake costs log(1e-7), not inf.
    true_class_p = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "loss": float(-np.mean(np.log(true_class_p))),
    }


def evaluate_run(run_dir: str | Path, data_dir=None, test_data=None) -> dict:
    """Evaluate a run's final model on the test set and record it in metrics.json.

    Uses the first ``test_size`` test images when the run's config limits them (quick
    runs); otherwise all 10,000. ``test_data``: the test ``(images, labels)`` if already
    loaded. Returns the updated metrics.
    """
    import keras

    run_dir = rundir.require_run_dir(run_dir, needs=rundir.MODEL)
    config = rundir.read_json(run_dir / rundir.CONFIG)
    x_test, y_test = test_data if test_data is not None else load_split("test", data_dir)
    test_size = config.get("test_size")
    if test_size:
        x_test, y_test = x_test[:test_size], y_test[:test_size]

    model = keras.saving.load_model(run_dir / rundir.MODEL, compile=False, safe_mode=True)
    scores = classification_metrics(predict_proba(model, x_test), y_test)

    metrics_path = run_dir / rundir.METRICS
    metrics = rundir.read_json(metrics_path) if metrics_path.exists() else {}
    metrics.update({
        "test_accuracy": scores["accuracy"],
        "test_loss": scores["loss"],
        "n_test": int(len(y_test)),
    })
    rundir.write_json(metrics_path, metrics)
    return metrics
