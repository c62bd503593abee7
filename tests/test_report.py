"""Evaluation metrics against hand-computed cases, and the reports built from them."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from conftest import run_main
from fmnist import data, metrics, rundir
from fmnist.evaluate import evaluate_run
from fmnist.train import TrainConfig, train


def _one_hot_probabilities(predicted, confidence, classes=3):
    """Probabilities whose argmax is ``predicted`` with top probability ``confidence``."""
    probabilities = np.full((len(predicted), classes), 0.0)
    for row, (p, c) in enumerate(zip(predicted, confidence)):
        probabilities[row] = (1 - c) / (classes - 1)
        probabilities[row, p] = c
    return probabilities


def test_confusion_matrix_and_per_class_scores_by_hand():
    labels = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0])
    confusion = metrics.confusion_matrix(labels, predicted, classes=3)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    scores = metrics.per_class_scores(confusion)
    # class 0: precision 1/2, recall 1/2; class 1: precision 2/3, recall 1; class 2: never predicted
    assert scores[0] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert scores[1]["precision"] == pytest.approx(2 / 3) and scores[1]["recall"] == 1.0
    assert scores[1]["f1"] == pytest.approx(0.8)
    assert scores[2] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


class _RowSums:
    """A stand-in model: each image's class scores are its pixel sum over 1..10; it
    records the batch shapes it was handed."""

    def __init__(self):
        self.shapes = []

    def predict_on_batch(self, batch):
        self.shapes.append(batch.shape)
        return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True) * np.arange(1, 11)


@pytest.mark.parametrize("n, batch_size", [(7, 3), (6, 3), (2, 5), (1, 1024)])
def test_predict_proba_keeps_every_row_in_order_and_one_batch_shape(n, batch_size):
    images = np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2)
    model = _RowSums()
    out = metrics.predict_proba(model, images, batch_size=batch_size)
    expected = images.reshape(n, -1).sum(axis=1, keepdims=True) * np.arange(1, 11)
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    # One shape only, so TensorFlow traces the predict step once: the last slice is padded.
    assert {shape[0] for shape in model.shapes} == {min(n, batch_size)}


def test_expected_calibration_error_by_hand():
    # Two images at confidence 0.9 (one right, one wrong) and one at 0.6 (right):
    # bin (0.867, 0.933]: accuracy 0.5, confidence 0.9 -> |0.4| x 2/3
    # bin (0.533, 0.600]: accuracy 1.0, confidence 0.6 -> |0.4| x 1/3        ECE = 0.4
    probabilities = _one_hot_probabilities([0, 1, 2], [0.9, 0.9, 0.6])
    labels = np.array([0, 0, 2])
    result = metrics.calibration(probabilities, labels, bins=15)
    assert result["ece"] == pytest.approx(0.4)
    filled = [b for b in result["bins"] if b["count"]]
    assert [(b["count"], b["accuracy"]) for b in filled] == [(1, 1.0), (2, 0.5)]
    assert len(result["bins"]) == 15


def test_perfectly_calibrated_predictions_have_zero_ece():
    probabilities = _one_hot_probabilities([0, 0, 0, 0], [1.0, 1.0, 1.0, 1.0])
    assert metrics.calibration(probabilities, np.zeros(4, int))["ece"] == pytest.approx(0.0)


def test_top2_accuracy_and_most_confused_pairs():
    probabilities = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    assert metrics.top_k_accuracy(probabilities, np.array([1, 0, 0]), k=2) == pytest.approx(2 / 3)
    confusion = np.array([[5, 3, 0], [1, 6, 4], [0, 4, 2]])
    assert metrics.most_confused(confusion, top=3) == [
        {"true": 1, "predicted": 2, "count": 4}, {"true": 2, "predicted": 1, "count": 4},
        {"true": 0, "predicted": 1, "count": 3}]


@pytest.fixture(scope="module")
def evaluated_run(real_data_dir, tmp_path_factory):
    # Trained with flips, so flip TTA applies (evaluate.tta_applies).
    run = train(TrainConfig(epochs=1, flip=True, train_size=2000, val_size=500, test_size=600),
                tmp_path_factory.mktemp("run") / "mlp", data_dir=real_data_dir, verbose=0)
    evaluate_run(run, data_dir=real_data_dir, tta=True)
    return run


def test_evaluation_extends_metrics_json(evaluated_run):
    saved = json.loads((evaluated_run / rundir.METRICS).read_text())
    confusion = np.array(saved["test_confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 600 == saved["n_test"]
    assert saved["test_accuracy"] == pytest.approx(np.trace(confusion) / 600)
    assert saved["test_top2_accuracy"] >= saved["test_accuracy"]
    assert len(saved["test_per_class"]) == 10 and 0 <= saved["test_ece"] <= 1
    assert [c["support"] for c in saved["test_per_class"]] == confusion.sum(axis=1).tolist()
    assert saved["tta"] is True and "test_accuracy_tta" in saved
    pair = saved["test_most_confused"][0]
    assert pair["count"] == confusion[pair["true"], pair["predicted"]] == (
        confusion - np.diag(np.diag(confusion))).max()


def test_report_html_is_self_contained_with_its_figures(evaluated_run):
    page = (evaluated_run / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == 5  # confusion, per class, gallery, reliability, curves
    for png in embedded:
        assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from a network
    saved = json.loads((evaluated_run / rundir.METRICS).read_text())
    assert f"{saved['test_accuracy']:.4f}" in page and "Ankle boot" in page


def test_report_markdown_has_the_same_numbers(evaluated_run):
    text = (evaluated_run / "report.md").read_text()
    saved = json.loads((evaluated_run / rundir.METRICS).read_text())
    assert f"| Test accuracy | {saved['test_accuracy']:.4f} |" in text
    assert f"| Expected calibration error | {saved['test_ece']:.4f} |" in text
    for name in ("confusion.png", "per_class.png", "misclassified.png", "reliability.png"):
        assert (evaluated_run / name).read_bytes()[:4] == b"\x89PNG"


def test_compare_tables_and_plots_runs(evaluated_run, tmp_path):
    other = tmp_path / "copy"
    other.mkdir()
    for name in (rundir.CONFIG, rundir.METRICS):
        (other / name).write_bytes((evaluated_run / name).read_bytes())
    result = run_main("compare", str(evaluated_run), str(other), "--out", str(tmp_path / "cmp"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("| mlp |") == 2 and "Ankle boot" in result.stdout
    assert (tmp_path / "cmp" / "compare.md").read_text().count("| mlp |") == 2
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_refuses_a_folder_that_is_not_an_evaluated_run(tmp_path):
    result = run_main("compare", str(tmp_path))
    assert result.returncode == 1 and "has no metrics.json" in result.stderr


def test_data_show_writes_a_sample_grid(real_data_dir, tmp_path):
    out = tmp_path / "samples.png"
    result = run_main("data", "--show", "--out", str(out), "--data-dir", str(real_data_dir))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:4] == b"\x89PNG" and str(out) in result.stdout


def test_shifted_moves_pixels_and_fills_black():
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28).astype(np.uint8) | 1
    down_right = metrics.shifted(images, 1, 2)
    np.testing.assert_array_equal(down_right[:, 1:, 2:], images[:, :-1, :-2])
    assert not down_right[:, 0, :].any() and not down_right[:, :, :2].any()
    up_left = metrics.shifted(images, -2, -1)
    np.testing.assert_array_equal(up_left[:, :-2, :-1], images[:, 2:, 1:])
    assert not up_left[:, -2:, :].any() and not up_left[:, :, -1].any()
    np.testing.assert_array_equal(metrics.shifted(images, 0, 0), images)


def test_test_time_views_and_the_sets_made_of_them():
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    views = metrics.tta_views(images, shift=1)
    assert len(views) == 10 and all(v.shape == images.shape for v in views.values())
    np.testing.assert_array_equal(views["left mirror"], metrics.mirrored(views["left"]))
    assert set(metrics.tta_views(images, shift=0)) == {"image", "mirror"}
    assert all(set(names) <= set(views) for names in metrics.VIEW_SETS.values())


def test_the_view_study_scores_validation_and_test_and_agrees_with_evaluate(
        evaluated_run, real_data_dir):
    from fmnist.evaluate import view_study

    study = view_study(evaluated_run, data.load_split("train", real_data_dir),
                       data.load_split("test", real_data_dir), shift=1)
    assert set(study) == {"validation", "test"}
    assert all(set(scores) == set(metrics.VIEW_SETS) and all(0 <= a <= 1 for a in scores.values())
               for scores in study.values())
    # Plain and flip are what evaluate scored (and flip TTA), on the run's own test slice.
    scored = rundir.read_metrics(evaluated_run)
    assert study["test"]["plain"] == scored["test_accuracy"]
    assert study["test"]["flip"] == scored["test_accuracy_tta"]
    assert study["validation"]["plain"] == pytest.approx(scored["val_accuracy"], abs=1e-6)
