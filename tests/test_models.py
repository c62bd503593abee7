"""Every registered model, tested the day it is registered (parametrized over the registry)."""

import numpy as np
import pytest

from fmnist import models
from fmnist.errors import UnknownModelError

ALL_MODELS = models.model_names()


def test_the_seed_mlp_is_registered():
    assert "mlp" in ALL_MODELS


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_maps_raw_pixels_to_probabilities(name):
    model = models.build_model(name)
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    probabilities = np.asarray(model.predict(images, verbose=0))
    assert probabilities.shape == (5, 10)
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_trains_one_step_with_its_preset_recipe(name):
    """The path `fmnist train --model NAME` runs, not a generic compile: the preset's
    optimizer, schedule, EMA, loss (one-hot under label smoothing), the precision `auto`
    picks on this machine, and a batch from the real input pipeline (augmented as the
    preset says)."""
    import keras

    from fmnist.config import TrainConfig
    from fmnist.hardware import choose_precision, dtype_policy
    from fmnist.pipeline import training_batches
    from fmnist.recipe import new_model

    config = TrainConfig.resolve(name)  # defaults < preset, as the CLI resolves it
    images = np.random.default_rng(1).integers(0, 256, size=(32, 28, 28), dtype=np.uint8)
    labels = (np.arange(32) % 10).astype(np.uint8)
    keras.config.set_dtype_policy(dtype_policy(choose_precision(config.precision).precision))
    try:
        model = new_model(config, total_steps=10)
        x, y = next(iter(training_batches(images, labels, config, 0, 1)))
        before = [w.copy() for w in model.get_weights()]
        loss = model.train_on_batch(x, y)
    finally:
        keras.config.set_dtype_policy("float32")
    loss = loss[0] if isinstance(loss, (list, tuple)) else loss
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert type(model.optimizer).__name__.lower() == config.optimizer
    assert model.optimizer.use_ema == (config.ema is not None)
    smoothing = type(model.loss).__name__ == "CategoricalCrossentropy"
    assert smoothing == (config.label_smoothing > 0) and y.shape[1:] == ((10,) if smoothing else ())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_normalizes_inside(name):
    # Scaling happens in the model: 0..255 input must not saturate the first layer.
    model = models.build_model(name)
    assert any(layer.__class__.__name__ == "Rescaling" for layer in model.layers)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_has_a_docstring(name):
    assert models.describe(name)


def test_seed_mlp_has_the_notebooks_shape():
    model = models.build_model("mlp")
    assert model.count_params() == 784 * 128 + 128 + 128 * 10 + 10


def test_unknown_model_names_the_choices():
    with pytest.raises(UnknownModelError, match="unknown model 'resnet9000'; choose one of: mlp"):
        models.build_model("resnet9000")


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="registered twice"):
        models.register("mlp")(lambda: None)


@pytest.mark.parametrize("family", models.search_families())
def test_every_point_of_a_search_space_is_a_valid_config(family):
    """Its defaults and random draws: each is a strict TrainConfig whose model builds."""
    import keras_tuner as kt

    from fmnist.config import TrainConfig
    from fmnist.tune import trial_config

    hp = kt.HyperParameters()
    configs = [trial_config(family, hp, seed=0, epochs=3)]  # registers the space, at its defaults
    for draw in range(4):
        for parameter in hp.space:
            hp.values[parameter.name] = parameter.random_sample(seed=draw)
        configs.append(trial_config(family, hp, seed=0, epochs=3))
    for config in configs:
        assert TrainConfig.from_json(config.to_dict(), "trial", strict=True) == config
        models.get_factory(config.model)(**config.model_options)  # builds


@pytest.mark.parametrize("name, projections", [("cnn-fast", 0), ("cnn-best", 2)])
def test_residual_convnets_add_each_pair_to_its_input(name, projections):
    plain = models.build_model(name)
    residual = models.build_model(name, residual=True)
    kinds = [type(layer).__name__ for layer in residual.layers]
    adds = [layer for layer in residual.layers if type(layer).__name__ == "Add"]
    assert len(adds) == (1 if name == "cnn-fast" else 2) and "Add" not in str(
        [type(layer).__name__ for layer in plain.layers])
    # A 1x1 projection (conv + batch norm) wherever a pair changes the width.
    assert sum(layer.name.endswith("_project") for layer in residual.layers) == projections
    extra = sum(int(np.prod(w.shape)) for layer in residual.layers if "_project" in layer.name
                for w in layer.weights)
    assert residual.count_params() == plain.count_params() + extra
    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28)).astype(np.float32)
    out = np.asarray(residual(images))
    assert out.shape == (3, 10) and kinds.count("ReLU") > 0
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
