"""`fmnist evaluate --ood`: how well a model's out-of-distribution flag separates garments
from everything else, on images sent through the upload path.

The in-distribution side is the Fashion-MNIST test set, each image encoded as PNG and
converted like a user's upload; the other side is each set of :mod:`fmnist.oodsets`.
Reported per set: AUROC, the FPR at 95% TPR (threshold set on these test uploads) and the
share accepted at the model's own threshold (fitted on validation uploads at training).
Also the share of test images flagged as uploads, as raw arrays, at 0.7x contrast and
shifted 2 pixels right (raw arrays: the upload path would undo both), with the accuracy
on each.
"""

from __future__ import annotations

import numpy as np

from fmnist import ood, oodsets
from fmnist.errors import FmnistError
from fmnist.metrics import shifted

DEFAULT_COUNT = 500  # images per out-of-distribution set


def evaluate_ood(predictor, test_data, count: int = DEFAULT_COUNT, sets=oodsets.SETS,
                 seed: int = 0) -> dict:
    """The out-of-distribution report of ``predictor`` (any engine with a score).

    ``test_data``: test images and labels (uint8 (N, 28, 28), (N,)). Returns
    ``{"method", "threshold", "in_distribution": {...}, "sets": {name: {...}}}``.
    """
    if predictor.threshold is None:
        raise FmnistError(f"{predictor.name} has no out-of-distribution score; calibrate the "
                          "run first (`fmnist calibrate RUN_DIR`), or export it again")
    images, labels = test_data
    threshold = predictor.threshold

    def scored(pixels):
        outputs = predictor.outputs(pixels)
        return outputs["ood_score"].astype(np.float64), outputs["probabilities"].argmax(1)

    variants = {"test uploads": oodsets.received(oodsets.uploads(images)),
                "test, raw arrays": images, "test, 0.7x contrast": np.round(images * 0.7).astype(np.uint8),
                "test, shifted 2 pixels right": shifted(images, 0, 2)}
    inside, variant_scores = {}, {}
    for name, pixels in variants.items():
        variant_scores[name], predicted = scored(pixels)
        inside[name] = {"images": int(len(pixels)),
                        "flagged": float((variant_scores[name] < threshold).mean()),
                        "accuracy": float((predicted == labels).mean())}
    uploads = variant_scores["test uploads"]  # the in-distribution side of every AUROC
    report = {"method": predictor.engine.ood_method, "threshold": threshold,
              "in_distribution": inside, "sets": {}}
    for name in sets:
        scores, _ = scored(oodsets.received(oodsets.build(name, count, seed)))
        report["sets"][name] = {"images": int(len(scores)), "auroc": ood.auroc(uploads, scores),
                                "fpr_at_95_tpr": ood.fpr_at_tpr(uploads, scores),
                                "accepted": float((scores >= threshold).mean())}
    return report


def print_report(report: dict, out=print) -> None:
    out(f"out-of-distribution score: {report['method']}; threshold {report['threshold']:.2f}")
    for name, row in report["in_distribution"].items():
        out(f"  {name:<30} {row['images']:>6,} images  flagged {100 * row['flagged']:5.1f}%  "
            f"accuracy {row['accuracy']:.4f}")
    out(f"  {'set':<30} {'images':>6}  {'AUROC':>6}  {'FPR@95':>6}  accepted")
    for name, row in report["sets"].items():
        out(f"  {name:<30} {row['images']:>6,}  {row['auroc']:.4f}  {row['fpr_at_95_tpr']:6.3f}  "
            f"{100 * row['accepted']:5.1f}%")
