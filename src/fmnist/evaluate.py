"""Test-set evaluation: the only code in fmnist that reads the test set.

Training validates on its own split of the training images (see split.py); this module
runs once a model is final and writes the test metrics into the run's metrics.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmnist import plots, rundir
from fmnist.data import CLASS_NAMES, load_split
from fmnist.metrics import (VIEW_SETS, calibration, classification_metrics, confusion_matrix,
                            mirrored, most_confused, per_class_scores, predict_proba,
                            tta_views, top_k_accuracy)
from fmnist.report import write_reports
from fmnist.trust import read as read_trust

GALLERY_SIZE = 24  # misclassified images shown, most confident mistakes first


def evaluate_run(run_dir: str | Path, data_dir=None, test_data=None, tta: bool = False) -> dict:
    """Evaluate a run's final model on the test set and record it in metrics.json.

    Uses the first ``test_size`` test images when the run's config limits them (quick
    runs); otherwise all 10,000. ``test_data``: the test ``(images, labels)`` if already
    loaded. ``tta``: also score the mean of the probabilities of each image and its
    mirror (``test_accuracy_tta``), for runs trained with flips only (see
    ``tta_applies``); ``test_accuracy`` is always the plain score. Returns the updated
    metrics.
    """
    run_dir = rundir.require_run_dir(run_dir, needs=rundir.MODEL)
    with rundir.exclusive(run_dir):  # not while the run is still training, nor twice at once
        return _evaluate(run_dir, data_dir, test_data, tta)


def _evaluate(run_dir: Path, data_dir, test_data, tta: bool) -> dict:
    from fmnist.runtime import prepare_tensorflow

    prepare_tensorflow()
    import keras

    config = rundir.read_json(run_dir / rundir.CONFIG)
    tta = tta and tta_applies(config)
    x_test, y_test = _test_slice(config, test_data if test_data is not None
                                 else load_split("test", data_dir))
    model = keras.saving.load_model(run_dir / rundir.MODEL, compile=False, safe_mode=True)
    probabilities = predict_proba(model, x_test)

    metrics = rundir.read_metrics(run_dir)
    metrics.update(score_test_set(probabilities, y_test))
    metrics.update(score_calibrated(model, read_trust(run_dir), x_test, y_test))
    metrics.update({"n_test": int(len(y_test)), "tta": tta})
    if tta:
        averaged = (probabilities + predict_proba(model, mirrored(x_test))) / 2
        tta_scores = classification_metrics(averaged, y_test)
        metrics.update({"test_accuracy_tta": tta_scores["accuracy"],
                        "test_loss_tta": tta_scores["loss"]})
    else:
        metrics.pop("test_accuracy_tta", None)
        metrics.pop("test_loss_tta", None)
    rundir.write_json(run_dir / rundir.METRICS, metrics)
    write_figures(run_dir, x_test, y_test, probabilities, metrics, model=model)
    write_reports(run_dir, config, metrics)
    return metrics


def view_study(run_dir: str | Path, train_data, test_data, shift: int = 1) -> dict:
    """Accuracy of each test-time augmentation of ``VIEW_SETS`` (plain, flip, flip and
    ``shift``-pixel shifts) on the run's validation split and on the test set.

    The validation figures are the ones to choose by; the test figures report what the
    choice gives. ``train_data``/``test_data``: the 60,000 training and the test
    ``(images, labels)``. Returns ``{"validation": {set: accuracy}, "test": {...}}``;
    writes nothing.
    """
    from fmnist.runtime import prepare_tensorflow
    from fmnist.split import split_of_run

    prepare_tensorflow()
    import keras

    run_dir = rundir.require_run_dir(run_dir, needs=rundir.MODEL)
    config = rundir.read_json(run_dir / rundir.CONFIG)
    _, val_idx = split_of_run(config, train_data[1])
    x_test, y_test = _test_slice(config, test_data)
    model = keras.saving.load_model(run_dir / rundir.MODEL, compile=False, safe_mode=True)
    result = {}
    for split, (images, labels) in {"validation": (train_data[0][val_idx], train_data[1][val_idx]),
                                    "test": (x_test, y_test)}.items():
        probabilities = {name: predict_proba(model, view)
                         for name, view in tta_views(images, shift).items()}
        result[split] = {
            name: classification_metrics(np.mean([probabilities[v] for v in views], axis=0),
                                         labels)["accuracy"]
            for name, views in VIEW_SETS.items()}
    return result


def _test_slice(config: dict, test_data) -> tuple[np.ndarray, np.ndarray]:
    """The test images a run is scored on: the first ``test_size`` where its config
    limits them (quick runs), else all 10,000."""
    x_test, y_test = test_data
    test_size = config.get("test_size")
    return (x_test[:test_size], y_test[:test_size]) if test_size else (x_test, y_test)


def tta_applies(config: dict) -> bool:
    """Whether flip test-time augmentation means anything for a run (its config.json).

    Only a model trained on mirrored images has seen mirror images; for the others the
    mirror is out of distribution and averaging with it lowers accuracy (by 4 points for
    the seed MLP), which would read as if TTA hurt.
    """
    return bool(config.get("flip"))


def score_test_set(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """Every test-set number of the report, as metrics.json keys (plain predictions)."""
    predicted = probabilities.argmax(axis=1)
    confusion = confusion_matrix(labels, predicted, classes=len(CLASS_NAMES))
    scores = classification_metrics(probabilities, labels)
    calibrated = calibration(probabilities, labels, bins=15)
    return {
        "test_accuracy": scores["accuracy"],
        "test_loss": scores["loss"],
        "test_top2_accuracy": top_k_accuracy(probabilities, labels, k=2),
        "test_per_class": per_class_scores(confusion),
        "test_confusion": confusion.tolist(),
        "test_ece": calibrated["ece"],
        "test_calibration_bins": calibrated["bins"],
        "test_most_confused": most_confused(confusion, top=5),
    }


CALIBRATED_KEYS = ("test_ece_calibrated", "test_nll", "test_nll_calibrated",
                   "test_calibration_bins_calibrated", "temperature")


def score_calibrated(model, trust: dict | None, images: np.ndarray, labels: np.ndarray) -> dict:
    """Test NLL and ECE of the model's own probabilities and after its temperature
    (trust.json), as metrics.json keys; for a run never calibrated, every key is None.

    The NLL here is unclipped (from logits), so it is comparable before and after.
    """
    if trust is None:
        return dict.fromkeys(CALIBRATED_KEYS)
    from fmnist.calibration import nll
    from fmnist.trust import run_outputs, trusted_model

    outputs = run_outputs(trusted_model(model, trust), images)
    logits, temperature = outputs["logits"], float(trust["temperature"])
    calibrated = calibration(outputs["probabilities"], labels, bins=15)
    return {"test_ece_calibrated": calibrated["ece"], "test_nll": nll(logits, labels),
            "test_nll_calibrated": nll(logits, labels, temperature),
            "test_calibration_bins_calibrated": calibrated["bins"], "temperature": temperature}


def write_figures(run_dir: Path, images, labels, probabilities, metrics: dict,
                  model=None) -> None:
    """The report's PNGs: confusion, per-class accuracy, mistakes, reliability, curves."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    plots.plot_confusion(np.array(metrics["test_confusion"]), CLASS_NAMES, run_dir / "confusion.png")
    plots.plot_per_class_accuracy([c["recall"] for c in metrics["test_per_class"]], CLASS_NAMES,
                                  run_dir / "per_class.png", overall=metrics["test_accuracy"])
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:GALLERY_SIZE]
    saliency = None
    if model is not None and len(wrong):
        from fmnist.heads import predict_outputs
        from fmnist.saliency import occlusion_map

        saliency = np.stack([occlusion_map(lambda x: predict_outputs(model, x)[0], images[i],
                                           predicted[i]) for i in wrong])
    plots.plot_gallery(images[wrong], labels[wrong], predicted[wrong], confidence[wrong],
                       CLASS_NAMES, run_dir / "misclassified.png",
                       title="Most confident mistakes on the test set", saliency=saliency)
    calibrated = metrics.get("test_calibration_bins_calibrated")
    plots.plot_reliability(metrics["test_calibration_bins"], metrics["test_ece"],
                           run_dir / "reliability.png",
                           calibrated=(calibrated, metrics["test_ece_calibrated"]) if calibrated else None)
    history_path = run_dir / rundir.HISTORY
    if history_path.exists() and not (run_dir / rundir.CURVES).exists():
        plots.plot_history(rundir.read_json(history_path), run_dir / rundir.CURVES)
