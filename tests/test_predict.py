"""Predictor (fmnist.predict), ONNX export (fmnist.export) and their commands."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from fmnist import rundir
from fmnist.errors import FmnistError
from fmnist.images import ImageInputError
from fmnist.models import model_names
from fmnist.predict import Predictor, as_pixel_batch, locate, top_k
from conftest import run_cli, run_main

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def exported(exported_run):
    """The trained run with model.onnx, and its parity report."""
    return exported_run


def png(pixels: np.ndarray, invert: bool = False) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(255 - pixels if invert else pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_top_k_is_sorted_and_labelled():
    scores = top_k(np.array([0.05, 0.6, 0, 0, 0, 0, 0.3, 0, 0, 0.05], np.float32), 3)
    assert [s.class_index for s in scores] == [1, 6, 0]
    assert [s.label for s in scores] == ["Trouser", "Shirt", "T-shirt/top"]
    assert scores[0].probability == pytest.approx(0.6)


@pytest.mark.parametrize("bad, problem", [
    (np.zeros((27, 28)), "shape"), (np.zeros((2, 28, 28, 1)), "shape"), (np.zeros((0, 28, 28)), "shape"),
    (np.full((28, 28), 256.0), "0 to 255"), (np.full((28, 28), -1.0), "0 to 255"),
    (np.full((28, 28), np.nan), "0 to 255"), ([[1, 2], [3]], "ragged"), ("pixels", "non-numeric"),
])
def test_pixel_arrays_are_validated(bad, problem):
    with pytest.raises(ImageInputError) as raised:
        as_pixel_batch(bad)
    assert problem in str(raised.value) and raised.value.status == 422


def test_predictor_answers_for_every_kind_of_input(trained_run, test_images, tmp_path):
    predictor = Predictor.load(trained_run)
    x, _ = test_images
    path = tmp_path / "garment.png"
    path.write_bytes(png(x[0]))
    single = predictor.predict(x[0], k=4)
    assert len(single) == 1 and len(single[0].top_k) == 4
    probabilities = [s.probability for s in single[0].top_k]
    assert probabilities == sorted(probabilities, reverse=True)
    mixed = predictor.predict([path, png(x[0], invert=True), Image.fromarray(x[0]), x[:3]])
    assert len(mixed) == 6 and mixed[0].name == str(path)
    assert {p.top_k[0].class_index for p in mixed[:4]} == {single[0].top_k[0].class_index}
    assert mixed[1].inverted and not mixed[0].inverted
    assert all(p.pixels.shape == (28, 28) and p.pixels.dtype == np.uint8 for p in mixed)
    batch = predictor.probabilities(x[:300])
    assert batch.shape == (300, 10) and batch.dtype == np.float32
    np.testing.assert_allclose(batch.sum(axis=1), 1.0, atol=1e-5)


def test_predictor_describes_the_run(trained_run):
    info = Predictor.load(trained_run).describe()
    assert info["name"] == "mlp" and info["engine"] == "keras" and len(info["classes"]) == 10
    metrics = json.loads((trained_run / rundir.METRICS).read_text())
    assert info["metrics"]["test_accuracy"] == metrics["test_accuracy"]


def test_locate_explains_bad_model_paths(trained_run, tmp_path):
    with pytest.raises(FmnistError, match="does not exist"):
        locate(tmp_path / "nothing")
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(FmnistError, match="expected a run directory"):
        locate(tmp_path / "model.h5")
    with pytest.raises(FmnistError, match="is a keras model"):
        locate(trained_run / rundir.MODEL, engine="onnx")
    empty = tmp_path / "run"
    empty.mkdir()
    with pytest.raises(FmnistError, match="model.keras"):
        locate(empty)


def test_onnx_export_matches_keras(exported, test_images):
    run, report = exported
    assert (run / "model.onnx").is_file() and (run / "model.onnx.json").is_file()
    assert report["images"] == 1000 and report["class_mismatches"] == 0
    assert report["max_abs_difference"] <= 1e-4
    keras_predictor, onnx_predictor = Predictor.load(run), Predictor.load(run, engine="onnx")
    assert onnx_predictor.engine.name == "onnx" and onnx_predictor.name == "mlp"
    x = test_images[0]
    difference = np.abs(keras_predictor.probabilities(x) - onnx_predictor.probabilities(x)).max()
    assert difference <= 1e-4


def test_onnx_file_has_named_dynamic_io_and_metadata(exported):
    import onnx

    graph_model = onnx.load(str(exported[0] / "model.onnx"))
    (inp,), outputs = graph_model.graph.input, graph_model.graph.output
    assert inp.name == "pixels"
    assert [out.name for out in outputs] == ["probabilities", "logits", "ood_score"]
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [28, 28]  # dynamic batch
    meta = {p.key: p.value for p in graph_model.metadata_props}
    assert meta["fmnist_model"] == "mlp" and json.loads(meta["classes"])[9] == "Ankle boot"


def test_a_standalone_onnx_file_predicts_without_tensorflow(exported, tmp_path, test_images):
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "standalone.onnx"
    shutil.copy(exported[0] / "model.onnx", copy)
    script = ("import sys, numpy as np; from fmnist.predict import Predictor; "
              f"p = Predictor.load({str(copy)!r}); "
              "print(p.name, p.probabilities(np.zeros((2, 28, 28))).shape); "
              "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["mlp", "(2,", "10)", "False"]


def test_mixed_precision_models_export_as_float32(tmp_path):
    import keras

    from fmnist.export import export_onnx
    from fmnist.models import build_model

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_model("cnn-fast")
    finally:
        keras.config.set_dtype_policy("float32")
    model.save(tmp_path / "bf16.keras")
    images = np.random.default_rng(0).integers(0, 256, (256, 28, 28), dtype=np.uint8)
    report = export_onnx(tmp_path / "bf16.keras", images, out=tmp_path / "bf16.onnx")
    assert report["mixed_precision_trained"] and report["max_abs_difference"] <= 1e-4
    assert report["agreement_with_trained_model"] > 0.9


def test_a_failed_check_leaves_nothing_behind(trained_run, test_images, monkeypatch, tmp_path):
    import onnx
    from onnx import numpy_helper

    from fmnist import export

    describe = export._rename_and_describe

    def broken_converter(path, name):  # what a converter bug looks like: a weight goes wrong
        describe(path, name)
        graph_model = onnx.load(str(path))
        weights = max((w for w in graph_model.graph.initializer if w.data_type == onnx.TensorProto.FLOAT),
                      key=lambda w: numpy_helper.to_array(w).size)
        weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) * 1.5, weights.name))
        onnx.save(graph_model, str(path))

    monkeypatch.setattr(export, "_rename_and_describe", broken_converter)
    out = tmp_path / "model.onnx"
    with pytest.raises(export.ExportError, match="ONNX check failed.*nothing was written"):
        export.export_onnx(trained_run, test_images[0][:200], out=out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_predict_command_prints_a_table_or_json_lines(exported, test_images, tmp_path):
    run, _ = exported
    x, y = test_images
    good = tmp_path / "boot.png"
    good.write_bytes(png(x[0], invert=True))
    # Files crafted to break each format's parser: one error line each, no traceback, and
    # the good image is still answered.
    from corpus import crafted_files

    crafted = []
    for name, (payload, status) in crafted_files().items():
        if status != 200:
            crafted.append(tmp_path / name)
            crafted[-1].write_bytes(payload)
    table = run_main("predict", str(run), str(good), *map(str, crafted), "--top-k", "2")
    assert table.returncode == 1 and "Traceback" not in table.stderr
    errors = table.stderr.strip().splitlines()
    assert len(errors) == len(crafted) and all(line.startswith("fmnist predict: error: ")
                                               for line in errors), errors
    assert str(good) in table.stdout and table.stdout.count("%") == 2
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    lines = run_main("predict", str(run), str(good), str(bad), "--json", "--engine", "onnx")
    assert lines.returncode == 1
    records = [json.loads(line) for line in lines.stdout.splitlines()]
    assert {r["image"] for r in records} == {str(good), str(bad)}
    ok = next(r for r in records if r["image"] == str(good))
    assert len(ok["top_k"]) == 3 and f"1. {ok['top_k'][0]['label']} " in table.stdout
    assert "not an image" in next(r for r in records if r["image"] == str(bad))["error"]


def test_predict_and_serve_reject_bad_paths_before_loading_tensorflow(tmp_path):
    for command in (["predict", str(tmp_path / "nope"), "x.png"], ["serve", str(tmp_path / "nope")],
                    ["export", str(tmp_path / "nope")]):
        result = run_cli(*command)
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1 and "does not exist" in result.stderr


@pytest.mark.slow
def test_export_command_needs_no_test_file(trained_run, train_only_data_dir, tmp_path):
    out = tmp_path / "exported.onnx"
    # Checked on the run's own 1,000 validation images: the folder has no test file at all.
    result = run_main("export", str(trained_run), "--out", str(out), "--data-dir",
                     str(train_only_data_dir))
    assert result.returncode == 0, result.stderr
    assert "1,000 validation images" in result.stdout and "0 class differences" in result.stdout
    report = json.loads((tmp_path / "exported.onnx.json").read_text())
    assert report["images"] == 1_000 and report["max_abs_difference"] <= 1e-4


def test_export_checks_the_runs_own_validation_split(trained_run, real_data_dir):
    from fmnist.data import load_split
    from fmnist.export import export_images
    from fmnist.split import train_val_split

    x, y = load_split("train", real_data_dir)
    validation, calibration = export_images(trained_run, (x, y))
    train_idx, val_idx = train_val_split(y, 1000, 0, 6000)  # the fixture's settings
    assert np.array_equal(validation, x[val_idx]) and np.array_equal(calibration, x[train_idx[:1024]])


def test_int8_quantization_is_checked_and_loadable(exported, test_images, real_data_dir, tmp_path):
    from fmnist.data import load_split
    from fmnist.export import ExportError, quantize_int8

    run, _ = exported
    calibration = load_split("train", real_data_dir)[0][:256]
    x, _ = test_images
    # This small model is less sure of itself than a real one: 97% instead of the default 99%.
    report = quantize_int8(run / "model.onnx", calibration, x, out=tmp_path / "model.int8.onnx",
                           min_agreement=0.97)
    assert report["class_agreement"] >= 0.97 and report["calibration_images"] == 256
    assert (tmp_path / "model.int8.onnx.json").is_file()
    quantized = Predictor.load(tmp_path / "model.int8.onnx")
    float_classes = Predictor.load(run, engine="onnx").probabilities(x).argmax(1)
    assert (quantized.probabilities(x).argmax(1) == float_classes).mean() == report["class_agreement"]
    with pytest.raises(ExportError, match="nothing was written"):
        quantize_int8(run / "model.onnx", calibration, x, out=tmp_path / "strict.onnx", min_agreement=1.01)
    assert not (tmp_path / "strict.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx", "model.int8.onnx.json"]


def _engine_and_predictor(tmp_path, thread_safe: bool, call):
    from fmnist.predict import ModelFiles

    class Engine:
        name = "signalling"

        def __init__(self):
            self.thread_safe = thread_safe

        def __call__(self, pixels):
            call(predictor)
            return np.full((len(pixels), 10), 0.1, np.float32)

    (tmp_path / "weights").write_bytes(b"any model file")
    predictor = Predictor(Engine(), ModelFiles(tmp_path / "weights", "signalling"))
    return predictor


def test_predictor_calls_a_thread_safe_engine_concurrently(tmp_path):
    """onnxruntime sessions run concurrently: two calls meet inside the engine at once,
    which a barrier of two only lets through if neither waits for the other."""
    import threading

    meeting = threading.Barrier(2, timeout=30)
    predictor = _engine_and_predictor(tmp_path, True, lambda predictor: meeting.wait())
    errors = []

    def call():
        try:
            predictor.predict(np.zeros((2, 28, 28), np.uint8))
        except threading.BrokenBarrierError as error:  # serialized: the barrier never filled
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not any(thread.is_alive() for thread in threads)


def test_predictor_serializes_an_engine_that_is_not_thread_safe(tmp_path):
    """Keras is called by one thread at a time: inside the engine, the predictor's lock is
    held, so every other caller waits for it."""
    import threading

    held = []
    predictor = _engine_and_predictor(tmp_path, False,
                                      lambda predictor: held.append(predictor._engine_lock.locked()))
    threads = [threading.Thread(target=predictor.predict, args=(np.zeros((2, 28, 28), np.uint8),))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert held == [True] * 6


@pytest.mark.slow
@pytest.mark.parametrize("name", model_names())
def test_every_registered_model_exports_to_onnx_untrained(name, tmp_path):
    """Built by its preset's recipe (precision included) and exported before any training:
    a new model that cannot be exported fails here, the day it is registered."""
    import keras

    from fmnist.config import TrainConfig
    from fmnist.export import export_onnx
    from fmnist.hardware import choose_precision, dtype_policy
    from fmnist.recipe import new_model

    config = TrainConfig.resolve(name)
    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    keras.config.set_dtype_policy(dtype_policy(choose_precision(config.precision).precision))
    try:
        new_model(config, total_steps=10, images=images).save(tmp_path / f"{name}.keras")
    finally:
        keras.config.set_dtype_policy("float32")
    report = export_onnx(tmp_path / f"{name}.keras", images, out=tmp_path / f"{name}.onnx")
    assert report["class_mismatches"] == 0 and report["max_abs_difference"] <= 1e-4
    assert Predictor.load(tmp_path / f"{name}.onnx").probabilities(images[:3]).shape == (3, 10)
