"""What comes before the softmax: a Keras model's logits and penultimate features.

Every registered model ends in the same head, ``Dense(10, softmax)`` named
``probabilities`` (models.py). Its input is the penultimate feature vector; logits are
``features @ kernel + bias``. Temperature scaling needs the logits, and the
Mahalanobis out-of-distribution score needs the features (see ood.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmnist import rundir

HEAD = "probabilities"


def load_keras(source: str | Path):
    """A run directory's (or a .keras file's) model, uncompiled, in safe mode."""
    from fmnist.runtime import prepare_tensorflow

    prepare_tensorflow()
    import keras

    source = Path(source)
    path = source / rundir.MODEL if source.is_dir() else source
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def float32_copy(model):
    """The same network and weights with every layer computing in float32.

    Mixed-precision layers carry their ``DTypePolicy`` in their config; replacing each by
    "float32" and rebuilding gives a model whose variables line up one to one.
    """

    def to_float32(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy":
                return "float32"
            return {key: to_float32(value) for key, value in node.items()}
        if isinstance(node, list):
            return [to_float32(value) for value in node]
        return node

    copy = model.__class__.from_config(to_float32(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def head_weights(model) -> tuple[np.ndarray, np.ndarray]:
    """The head's kernel float32 (D, 10) and bias float32 (10,)."""
    kernel, bias = model.get_layer(HEAD).get_weights()
    return np.asarray(kernel, np.float32), np.asarray(bias, np.float32)


def predict_outputs(model, images: np.ndarray, batch_size: int = 1024) -> list[np.ndarray]:
    """Every output of ``model`` over ``images``, float32, ``batch_size`` at a time.

    The model is called eagerly, not through ``predict_on_batch``: these one-off models
    (feature extractors, the trusted model, occluded copies) would each cost a graph trace,
    and TensorFlow warns about frequent retracing once five of them have.
    """
    pieces = []
    for start in range(0, len(images), batch_size):
        outputs = model(np.asarray(images[start:start + batch_size], np.float32), training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        pieces.append([np.asarray(output, np.float32) for output in outputs])
    return [np.concatenate([piece[i] for piece in pieces]) for i in range(len(pieces[0]))]

