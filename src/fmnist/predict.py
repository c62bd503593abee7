"""Prediction with a trained model: :class:`Predictor`.

A predictor is loaded once, from a run directory, a ``.keras`` file or a ``.onnx`` file,
and then answers for any number of inputs: image files, bytes, PIL images, or uint8
arrays already in the dataset's conventions ((28, 28) or (N, 28, 28), light on black).
Real images go through :func:`fmnist.images.to_fashion_mnist` first.

Two engines compute the same numbers: ``keras`` (the saved model, loaded in safe mode: no
pickled Python code is ever run) and ``onnx`` (onnxruntime on the file `fmnist export`
writes; no TensorFlow import at all). For a calibrated run (trust.py) both give calibrated
probabilities and an out-of-distribution score with its threshold: each prediction says
whether the image looks like anything the model was trained on (``in_distribution``).
Uncalibrated runs and format-1 ONNX files give their own probabilities and no score
(``in_distribution`` is None).
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
SUMMARY_METRICS = ("test_accuracy", "test_accuracy_tta", "test_loss", "test_ece", "test_ece_calibrated",
                   "n_test", "val_accuracy",
                   "epochs", "train_seconds")
BATCH = 1024
SIDECAR_FORMATS = (1, 2)  # the ONNX sidecars this version reads (export.SIDECAR_FORMAT writes)


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
    # Higher: more like the training images; None where the model has no score.
    ood_score: float | None = None
    in_distribution: bool | None = None
    # float32 (28, 28) in [0, 1], where the top class's evidence lies (saliency.py); on request.
    saliency: np.ndarray | None = None

    def to_dict(self, include_input: bool = False) -> dict:
        out = {"top_k": [vars(score) for score in self.top_k], "ood_score": self.ood_score,
               "in_distribution": self.in_distribution}
        if self.saliency is not None:
            out["saliency"] = np.round(self.saliency, 3).tolist()
        if self.name:
            out["name"] = self.name
        if include_input:
            out["input"] = self.pixels.tolist()
            out["inverted"] = self.inverted
        return out


def _padded_call(function, pixels: np.ndarray):
    """``function`` on ``pixels`` padded to a power-of-two batch: each new batch size costs
    a Keras graph trace, so a server that sees every size from 1 to 64 traces 7 graphs
    instead of 64. Returns the outputs trimmed back to ``len(pixels)`` rows."""
    count = len(pixels)
    padded = 1 << max(0, count - 1).bit_length()
    if padded != count:
        pixels = np.concatenate([pixels, np.zeros((padded - count, *pixels.shape[1:]),
                                                  pixels.dtype)])
    return function(pixels), count


class KerasEngine:
    """A `.keras` model, loaded without compiling, in safe mode; with its run's trust.json
    (``trust``) it computes calibrated probabilities and the out-of-distribution score."""

    name = "keras"
    # Keras does not promise that one model may be called from several threads at once.
    thread_safe = False

    def __init__(self, path: Path, trust: dict | None = None):
        from fmnist.heads import load_keras

        model = load_keras(path)
        self.trust = trust
        if trust is not None:
            from fmnist.trust import trusted_model

            model = trusted_model(model, trust)
        self.model = model
        self.temperature = float(trust["temperature"]) if trust else 1.0
        self.threshold = float(trust["ood"]["threshold"]) if trust else None
        self.ood_method = trust["ood"]["method"] if trust else None

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        outputs, count = _padded_call(self.model.predict_on_batch, pixels)
        if self.trust is None:
            return {"probabilities": np.asarray(outputs, dtype=np.float32)[:count]}
        probabilities, _, score = outputs
        return {"probabilities": np.asarray(probabilities, dtype=np.float32)[:count],
                "ood_score": np.asarray(score, dtype=np.float32)[:count]}


class OnnxEngine:
    """An ONNX file run by onnxruntime on the CPU (float32 pixels in, probabilities out),
    described by its sidecar (``FILE.onnx.json``) when it has one: format 2 graphs output
    calibrated probabilities and an out-of-distribution score, whose threshold the sidecar
    holds."""

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
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.sidecar = read_sidecar(Path(path))
        ood = self.sidecar.get("ood") if "ood_score" in self.output_names else None
        self.temperature = float(self.sidecar.get("temperature", 1.0))
        self.threshold = float(ood["threshold"]) if ood else None
        self.ood_method = ood["method"] if ood else None

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        outputs = dict(zip(self.output_names, self.session.run(None, {self.input_name: pixels})))
        result = {"probabilities": outputs.get("probabilities", next(iter(outputs.values())))}
        if self.threshold is not None:
            result["ood_score"] = outputs["ood_score"]
        return result


def read_sidecar(onnx_path: Path) -> dict:
    """The JSON beside an ONNX file (``model.onnx`` -> ``model.onnx.json``), or {}.

    Format 1 (no ``format`` key): the parity report only. Format 2 adds ``outputs``,
    ``temperature`` (already applied in the graph) and ``ood`` (method and threshold, or
    null). A sidecar that is not valid JSON is an error naming the file: a model must not
    silently lose its threshold.
    """
    path = onnx_path.with_name(onnx_path.name + ".json")
    if not path.is_file():
        return {}
    sidecar = rundir.read_json(path)
    if not isinstance(sidecar, dict) or sidecar.get("format", 1) not in SIDECAR_FORMATS:
        raise FmnistError(f"{path}: not an fmnist ONNX sidecar of format "
                          f"{' or '.join(map(str, SIDECAR_FORMATS))}; export the model again")
    return sidecar


@dataclass
class ModelFiles:
    """Where a model lives: the file an engine loads and the run directory around it, if any."""

    path: Path
    engine: str
    run_dir: Path | None = None
    default: bool = False  # the model that ships in the package


def default_model_path() -> Path:
    """The ONNX model that ships in the package (cnn-fast, calibrated; `make default-model`)."""
    from importlib.resources import files

    return Path(str(files("fmnist"))) / "default_model" / ONNX_MODEL


def default_model_line(files: ModelFiles) -> str:
    """The one line `predict` and `serve` print when they fall back to the bundled model."""
    sidecar = read_sidecar(files.path)
    accuracy = sidecar.get("metrics", {}).get("test_accuracy")
    return (f"using the bundled default model ({sidecar.get('model', 'cnn-fast')}, seed "
            f"{sidecar.get('seed', '?')}" + (f", test accuracy {accuracy:.4f}" if accuracy else "")
            + "); pass a run directory or .onnx file to use your own")


def locate(source: str | os.PathLike | None, engine: str | None = None) -> ModelFiles:
    """Resolve a run directory / .keras / .onnx path and an engine, checking files exist.

    ``source`` None: the bundled default model (:func:`default_model_path`, onnx engine).
    Cheap (no TensorFlow import), so the CLI can reject a bad path at once.
    """
    if engine is not None and engine not in ENGINES:
        raise FmnistError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if source is None:
        path = default_model_path()
        if engine not in (None, "onnx"):
            raise FmnistError("the bundled default model is ONNX only; drop --engine keras "
                              "or pass a run directory")
        if not path.is_file():
            raise FmnistError("this install has no bundled default model; pass a run directory "
                              "or .onnx file (or build it in a checkout: `make default-model`)")
        return ModelFiles(path, "onnx", None, default=True)
    source = Path(source)
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


def in_batches(function, images: np.ndarray, batch: int = BATCH):
    """``function`` over ``images`` ``batch`` at a time, outputs concatenated as float32.

    ``function`` returns an array, or a dict of arrays (then so does this)."""
    parts = [function(images[start:start + batch]) for start in range(0, len(images), batch)]
    if isinstance(parts[0], dict):
        return {key: np.concatenate([np.asarray(part[key], dtype=np.float32) for part in parts])
                for key in parts[0]}
    return np.concatenate([np.asarray(part, dtype=np.float32) for part in parts])


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
        sidecar = getattr(engine, "sidecar", {})
        self.name = (info.get("model") or sidecar.get("model") or metadata.get("fmnist_model")
                     or files.path.stem)
        shipped = sidecar.get("metrics") or {}
        self.metrics = info.get("metrics") or {key: shipped[key] for key in SUMMARY_METRICS
                                               if shipped.get(key) is not None}
        self.sha256 = sha256_file(files.path)

    @classmethod
    def load(cls, source: str | os.PathLike | None = None, engine: str | None = None,
             threads: int | None = None) -> "Predictor":
        """Load from a run directory (``engine``: keras, the default, or onnx), a .keras or
        .onnx file, or (``source`` None) the bundled default model.

        ``threads``: onnxruntime's intra-op threads (default: one per core, spinning while
        idle: best for big batches; a server answering one image at a time wants 1).
        """
        files = locate(source, engine)
        if files.engine == "keras":
            from fmnist.trust import read as read_trust

            loaded = KerasEngine(files.path, read_trust(files.path.parent))
        else:
            loaded = OnnxEngine(files.path, threads)
        return cls(loaded, files)

    def describe(self) -> dict:
        """What the model is, for clients: identified by name and file hash, never by a
        server path."""
        return {"name": self.name, "engine": self.engine.name, "sha256": self.sha256,
                "classes": list(CLASS_NAMES),
                "input": {"shape": [SIDE, SIDE], "dtype": "uint8", "range": [0, 255],
                          "convention": "light object on a black background, as in Fashion-MNIST"},
                "temperature": getattr(self.engine, "temperature", 1.0),
                "ood": (None if self.threshold is None else
                        {"method": self.engine.ood_method, "threshold": self.threshold}),
                "metrics": self.metrics}

    def outputs(self, pixels) -> dict[str, np.ndarray]:
        """(28, 28) or (N, 28, 28) pixel values 0..255 -> ``probabilities`` float32 (N, 10)
        (calibrated where the model is) and, where the model has one, ``ood_score`` (N,)."""
        batch = as_pixel_batch(pixels)
        if self._engine_lock is None:
            outputs = in_batches(self.engine, batch)
        else:
            with self._engine_lock:
                outputs = in_batches(self.engine, batch)
        # An engine may return bare probabilities (N, 10): any callable serves.
        return outputs if isinstance(outputs, dict) else {"probabilities": outputs}

    def probabilities(self, pixels) -> np.ndarray:
        """(28, 28) or (N, 28, 28) pixel values 0..255 -> float32 (N, 10) probabilities."""
        return self.outputs(pixels)["probabilities"]

    @property
    def threshold(self) -> float | None:
        """The out-of-distribution threshold: a score below it is flagged (None: no score)."""
        return getattr(self.engine, "threshold", None)

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

    def explain(self, prediction: Prediction) -> Prediction:
        """``prediction`` with its occlusion saliency map for its top class filled in."""
        from fmnist.saliency import occlusion_map

        prediction.saliency = occlusion_map(self.probabilities, prediction.pixels,
                                            prediction.top_k[0].class_index)
        return prediction

    def predict(self, inputs, k: int = 3, names: list[str] | None = None) -> list[Prediction]:
        """Top-``k`` classes for each image of ``inputs`` (see :meth:`prepare`), in order.

        This is the one image path: the CLI, the Python API and both serve endpoints call
        it. Thread-safe.
        """
        prepared = self.prepare(inputs, names)
        pixels = np.stack([p.pixels if isinstance(p, Processed) else p for _, p in prepared])
        outputs = self.outputs(pixels)
        scores = outputs.get("ood_score")
        predictions = []
        for index, ((name, item), row) in enumerate(zip(prepared, outputs["probabilities"])):
            score = None if scores is None else float(scores[index])
            predictions.append(Prediction(
                top_k(row, k), item.pixels if isinstance(item, Processed) else item, name,
                isinstance(item, Processed) and item.inverted, ood_score=score,
                in_distribution=None if score is None or self.threshold is None
            else bool(score >= self.threshold)))
        return predictions
