"""Batch normalization that trains with TensorFlow's fused kernel; models saved with Keras' own.

Keras 3's ``BatchNormalization`` computes the batch moments, the normalization and their
gradients as a dozen separate ops (keras-team/keras-core#225: "BatchNorm is slow");
TensorFlow's ``FusedBatchNormV3`` does the forward pass in one oneDNN kernel and the
backward pass in another. What that saves per training step is measured by
`scripts/stepbench.py`, and recorded in the experiment note on the fused batch norm.

The models' factories build Keras' layer, so ``fmnist.models`` stays backend-neutral and
every saved model loads in plain Keras. Training swaps it for :class:`FusedBatchNorm`
(:func:`fused_for_training`), a subclass whose only change is a training call on the
TensorFlow backend with channels-last input in float32, or in bfloat16 on a CPU (mixed
precision); every other call (inference, JAX or torch, bfloat16 on a GPU, renorm, a mask)
is Keras' code. Before a model is saved as a run's
result, :func:`with_keras_layers` puts Keras' layer back, with the trained weights.
"""

from __future__ import annotations

from fmnist.runtime import prepare_tensorflow

prepare_tensorflow()  # before Keras' first import: backend and oneDNN defaults

import keras  # noqa: E402

from fmnist.hardware import first_gpu  # noqa: E402


@keras.saving.register_keras_serializable(package="fmnist")
class FusedBatchNorm(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose training step runs TensorFlow's fused
    kernel where it can (see :meth:`fusable`): same outputs, same moving statistics."""

    def fusable(self, inputs, mask=None) -> bool:
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        return (keras.backend.backend() == "tensorflow" and self.trainable and mask is None
                and not self.renorm and not self.synchronized and self.center
                # bfloat16 inputs go to the kernel on CPUs (oneDNN; gamma, beta and the
                # moments stay float32), where it measured 2-2.5x faster than Keras' path;
                # on a GPU that is unmeasured, so Keras' path stays.
                and (dtype == "float32" or (dtype == "bfloat16" and first_gpu() is None))
                and len(inputs.shape) in (2, 4) and self.axis in (-1, len(inputs.shape) - 1))

    def call(self, inputs, training=None, mask=None):
        if not (training and self.fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        shape = tf.shape(inputs)
        # The kernel takes NHWC; a (N, C) batch is N pixels of one-by-one images.
        images = inputs if len(inputs.shape) == 4 else tf.reshape(inputs, [-1, 1, 1, shape[-1]])
        # Without a learnable scale (scale=False) the kernel still takes one: ones.
        gamma = self.gamma if self.scale else tf.ones_like(self.beta)
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            images, gamma, self.beta, epsilon=self.epsilon, is_training=True)
        # The kernel's variance divides by n - 1; Keras' moving variance by n.
        values = tf.cast(tf.size(images) // shape[-1], variance.dtype)
        variance = variance * (values - 1.0) / values
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return tf.reshape(outputs, shape)


def fused_for_training(model: keras.Model) -> keras.Model:
    """``model`` with each BatchNormalization a :class:`FusedBatchNorm` holding the same
    weights; the model itself when it has none or the backend is not TensorFlow."""
    return _swap(model, keras.layers.BatchNormalization, FusedBatchNorm)


def with_keras_layers(model: keras.Model) -> keras.Model:
    """``model`` with each :class:`FusedBatchNorm` back to Keras' BatchNormalization, with
    the same weights, so the saved file loads without fmnist."""
    return _swap(model, FusedBatchNorm, keras.layers.BatchNormalization)


def _swap(model, old: type, new: type):
    if keras.backend.backend() != "tensorflow" or not any(
            type(layer) is old for layer in model.layers):
        return model

    def clone(layer):
        kind = new if type(layer) is old else type(layer)
        return kind.from_config(layer.get_config())

    swapped = keras.models.clone_model(model, clone_function=clone)
    swapped.set_weights(model.get_weights())
    return swapped
