"""The fused batch norm computes what Keras' layer computes, and never reaches a saved model."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from fmnist import rundir
from fmnist.batchnorm import FusedBatchNorm, fused_for_training, with_keras_layers
from fmnist.config import TrainConfig
from fmnist.hardware import first_gpu
from fmnist.train import train

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="the fused kernel is TensorFlow's")


@pytest.mark.parametrize("dtype, tolerance", [("float32", 2e-4), ("mixed_bfloat16", 2e-2)],
                         ids=["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(32, 7, 7, 16), (64, 24)], ids=["conv", "dense"])
@pytest.mark.parametrize("scale", [True, False], ids=["scale", "no-scale"])
def test_a_fused_training_step_matches_keras_batch_norm(shape, dtype, tolerance, scale):
    """Outputs, gradients and moving statistics of one training call, on shifted,
    scaled inputs (where a wrong variance or epsilon would show), with a learnable scale
    and without one (gamma fixed at 1). Under mixed bfloat16 the input and output are
    bfloat16, gamma, beta and the statistics float32: equal to Keras' up to bfloat16's
    rounding (8 bits of mantissa)."""
    x = tf.constant(np.random.default_rng(0).normal(3.0, 2.5, shape).astype("float32"))
    x = tf.cast(x, keras.DTypePolicy(dtype).compute_dtype)
    results = []
    for kind in (keras.layers.BatchNormalization, FusedBatchNorm):
        layer = kind(momentum=0.9, dtype=dtype, scale=scale,
                     gamma_initializer=keras.initializers.Constant(1.5),
                     beta_initializer=keras.initializers.Constant(-0.5))
        layer.build(shape)
        if kind is FusedBatchNorm:
            assert layer.fusable(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(layer(x, training=True), "float32")
            # Not linear in y: a sum of normalized values has no gradient to compare.
            loss = tf.reduce_sum(y * tf.cos(tf.range(shape[-1], dtype=y.dtype)) + y ** 3 * 1e-2)
        weights = [layer.gamma, layer.beta] if scale else [layer.beta]
        grads = tape.gradient(loss, [x, *weights])
        assert layer.moving_mean.dtype == "float32"
        results.append([y, *grads, layer.moving_mean, layer.moving_variance])
    for keras_value, fused_value in zip(*results):
        np.testing.assert_allclose(np.asarray(tf.cast(fused_value, "float32")),
                                   np.asarray(tf.cast(keras_value, "float32")),
                                   rtol=tolerance, atol=tolerance)


def test_inference_and_odd_inputs_keep_keras_code():
    layer = FusedBatchNorm()
    layer.build((4, 3, 3, 8))
    assert layer.fusable(tf.zeros((4, 3, 3, 8)))
    if first_gpu() is None:  # bfloat16 is fused on CPUs only
        assert layer.fusable(tf.zeros((4, 3, 3, 8), dtype="bfloat16"))
    assert not layer.fusable(tf.zeros((4, 3, 3, 8), dtype="float16"))
    assert not layer.fusable(tf.zeros((4, 3, 8)))  # rank 3: no fused kernel
    layer.trainable = False  # frozen: moving statistics, as in Keras
    assert not layer.fusable(tf.zeros((4, 3, 3, 8)))


def small_bn_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x))


def test_the_swap_keeps_weights_names_and_answers_and_swaps_back():
    model = small_bn_model()
    fused = fused_for_training(model)
    assert type(fused.get_layer("bn")) is FusedBatchNorm
    assert [w.name for w in fused.weights] == [w.name for w in model.weights]
    x = np.random.default_rng(1).normal(size=(5, 6, 6, 1)).astype("float32")
    np.testing.assert_array_equal(fused.predict_on_batch(x), model.predict_on_batch(x))
    fused(x, training=True)  # moves the statistics
    plain = with_keras_layers(fused)
    assert type(plain.get_layer("bn")) is keras.layers.BatchNormalization
    for a, b in zip(plain.get_weights(), fused.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Nothing to swap: the very model comes back.
    assert with_keras_layers(plain) is plain


def test_a_run_trains_fused_and_saves_keras_layers(real_data_dir, tmp_path):
    config = TrainConfig(model="cnn-fast", epochs=1, train_size=512, val_size=256,
                         test_size=256, batch_size=128)
    run = train(config, tmp_path / "run", data_dir=real_data_dir, verbose=0)
    with zipfile.ZipFile(run / rundir.MODEL) as saved:
        layers = json.loads(saved.read("config.json"))["config"]["layers"]
    kinds = {layer["class_name"] for layer in layers}
    assert "BatchNormalization" in kinds and not any("Fused" in kind for kind in kinds)
