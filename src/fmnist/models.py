"""The model registry: every network fmnist can train, by name.

Each model maps raw pixels to class probabilities:

    input  float32 (N, 28, 28), values 0..255 (uint8 arrays are accepted and cast)
    output float32 (N, 10), softmax probabilities in CLASS_NAMES order

Normalization to [0, 1] is the model's first layer, so training, evaluation, serving
and export all feed the same raw pixels and cannot drift apart.

Add a model with ``@register("name")`` on a factory that returns an uncompiled
``keras.Model``; the tests are parametrized over the registry, so it is tested the day
it is added. Keras is imported inside the factories: importing this module (as the
CLI does to list model names) must stay cheap.
"""

from __future__ import annotations

from typing import Callable

from fmnist.errors import UnknownModelError

_REGISTRY: dict[str, Callable] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    """Decorator adding a model factory to the registry under ``name``."""

    def add(factory: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return add


def model_names() -> list[str]:
    """Registered model names, in registration order."""
    return list(_REGISTRY)


def get_factory(name: str) -> Callable:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; choose one of: {', '.join(model_names())}"
        ) from None


def describe(name: str) -> str:
    """First line of the model's docstring, for `fmnist train --help`."""
    doc = get_factory(name).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def build_model(name: str, *, compile: bool = True, learning_rate: float = 1e-3, **options):
    """Build the registered model ``name`` with factory ``options``.

    With ``compile=True`` (the default) it is compiled the way the seed notebook does:
    Adam, sparse categorical cross-entropy on the softmax output, accuracy.
    """
    model = get_factory(name)(**options)
    if compile:
        compile_model(model, learning_rate=learning_rate)
    return model


def compile_model(model, learning_rate: float = 1e-3):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def _pixels_input():
    """The shared input: raw pixels (N, 28, 28) 0..255 -> rescaled float (N, 28, 28) 0..1."""
    import keras

    pixels = keras.Input(shape=(28, 28), dtype="float32", name="pixels")
    scaled = keras.layers.Rescaling(1.0 / 255.0, name="to_unit_range")(pixels)
    return pixels, scaled


@register("mlp")
def mlp(hidden_units: int = 128):
    """The seed notebook's network: Flatten -> Dense(128, relu) -> Dense(10, softmax).

    101,770 parameters. About 0.88 test accuracy after 10 epochs of Adam (batch 128).
    """
    import keras
    from keras import layers

    pixels, x = _pixels_input()
    x = layers.Flatten(name="flatten")(x)  # (N, 784)
    x = layers.Dense(hidden_units, activation="relu", name="hidden")(x)
    probabilities = layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(pixels, probabilities, name="mlp")
