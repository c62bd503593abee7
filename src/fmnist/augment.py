"""Training-time augmentation, vectorized over whole batches: TensorFlow ops for the
TensorFlow backend's tf.data pipeline, and their NumPy twins (``numpy_augment``) for a
Keras backend without TensorFlow (JAX or torch, e.g. on a GPU machine that has no
TensorFlow). The same transforms with the same parameters; the two draw their random
numbers differently, so a run's exact images depend on the backend, not its recipe.

Kept out of the models on purpose: a saved or exported model never augments. Every
random draw is keyed by ``(seed, step)`` where ``step`` is the global batch number (or
the epoch), so a run is reproducible and a resumed run draws exactly what an
uninterrupted one would have drawn.

All functions take ``images`` uint8 (B, 28, 28) and return uint8 (B, 28, 28); labels
are never touched, so they stay aligned with their images.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from fmnist.runtime import prepare_tensorflow


def _tf():
    """TensorFlow, imported on first use: the NumPy path must run where it is absent."""
    if "tensorflow" not in sys.modules:
        # Before TensorFlow's first import: oneDNN defaults. Only then: inside a tf.data
        # map, AutoGraph would try to convert os.environ.setdefault, fail, and print a
        # warning holding the process's whole environment (every variable, secrets too).
        prepare_tensorflow()
    import tensorflow as tf

    return tf


@dataclass(frozen=True)
class Augmentation:
    flip: bool = False  # mirror left-right with probability 1/2 (garments are symmetric)
    translate: int = 0  # shift by up to this many pixels in x and y, zero fill
    erase: float = 0.0  # probability of blanking one random rectangle (random erasing)

    @property
    def active(self) -> bool:
        return self.flip or self.translate > 0 or self.erase > 0


def _seed(seed: int, step, salt: int):
    tf = _tf()
    return tf.stack([tf.cast(seed, tf.int64) * 1000 + salt, tf.cast(step, tf.int64)])


def random_flip(images, seed):
    """Mirror each image left-right with probability 1/2."""
    tf = _tf()
    flip = tf.random.stateless_uniform([tf.shape(images)[0]], seed=seed) < 0.5
    return tf.where(flip[:, None, None], tf.reverse(images, axis=[2]), images)


def random_translate(images, pixels: int, seed):
    """Shift each image by its own (dy, dx) in [-pixels, pixels], filling with black."""
    tf = _tf()
    batch = tf.shape(images)[0]
    size = images.shape[1]
    shifts = tf.random.stateless_uniform([batch, 2], seed=seed, minval=-pixels,
                                         maxval=pixels + 1, dtype=tf.int32)
    padded = tf.pad(images, [[0, 0], [pixels, pixels], [pixels, pixels]])
    grid = tf.range(size)[None, :] + pixels  # (1, 28): where row/col i comes from
    rows = grid - shifts[:, :1]  # (B, 28)
    cols = grid - shifts[:, 1:]
    picked = tf.gather(padded, rows, axis=1, batch_dims=1)  # (B, 28, 28 + 2p)
    return tf.gather(picked, cols, axis=2, batch_dims=1)  # (B, 28, 28)


def box_mask(index, top, bottom, left, right, apply):
    """bool (B, size, size): True inside each image's box, rows ``top..bottom-1`` and
    columns ``left..right-1`` (each (B,)), where ``apply`` (B,) says so. ``index`` is
    ``range(size)`` as a tensor or an array: the same code serves TensorFlow and NumPy."""
    index = index[None, :]
    in_rows = (index >= top[:, None]) & (index < bottom[:, None])  # (B, size)
    in_cols = (index >= left[:, None]) & (index < right[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]


def random_erase(images, probability: float, seed, min_side: int = 4, max_side: int = 14):
    """Blank one rectangle (sides min_side..max_side px) per image with ``probability``."""
    tf = _tf()
    batch = tf.shape(images)[0]
    size = images.shape[1]
    draws = tf.random.stateless_uniform([batch, 5], seed=seed)
    apply = draws[:, 0] < probability
    span = float(max_side - min_side + 1)
    height = min_side + tf.cast(draws[:, 1] * span, tf.int32)
    width = min_side + tf.cast(draws[:, 2] * span, tf.int32)
    top = tf.cast(draws[:, 3] * tf.cast(size - height + 1, tf.float32), tf.int32)
    left = tf.cast(draws[:, 4] * tf.cast(size - width + 1, tf.float32), tf.int32)
    mask = box_mask(tf.range(size), top, top + height, left, left + width, apply)
    return tf.where(mask, tf.zeros_like(images), images)


def augment_batch(images, step, augmentation: Augmentation, seed: int):
    """Apply the configured augmentations to one batch; ``step`` is the global batch number."""
    if augmentation.flip:
        images = random_flip(images, _seed(seed, step, 1))
    if augmentation.translate > 0:
        images = random_translate(images, augmentation.translate, _seed(seed, step, 2))
    if augmentation.erase > 0:
        images = random_erase(images, augmentation.erase, _seed(seed, step, 3))
    return images


def numpy_augment(images: np.ndarray, key: int, augmentation: Augmentation,
                  seed: int) -> np.ndarray:
    """NumPy twin of :func:`augment_batch`: uint8 (B, 28, 28) -> uint8 (B, 28, 28).

    The draws come from ``numpy.random.default_rng([seed, key, salt])``, one generator
    per transform, so they depend on the seed and the key (epoch or step) alone.
    """
    if augmentation.flip:
        flip = np.random.default_rng([seed, key, 1]).random(len(images)) < 0.5
        images = np.where(flip[:, None, None], images[:, :, ::-1], images)
    if augmentation.translate > 0:
        images = numpy_translate(images, augmentation.translate,
                                 np.random.default_rng([seed, key, 2]))
    if augmentation.erase > 0:
        images = numpy_erase(images, augmentation.erase, np.random.default_rng([seed, key, 3]))
    return images


def numpy_translate(images: np.ndarray, pixels: int, rng: np.random.Generator) -> np.ndarray:
    """Shift each image by its own (dy, dx) in [-pixels, pixels], filling with black."""
    batch, size = len(images), images.shape[1]
    shifts = rng.integers(-pixels, pixels + 1, size=(batch, 2))
    padded = np.pad(images, [(0, 0), (pixels, pixels), (pixels, pixels)])
    grid = np.arange(size)[None, :] + pixels  # (1, 28): where row/col i comes from
    rows = (grid - shifts[:, :1])[:, :, None]  # (B, 28, 1)
    cols = (grid - shifts[:, 1:])[:, None, :]  # (B, 1, 28)
    return padded[np.arange(batch)[:, None, None], rows, cols]


def numpy_erase(images: np.ndarray, probability: float, rng: np.random.Generator,
                min_side: int = 4, max_side: int = 14) -> np.ndarray:
    """Blank one rectangle (sides min_side..max_side px) per image with ``probability``."""
    batch, size = len(images), images.shape[1]
    draws = rng.random((batch, 5))
    apply = draws[:, 0] < probability
    span = max_side - min_side + 1
    height = min_side + (draws[:, 1] * span).astype(int)
    width = min_side + (draws[:, 2] * span).astype(int)
    top = (draws[:, 3] * (size - height + 1)).astype(int)
    left = (draws[:, 4] * (size - width + 1)).astype(int)
    mask = box_mask(np.arange(size), top, top + height, left, left + width, apply)
    return np.where(mask, np.zeros_like(images), images)



def random_cutmix(images, targets, probability: float, seed: int, key):
    """CutMix within a batch: with ``probability``, image ``i`` gets a box of image
    ``i - 1`` (its neighbour in the epoch's random order) pasted in, and its target
    becomes ``(1 - a) * targets[i] + a * targets[i - 1]``, ``a`` the box's share of the
    pixels. The box side is ``sqrt(1 - lam) * 28`` with ``lam`` uniform (Beta(1, 1), as
    in the CutMix paper), centred uniformly and cut at the border.

    ``images`` uint8 (B, 28, 28), ``targets`` float32 (B, 10) -> the same shapes; the
    draws are keyed by ``(seed, key)``, ``key`` the epoch or global step.
    """
    tf = _tf()
    size = images.shape[1]
    draws = tf.random.stateless_uniform([tf.shape(images)[0], 4], seed=_seed(seed, key, 4))
    side = tf.sqrt(1.0 - draws[:, 1]) * size
    centre_row, centre_col = draws[:, 2] * size, draws[:, 3] * size
    top = tf.cast(tf.clip_by_value(tf.round(centre_row - side / 2), 0, size), tf.int32)
    bottom = tf.cast(tf.clip_by_value(tf.round(centre_row + side / 2), 0, size), tf.int32)
    left = tf.cast(tf.clip_by_value(tf.round(centre_col - side / 2), 0, size), tf.int32)
    right = tf.cast(tf.clip_by_value(tf.round(centre_col + side / 2), 0, size), tf.int32)
    mask = box_mask(tf.range(size), top, bottom, left, right, draws[:, 0] < probability)
    images = tf.where(mask, tf.roll(images, 1, axis=0), images)
    share = tf.reduce_mean(tf.cast(mask, tf.float32), axis=[1, 2])[:, None]  # (B, 1)
    return images, (1.0 - share) * targets + share * tf.roll(targets, 1, axis=0)


def numpy_cutmix(images: np.ndarray, targets: np.ndarray, probability: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """NumPy twin of :func:`random_cutmix`."""
    size = images.shape[1]
    draws = rng.random((len(images), 4))
    side = np.sqrt(1.0 - draws[:, 1]) * size
    centre_row, centre_col = draws[:, 2] * size, draws[:, 3] * size
    top, bottom = (np.clip(np.round(centre_row + d * side / 2), 0, size) for d in (-1, 1))
    left, right = (np.clip(np.round(centre_col + d * side / 2), 0, size) for d in (-1, 1))
    mask = box_mask(np.arange(size), top, bottom, left, right, draws[:, 0] < probability)
    images = np.where(mask, np.roll(images, 1, axis=0), images)
    share = mask.mean(axis=(1, 2), dtype=np.float32)[:, None]
    return images, ((1.0 - share) * targets + share * np.roll(targets, 1, axis=0)).astype(np.float32)
