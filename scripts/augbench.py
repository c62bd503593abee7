"""Time fmnist's augmentation against Keras' preprocessing layers over one epoch.

usage: FMNIST_DATA_DIR=... python scripts/augbench.py [--repeats 5]

Both augment cnn-fast's recipe (random left-right flips, shifts of up to one pixel with
black fill) on the 54,000 training images of a default split, a batch of 256 at a time
inside one tf.function, as the input pipeline applies them. Prints one JSON line: the
median seconds an epoch's augmentation takes with each (after a warm-up epoch), and
whether each gives the same images again from the same seed and epoch, which exact
resume needs. Keras' layers are made afresh each epoch with a seed keyed by
(seed, epoch), the only way their draws can be tied to the epoch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from fmnist.runtime import prepare_tensorflow

prepare_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fmnist.augment import Augmentation, augment_batch  # noqa: E402
from fmnist.data import load_split  # noqa: E402
from fmnist.split import train_val_split  # noqa: E402

BATCH, SEED = 256, 0


def fmnist_epoch(images: tf.Tensor, epoch: int) -> tf.Tensor:
    augmentation = Augmentation(flip=True, translate=1)
    steps = (images.shape[0] + BATCH - 1) // BATCH

    @tf.function
    def run(images):
        outputs = tf.TensorArray(tf.uint8, size=steps, infer_shape=False)
        for step in tf.range(steps):
            batch = images[step * BATCH:(step + 1) * BATCH]
            outputs = outputs.write(step, augment_batch(batch, epoch * steps + step,
                                                        augmentation, SEED))
        return outputs.concat()

    return run(images)


def keras_epoch(images: tf.Tensor, epoch: int) -> tf.Tensor:
    seed = SEED * 1000 + epoch
    flip = keras.layers.RandomFlip("horizontal", seed=seed)
    shift = keras.layers.RandomTranslation(1 / 28, 1 / 28, fill_mode="constant",
                                           interpolation="nearest", seed=seed + 1)
    steps = (images.shape[0] + BATCH - 1) // BATCH

    @tf.function
    def run(images):
        outputs = tf.TensorArray(tf.uint8, size=steps, infer_shape=False)
        for step in tf.range(steps):
            batch = tf.cast(images[step * BATCH:(step + 1) * BATCH, :, :, None], tf.float32)
            batch = shift(flip(batch, training=True), training=True)
            outputs = outputs.write(step, tf.cast(batch[..., 0], tf.uint8))
        return outputs.concat()

    return run(images)


def timed(epoch_fn, images, repeats: int) -> tuple[float, bool]:
    epoch_fn(images, 0)  # warm-up: tracing
    seconds = []
    for epoch in range(1, repeats + 1):
        started = time.perf_counter()
        epoch_fn(images, epoch).numpy()
        seconds.append(time.perf_counter() - started)
    again = np.array_equal(epoch_fn(images, 1).numpy(), epoch_fn(images, 1).numpy())
    return statistics.median(seconds), again


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    x, y = load_split("train")
    train_idx, _ = train_val_split(y, seed=SEED)
    images = tf.constant(x[train_idx])  # uint8 (54000, 28, 28)
    result = {"images": int(images.shape[0]), "batch": BATCH}
    for name, epoch_fn in (("fmnist", fmnist_epoch), ("keras_layers", keras_epoch)):
        seconds, repeatable = timed(epoch_fn, images, args.repeats)
        result[name] = {"epoch_seconds": round(seconds, 3), "same_seed_same_images": repeatable}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
