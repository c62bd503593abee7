"""`fmnist export`: a trained model as a portable, verified ONNX file.

The exported graph is float32 end to end (models trained in mixed bfloat16 are rebuilt
with a float32 policy and the same weights first; bfloat16 is a training speed-up, not
something an ONNX consumer should have to support). It is :func:`fmnist.trust.trusted_model`:
it takes raw pixels ``pixels``: float32 (N, 28, 28), values 0..255, and returns
``probabilities`` (float32 (N, 10), calibrated by the run's temperature), ``logits``
(N, 10) and ``ood_score`` (N,). The batch dimension is dynamic. No augmentation is inside:
fmnist augments in the input pipeline.

The sidecar ``model.onnx.json`` (:func:`report_path`, format :data:`SIDECAR_FORMAT`) holds
the parity report and what the core install needs to serve the graph: the temperature
already in it, and the out-of-distribution threshold (null for a run never calibrated).
A sidecar without ``format`` is format 1: one ``probabilities`` output, uncalibrated, no
score; the core install still serves it.

The file is written to a temporary name, checked against Keras on the run's validation
images (its split rebuilt from the seed in config.json: largest absolute probability
difference <= ``tolerance`` and the same class for every image) and only then renamed
into place; a failed check leaves no model.onnx behind. The test set is not read, so
export works with a data folder that holds only the training files.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from fmnist import __version__, rundir
from fmnist.data import CLASS_NAMES
from fmnist.errors import FmnistError
from fmnist.predict import in_batches, read_sidecar

TOLERANCE = 1e-4
# Largest allowed difference of the out-of-distribution score, relative to max(1, |score|):
# its squared distances expand as |p|^2 - 2 p.c + |c|^2 in float32, which cancels to
# about 1e-4 between two kernels; a decision can flip only that close to the threshold.
SCORE_TOLERANCE = 1e-3
INPUT_NAME = "pixels"
SIDECAR_FORMAT = 2


class ExportError(FmnistError):
    """The exported model does not match the Keras model."""


def _rename_and_describe(path: Path, model_name: str) -> int:
    """Give the graph's input and output stable names and record what the model is.

    Returns the graph's ONNX opset."""
    import onnx

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    from fmnist.trust import OUTPUTS

    renames = {graph.input[0].name: INPUT_NAME,
               **{output.name: name for output, name in zip(graph.output, OUTPUTS)}}
    for value in (*graph.input, *graph.output):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    meta = {"fmnist_model": model_name, "fmnist_version": __version__,
            "classes": json.dumps(list(CLASS_NAMES)),
            "input": "pixels: float32 (N, 28, 28), 0..255, light object on black"}
    del graph_model.metadata_props[:]
    for key, value in meta.items():
        graph_model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))
    return max(entry.version for entry in graph_model.opset_import if entry.domain in ("", "ai.onnx"))


