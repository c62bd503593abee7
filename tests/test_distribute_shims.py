"""The two Keras multi-worker shims of :func:`fmnist.distribute.patch_keras_for_multiworker`
must still apply to the installed Keras, and still be needed. When Keras changes either
place, these fail, and say which: the shim then patches nothing, or patches a fixed bug.
(The two-worker training test in test_distribute.py shows the shims work end to end.)"""

from __future__ import annotations

import inspect

import pytest

keras = pytest.importorskip("keras")
tf_trainer = pytest.importorskip("keras.src.backend.tensorflow.trainer")


def _code(function) -> str:
    """Source without whitespace, so a reformatting is not a change."""
    return "".join(inspect.getsource(function).split())


def test_the_places_the_shims_patch_still_exist_and_are_called():
    # Shim 1 replaces the model's _maybe_symbolic_build, which fit calls with the iterator.
    assert "self._maybe_symbolic_build(iterator=" in _code(tf_trainer.TensorFlowTrainer.fit)
    assert hasattr(keras.Model, "_symbolic_build")
    # Shim 2 replaces the module's reduce_per_replica, which the train step's logs go through.
    # (_make_function wraps the train and test steps.)
    assert "reduce_per_replica(" in _code(tf_trainer.TensorFlowTrainer._make_function)
    assert "self._make_function(self.train_step" in _code(tf_trainer.TensorFlowTrainer.make_train_function)
    assert callable(getattr(tf_trainer, "_collective_all_reduce_multi_worker", None))


def test_the_bugs_the_shims_work_around_are_still_in_keras():
    # keras-team/keras#20585. 1: the first batch is averaged across replicas outside a
    # tf.function, which MultiWorkerMirroredStrategy refuses.
    assert 'self.distribute_strategy.reduce("MEAN",maybe_distributed_data_batch,axis=None' in \
        _code(keras.Model._maybe_symbolic_build)
    # 2: in multi-worker mode, scalar logs are averaged along an axis 0 they do not have.
    assert 'strategy.reduce("MEAN",v,axis=0)' in _code(tf_trainer.reduce_per_replica)


def test_patching_replaces_both_and_can_be_applied_twice():
    import tensorflow as tf

    from fmnist.distribute import patch_keras_for_multiworker

    original = tf_trainer.reduce_per_replica
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    try:
        strategy = tf.distribute.get_strategy()
        patch_keras_for_multiworker(model, strategy)
        patch_keras_for_multiworker(model, strategy)  # resume in the same process
        assert tf_trainer.reduce_per_replica is not original
        assert tf_trainer.reduce_per_replica.fmnist_original is original  # not a shim of a shim
        assert model._maybe_symbolic_build.__name__ == "maybe_symbolic_build"
    finally:
        tf_trainer.reduce_per_replica = original
