"""Ensembles of runs (fmnist.ensemble): one model averaging the members, evaluated,
exported and served like any run; on small slices of the real data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli, run_main
from fmnist import rundir

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def second_run(real_data_dir, tmp_path_factory):
    """Another small mlp, of another seed, to stand beside ``trained_run``."""
    from fmnist.config import TrainConfig
    from fmnist.evaluate import evaluate_run
    from fmnist.train import train

    run = train(TrainConfig(epochs=1, seed=1, train_size=3000, val_size=1000, test_size=1000,
                            precision="float32"),  # as trained_run: float32 parity checks
                tmp_path_factory.mktemp("second") / "mlp", data_dir=real_data_dir, verbose=0)
    evaluate_run(run, data_dir=real_data_dir)
    return run


@pytest.mark.slow
def test_an_ensemble_averages_its_members_and_is_a_run_like_any(trained_run, second_run,
                                                                 real_data_dir, test_images, tmp_path):
    from fmnist.data import load_split
    from fmnist.ensemble import create_ensemble
    from fmnist.evaluate import evaluate_run
    from fmnist.export import export_images, export_onnx
    from fmnist.predict import Predictor

    out = create_ensemble([trained_run, second_run], tmp_path / "ensemble")
    config = json.loads((out / rundir.CONFIG).read_text())
    assert config["model"] == "ensemble" and [m["seed"] for m in config["members"]] == [0, 1]
    assert all(len(m["sha256"]) == 64 for m in config["members"])
    x, _ = test_images
    members = [own_probabilities(run, x[:200]) for run in (trained_run, second_run)]
    ensemble = Predictor.load(out)
    np.testing.assert_allclose(ensemble.probabilities(x[:200]), np.mean(members, axis=0), atol=1e-6)

    metrics = evaluate_run(out, data_dir=real_data_dir)  # the same report as a single run
    assert metrics["n_test"] == 1000 and 0.5 < metrics["test_accuracy"] <= 1.0
    assert len(metrics["members_test_accuracy"]) == 2 and metrics["params"] > 0
    assert metrics["model"] == "ensemble of 2 mlp"
    assert (out / "report.html").is_file() and (out / "confusion.png").is_file()

    validation, _ = export_images(out, load_split("train", real_data_dir))
    report = export_onnx(out, validation)  # one ONNX graph, the same parity check
    assert report["class_mismatches"] == 0 and report["max_abs_difference"] <= 1e-4
    onnx = Predictor.load(out, "onnx")
    np.testing.assert_allclose(onnx.probabilities(x[:50]), ensemble.probabilities(x[:50]), atol=1e-4)


@pytest.mark.slow
def test_members_that_held_out_the_same_images_are_scored_on_them(trained_run, second_run,
                                                                    real_data_dir, tmp_path):
    """Same seed and validation size (here another recipe than ``trained_run``): the ensemble
    gets a validation accuracy, the mean of the members' probabilities on that split; a
    member of another seed held out other images, and the ensemble gets none."""
    from fmnist.data import load_split
    from fmnist.split import split_of_run
    from fmnist.train import TrainConfig, train

    same_split = train(TrainConfig(epochs=1, learning_rate=0.003, train_size=6000, val_size=1000,
                                   test_size=1000), tmp_path / "other-recipe",
                       data_dir=real_data_dir, verbose=0)
    out = tmp_path / "ensemble"
    result = run_main("ensemble", str(trained_run), str(same_split), "--out", str(out),
                      "--data-dir", str(real_data_dir))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / rundir.METRICS).read_text())
    images, labels = load_split("train", real_data_dir)
    _, val_idx = split_of_run(json.loads((trained_run / rundir.CONFIG).read_text()), labels)
    mean = np.mean([own_probabilities(run, images[val_idx]) for run in (trained_run, same_split)], axis=0)
    assert metrics["n_val"] == 1000
    assert metrics["val_accuracy"] == pytest.approx(float(np.mean(mean.argmax(axis=1) == labels[val_idx])))
    assert f"validation accuracy: {metrics['val_accuracy']:.4f}" in result.stdout

    mixed = run_main("ensemble", str(trained_run), str(second_run), "--out", str(tmp_path / "mixed"),
                     "--data-dir", str(real_data_dir))
    assert mixed.returncode == 0 and "validation accuracy" not in mixed.stdout
    assert json.loads((tmp_path / "mixed" / rundir.METRICS).read_text())["val_accuracy"] is None


@pytest.mark.slow
def test_a_run_of_another_seed_on_one_split_seed_validates_and_ensembles_on_its_images(
        trained_run, real_data_dir, tmp_path):
    """--split-seed: seed 1's initialization and shuffling, seed 0's validation images (those
    of ``trained_run``), so the two make an ensemble scored on images neither trained on."""
    from fmnist.config import TrainConfig
    from fmnist.data import load_split
    from fmnist.ensemble import create_ensemble
    from fmnist.split import split_of_run
    from fmnist.train import train

    run = train(TrainConfig(epochs=1, seed=1, split_seed=0, train_size=6000, val_size=1000,
                            test_size=1000, precision="float32"), tmp_path / "seed1-split0",
                data_dir=real_data_dir, verbose=0)
    images, labels = load_split("train", real_data_dir)
    _, val_idx = split_of_run(json.loads((trained_run / rundir.CONFIG).read_text()), labels)
    right = own_probabilities(run, images[val_idx]).argmax(axis=1) == labels[val_idx]
    # Training validated on seed 0's images: its own figure is the accuracy on them.
    assert json.loads((run / rundir.METRICS).read_text())["val_accuracy"] == pytest.approx(right.mean())
    out = create_ensemble([trained_run, run], tmp_path / "ensemble", train_data=(images, labels))
    scored = json.loads((out / rundir.METRICS).read_text())
    assert scored["n_val"] == 1000 and 0.5 < scored["val_accuracy"] <= 1.0


def own_probabilities(run, images):
    """The run's model.keras's own probabilities, before its temperature: what an ensemble
    averages and a teacher teaches."""
    from fmnist.heads import load_keras
    from fmnist.metrics import predict_proba

    return predict_proba(load_keras(run), images)


def test_an_ensemble_needs_two_distinct_runs(trained_run, tmp_path):
    from fmnist.ensemble import create_ensemble
    from fmnist.errors import FmnistError

    with pytest.raises(FmnistError, match="at least two"):
        create_ensemble([trained_run], tmp_path / "one")
    with pytest.raises(FmnistError, match="given twice"):
        create_ensemble([trained_run, trained_run], tmp_path / "twice")
    assert not (tmp_path / "one").exists() and not (tmp_path / "twice").exists()
    missing = run_main("ensemble", str(trained_run), str(tmp_path / "nope"), "--out", str(tmp_path / "e"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr.strip().splitlines()[-1]


def test_distillation_targets_carry_the_label_and_the_teacher_side_by_side():
    """The gatherer's targets are the one-hot label then the teacher's probabilities
    (B, 20), for the images of the batch, whatever the augmentation does to the images;
    validation targets carry no teacher (zeros)."""
    from fmnist.config import TrainConfig
    from fmnist.pipeline import batch_gatherer, fit_targets

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    y = (np.arange(20) % 10).astype(np.uint8)
    soft = rng.dirichlet(np.ones(10), 20).astype(np.float32)
    config = TrainConfig(teacher="runs/t", distill_weight=0.3, flip=True, translate=2)
    images, targets = batch_gatherer(x, y, config, soft)(7, np.array([4, 11, 19]))
    one_hot = np.eye(10, dtype=np.float32)[y[[4, 11, 19]]]
    np.testing.assert_allclose(targets.numpy(), np.concatenate([one_hot, soft[[4, 11, 19]]], 1))
    assert images.shape == (3, 28, 28) and config.one_hot_targets
    validation = fit_targets(y[[4, 11, 19]], config)
    np.testing.assert_array_equal(validation, np.concatenate([one_hot, np.zeros_like(one_hot)], 1))
    assert fit_targets(y, TrainConfig()) is y  # no teacher, no smoothing: class indices


def _loss_and_gradient(loss, targets, logits):
    """A loss on softmax(logits) and its gradient with respect to the logits."""
    import tensorflow as tf

    logits = tf.Variable(logits)
    with tf.GradientTape() as tape:
        value = loss(tf.constant(targets), tf.nn.softmax(logits))
    return float(value), tape.gradient(value, logits).numpy()


def test_distillation_loss_is_hintons_and_at_temperature_1_the_mixed_cross_entropy():
    import keras

    from fmnist.distill import DistillationLoss

    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (6, 10)).astype(np.float32)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 6)]
    teacher = rng.dirichlet(np.ones(10), 6).astype(np.float32)
    packed = np.concatenate([labels, teacher], axis=1)
    # T = 1: the gradient of the cross-entropy against (1 - w) * label + w * teacher.
    _, grad = _loss_and_gradient(DistillationLoss(0.3, 1.0), packed, logits)
    mixed = keras.losses.CategoricalCrossentropy()
    _, expected = _loss_and_gradient(mixed, 0.7 * labels + 0.3 * teacher, logits)
    np.testing.assert_allclose(grad, expected, atol=1e-6)
    # T = 4: (1 - w) CE(label, p) + w T^2 KL(teacher || softmax(logits / T)), by hand.
    value, _ = _loss_and_gradient(DistillationLoss(0.3, 4.0), packed, logits)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    warm = logits / 4 - np.log(np.exp(logits / 4).sum(1, keepdims=True))
    by_hand = (0.7 * -(labels * log_p).sum(1)
               + 0.3 * 16 * (teacher * (np.log(teacher) - warm)).sum(1)).mean()
    assert value == pytest.approx(by_hand, rel=1e-4)
    # No teacher (validation targets: zeros): the label's cross-entropy alone, smoothed.
    bare = np.concatenate([labels, np.zeros_like(labels)], axis=1)
    value, _ = _loss_and_gradient(DistillationLoss(0.3, 4.0, label_smoothing=0.1), bare, logits)
    smoothed = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    assert value == pytest.approx(_loss_and_gradient(smoothed, labels, logits)[0], rel=1e-4)
    restored = DistillationLoss.from_config(DistillationLoss(0.3, 4.0, 0.1).get_config())
    assert (restored.weight, restored.temperature, restored.label_smoothing) == (0.3, 4.0, 0.1)


def test_warmed_probabilities_keep_their_order_and_flatten_with_temperature():
    from fmnist.config import TrainConfig
    from fmnist.errors import ConfigError
    from fmnist.distill import warmed

    p = np.random.default_rng(3).dirichlet(np.ones(10) * 0.3, 50).astype(np.float32)
    p[0] = np.eye(10)[3]  # a hard 0/1 answer must stay finite
    np.testing.assert_array_equal(warmed(p, 1.0), p)
    hot, warm = warmed(p, 1.0), warmed(p, 3.0)
    assert np.isfinite(warm).all() and np.allclose(warm.sum(1), 1, atol=1e-5)
    assert (warm.max(1) < hot.max(1) + 1e-7).all() and (warm.argmax(1) == hot.argmax(1)).all()
    with pytest.raises(ConfigError, match="needs a teacher"):
        TrainConfig(distill_temperature=2.0)
    with pytest.raises(ConfigError, match="distill_temperature"):
        TrainConfig(teacher="runs/t", distill_temperature=0.0)


@pytest.mark.slow
def test_a_distilled_run_records_its_teacher_and_resumes_only_with_it(trained_run, second_run,
                                                                        real_data_dir, tmp_path):
    import shutil

    from fmnist.config import TrainConfig
    from fmnist.errors import FmnistError
    from fmnist.train import resume, train

    teacher = tmp_path / "teacher"
    shutil.copytree(trained_run, teacher)
    config = TrainConfig(epochs=2, seed=2, train_size=2000, val_size=500, test_size=500,
                         teacher=str(teacher), distill_weight=0.5)
    run = train(config, tmp_path / "student", data_dir=real_data_dir, verbose=0, stop_after=1)
    saved = json.loads((run / rundir.CONFIG).read_text())
    assert saved["teacher"] == str(teacher) and saved["teacher_run"]["model"] == "mlp"
    assert len(saved["teacher_run"]["sha256"]) == 64 and saved["teacher_run"]["seconds"] > 0
    assert saved["teacher_run"]["train_seconds"] > 0  # the teacher's own cost, reported apart
    # Seed 2's student, seed 0's teacher: most of the student's validation images taught it.
    assert saved["teacher_run"]["shares_split"] is False
    # The teacher changes under a half-trained student: resuming would mix two targets.
    shutil.copy(second_run / rundir.MODEL, teacher / rundir.MODEL)
    with pytest.raises(FmnistError, match="holds another model"):
        resume(run, data_dir=real_data_dir, verbose=0)
    shutil.copy(trained_run / rundir.MODEL, teacher / rundir.MODEL)
    resume(run, data_dir=real_data_dir, verbose=0)
    metrics = json.loads((run / rundir.METRICS).read_text())
    assert metrics["epochs"] == 2 and metrics["teacher"]["sha256"] == saved["teacher_run"]["sha256"]
    history = json.loads((run / rundir.HISTORY).read_text())
    # The student's seconds are its epochs alone: the teacher's forward pass is apart.
    assert metrics["train_seconds"] == pytest.approx(sum(row["seconds"] for row in history))


def test_teacher_tta_averages_each_image_and_its_mirror_for_a_teacher_trained_with_flips(
        trained_run, test_images, tmp_path):
    import shutil

    from fmnist.config import TrainConfig
    from fmnist.errors import ConfigError, FmnistError
    from fmnist.metrics import mirrored
    from fmnist.distill import teacher_targets

    x = test_images[0][:64]
    with pytest.raises(FmnistError, match="not trained with flips"):  # mirrors it never saw
        teacher_targets(str(trained_run), x, tta=True)
    teacher = tmp_path / "flipped-teacher"
    shutil.copytree(trained_run, teacher)
    config = json.loads((teacher / rundir.CONFIG).read_text())
    (teacher / rundir.CONFIG).write_text(json.dumps({**config, "flip": True}))
    soft, record = teacher_targets(str(teacher), x, tta=True)
    expected = (own_probabilities(teacher, x) + own_probabilities(teacher, mirrored(x))) / 2
    np.testing.assert_allclose(soft, expected, atol=1e-6)
    assert soft.dtype == np.float32 and record["tta"] is True and record["seconds"] > 0
    plain, _ = teacher_targets(str(teacher), x)
    assert np.abs(plain - soft).max() > 1e-3  # the mirror changed the targets
    with pytest.raises(ConfigError, match="needs a teacher"):
        TrainConfig(distill_tta=True)


def test_a_missing_teacher_is_one_line_before_tensorflow(tmp_path, real_data_dir, trained_run):
    result = run_cli("train", "--teacher", str(tmp_path / "nope"), "--out", str(tmp_path / "s"),
                     "--data-dir", str(real_data_dir))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "does not exist" in result.stderr and not (tmp_path / "s").exists()
    # Mirror-image targets from a teacher that never saw a mirror: refused as early, before
    # the data is read (this data folder does not exist), let alone the teacher loaded.
    mirrored = run_main("train", "--teacher", str(trained_run), "--distill-tta",
                        "--out", str(tmp_path / "s"), "--data-dir", str(tmp_path / "no-data"))
    assert mirrored.returncode == 1 and "not trained with flips" in mirrored.stderr
    assert len(mirrored.stderr.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_a_teacher_of_another_split_is_said_to_flatter_validation(tmp_path, trained_run):
    """Said before the data is read (this data folder does not exist): the teacher is seed
    0's run on 1,000 validation and 6,000 training images."""
    other = run_main("train", "--teacher", str(trained_run), "--seed", "1", "--val-size", "1000",
                     "--train-size", "6000", "--out", str(tmp_path / "s"),
                     "--data-dir", str(tmp_path / "no-data"))
    assert "warning: the teacher" in other.stderr and "--split-seed" in other.stderr
    same = run_main("train", "--teacher", str(trained_run), "--seed", "1", "--split-seed", "0",
                    "--val-size", "1000", "--train-size", "6000", "--out", str(tmp_path / "s"),
                    "--data-dir", str(tmp_path / "no-data"))
    assert same.returncode == other.returncode == 1 and "warning" not in same.stderr
    assert not (tmp_path / "s").exists()
