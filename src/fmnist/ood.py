"""Out-of-distribution scores: does an image look like anything the model trained on?

NumPy only, so the core install (no TensorFlow) computes the same numbers as training.
Every score is oriented the same way: **higher means more like the training images**.
An image is accepted (``in_distribution``) when its score is at least the threshold
fitted on validation uploads (:func:`fit_threshold`).

The candidates, compared in docs/experiments (the OOD note):

- ``max_softmax``: the top probability (Hendrycks and Gimpel, 2017);
- ``max_logit``: the top logit;
- ``energy``: ``T * logsumexp(logits / T)`` (Liu et al., 2020), the negated free energy;
- ``mahalanobis``: minus the smallest Mahalanobis distance of the penultimate features
  to a class mean, with one shared covariance (Lee et al., 2018, without input noise);
- ``border``: the share of the 28x28 image's outer frame that is background: an input-space
  signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Pixels at or below this level (of 255) count as background in the input-space signal.
BACKGROUND_LEVEL = 20
# The shared covariance gets this share of its mean variance added to its diagonal, so
# features that are (nearly) constant on the training images do not blow up the distance.
RIDGE = 1e-3


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float (N, C) logits -> float32 (N, C) probabilities of ``softmax(logits / T)``."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def max_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return softmax(logits, temperature).max(axis=1).astype(np.float64)


def max_logit(logits: np.ndarray) -> np.ndarray:
    return np.asarray(logits, dtype=np.float64).max(axis=1)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    top = scaled.max(axis=1, keepdims=True)
    return temperature * (top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1)))


@dataclass(frozen=True)
class Gaussians:
    """Class means (C, D) and the precision (D, D) of their shared covariance, float64."""

    means: np.ndarray
    precision: np.ndarray

    def to_dict(self) -> dict:
        return {"means": self.means.tolist(), "precision": self.precision.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "Gaussians":
        return cls(np.asarray(data["means"], np.float64), np.asarray(data["precision"], np.float64))


def fit_gaussians(features: np.ndarray, labels: np.ndarray, classes: int = 10,
                  ridge: float = RIDGE) -> Gaussians:
    """Class-conditional Gaussians with one shared covariance, from training features.

    ``features``: float (N, D) penultimate activations of training images; ``labels``: (N,).
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in range(classes)])
    centred = features - means[labels]
    covariance = centred.T @ centred / len(features)
    covariance += ridge * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    return Gaussians(means, np.linalg.inv(covariance))


def mahalanobis(features: np.ndarray, gaussians: Gaussians) -> np.ndarray:
    """Minus the smallest squared Mahalanobis distance to a class mean, float64 (N,).

    Computed in whitened coordinates (``precision = W W^T``, W from Cholesky): one
    (N, D) x (D, D) product, then squared Euclidean distances to the C whitened means.
    """
    whiten = np.linalg.cholesky(gaussians.precision)
    points = np.asarray(features, dtype=np.float64) @ whiten
    centres = gaussians.means @ whiten
    distances = ((points ** 2).sum(axis=1)[:, None] - 2 * points @ centres.T
                 + (centres ** 2).sum(axis=1)[None, :])
    return -distances.min(axis=1)


def border_background(pixels: np.ndarray, width: int = 2) -> np.ndarray:
    """Share of the outer ``width``-pixel frame at background level, float64 (N,).

    ``pixels``: uint8 (N, 28, 28) in the dataset's conventions (light object on black).
    """
    pixels = np.asarray(pixels)
    frame = np.ones(pixels.shape[1:], dtype=bool)
    frame[width:-width, width:-width] = False
    return (pixels[:, frame] <= BACKGROUND_LEVEL).mean(axis=1)


def fit_threshold(scores: np.ndarray, accept: float = 0.95) -> float:
    """The highest score at or above which at least ``accept`` of ``scores`` (in-distribution
    images) lie: the ``floor((1 - accept) N)``-th smallest."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    return float(ordered[min(len(ordered) - 1, int(np.floor((1.0 - accept) * len(ordered))))])


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve for telling in- from out-of-distribution by score.

    The probability that a random in-distribution image scores above a random
    out-of-distribution one, ties counted half (the Mann-Whitney U statistic).
    """
    in_scores = np.asarray(in_scores, dtype=np.float64)
    out_scores = np.asarray(out_scores, dtype=np.float64)
    both = np.concatenate([in_scores, out_scores])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based, ties averaged
    u = ranks[:len(in_scores)].sum() - len(in_scores) * (len(in_scores) + 1) / 2
    return float(u / (len(in_scores) * len(out_scores)))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of out-of-distribution images accepted at the threshold that accepts ``tpr``
    of the in-distribution ones (FPR at 95% TPR)."""
    threshold = fit_threshold(in_scores, tpr)
    return float((np.asarray(out_scores) >= threshold).mean())
