"""The input pipeline: which images each epoch visits, in which order, augmented how.

In-memory uint8 arrays in, tf.data streams out on the TensorFlow backend; on another
Keras backend (JAX or torch, where TensorFlow may not be installed at all) a Python
iterator of NumPy batches, augmented by the NumPy twins in augment.py. Epoch ``e`` visits the training images
in the order drawn from ``numpy.random.default_rng([seed, e])``, independent of what ran
before, and augmentation draws are keyed by the epoch or global step: a resumed run sees
exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import numpy as np

from fmnist.augment import (Augmentation, augment_batch, numpy_augment, numpy_cutmix,
                            random_cutmix)
from fmnist.config import TrainConfig
from fmnist.data import NUM_CLASSES


def augmentation_of(config: TrainConfig) -> Augmentation:
    """The random transforms of ``config``; an alternating flip is not one of them (it
    is decided by the image and the epoch: :func:`alternating_flips`)."""
    return Augmentation(flip=config.flip and not config.alternate_flip,
                        translate=config.translate, erase=config.erase)


def alternating_flips(config: TrainConfig, n: int):
    """``flipped(indices, epoch) -> bool (B,)`` under ``alternate_flip``, else None.

    Image ``i`` of the ``n`` training images is mirrored in epoch 0 by a coin seeded
    with the run's seed and ``i``, and in each later epoch the other way round from the
    one before: any two consecutive epochs show it both ways. Works on NumPy arrays and
    on TensorFlow tensors (``indices`` int (B,), ``epoch`` an int scalar).
    """
    if not config.alternate_flip:
        return None
    first = np.random.default_rng([config.seed, 5]).random(n) < 0.5  # bool (n,)

    def flipped(indices, epoch):
        if isinstance(indices, np.ndarray):
            return first[indices] != bool(epoch % 2)
        import tensorflow as tf

        odd = tf.equal(tf.math.floormod(tf.cast(epoch, tf.int64), 2), 1)
        return tf.not_equal(tf.gather(tf.constant(first), indices), odd)

    return flipped


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch ``epoch`` (0-based) visits ``n`` training images.

    Drawn from its own generator, so it is the same whether or not earlier epochs ran
    in this process: that is what lets a resumed run match an uninterrupted one.
    """
    return np.random.default_rng([seed, epoch]).permutation(n)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def fit_targets(y: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Labels uint8 (n,) as the loss of ``config`` takes them, for validation: as they are;
    one-hot float32 (n, 10) under label smoothing or CutMix; with a teacher, float32
    (n, 20), one-hot then zeros (no teacher for these images: the loss is the label's
    cross-entropy alone; see distill.DistillationLoss)."""
    if not config.one_hot_targets:
        return y
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[y]
    if config.teacher is None:
        return one_hot
    return np.concatenate([one_hot, np.zeros_like(one_hot)], axis=1)


def training_batches(x, y, config: TrainConfig, first_epoch: int, epochs: int,
                     soft_targets: np.ndarray | None = None):
    """A tf.data stream of training batches for epochs ``first_epoch..epochs-1``.

    Yields ``(images, labels)``: images uint8 (B, 28, 28), augmented as configured;
    labels uint8 (B,), or float32 (B, 10) one-hot targets under label smoothing or CutMix,
    or float32 (B, 20) with a teacher's ``soft_targets`` (float32 (n, 10), aligned with
    ``y``): the one-hot label, then the teacher's probabilities. Each epoch
    ends with its own (possibly smaller) last batch, so ``steps_per_epoch(n, B)`` steps
    make exactly one epoch. The data stays in memory. Each epoch is gathered in its
    seeded order and augmented as one tensor (random draws keyed by the epoch), then cut
    into batches: one pipeline call per epoch instead of one per batch, so the pipeline
    needs no thread of its own beside training on a 2-core CPU.
    """
    if not _tensorflow_backend():
        return numpy_batches(x, y, config, first_epoch, epochs, soft_targets)
    import tensorflow as tf

    n = len(y)
    orders = np.stack([epoch_order(config.seed, e, n) for e in range(first_epoch, epochs)])
    gather = batch_gatherer(x, y, config, soft_targets)

    def one_epoch(epoch, order):
        return tf.data.Dataset.from_tensor_slices(gather(epoch, order)).batch(config.batch_size)

    epoch_ids = np.arange(first_epoch, epochs, dtype=np.int64)
    # No prefetch and no autotuning: a batch is a slice of a ready tensor, and on a
    # 2-core CPU a prefetch thread competes with oneDNN's threads for the same cores
    # without hiding any input work.
    options = tf.data.Options()
    options.autotune.enabled = False
    return (tf.data.Dataset.from_tensor_slices((epoch_ids, orders)).flat_map(one_epoch)
            .with_options(options))


def _tensorflow_backend() -> bool:
    import keras

    return keras.backend.backend() == "tensorflow"


def numpy_batches(x, y, config: TrainConfig, first_epoch: int, epochs: int,
                  soft_targets: np.ndarray | None = None):
    """The stream of :func:`training_batches` as NumPy: an iterator of ``(images,
    targets)`` batches, images float32 (B, 28, 28) 0..255, for a backend without tf.data.

    Same epoch order, same targets, same batch cut; each epoch is augmented as one array
    by :func:`fmnist.augment.numpy_augment`, keyed by the epoch.
    """
    augmentation = augmentation_of(config)
    flipped = alternating_flips(config, len(y))
    eye = np.eye(NUM_CLASSES, dtype=np.float32)
    for epoch in range(first_epoch, epochs):
        order = epoch_order(config.seed, epoch, len(y))
        images, labels = x[order], y[order]
        if flipped is not None:
            images = np.where(flipped(order, epoch)[:, None, None], images[:, :, ::-1], images)
        if augmentation.active:
            images = numpy_augment(images, epoch, augmentation, config.seed)
        targets = eye[labels] if config.one_hot_targets else labels
        if soft_targets is not None:
            targets = np.concatenate([targets, soft_targets[order]], axis=1)
        if config.cutmix > 0:
            images, targets = numpy_cutmix(images, targets, config.cutmix,
                                           np.random.default_rng([config.seed, epoch, 4]))
        images = images.astype(np.float32)  # the model's input dtype; a cast per batch is dearer
        for start in range(0, len(y), config.batch_size):
            end = start + config.batch_size
            yield images[start:end], targets[start:end]


def batch_gatherer(x, y, config: TrainConfig, soft_targets: np.ndarray | None = None):
    """``gather(key, indices[, epoch]) -> (images, labels)``: the images at ``indices`` (a
    batch, or a whole epoch) of the in-memory arrays, augmented (random draws keyed by
    ``key``; an alternating flip by ``epoch``, which is ``key`` when not given);
    labels one-hot under smoothing or CutMix, followed by the teacher's probabilities
    when ``soft_targets`` are given (B, 20): the loss weighs the two (DistillationLoss).

    The teacher saw each image unaugmented: a flip or a small shift does not change what
    a garment is, so its probabilities stand for the augmented image too."""
    import tensorflow as tf

    images, labels = tf.constant(x), tf.constant(y)
    augmentation = augmentation_of(config)
    flipped = alternating_flips(config, len(y))
    soft = None if soft_targets is None else tf.constant(soft_targets, tf.float32)

    def gather(key, idx, epoch=None):
        batch_images, batch_labels = tf.gather(images, idx), tf.gather(labels, idx)
        if flipped is not None:  # ``key`` is the epoch unless given apart
            mirror = flipped(idx, key if epoch is None else epoch)
            batch_images = tf.where(mirror[:, None, None], tf.reverse(batch_images, axis=[2]),
                                    batch_images)
        if augmentation.active:
            batch_images = augment_batch(batch_images, key, augmentation, config.seed)
        if config.one_hot_targets:
            batch_labels = tf.one_hot(tf.cast(batch_labels, tf.int32), NUM_CLASSES)
        if soft is not None:
            batch_labels = tf.concat([batch_labels, tf.gather(soft, idx)], axis=1)
        if config.cutmix > 0:  # last: the pasted box carries its image's whole target
            batch_images, batch_labels = random_cutmix(batch_images, batch_labels, config.cutmix,
                                                       config.seed, key)
        return batch_images, batch_labels

    return gather


def distributed_batches(strategy, x, y, config: TrainConfig, first_epoch: int, epochs: int,
                        soft_targets: np.ndarray | None = None):
    """The training stream of :func:`training_batches`, split over the strategy's replicas.

    ``config.batch_size`` images go to each replica per step; the global batch is that
    times ``strategy.num_replicas_in_sync``. Global batch ``g`` holds the same images as
    a single-process run with that batch size would (the epoch's seeded order, cut into
    global batches; the last, incomplete one dropped so every replica gets a full
    batch), and replica ``r`` of ``R`` takes its images ``r, r + R, ...``. Each worker's
    input pipeline builds only the slices of its own replicas.
    """
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size * replicas
    n = len(y)
    steps = n // global_batch
    orders = np.stack([epoch_order(config.seed, e, n)[:steps * global_batch]
                       for e in range(first_epoch, epochs)]).reshape(-1, global_batch)
    gather = batch_gatherer(x, y, config, soft_targets)

    def dataset_fn(context):
        local = replicas // context.num_input_pipelines
        first_replica = context.input_pipeline_id * local
        # (global step, indices of one replica's share); local replicas take turns.
        mine = np.stack([orders[:, first_replica + k::replicas] for k in range(local)], axis=1)
        step_ids = np.arange(first_epoch * steps, first_epoch * steps + len(orders))
        # Augmentation keyed by global step and replica, so replicas draw differently.
        keys = (step_ids[:, None] * replicas + first_replica + np.arange(local)[None, :]).ravel()
        epoch_ids = np.repeat(step_ids // steps, local)  # for an alternating flip
        dataset = tf.data.Dataset.from_tensor_slices(
            (keys, mine.reshape(-1, config.batch_size), epoch_ids))
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return (dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
                .prefetch(tf.data.AUTOTUNE).with_options(options))

    return strategy.distribute_datasets_from_function(dataset_fn)


def validation_batches(x_val, y_val, batch_size: int = 1024):
    """The validation split as a tf.data stream of ``batch_size`` batches, in order.

    Given as arrays, Keras would wrap them in a pipeline whose parallel map TensorFlow
    rewrites under op determinism, and it logs an alarming C++ "error" about an unknown
    attribute every epoch; a plain sliced dataset does the same work without it. On
    another backend: a ``keras.utils.PyDataset`` of NumPy batches (a generator would be
    spent after the first epoch's validation).
    """
    if not _tensorflow_backend():
        return _numpy_validation(x_val, y_val, batch_size)
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(batch_size)


def _numpy_validation(x_val, y_val, batch_size: int):
    import keras

    class ValidationBatches(keras.utils.PyDataset):
        def __len__(self):
            return steps_per_epoch(len(y_val), batch_size)

        def __getitem__(self, index):
            part = slice(index * batch_size, (index + 1) * batch_size)
            return x_val[part].astype(np.float32), y_val[part]

    return ValidationBatches()
