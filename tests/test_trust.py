"""Calibrated probabilities, the out-of-distribution score, saliency and the bundled model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import run_cli, run_main
from fmnist import calibration, ood, saliency


def test_the_fitted_temperature_recovers_the_one_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20_000, 10))
    probabilities = ood.softmax(logits, 2.0).astype(np.float64)
    labels = (probabilities.cumsum(1) > rng.random((len(logits), 1))).argmax(1)
    assert calibration.fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.05)
    # Any other temperature fits worse.
    best = calibration.nll(logits, labels, calibration.fit_temperature(logits, labels))
    assert best <= min(calibration.nll(logits, labels, t) for t in (1.0, 1.5, 2.5, 4.0))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=40),
       st.lists(st.integers(0, 6), min_size=1, max_size=40))
def test_auroc_is_the_mann_whitney_statistic_ties_counted_half(inside, outside):
    pairs = [(a > b) + 0.5 * (a == b) for a in inside for b in outside]
    assert ood.auroc(np.array(inside), np.array(outside)) == pytest.approx(np.mean(pairs))


def test_threshold_accepts_the_asked_share_and_fpr_counts_what_passes():
    inside = np.arange(100, dtype=float)
    threshold = ood.fit_threshold(inside, accept=0.95)
    assert (inside >= threshold).mean() == 0.95
    assert ood.fpr_at_tpr(inside, np.array([0.0, 1.0, 50.0, 99.0])) == 0.5


def test_mahalanobis_is_zero_at_a_class_mean_and_grows_away_from_it():
    rng = np.random.default_rng(1)
    features = np.concatenate([rng.normal(0, 1, (500, 3)), rng.normal(5, 1, (500, 3))])
    labels = np.repeat([0, 1], 500)
    gaussians = ood.fit_gaussians(features, labels, classes=2)
    scores = ood.mahalanobis(np.array([gaussians.means[1], gaussians.means[1] + 3, [40, 40, 40]]),
                             gaussians)
    assert scores[0] == pytest.approx(0, abs=1e-9) and scores[0] > scores[1] > scores[2]


def test_occlusion_finds_where_the_evidence_lies():
    def probabilities(pixels):  # class 0 is sure exactly as far as the top-left corner is lit
        lit = np.asarray(pixels)[:, :8, :8].mean(axis=(1, 2)) / 255
        return np.stack([lit] + [(1 - lit) / 9] * 9, axis=1)

    image = np.zeros((28, 28), np.uint8)
    image[:8, :8] = 255
    image[20:, 20:] = 255  # lit too, but the model ignores it
    heat = saliency.occlusion_map(probabilities, image, 0)
    assert heat.shape == (28, 28) and heat.max() == 1.0
    assert heat[:8, :8].mean() > 0.3 and heat[20:, 20:].max() == 0


def test_a_trained_run_is_calibrated_and_its_classes_do_not_move(trained_run, test_images):
    from fmnist.heads import load_keras
    from fmnist.metrics import predict_proba
    from fmnist.predict import Predictor

    trust = json.loads((trained_run / "trust.json").read_text())
    validation = trust["validation"]
    assert validation["nll_calibrated"] <= validation["nll"] + 1e-12
    assert 0.9 <= validation["uploads_accepted"] <= 1.0
    x, _ = test_images
    own = predict_proba(load_keras(trained_run), x)
    calibrated = Predictor.load(trained_run).probabilities(x)
    assert (own.argmax(1) == calibrated.argmax(1)).all()
    assert not np.allclose(own, calibrated, atol=1e-3)  # the temperature did something
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["temperature"] == trust["temperature"]
    assert metrics["test_nll_calibrated"] <= metrics["test_nll"] + 0.05
    assert 0 <= metrics["test_ece_calibrated"] <= 1


def test_the_threshold_travels_with_the_export_to_the_core_install(exported_run, test_images,
                                                                   tmp_path):
    from fmnist.predict import Predictor

    run, report = exported_run
    trust = json.loads((run / "trust.json").read_text())
    assert report["format"] == 2 and report["ood"]["threshold"] == trust["ood"]["threshold"]
    assert report["temperature"] == trust["temperature"]
    x, _ = test_images
    keras_out = Predictor.load(run, "keras").outputs(x[:200])
    copy = tmp_path / "shipped.onnx"
    shutil.copy(run / "model.onnx", copy)
    shutil.copy(run / "model.onnx.json", tmp_path / "shipped.onnx.json")
    np.save(tmp_path / "x.npy", x[:200])
    script = ("import sys, json, numpy as np; from fmnist.predict import Predictor; "
              f"p = Predictor.load({str(copy)!r}); x = np.load({str(tmp_path / 'x.npy')!r}); "
              "o = p.outputs(x); r = p.predict(x[:2]); "
              f"np.save({str(tmp_path / 'score.npy')!r}, o['ood_score']); "
              f"np.save({str(tmp_path / 'p.npy')!r}, o['probabilities']); "
              "print(json.dumps([p.threshold, r[0].in_distribution is not None, 'tensorflow' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    threshold, flagged, tensorflow = json.loads(out.stdout)
    assert threshold == trust["ood"]["threshold"] and flagged and not tensorflow
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), keras_out["probabilities"], atol=1e-4)
    scores = np.load(tmp_path / "score.npy")
    np.testing.assert_allclose(scores, keras_out["ood_score"], rtol=1e-3, atol=1e-3)


def test_a_format_1_export_still_serves_without_a_score(exported_run, test_images, tmp_path):
    import onnx

    from fmnist.predict import Predictor

    run, report = exported_run
    graph = onnx.load(str(run / "model.onnx"))
    del graph.graph.output[1:]  # as exports before sidecar format 2: probabilities only
    onnx.save(graph, str(tmp_path / "old.onnx"))
    old_report = {k: v for k, v in report.items()
                  if k not in ("format", "outputs", "temperature", "temperature_in_graph", "ood")}
    (tmp_path / "old.onnx.json").write_text(json.dumps(old_report))
    old = Predictor.load(tmp_path / "old.onnx")
    x, _ = test_images
    prediction = old.predict(x[:1])[0]
    assert prediction.in_distribution is None and prediction.ood_score is None
    assert old.threshold is None and old.describe()["ood"] is None
    assert old.probabilities(x[:5]).shape == (5, 10)


def test_a_sidecar_of_an_unknown_format_is_refused(exported_run, tmp_path):
    from fmnist.errors import FmnistError
    from fmnist.predict import Predictor

    shutil.copy(exported_run[0] / "model.onnx", tmp_path / "m.onnx")
    (tmp_path / "m.onnx.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(FmnistError, match="format"):
        Predictor.load(tmp_path / "m.onnx")


def test_calibrate_fits_a_run_made_without_it(trained_run, real_data_dir, tmp_path):
    run = tmp_path / "old-run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns(".lock"))
    (run / "trust.json").unlink()
    result = run_main("calibrate", str(run), "--data-dir", str(real_data_dir))
    assert result.returncode == 0, result.stderr
    assert "calibrated: temperature" in result.stdout and (run / "trust.json").is_file()
    missing = run_main("calibrate", str(tmp_path / "nowhere"), "--data-dir", str(real_data_dir))
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1


def test_evaluate_ood_reports_every_set(trained_run, real_data_dir, tmp_path):
    from fmnist.oodsets import SETS

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns(".lock"))
    result = run_main("evaluate", str(run), "--ood", "--ood-count", "12",
                      "--data-dir", str(real_data_dir))
    assert result.returncode == 0, result.stderr
    report = json.loads((run / "metrics.json").read_text())["ood"]
    assert list(report["sets"]) == list(SETS)
    for row in report["sets"].values():
        assert 0 <= row["auroc"] <= 1 and 0 <= row["fpr_at_95_tpr"] <= 1 and row["images"] > 0
    assert 0 <= report["in_distribution"]["test uploads"]["flagged"] <= 1
    assert "AUROC" in result.stdout and "digits" in result.stdout


def test_the_bundled_model_is_what_its_sidecar_says(real_data_dir):
    from fmnist.data import load_split, sha256_file
    from fmnist.predict import Predictor, default_model_path, read_sidecar

    path = default_model_path()
    sidecar = read_sidecar(path)
    assert sidecar["sha256"] == sha256_file(path) and sidecar["format"] == 2
    assert path.stat().st_size < 2_000_000
    images, labels = load_split("test", real_data_dir)
    model = Predictor.load()
    assert float((model.probabilities(images).argmax(1) == labels).mean()) == sidecar["onnx_test_accuracy"]
    assert model.threshold == sidecar["ood"]["threshold"] and sidecar["seed"] == 0
    assert "make default-model" not in sidecar["commands"][0] and "--seed 0" in sidecar["commands"][0]


def test_predict_with_no_model_uses_the_bundled_one_and_explains(test_images, tmp_path):
    x, _ = test_images
    boot = tmp_path / "boot.png"
    Image.fromarray(255 - np.kron(x[0], np.ones((4, 4), np.uint8))).save(boot)
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(noise)
    result = run_cli("predict", str(boot), str(noise), "--explain", str(tmp_path / "why.png"))
    assert result.returncode == 0, result.stderr
    assert "bundled default model" in result.stderr.splitlines()[0]
    assert "1. Ankle boot" in result.stdout
    assert result.stdout.count("does not look like a garment") == 1  # the noise only
    for name in ("why-1.png", "why-2.png"):
        assert Image.open(tmp_path / name).size == (224, 224)
    assert not list(tmp_path.glob(".*.tmp"))
