"""How well one temperature calibrates a run, against vector scaling and the noise floor.

    python scripts/calibstudy.py RUN_DIR [RUN_DIR ...] [--csv OUT.csv]

Per run: test ECE (top label, 15 equal-width bins) and NLL of the model's own
probabilities, after temperature scaling, and after vector scaling (a scale and a bias per
class, Guo et al., 2017), both fitted on the run's validation split. The noise floor is
the ECE that a perfectly calibrated model with the same confidences shows on 10,000
images: correctness drawn as Bernoulli(confidence), 500 draws, median and 95th percentile.
Reads the test set: a study, not training.
"""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np

from fmnist import rundir
from fmnist.calibration import fit_temperature, nll
from fmnist.data import load_split
from fmnist.metrics import calibration
from fmnist.ood import softmax
from fmnist.split import split_of_run


def fit_vector(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class scale and bias minimizing the NLL of softmax(logits * w + b)."""
    from scipy.optimize import minimize

    classes = logits.shape[1]

    def loss(params):
        w, b = params[:classes], params[classes:]
        return nll(logits * w + b, labels)

    start = np.r_[np.ones(classes), np.zeros(classes)]
    result = minimize(loss, start, method="L-BFGS-B")
    return result.x[:classes], result.x[classes:]


def noise_floor(confidence: np.ndarray, draws: int = 500, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        correct = rng.random(len(confidence)) < confidence
        # calibration() takes probabilities; build rows whose top probability is the confidence
        # and whose arg max is class 0, with labels 0 where correct.
        probabilities = np.zeros((len(confidence), 10))
        probabilities[:, 0] = confidence
        probabilities[:, 1:] = ((1 - confidence) / 9)[:, None]
        values.append(calibration(probabilities, np.where(correct, 0, 1))["ece"])
    return float(np.median(values)), float(np.quantile(values, 0.95))


def study(run_dir: str, data_dir=None) -> dict:
    from fmnist.heads import float32_copy, head_weights, load_keras, predict_outputs
    from fmnist.trust import features_model

    config = rundir.read_json(rundir.Path(run_dir) / rundir.CONFIG)
    images, labels = load_split("train", data_dir)
    test_images, test_labels = load_split("test", data_dir)
    _, val_idx = split_of_run(config, labels)
    model = float32_copy(load_keras(run_dir))  # what every engine serves
    extractor, (kernel, bias) = features_model(model), head_weights(model)
    val_logits = predict_outputs(extractor, images[val_idx])[0] @ kernel + bias
    test_logits = predict_outputs(extractor, test_images)[0] @ kernel + bias
    temperature = fit_temperature(val_logits, labels[val_idx])
    w, b = fit_vector(val_logits, labels[val_idx])
    rows = {"model's own": test_logits, "temperature": test_logits / temperature,
            "vector scaling": test_logits * w + b}
    result = {"run": config.get("model"), "temperature": temperature}
    for name, logits in rows.items():
        probabilities = softmax(logits)
        result[f"{name} ECE"] = calibration(probabilities, test_labels)["ece"]
        result[f"{name} NLL"] = nll(logits, test_labels)
        result[f"{name} accuracy"] = float((probabilities.argmax(1) == test_labels).mean())
    median, high = noise_floor(softmax(test_logits / temperature).max(axis=1))
    result["noise floor ECE (median)"], result["noise floor ECE (95th pct)"] = median, high
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--csv")
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    results = [study(run, args.data_dir) for run in args.runs]
    for result in results:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()})
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(results[0]))
            writer.writeheader()
            writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()}
                             for r in results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
