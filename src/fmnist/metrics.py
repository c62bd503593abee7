"""Scoring predictions: probabilities in, numbers out. Reads no data of its own.

Used by training (the validation score of the final model) and by evaluation (the
test score); kept below both so neither imports the other.
"""

from __future__ import annotations

import numpy as np


def predict_proba(model, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities, float32 (N, 10), for uint8 ``images`` (N, 28, 28).

    ``predict_on_batch`` over slices rather than ``predict``: given arrays, ``predict``
    builds a tf.data pipeline that TensorFlow rewrites under op determinism (on after
    training), logging a C++ "error" about an unknown attribute each time.
    """
    if len(images) == 0:
        return np.zeros((0, 10), dtype=np.float32)
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        # Under tf.distribute, predict_on_batch hands every replica the whole batch and
        # concatenates their answers; predict splits a dataset between them instead.
        import tensorflow as tf

        batches = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
        return np.asarray(model.predict(batches, verbose=0), dtype=np.float32)
    # Every slice has one shape: the last is padded to a full batch, its padding's rows
    # dropped. A shorter last slice would make TensorFlow trace the predict step again,
    # once per new length (a teacher's pass, then validation, test and TTA, each warned).
    batch_size = min(batch_size, len(images))
    pieces = []
    for start in range(0, len(images), batch_size):
        piece = images[start:start + batch_size]
        short = batch_size - len(piece)
        if short:
            piece = np.concatenate([piece, np.zeros((short, *piece.shape[1:]), piece.dtype)])
        pieces.append(np.asarray(model.predict_on_batch(piece), dtype=np.float32)[:batch_size - short])
    return np.concatenate(pieces)


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


def shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Images (N, 28, 28) moved ``dy`` rows down and ``dx`` columns right, black fill."""
    out = np.zeros_like(images)
    height, width = images.shape[1:3]
    out[:, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        images[:, max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


def tta_views(images: np.ndarray, shift: int = 1) -> dict[str, np.ndarray]:
    """The views a test-time augmentation can average over, by name: the image, its
    mirror, and (``shift`` > 0) the image and its mirror moved ``shift`` pixels up,
    down, left and right (10 views). Each uint8 (N, 28, 28) like ``images``."""
    views = {"image": images, "mirror": mirrored(images)}
    if shift > 0:
        for name, (dy, dx) in {"up": (-shift, 0), "down": (shift, 0), "left": (0, -shift),
                               "right": (0, shift)}.items():
            views[name] = shifted(images, dy, dx)
            views[f"{name} mirror"] = mirrored(views[name])
    return views


# Which views each test-time augmentation averages (see tta_views).
VIEW_SETS = {"plain": ("image",), "flip": ("image", "mirror"),
             "flip + shifts": ("image", "mirror", "up", "up mirror", "down", "down mirror",
                               "left", "left mirror", "right", "right mirror")}


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int = 10) -> np.ndarray:
    """Counts, int64 (classes, classes): row = true class, column = predicted class."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


def per_class_scores(confusion: np.ndarray) -> list[dict]:
    """Precision, recall, F1 and support of each class from a confusion matrix.

    A class never predicted has precision 0 (not NaN), like scikit-learn's
    ``zero_division=0``; recall is the class's accuracy.
    """
    true_positives = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    scores = []
    for index in range(len(confusion)):
        precision = true_positives[index] / predicted[index] if predicted[index] else 0.0
        recall = true_positives[index] / support[index] if support[index] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append({"precision": float(precision), "recall": float(recall), "f1": float(f1),
                       "support": int(support[index])})
    return scores


def top_k_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int = 2) -> float:
    """Share of images whose true class is among the ``k`` most probable."""
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float(np.mean((top == np.asarray(labels)[:, None]).any(axis=1)))


def calibration(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
    """Expected calibration error over ``bins`` equal-width confidence bins, and the bins.

    Confidence is the top probability; bin b holds confidences in (b/bins, (b+1)/bins]
    (the first bin also takes 0). ECE = sum over bins of (share of images) x
    |accuracy - mean confidence|.
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        row = {"low": b / bins, "high": (b + 1) / bins, "count": count,
               "accuracy": float(correct[members].mean()) if count else None,
               "confidence": float(confidence[members].mean()) if count else None}
        if count:
            ece += count / len(labels) * abs(row["accuracy"] - row["confidence"])
        table.append(row)
    return {"ece": float(ece), "bins": table}


def most_confused(confusion: np.ndarray, top: int = 5) -> list[dict]:
    """The ``top`` largest off-diagonal cells: (true, predicted, count), largest first."""
    cells = [(int(confusion[t, p]), t, p) for t in range(len(confusion))
             for p in range(len(confusion)) if t != p and confusion[t, p] > 0]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [{"true": t, "predicted": p, "count": c} for c, t, p in cells[:top]]
