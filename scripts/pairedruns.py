"""Compare two runs trained on the same split, image by image (exact McNemar test).

usage: FMNIST_DATA_DIR=... python scripts/pairedruns.py RUN_A RUN_B

Rebuilds RUN_A's validation split from its config.json (RUN_B must share it: same
split seed and validation size), predicts it and the test set with both models, and prints for each
how many images only one of the two got right, and the two-sided exact McNemar p-value
(a binomial test on those disagreements). Two runs of one recipe disagreed on 128-162
of 6,000 validation images, so a 0.002 difference in accuracy is noise; README
"cnn-best" quotes what this gave for the born-again students against their teachers.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of the disagreements at 1/2."""
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def right(run: Path, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """bool (n,): where ``run``'s model predicts the label."""
    import keras

    from fmnist.metrics import predict_proba

    model = keras.saving.load_model(run / "model.keras", compile=False)
    return predict_proba(model, images).argmax(axis=1) == labels


def main(first: Path, second: Path) -> None:
    from fmnist import rundir
    from fmnist.data import load_data
    from fmnist.ensemble import shared_split
    from fmnist.split import split_of_run

    (x_train, y_train), (x_test, y_test) = load_data()
    configs = [rundir.read_json(run / rundir.CONFIG) for run in (first, second)]
    if not shared_split(configs):
        sys.exit(f"error: {first} and {second} were trained on different splits; "
                 "pair runs of the same split seed and validation size")
    _, val = split_of_run(configs[0], y_train)
    for name, images, labels in (("validation", x_train[val], y_train[val]),
                                 ("test", x_test, y_test)):
        a, b = right(first, images, labels), right(second, images, labels)
        only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
        p = mcnemar_p(only_a, only_b)
        print(f"{name}: {first.name} {a.mean():.4f}, {second.name} {b.mean():.4f}; right only "
              f"in the first {only_a}, only in the second {only_b}; exact McNemar p = {p:.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    main(Path(sys.argv[1]), Path(sys.argv[2]))
