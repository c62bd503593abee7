"""Scoring predictions: probabilities in, numbers out. Reads no data of its own.

Used by training (the validation score of the final model) and by evaluation (the
test score); kept below both so neither imports the other.
"""

from __future__ import annotations

import numpy as np


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


def mirrored(images: np.ndarray) -> np.ndarray:
    """Images (N, 28, 28) flipped left-right: the view test-time augmentation adds."""
    return np.ascontiguousarray(images[:, :, ::-1])
