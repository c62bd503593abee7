"""Which out-of-distribution score to ship: every candidate of fmnist.ood on one run.

    python scripts/oodstudy.py RUN_DIR [--csv OUT.csv] [--count 500]

For the run's model (Keras, float32), computes each candidate score on: validation images sent
through the upload path (encoded as PNG, decoded and converted like a user's file), test
uploads, and each out-of-distribution set of fmnist.oodsets. Prints and writes, per
candidate and set, the AUROC and the FPR at 95% TPR (the in-distribution side: test
uploads), and the share of test uploads flagged at the threshold fitted on validation
uploads. Reads the test set: a study, not training.
"""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np

from fmnist import ood, oodsets, rundir
from fmnist.data import load_split
from fmnist.metrics import shifted
from fmnist.split import split_of_run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--csv")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)

    from fmnist.calibration import fit_temperature
    from fmnist.heads import float32_copy, head_weights, load_keras
    from fmnist.trust import features_model, fit, run_outputs, standardizer, trusted_model

    run_dir = rundir.require_run_dir(args.run_dir, needs=rundir.MODEL)
    config = rundir.read_json(run_dir / rundir.CONFIG)
    images, labels = load_split("train", args.data_dir)
    test_images, _ = load_split("test", args.data_dir)
    train_idx, val_idx = split_of_run(config, labels)
    fit_idx = train_idx[:20_000]
    model = float32_copy(load_keras(run_dir))
    extractor = features_model(model)
    kernel, bias = head_weights(model)

    def features(pixels):
        outputs = extractor(np.asarray(pixels, np.float32), training=False)
        return [np.asarray(o, np.float64) for o in (outputs if isinstance(outputs, list) else [outputs])]

    train_features = features(images[fit_idx])
    gaussians = [ood.fit_gaussians(f, labels[fit_idx]) for f in train_features]
    val_logits = features(images[val_idx])[0] @ kernel + bias
    temperature = fit_temperature(val_logits, labels[val_idx])
    chosen = trusted_model(model, fit(model, (images[fit_idx], labels[fit_idx]),
                                      (images[val_idx], labels[val_idx])))

    def standard(train_scores):
        scale = standardizer(train_scores)
        return lambda values: (values - scale["median"]) / scale["mad"]

    scale = [standard(ood.mahalanobis(f, g)) for f, g in zip(train_features, gaussians)]

    def scores(pixels):
        found = features(pixels)
        logits = found[0] @ kernel + bias
        maha = [ood.mahalanobis(f, g) for f, g in zip(found, gaussians)]
        both = sum(s(m) for s, m in zip(scale, maha))
        return {"max softmax": ood.max_softmax(logits),
                "max softmax, calibrated": ood.max_softmax(logits, temperature),
                "max logit": ood.max_logit(logits),
                "energy": ood.energy(logits),
                "border background": ood.border_background(pixels),
                "mahalanobis, penultimate": maha[0],
                "mahalanobis, last-conv statistics": maha[-1],
                "mahalanobis, both": both,
                "mahalanobis, both + energy (shipped)":
                    run_outputs(chosen, np.asarray(pixels))["ood_score"].astype(np.float64)}

    val = scores(oodsets.received(oodsets.uploads(images[val_idx])))
    test = scores(oodsets.received(oodsets.uploads(test_images)))
    sets = {name: scores(oodsets.received(oodsets.build(name, args.count))) for name in oodsets.SETS}
    raw = {"test, raw arrays": scores(test_images),
           "test, 0.7x contrast": scores(np.round(test_images * 0.7).astype(np.uint8)),
           "test, shifted 2 pixels right": scores(shifted(test_images, 0, 2))}
    rows = []
    for candidate in val:
        threshold = ood.fit_threshold(val[candidate])
        row = {"score": candidate,
               "test uploads flagged": float((test[candidate] < threshold).mean())}
        for name, values in raw.items():
            row[f"{name} flagged"] = float((values[candidate] < threshold).mean())
        for name, values in sets.items():
            row[f"{name} AUROC"] = ood.auroc(test[candidate], values[candidate])
            row[f"{name} FPR95"] = ood.fpr_at_tpr(test[candidate], values[candidate])
        rows.append(row)
        print(candidate, {k: round(v, 4) for k, v in row.items() if k != "score"})
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v)
                              for k, v in row.items()} for row in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
