"""Compare runs trained on the same split, image by image (exact McNemar test).

usage: FMNIST_DATA_DIR=... python scripts/pairedruns.py RUN_A RUN_B [RUN_A2 RUN_B2 ...]

For each pair: rebuilds RUN_A's validation split from its config.json (RUN_B must share
it: same split seed and validation size), predicts it and the test set with both models,
and prints for each how many images only one of the two got right, and the two-sided
exact McNemar p-value (a binomial test on those disagreements). Two runs of one recipe
disagree on a hundred or more of 6,000 validation images, so a difference of a few
tenths of a point is noise on one seed; the experiment notes quote what this gave.

With several pairs (one per seed, say), the validation disagreements are also pooled
into one test: each seed's validation images are its own split's, so its disagreements
are other images' than another seed's but for the overlap of two random splits (about
one image in ten at the default 6,000 of 60,000), which the pooled test counts as
independent. The test set is the same 10,000 images for every pair, so its
disagreements are not pooled: that would count each image once per pair.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of the disagreements at 1/2."""
    from scipy.stats import binomtest

    n = only_a + only_b
    return 1.0 if n == 0 else float(binomtest(only_a, n, 0.5).pvalue)


def disagreements(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(right only in ``a``, right only in ``b``) of two bool (n,) arrays of hits."""
    return int((a & ~b).sum()), int((b & ~a).sum())


def pooled(counts: list[tuple[int, int]]) -> tuple[int, int, float]:
    """Disagreements of several pairs summed, and the exact McNemar p-value of the sum."""
    only_a, only_b = (sum(side) for side in zip(*counts))
    return only_a, only_b, mcnemar_p(only_a, only_b)


def right(model, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """bool (n,): where ``model`` predicts the label."""
    from fmnist.metrics import predict_proba

    return predict_proba(model, images).argmax(axis=1) == labels


def compare(first: Path, second: Path, train, test) -> tuple[int, int]:
    """Print one pair's validation and test comparison; return its validation
    disagreements. ``train`` and ``test``: (uint8 (n, 28, 28), int (n,)) as loaded."""
    import keras

    from fmnist import rundir
    from fmnist.ensemble import shared_split
    from fmnist.split import split_of_run

    (x_train, y_train), (x_test, y_test) = train, test
    configs = [rundir.read_json(run / rundir.CONFIG) for run in (first, second)]
    if not shared_split(configs):
        sys.exit(f"error: {first} and {second} were trained on different splits; "
                 "pair runs of the same split seed and validation size")
    _, val = split_of_run(configs[0], y_train)
    model_a, model_b = (keras.saving.load_model(run / rundir.MODEL, compile=False)
                        for run in (first, second))
    counts = {}
    for name, images, labels in (("validation", x_train[val], y_train[val]),
                                 ("test", x_test, y_test)):
        a, b = right(model_a, images, labels), right(model_b, images, labels)
        only_a, only_b = counts[name] = disagreements(a, b)
        print(f"{name}: {first.name} {a.mean():.4f}, {second.name} {b.mean():.4f}; right only "
              f"in the first {only_a}, only in the second {only_b}; exact McNemar p = "
              f"{mcnemar_p(only_a, only_b):.3f}")
    return counts["validation"]


def main(runs: list[Path]) -> None:
    from fmnist.data import load_data

    train, test = load_data()
    counts = [compare(first, second, train, test) for first, second in zip(runs[::2], runs[1::2])]
    if len(counts) > 1:
        only_a, only_b, p = pooled(counts)
        print(f"validation, pooled over {len(counts)} pairs: right only in the first runs "
              f"{only_a}, only in the second {only_b}; exact McNemar p = {p:.3f}")


if __name__ == "__main__":
    if len(sys.argv) < 3 or len(sys.argv) % 2 == 0:
        sys.exit(__doc__.split("\n\n")[1])
    from fmnist.errors import FmnistError

    try:
        main([Path(arg) for arg in sys.argv[1:]])
    except FmnistError as error:  # a path that is no run directory, a damaged one
        sys.exit(f"error: {error}")