def export_onnx(source: str | os.PathLike, images: np.ndarray, out: str | os.PathLike | None = None,
                tolerance: float = TOLERANCE) -> dict:
    """Export a run directory's (or a .keras file's) model to ONNX and verify it on ``images``.

    ``images``: uint8 (N, 28, 28), normally the run's validation images
    (:func:`export_images`): never the test set, which only ``evaluate`` reads. Returns the parity
    report, also written next to the ONNX file (:func:`report_path`). Raises :class:`ExportError`
    (and leaves nothing behind) when the check fails.
    """
    from fmnist.runtime import prepare_tensorflow

    prepare_tensorflow()
    import keras
    import onnxruntime

    source = Path(source)
    keras_path = source / rundir.MODEL if source.is_dir() else source
    if not keras_path.is_file():
        raise FmnistError(f"{keras_path} does not exist; pass a run directory of `fmnist train`")
    out = Path(out) if out else keras_path.with_name("model.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    config_path = keras_path.parent / rundir.CONFIG
    model_name = (rundir.read_json(config_path).get("model") if config_path.is_file()
                  else keras_path.stem)

    from fmnist import trust as trust_file

    trained = keras.saving.load_model(keras_path, compile=False, safe_mode=True)
    trust = trust_file.read(keras_path.parent)
    model = trust_file.trusted_model(trained, trust)
    tmp = out.with_name(f".{out.stem}.tmp.onnx")
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():  # Keras' tf2onnx shim probes np.object, deprecated
            warnings.simplefilter("ignore", FutureWarning)
            model.export(str(tmp), format="onnx", verbose=False,
                         input_signature=[keras.InputSpec(shape=(None, 28, 28), dtype="float32")])
        opset = _rename_and_describe(tmp, model_name)
        export_seconds = time.perf_counter() - started
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        pixels = np.asarray(images, dtype=np.float32)
        onnx_out = dict(zip(trust_file.OUTPUTS, _outputs(session, pixels)))
        keras_out = trust_file.run_outputs(model, pixels)
        onnx_probs, keras_probs = onnx_out["probabilities"], keras_out["probabilities"]
        trained_classes = (in_batches(trained.predict_on_batch, pixels).argmax(1)
                           if _mixed(trained) else keras_probs.argmax(1))
        difference = float(np.abs(onnx_probs - keras_probs).max())
        mismatches = int((onnx_probs.argmax(1) != keras_probs.argmax(1)).sum())
        score_difference = float((np.abs(onnx_out["ood_score"] - keras_out["ood_score"])
                                  / np.maximum(1.0, np.abs(keras_out["ood_score"]))).max())
        report = {"format": SIDECAR_FORMAT, "onnx": str(out), "source": str(keras_path),
                  "model": model_name, "outputs": list(trust_file.OUTPUTS),
                  "temperature": trust["temperature"] if trust else 1.0,
                  "temperature_in_graph": True,
                  "ood": ({key: trust["ood"][key] for key in ("method", "threshold", "accept")}
                          if trust else None),
                  "images": int(len(pixels)), "max_abs_difference": difference,
                  "tolerance": tolerance, "class_mismatches": mismatches,
                  "max_score_difference": score_difference,
                  "mixed_precision_trained": _mixed(trained),
                  "agreement_with_trained_model": float(
                      (onnx_probs.argmax(1) == trained_classes).mean()),
                  "export_seconds": export_seconds, "onnxruntime": onnxruntime.__version__,
                  "opset": opset}
        if difference > tolerance or mismatches or score_difference > SCORE_TOLERANCE:
            raise ExportError(
                f"ONNX check failed on {len(pixels)} images: max |p_keras - p_onnx| = "
                f"{difference:.2e} (limit {tolerance:.0e}), {mismatches} different classes, "
                f"out-of-distribution score off by {score_difference:.1e} (limit "
                f"{SCORE_TOLERANCE:.0e}); nothing was written")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    rundir.write_json(report_path(out), report)
    return report


MIN_INT8_AGREEMENT = 0.99
CALIBRATION_IMAGES = 1024


def export_images(run_dir: str | os.PathLike, train_data) -> tuple[np.ndarray, np.ndarray]:
    """Images to check and to calibrate an export of a run's model, never test images.

    ``train_data``: the 60,000 training images and labels (uint8 (60000, 28, 28), (60000,)).
    Returns the run's validation images (uint8 (V, 28, 28), rebuilt from the seed and sizes
    in its config.json) for parity and int8 acceptance, and the first
    ``CALIBRATION_IMAGES`` of its own training images for int8 calibration.
    """
    from fmnist.split import split_of_run

    images, labels = train_data
    train_idx, val_idx = split_of_run(rundir.read_json(Path(run_dir) / rundir.CONFIG), labels)
    return images[val_idx], images[train_idx[:CALIBRATION_IMAGES]]


def quantize_int8(onnx_path: str | os.PathLike, calibration_images: np.ndarray,
                  check_images: np.ndarray, out: str | os.PathLike | None = None,
                  min_agreement: float = MIN_INT8_AGREEMENT) -> dict:
    """An int8 copy of a float32 ONNX model (onnxruntime static quantization), checked.

    Weights per channel and activations are quantized to 8 bits (QDQ format), with
    activation ranges calibrated on ``calibration_images`` (uint8 (N, 28, 28), training
    images). The copy is kept only if it predicts the same class as the float model on at
    least ``min_agreement`` of ``check_images`` (the run's validation images: never the test
    set). int8 trades exact
    probabilities for speed on CPUs with VNNI; the report says how much.
    """
    import onnxruntime
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path = Path(onnx_path)
    out = Path(out) if out else onnx_path.with_name(onnx_path.stem + ".int8.onnx")
    calibration = np.asarray(calibration_images, dtype=np.float32)

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration[i:i + 128] for i in range(0, len(calibration), 128))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    prepared = out.with_name(f".{out.stem}.prep.onnx")
    tmp = out.with_name(f".{out.stem}.tmp.onnx")
    try:
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(tmp), Batches(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        float_session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        int8_session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        pixels = np.asarray(check_images, dtype=np.float32)
        float_probs = in_batches(lambda x: float_session.run(None, {INPUT_NAME: x})[0], pixels)
        int8_probs = in_batches(lambda x: int8_session.run(None, {INPUT_NAME: x})[0], pixels)
        agreement = float((float_probs.argmax(1) == int8_probs.argmax(1)).mean())
        float_sidecar = read_sidecar(onnx_path)
        # The int8 graph keeps the float graph's outputs and temperature; its score is not
        # checked against the float one, so it carries no threshold.
        report = {"format": float_sidecar.get("format", 1), "outputs": float_sidecar.get("outputs"),
                  "temperature": float_sidecar.get("temperature", 1.0),
                  "temperature_in_graph": float_sidecar.get("temperature_in_graph", False),
                  "ood": None,
                  "onnx": str(out), "source": str(onnx_path), "images": int(len(pixels)),
                  "calibration_images": int(len(calibration)), "class_agreement": agreement,
                  "min_agreement": min_agreement,
                  "max_abs_difference": float(np.abs(float_probs - int8_probs).max()),
                  "quantization": "QDQ, int8 weights per channel, uint8 activations"}
        if agreement < min_agreement:
            raise ExportError(f"int8 model agrees with the float model on only "
                              f"{100 * agreement:.2f}% of {len(pixels)} images (limit "
                              f"{100 * min_agreement:.0f}%); nothing was written")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        prepared.unlink(missing_ok=True)
    rundir.write_json(report_path(out), report)
    return report


def _outputs(session, pixels: np.ndarray) -> list[np.ndarray]:
    """Every output of an ONNX session over ``pixels``, batched, float32."""
    batches = [session.run(None, {INPUT_NAME: pixels[start:start + 1024]})
               for start in range(0, len(pixels), 1024)]
    return [np.concatenate([np.asarray(b[i], np.float32) for b in batches])
            for i in range(len(batches[0]))]


def report_path(onnx_path: Path) -> Path:
    """Where the parity report of an ONNX file goes: model.onnx -> model.onnx.json."""
    return onnx_path.with_name(onnx_path.name + ".json")


def _mixed(model) -> bool:
    return any(layer.dtype_policy.compute_dtype != "float32" for layer in model.layers)
