"""Temperature scaling: one scalar T that makes ``softmax(logits / T)`` honest.

Fitted on the run's validation split by minimizing the negative log-likelihood (Guo et
al., 2017). Dividing every logit by the same T > 0 never changes the arg max, so accuracy
is untouched; only the confidence moves. NumPy only.
"""

from __future__ import annotations

import numpy as np


# The search interval of T: far wider than any model here needs (label smoothing gives
# T < 1, overconfident networks T > 1).
BOUNDS = (0.05, 20.0)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / T)``."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    return float(np.mean(log_norm - scaled[np.arange(len(scaled)), np.asarray(labels)]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in :data:`BOUNDS` that minimizes the NLL of ``labels`` (golden-section
    search on log T; the NLL is convex in 1/T, so the minimum is unique)."""
    low, high = np.log(BOUNDS[0]), np.log(BOUNDS[1])
    ratio = (np.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
    for _ in range(60):  # the interval shrinks to 1e-12 of its width
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(logits, labels, np.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(logits, labels, np.exp(b))
    return float(np.exp((low + high) / 2))

