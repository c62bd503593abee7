"""Calibrated probabilities and an out-of-distribution score, fitted to a trained run.

`fmnist train` ends with :func:`calibrate_run`, and `fmnist calibrate RUN` runs it on an
older run. It writes ``trust.json`` into the run directory:

- ``temperature``: T of temperature scaling, fitted on the validation split
  (calibration.py); the served probabilities are ``softmax(logits / T)``.
- ``ood``: the "does this look like a garment?" score and its threshold. The score is a
  sum of three terms (ood.py), each standardized by its median and MAD over training
  images: the Mahalanobis score of the penultimate features, that of the per-channel mean
  and standard deviation of the last convolution's activations (MLPs have no such term),
  and the energy of the logits. Feature distances catch what looks unlike any training
  image; the energy catches what no class claims. The experiment note on
  out-of-distribution scores compares it with the other candidates.
  The threshold accepts :data:`ACCEPT` of the validation images *sent through the upload
  path* (each encoded as PNG, decoded and converted like a user's file).

:func:`trusted_model` turns a model and its trust.json into one Keras model with three
outputs: calibrated ``probabilities`` (N, 10), ``logits`` (N, 10) and ``ood_score`` (N,).
The Keras engine runs it, and `fmnist export` writes it to ONNX, so the core install
computes the same score with onnxruntime alone. It computes in float32 whatever the run
trained in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmnist import ood, oodsets, rundir
from fmnist.errors import FmnistError
from fmnist.calibration import fit_temperature, nll
from fmnist.heads import HEAD, float32_copy, head_weights, load_keras, predict_outputs
from fmnist.metrics import calibration

TRUST = "trust.json"
FORMAT = 1
ACCEPT = 0.95  # share of in-distribution uploads the threshold accepts
METHOD = "mahalanobis (penultimate, last-conv channel statistics) + energy"
OUTPUTS = ("probabilities", "logits", "ood_score")
# Training images the Gaussians are fitted on: enough for 128-dimensional covariances,
# and a few seconds of inference for cnn-fast.
FIT_IMAGES = 20_000


def feature_map_layer(model) -> str | None:
    """The name of the last 4-D (N, H, W, C) activation before the head that is not a
    pooling layer, or None for a dense-only model."""
    import keras

    pooling = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
               keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)
    found = None
    for layer in model.layers:
        if layer.name == HEAD:
            break
        shape = getattr(layer, "output", None) is not None and layer.output.shape
        if shape and len(shape) == 4 and not isinstance(layer, pooling):
            found = layer.name
    return found


def _channel_stats(maps):
    """(N, H, W, C) activations -> float32 (N, 2C): per-channel mean and standard deviation."""
    from keras import ops

    maps = ops.cast(maps, "float32")
    mean = ops.mean(maps, axis=(1, 2))
    spread = ops.sqrt(ops.maximum(ops.mean(maps * maps, axis=(1, 2)) - mean * mean, 0.0))
    return ops.concatenate([mean, spread], axis=1)


def _feature_tensors(model) -> list:
    """The symbolic feature vectors the score uses, each float32 (N, D)."""
    from keras import ops

    tensors = [ops.cast(model.get_layer(HEAD).input, "float32")]
    conv = feature_map_layer(model)
    if conv is not None:
        tensors.append(_channel_stats(model.get_layer(conv).output))
    return tensors


def features_model(model):
    """float32 ``model`` -> a Keras model from pixels to the list of feature vectors."""
    import keras

    return keras.Model(model.inputs[0], _feature_tensors(model), name="ood_features")


def _logits(model, features):
    from keras import ops

    kernel, bias = head_weights(model)  # constants, so an export holds them, not inputs
    return ops.matmul(features, kernel) + bias


def _mahalanobis(features, layer: dict):
    """-min_c ||(f - mu_c) W||^2, standardized: (score - median) / MAD; float32 (N,)."""
    from keras import ops

    whiten = np.asarray(layer["whiten"], np.float32)
    centres = np.asarray(layer["centres"], np.float32)  # means already whitened: (C, D)
    points = ops.matmul(features, whiten)
    distances = (ops.sum(points * points, axis=1, keepdims=True)
                 - 2.0 * ops.matmul(points, centres.T) + (centres ** 2).sum(axis=1)[None, :])
    return (-ops.min(distances, axis=1) - layer["median"]) / layer["mad"]


def trusted_model(model, trust: dict | None):
    """One float32 Keras model: pixels -> [probabilities, logits, ood_score] (:data:`OUTPUTS`).

    ``trust``: a trust.json payload; None gives the model's own probabilities and no
    score (a zero column), for runs never calibrated and for ensembles.
    """
    import keras
    from keras import ops

    model = float32_copy(model)
    if trust is None:  # any model, ensembles included: its own probabilities
        probabilities = ops.cast(model.outputs[0], "float32")
        logits = ops.log(ops.maximum(probabilities, 1e-30))  # logits up to a per-row constant
        score = ops.zeros_like(logits[:, 0])
    else:
        features = _feature_tensors(model)
        logits = _logits(model, features[0])
        probabilities = ops.softmax(logits / float(trust["temperature"]), axis=-1)
        score = sum(_mahalanobis(tensor, layer)
                    for tensor, layer in zip(features, trust["ood"]["layers"]))
        energy = trust["ood"]["energy"]
        score = score + (ops.logsumexp(logits, axis=1) - energy["median"]) / energy["mad"]
    return keras.Model(model.inputs[0], [probabilities, logits, score], name=f"{model.name}_trusted")


def run_outputs(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`trusted_model`'s outputs for uint8 ``images`` (N, 28, 28), by name, float32."""
    return dict(zip(OUTPUTS, predict_outputs(model, images)))


