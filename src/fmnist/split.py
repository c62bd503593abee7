"""The seeded, stratified train/validation split of the 60,000 training images.

Validation data is carved from the training set so that callbacks, early stopping and
model choice never see the test set (the classic notebook validated on the test set).
"""

from __future__ import annotations

import numpy as np

TRAIN_POOL = 60000
DEFAULT_VAL_SIZE = 6000


def train_val_split(labels: np.ndarray, val_size: int = DEFAULT_VAL_SIZE, seed: int = 0,
                    train_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``labels`` (int, shape (N,)) into train and validation.

    Both parts keep the class proportions of ``labels`` (stratified). ``train_size``,
    when given, keeps a stratified subset of that many training indices (for quick
    runs and tests); by default every image not in validation is used for training.

    Returns two sorted, disjoint int64 index arrays: ``train_idx`` and ``val_idx``.
    The same labels and seed always give the same split.
    """
    from sklearn.model_selection import train_test_split  # lazy: keeps `fmnist --help` fast

    n = len(labels)
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be between 1 and {n - 1}, got {val_size}")
    indices = np.arange(n)
    train_idx, val_idx = train_test_split(
        indices, test_size=val_size, stratify=labels, random_state=seed
    )
    if train_size is not None and train_size < len(train_idx):
        if train_size < 1:
            raise ValueError(f"train_size must be at least 1, got {train_size}")
        train_idx, _ = train_test_split(
            train_idx, train_size=train_size, stratify=labels[train_idx], random_state=seed
        )
    return np.sort(train_idx).astype(np.int64), np.sort(val_idx).astype(np.int64)


def split_seed(config: dict) -> int:
    """The seed of a run's split: its ``split_seed`` where set, else its ``seed`` (runs
    before split_seed existed, and every run that did not ask for another split)."""
    chosen = config.get("split_seed")
    return int(config.get("seed") or 0) if chosen is None else int(chosen)


def split_key(config: dict) -> tuple:
    """What fixes a run's validation images, from its config.json: two runs with equal
    keys held out the same images, so neither trained on the other's. ``train_size`` is
    not in it: it only subsets the rest (:func:`train_val_split`)."""
    return split_seed(config), int(config.get("val_size") or DEFAULT_VAL_SIZE)


def split_of_run(config: dict, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (train, validation) indices a run trained with, rebuilt from its ``config.json``
    (or its TrainConfig as a dict).

    ``labels``: the 60,000 training labels (uint8 (60000,)). Export checks an ONNX copy on
    these validation images, so nothing after training reads the test set but ``evaluate``.
    """
    return train_val_split(labels, int(config.get("val_size") or DEFAULT_VAL_SIZE),
                           split_seed(config), config.get("train_size"))
