"""Data-parallel training through tf.distribute (TensorFlow backend only).

``--distribute mirrored``: one process, one replica per local GPU (``MirroredStrategy``);
on a machine without GPUs, ``--cpu-replicas N`` splits the CPU into N logical devices,
which is how the strategy is exercised here and in the tests. ``--distribute
multiworker``: one process per worker (``MultiWorkerMirroredStrategy``), the cluster
described by the standard ``TF_CONFIG`` environment variable, e.g. for worker 0 of two::

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}'

The batch size of a run is per replica; the global batch is ``batch_size x replicas``
and the learning rate is scaled by the number of replicas (the linear scaling rule), both
recorded in config.json. Each worker's input pipeline reads only its own share of every
global batch (see ``pipeline.distributed_batches``).
"""

from __future__ import annotations

import json
import os

from fmnist.errors import FmnistError

STRATEGIES = ("none", "mirrored", "multiworker")


def tf_config() -> dict | None:
    """The parsed ``TF_CONFIG``, or None when unset; a one-line error when malformed."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        if not isinstance(cluster, dict) or not cluster:
            raise ValueError("empty cluster")
        if not isinstance(task["type"], str):
            raise ValueError("task type must be a string")
        int(task["index"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise FmnistError(f"TF_CONFIG is not a valid cluster description ({error}); expected "
                          '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": '
                          '"worker", "index": 0}}') from None
    return config


def is_chief() -> bool:
    """Whether this process is the multi-worker chief (or not in a cluster at all).

    The chief is the task of type "chief", or worker 0 when the cluster has no chief.
    """
    config = tf_config()
    if config is None:
        return True
    task = config["task"]
    if "chief" in config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and int(task["index"]) == 0


def split_cpu(replicas: int) -> None:
    """Present the CPU as ``replicas`` logical devices (before TensorFlow initializes)."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)])
    except RuntimeError:
        raise FmnistError("--cpu-replicas must be set before TensorFlow starts; run "
                          "training in a fresh process (the `fmnist train` command)") from None


def make_strategy(kind: str, cpu_replicas: int = 1):
    """The tf.distribute strategy for ``kind`` (None for "none")."""
    if kind not in STRATEGIES:
        raise FmnistError(f"unknown --distribute {kind!r}; choose one of {', '.join(STRATEGIES)}")
    if kind == "none":
        return None
    import keras

    if keras.backend.backend() != "tensorflow":
        raise FmnistError(f"--distribute {kind} needs the TensorFlow backend; unset KERAS_BACKEND")
    import tensorflow as tf

    if kind == "multiworker":
        if tf_config() is None:
            raise FmnistError("--distribute multiworker needs TF_CONFIG describing the cluster "
                              "(see the Scaling page of the docs)")
        if cpu_replicas > 1:
            split_cpu(cpu_replicas)
        return tf.distribute.MultiWorkerMirroredStrategy()
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()  # every local GPU
    if cpu_replicas > 1:
        split_cpu(cpu_replicas)
    return tf.distribute.MirroredStrategy([f"/cpu:{index}" for index in range(cpu_replicas)])


def patch_keras_for_multiworker(model, strategy) -> None:
    """Let ``model.fit`` run under ``MultiWorkerMirroredStrategy`` in Keras 3.

    Keras 3's TensorFlow trainer does not support multi-worker training as shipped
    (keras-team/keras#20585, open): (1) before training it averages a first batch
    across replicas to build the model, outside a tf.function, which a multi-worker
    strategy refuses ("Attempt to convert a value (PerReplica...)"); (2) each step
    averages the scalar logs with ``strategy.reduce("MEAN", v, axis=0)``, which fails
    on scalars. Two narrow shims: the model is built from the local replica's part of
    the first batch (building needs only shapes and dtypes), and scalar logs are
    averaged over replicas with ``axis=None``. The training step itself, the gradient
    all-reduce and the variables are tf.distribute's own. Remove once Keras fixes it
    (`tests/test_distribute_shims.py` fails when either bug is gone or either place moved).
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def local_part(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(local_part, next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = maybe_symbolic_build
    original = getattr(tf_trainer.reduce_per_replica, "fmnist_original", tf_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy_, reduction="auto"):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy_):
            def mean(value):
                if isinstance(value, tf.distribute.DistributedValues) or tf.is_tensor(value):
                    return strategy_.reduce("MEAN", value, axis=None if value.shape.rank == 0 else 0)
                return value
            return tf.nest.map_structure(mean, values)
        return original(values, strategy_, reduction)

    reduce_per_replica.fmnist_original = original
    tf_trainer.reduce_per_replica = reduce_per_replica
