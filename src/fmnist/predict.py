"""Prediction with a trained model: :class:`Predictor`.

A predictor is loaded once, from a run directory, a ``.keras`` file or a ``.onnx`` file,
and then answers for any number of inputs: image files, bytes, PIL images, or uint8
arrays already in the dataset's conventions ((28, 28) or (N, 28, 28), light on black).
Real images go through :func:`fmnist.images.to_fashion_mnist` first.

Two engines compute the same probabilities: ``keras`` (the saved model, loaded in safe
mode: no pickled Python code is ever run) and ``onnx`` (onnxruntime on the file
`fmnist export` writes; no TensorFlow import at all).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmnist import rundir
from fmnist.data import CLASS_NAMES, sha256_file
from fmnist.errors import FmnistError
from fmnist.images import SIDE, ImageInputError, Processed, load_for_model

ENGINES, ONNX_MODEL = rundir.ENGINES, rundir.ONNX_MODEL
# The run's numbers shown by `GET /v1/model`, when its metrics.json has them.
SUMMARY_METRICS = ("test_accuracy", "test_accuracy_tta", "test_loss", "n_test", "val_accuracy",
                   "epochs", "train_seconds")
BATCH = 1024


@dataclass(frozen=True)
class ClassScore:
    class_index: int
    label: str
    probability: float


@dataclass
class Prediction:
    """The top-k classes of one input, most probable first, and the 28x28 input the model saw."""

    top_k: list[ClassScore]
    pixels: np.ndarray  # uint8 (28, 28)
    name: str = ""
    inverted: bool = False

    def to_dict(self, include_input: bool = False) -> dict:
        out = {"top_k": [vars(score) for score in self.top_k]}
        if self.name:
            out["name"] = self.name
        if include_input:
            out["input"] = self.pixels.tolist()
            out["inverted"] = self.inverted
        return out


class KerasEngine:
    """A `.keras` model, loaded without compiling, in safe mode."""

    name = "keras"
    # Keras does not promise that one model may be called from several threads at once.
    thread_safe = False

    def __init__(self, path: Path):
        from fmnist.runtime import prepare_tensorflow

        prepare_tensorflow()
        import keras

        self.model = keras.saving.load_model(path, compile=False, safe_mode=True)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        # Pad to a power of two: each new batch size costs a graph trace, so a server that
        # sees every size from 1 to 64 traces 7 graphs instead of 64.
        count = len(pixels)
        padded = 1 << max(0, count - 1).bit_length()
        if padded != count:
            pixels = np.concatenate([pixels, np.zeros((padded - count, *pixels.shape[1:]),
                                                      pixels.dtype)])
        return np.asarray(self.model.predict_on_batch(pixels), dtype=np.float32)[:count]


class OnnxEngine:
    """An ONNX file run by onnxruntime on the CPU (float32 pixels in, probabilities out)."""

    name = "onnx"
    thread_safe = True  # onnxruntime's InferenceSession.run is documented as thread-safe

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            # Idle worker threads otherwise spin for a while after each run, burning a core
            # a server needs for parsing the next request.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = onnxruntime.InferenceSession(str(path), options,
                                                        providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped failures
            raise FmnistError(f"{path} is not a loadable ONNX model ({str(error).splitlines()[0]}); "
                              "export it again with `fmnist export RUN_DIR --format onnx`") from None
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: pixels})[0]


@dataclass
class ModelFiles:
    """Where a model lives: the file an engine loads and the run directory around it, if any."""

    path: Path
    engine: str
    run_dir: Path | None = None


def locate(source: str | os.PathLike, engine: str | None = None) -> ModelFiles:
    """Resolve a run directory / .keras / .onnx path and an engine, checking files exist.

    Cheap (no TensorFlow import), so the CLI can reject a bad path at once.
    """
    source = Path(source)
    if engine is not None and engine not in ENGINES:
        raise FmnistError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if source.is_dir():
        rundir.require_run_dir(source, needs=rundir.MODEL)
        engine = engine or "keras"
        path = source / rundir.ENGINE_FILES[engine]
        if not path.is_file():
            raise FmnistError(f"{source} has no {ONNX_MODEL}; create it with "
                              f"`fmnist export {source} --format onnx`")
        return ModelFiles(path, engine, source)
    if not source.is_file():
        raise FmnistError(f"model {source} does not exist; pass a run directory, a .keras "
                          "or a .onnx file")
    suffix_engine = {".keras": "keras", ".onnx": "onnx"}.get(source.suffix.lower())
    if suffix_engine is None:
        raise FmnistError(f"{source}: expected a run directory, a .keras or a .onnx file")
    if engine is not None and engine != suffix_engine:
        raise FmnistError(f"{source} is a {suffix_engine} model; drop --engine {engine} or "
                          f"pass the run directory")
    parent = source.parent if (source.parent / rundir.CONFIG).is_file() else None
    return ModelFiles(source, suffix_engine, parent)


def _run_info(run_dir: Path | None) -> dict:
    if run_dir is None:
        return {}
    config, metrics = rundir.read_json(run_dir / rundir.CONFIG), rundir.read_metrics(run_dir)
    return {"model": config.get("model"), "seed": config.get("seed"),
            "metrics": {key: metrics[key] for key in SUMMARY_METRICS if key in metrics}}


def as_pixel_batch(array, name: str = "pixels") -> np.ndarray:
    """Validate an array of 28x28 images with values 0..255 -> float32 (N, 28, 28).

    Accepts (28, 28) or (N, 28, 28), integers or floats. Raises :class:`ImageInputError`
    (422) for any other shape, non-finite values or values outside 0..255.
    """
    try:
        values = np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float range
        raise ImageInputError(f"{name}: expected numbers in a 28x28 grid or a list of such "
                              "grids; got a ragged or non-numeric array") from None
    if values.ndim == 2:
        values = values[None]
    if values.ndim != 3 or values.shape[1:] != (SIDE, SIDE) or values.shape[0] == 0:
        raise ImageInputError(f"{name}: expected shape (28, 28) or (N, 28, 28), "
                              f"got {tuple(np.shape(array))}")
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
        raise ImageInputError(f"{name}: pixel values must be numbers from 0 to 255")
    return values.astype(np.float32)


def in_batches(function, images: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """``function`` over ``images`` ``batch`` at a time, outputs concatenated as float32."""
    return np.concatenate([np.asarray(function(images[start:start + batch]), dtype=np.float32)
                           for start in range(0, len(images), batch)])


def top_k(probabilities: np.ndarray, k: int) -> list[ClassScore]:
    """The ``k`` most probable classes of one (10,) probability vector, best first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [ClassScore(int(i), CLASS_NAMES[i], float(probabilities[i])) for i in order]


