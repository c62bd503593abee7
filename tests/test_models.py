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
def test_model_trains_one_step_without_nan(name):
    model = models.build_model(name)
    images = np.random.default_rng(1).integers(0, 256, size=(32, 28, 28), dtype=np.uint8)
    labels = np.arange(32) % 10
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(images, labels)
    loss = loss[0] if isinstance(loss, (list, tuple)) else loss
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


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