def standardizer(scores: np.ndarray) -> dict:
    """Median and MAD of a score over training images: what puts terms on one scale."""
    median = float(np.median(scores))
    return {"median": median, "mad": float(np.median(np.abs(scores - median))) or 1.0}


def _fit_layer(train_features: np.ndarray, labels: np.ndarray) -> dict:
    gaussians = ood.fit_gaussians(train_features, labels)
    whiten = np.linalg.cholesky(gaussians.precision)
    return {"dim": int(train_features.shape[1]), "whiten": whiten.astype(np.float32).tolist(),
            "centres": (gaussians.means @ whiten).astype(np.float32).tolist(),
            **standardizer(ood.mahalanobis(train_features, gaussians))}


def fit(model, train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray]) -> dict:
    """A trust.json payload for ``model``: temperature, score and threshold.

    ``train``: training images and labels for the Gaussians (never validation or test);
    ``validation``: the run's validation split, for the temperature and the threshold.
    """
    base = float32_copy(model)
    extractor = features_model(base)
    train_features = [np.asarray(f, np.float64) for f in predict_outputs(extractor, train[0])]
    layers = [_fit_layer(f, train[1]) for f in train_features]
    kernel, bias = head_weights(base)
    train_energy = ood.energy(train_features[0] @ kernel + bias)
    val_logits = predict_outputs(extractor, validation[0])[0] @ kernel + bias
    temperature = fit_temperature(val_logits, validation[1])
    trust = {"format": FORMAT, "temperature": temperature,
             "ood": {"method": METHOD, "accept": ACCEPT, "layers": layers,
                     "energy": standardizer(train_energy)}}
    scored = trusted_model(model, trust)
    uploads = oodsets.received(oodsets.uploads(validation[0]))  # as a user's files arrive
    upload_scores = run_outputs(scored, uploads)["ood_score"]
    trust["ood"]["threshold"] = ood.fit_threshold(upload_scores, ACCEPT)
    plain = ood.softmax(val_logits)
    trust["validation"] = {
        "nll": nll(val_logits, validation[1]), "nll_calibrated": nll(val_logits, validation[1], temperature),
        "ece": calibration(plain, validation[1])["ece"],
        "ece_calibrated": calibration(ood.softmax(val_logits, temperature), validation[1])["ece"],
        "accuracy": float((plain.argmax(1) == validation[1]).mean()),
        "uploads_accepted": float((upload_scores >= trust["ood"]["threshold"]).mean())}
    return trust


def read(run_dir: str | Path) -> dict | None:
    """A run's trust.json, or None for a run never calibrated."""
    path = Path(run_dir) / TRUST
    return rundir.read_json(path) if path.is_file() else None


def calibrate_run(run_dir: str | Path, train_data, log=print) -> dict:
    """Fit and write a run's trust.json; record the validation figures in metrics.json.

    ``train_data``: the 60,000 training images and labels; the run's own split is rebuilt
    from its config.json. Returns the trust payload.
    """
    from fmnist.split import split_of_run

    run_dir = rundir.require_run_dir(run_dir, needs=rundir.MODEL)
    with rundir.exclusive(run_dir):
        config = rundir.read_json(run_dir / rundir.CONFIG)
        if config.get("model") == "ensemble":
            raise FmnistError(f"{run_dir} is an ensemble: calibrate its members instead; "
                              "an ensemble serves the mean of their probabilities")
        images, labels = train_data
        train_idx, val_idx = split_of_run(config, labels)
        fit_idx = train_idx[:FIT_IMAGES]
        trust = fit(load_keras(run_dir), (images[fit_idx], labels[fit_idx]),
                    (images[val_idx], labels[val_idx]))
        rundir.write_json(run_dir / TRUST, trust)
        metrics = rundir.read_metrics(run_dir)
        metrics.update({"temperature": trust["temperature"],
                        "ood_threshold": trust["ood"]["threshold"],
                        **{f"val_{key}": value for key, value in trust["validation"].items()
                           if key != "accuracy"}})
        rundir.write_json(run_dir / rundir.METRICS, metrics)
    if log is not None:
        v = trust["validation"]
        log(f"calibrated: temperature {trust['temperature']:.3f}; validation ECE "
            f"{v['ece']:.4f} -> {v['ece_calibrated']:.4f}, NLL {v['nll']:.4f} -> "
            f"{v['nll_calibrated']:.4f}; out-of-distribution threshold accepts "
            f"{100 * v['uploads_accepted']:.1f}% of validation uploads")
    return trust