class Predictor:
    """A loaded model and its description. Thread-safe: ``predict`` and ``probabilities``
    may be called from any number of threads at once (an engine that is not thread-safe,
    Keras, is called by one thread at a time; onnxruntime runs concurrently)."""

    def __init__(self, engine, files: ModelFiles):
        self.engine = engine
        self._engine_lock = None if getattr(engine, "thread_safe", False) else threading.Lock()
        self.files = files
        info = _run_info(files.run_dir)
        metadata = getattr(engine, "metadata", {})
        self.name = info.get("model") or metadata.get("fmnist_model") or files.path.stem
        self.metrics = info.get("metrics", {})
        self.sha256 = sha256_file(files.path)

    @classmethod
    def load(cls, source: str | os.PathLike, engine: str | None = None,
             threads: int | None = None) -> "Predictor":
        """Load from a run directory (``engine``: keras, the default, or onnx), a .keras or .onnx file.

        ``threads``: onnxruntime's intra-op threads (default: one per core, spinning while
        idle: best for big batches; a server answering one image at a time wants 1).
        """
        files = locate(source, engine)
        loaded = (KerasEngine(files.path) if files.engine == "keras"
                  else OnnxEngine(files.path, threads))
        return cls(loaded, files)

    def describe(self) -> dict:
        """What the model is, for clients: identified by name and file hash, never by a
        server path."""
        return {"name": self.name, "engine": self.engine.name, "sha256": self.sha256,
                "classes": list(CLASS_NAMES),
                "input": {"shape": [SIDE, SIDE], "dtype": "uint8", "range": [0, 255],
                          "convention": "light object on a black background, as in Fashion-MNIST"},
                "metrics": self.metrics}

    def probabilities(self, pixels) -> np.ndarray:
        """(28, 28) or (N, 28, 28) pixel values 0..255 -> float32 (N, 10) probabilities."""
        batch = as_pixel_batch(pixels)
        if self._engine_lock is None:
            return in_batches(self.engine, batch)
        with self._engine_lock:
            return in_batches(self.engine, batch)

    def prepare(self, inputs, names: list[str] | None = None) -> list[tuple[str, Processed | np.ndarray]]:
        """Split ``inputs`` into named single images; files/bytes/PIL images are preprocessed.

        An input is a path, bytes, a PIL image, a :class:`~fmnist.images.Processed`, a pixel
        array (28, 28) or (N, 28, 28), or a list of any of these. ``names``: one per input
        (an upload's file name), used in results and in error messages; by default a path
        names itself and anything else is unnamed.
        """
        if isinstance(inputs, np.ndarray) and names is None:
            return [("", image) for image in as_pixel_batch(inputs).astype(np.uint8)]
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        if names is not None and len(names) != len(inputs):
            raise ValueError(f"{len(names)} names for {len(inputs)} inputs")
        prepared = []
        for index, item in enumerate(inputs):
            name = names[index] if names is not None else (
                str(item) if isinstance(item, (str, os.PathLike)) else "")
            if isinstance(item, np.ndarray):
                batch = as_pixel_batch(item, name or f"input {index}").astype(np.uint8)
                prepared.extend((name, image) for image in batch)
            elif isinstance(item, Processed):  # already converted by the caller
                prepared.append((name, item))
            else:
                prepared.append((name, load_for_model(item, name or f"input {index}")))
        return prepared

    def predict(self, inputs, k: int = 3, names: list[str] | None = None) -> list[Prediction]:
        """Top-``k`` classes for each image of ``inputs`` (see :meth:`prepare`), in order.

        This is the one image path: the CLI, the Python API and both serve endpoints call
        it. Thread-safe.
        """
        prepared = self.prepare(inputs, names)
        pixels = np.stack([p.pixels if isinstance(p, Processed) else p for _, p in prepared])
        probabilities = self.probabilities(pixels)
        return [Prediction(top_k(row, k), item.pixels if isinstance(item, Processed) else item,
                           name, isinstance(item, Processed) and item.inverted)
                for (name, item), row in zip(prepared, probabilities)]
