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
    model = models.build_model(name, **models.model_preset(name).get("model_options", {}))
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
        model = new_model(config, total_steps=10, images=images)
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


@pytest.mark.parametrize("name", ["cnn-fast", "cnn-best"])
def test_dirac_starts_each_3x3_conv_after_the_stem_as_the_identity(name):
    """``dirac=True``: output filter i < C_in of each 3x3 conv past the stem passes input
    channel i through (1 at the centre, 0 elsewhere); wider filters keep their draw, and
    the stem is untouched."""
    import keras

    keras.utils.set_random_seed(0)
    plain = models.build_model(name)
    keras.utils.set_random_seed(0)
    dirac = models.build_model(name, dirac=True)
    convs = [layer.name for layer in dirac.layers if layer.name.startswith(("conv14_", "conv7_"))
             and type(layer).__name__ == "Conv2D"]
    assert convs
    for layer_name in convs:
        kernel = np.asarray(dirac.get_layer(layer_name).kernel)
        c_in, c_out = kernel.shape[2:]
        kept = min(c_in, c_out)
        identity = np.zeros((3, 3, c_in, kept), np.float32)
        identity[1, 1, np.arange(kept), np.arange(kept)] = 1.0
        np.testing.assert_array_equal(kernel[..., :kept], identity)
        np.testing.assert_array_equal(kernel[..., kept:],
                                      np.asarray(plain.get_layer(layer_name).kernel)[..., kept:])
    np.testing.assert_array_equal(np.asarray(dirac.get_layer("stem").kernel),
                                  np.asarray(plain.get_layer("stem").kernel))
    with pytest.raises(ValueError, match="separable"):
        models.build_model("cnn-fast", dirac=True, separable=True)


def test_batch_norm_options_reach_every_batch_norm():
    """``bn_scale=False`` drops every gamma (one weight less per channel); ``bn_momentum``
    sets every layer's moving-statistics momentum."""
    plain = models.build_model("cnn-fast")
    lean = models.build_model("cnn-fast", bn_scale=False, bn_momentum=0.6)
    norms = [layer for layer in lean.layers if type(layer).__name__ == "BatchNormalization"]
    assert len(norms) == 4
    assert all(not layer.scale and layer.momentum == 0.6 for layer in norms)
    assert plain.count_params() - lean.count_params() == sum(layer.beta.shape[0] for layer in norms)


def test_a_whiten_stem_is_set_from_the_data_whitens_it_and_stays_frozen(real_data_dir):
    """``stem="whiten"``: the frozen stem's positive filters give the training patches
    an identity second-moment matrix (up to the epsilon and the stride-2 borders), the
    negative ones mirror them, the same seed sets the same filters, and training leaves
    them where they are."""
    import keras

    from fmnist.config import TrainConfig
    from fmnist.data import load_split
    from fmnist.errors import FmnistError
    from fmnist.recipe import new_model

    x, y = load_split("train", real_data_dir)
    images, labels = x[:2000], y[:2000]
    config = TrainConfig(model="cnn-fast", optimizer="sgd", learning_rate=0.1, batch_size=64,
                         model_options={"stem": "whiten", "stem_width": 12})
    model = new_model(config, total_steps=10, images=images)
    stem = model.get_layer("stem")
    assert not stem.trainable and stem.kernel.shape == (3, 3, 1, 12)
    kernel = np.asarray(stem.kernel)
    np.testing.assert_array_equal(kernel[..., 6:], -kernel[..., :6])
    responses = np.asarray(keras.Sequential([model.get_layer("channels"), stem])(
        images[:500].astype("float32") / 255.0)).reshape(-1, 12)[:, :6]
    moments = responses.T @ responses / len(responses)
    assert np.all(np.abs(np.diag(moments) - 1.0) < 0.15), np.diag(moments)
    assert np.max(np.abs(moments - np.diag(np.diag(moments)))) < 0.1
    again = new_model(config, total_steps=10, images=images)
    np.testing.assert_array_equal(np.asarray(again.get_layer("stem").kernel), kernel)
    model.fit(images[:256], labels[:256], batch_size=64, epochs=1, verbose=0)
    np.testing.assert_array_equal(np.asarray(model.get_layer("stem").kernel), kernel)
    with pytest.raises(FmnistError, match="training images"):
        new_model(config, total_steps=10)
    with pytest.raises(ValueError, match="even stem_width"):
        models.build_model("cnn-fast", stem="whiten", stem_width=32)
    # "whiten-fixed": the same filters, and no batch norm: nothing in the stem learns.
    fixed = new_model(config.replace(model_options={"stem": "whiten-fixed", "stem_width": 12}),
                      total_steps=10, images=images)
    np.testing.assert_array_equal(np.asarray(fixed.get_layer("stem").kernel), kernel)
    assert "stem_bn" not in [layer.name for layer in fixed.layers]
    learned = {weight.path.split("/")[0] for weight in fixed.trainable_weights}
    assert not any(name.startswith("stem") for name in learned) and "conv14_0" in learned
