"""Augmentation and the training stream: shapes, dtypes, label alignment, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from fmnist.augment import (Augmentation, augment_batch, numpy_augment, numpy_cutmix, numpy_erase,
                            numpy_translate, random_cutmix, random_erase, random_flip,
                            random_translate)
from fmnist.config import TrainConfig
from fmnist.pipeline import _numpy_validation, numpy_batches, steps_per_epoch, training_batches

RNG = np.random.default_rng(0)
# Distinct images: each one's pixels encode its index, so any mix-up would show.
IMAGES = RNG.integers(1, 256, size=(37, 28, 28), dtype=np.uint8)
LABELS = (np.arange(37) % 10).astype(np.uint8)


def _seed(step: int):
    return tf.constant([7, step], tf.int64)


# Each transform as TensorFlow runs it and as its NumPy twin (the pipeline of the other
# Keras backends) does: both must keep the same promises.
TWINS = {
    "tensorflow": {
        "flip": lambda x, key: random_flip(tf.constant(x), _seed(key)).numpy(),
        "translate": lambda x, px, key: random_translate(tf.constant(x), px, _seed(key)).numpy(),
        "erase": lambda x, p, key: random_erase(tf.constant(x), p, _seed(key)).numpy(),
        "cutmix": lambda x, t, p, key: tuple(a.numpy() for a in random_cutmix(
            tf.constant(x), tf.constant(t), p, 7, key)),
    },
    "numpy": {
        "flip": lambda x, key: numpy_augment(x, key, Augmentation(flip=True), seed=7),
        "translate": lambda x, px, key: numpy_translate(x, px, np.random.default_rng(key)),
        "erase": lambda x, p, key: numpy_erase(x, p, np.random.default_rng(key)),
        "cutmix": lambda x, t, p, key: numpy_cutmix(x, t, p, np.random.default_rng(key)),
    },
}


@pytest.mark.parametrize("transform", [
    lambda x, s: random_flip(x, s),
    lambda x, s: random_translate(x, 2, s),
    lambda x, s: random_erase(x, 0.5, s),
    lambda x, s: augment_batch(x, 3, Augmentation(flip=True, translate=2, erase=0.5), seed=1),
])
def test_shape_and_dtype_are_kept(transform):
    out = transform(tf.constant(IMAGES), _seed(1))
    assert out.shape == IMAGES.shape and out.dtype == tf.uint8


@pytest.mark.parametrize("twin", TWINS)
def test_numpy_twins_keep_shape_and_dtype(twin):
    for out in (TWINS[twin]["flip"](IMAGES, 1), TWINS[twin]["translate"](IMAGES, 2, 1),
                TWINS[twin]["erase"](IMAGES, 0.5, 1),
                numpy_augment(IMAGES, 3, Augmentation(flip=True, translate=2, erase=0.5), seed=1)):
        assert out.shape == IMAGES.shape and out.dtype == np.uint8


@pytest.mark.parametrize("twin", TWINS)
def test_flip_mirrors_about_half_the_images_and_nothing_else(twin):
    out = TWINS[twin]["flip"](IMAGES, 1)
    mirrored = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, IMAGES)]
    kept = [np.array_equal(o, x) for o, x in zip(out, IMAGES)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 5 < sum(mirrored) < 32


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    padded = np.pad(image, 2)
    return padded[2 - dy:30 - dy, 2 - dx:30 - dx]


@pytest.mark.parametrize("twin", TWINS)
def test_translate_shifts_each_image_within_range_with_black_fill(twin):
    out = TWINS[twin]["translate"](IMAGES, 2, 2)
    shifts = set()
    for o, x in zip(out, IMAGES):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(o, _shifted(x, dy, dx))]
        assert matches, "output is not a shift of its own input"
        shifts.add(matches[0])
    assert len(shifts) > 5  # images get different shifts


@pytest.mark.parametrize("twin", TWINS)
def test_erase_blanks_one_rectangle_or_nothing(twin):
    out = TWINS[twin]["erase"](IMAGES, 0.5, 3)
    erased = 0
    for o, x in zip(out, IMAGES):
        changed = o != x
        if not changed.any():
            continue
        erased += 1
        assert (o[changed] == 0).all()
        rows, cols = np.where(changed)
        box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all(), "the erased pixels form a rectangle"
        assert 4 <= box.shape[0] <= 14 and 4 <= box.shape[1] <= 14
    assert 5 < erased < 32


def test_same_step_same_draw_other_step_other_draw():
    aug = Augmentation(flip=True, translate=2, erase=0.5)
    a = augment_batch(tf.constant(IMAGES), 5, aug, seed=1).numpy()
    b = augment_batch(tf.constant(IMAGES), 5, aug, seed=1).numpy()
    c = augment_batch(tf.constant(IMAGES), 6, aug, seed=1).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("twin", TWINS)
def test_cutmix_pastes_a_neighbours_box_and_mixes_the_targets_by_its_area(twin):
    one_hot = np.eye(10, dtype=np.float32)[LABELS]
    out, targets = TWINS[twin]["cutmix"](IMAGES, one_hot, 0.5, 4)
    assert out.shape == IMAGES.shape and out.dtype == np.uint8 and targets.shape == (37, 10)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    partners = np.roll(IMAGES, 1, axis=0)
    mixed = 0
    for i in range(37):
        share = targets[i, LABELS[i - 1]]  # neighbours have different labels here
        assert share * 784 == pytest.approx(round(share * 784), abs=1e-3)  # a whole box
        changed = out[i] != IMAGES[i]
        assert (out[i][changed] == partners[i][changed]).all()  # pasted from the neighbour
        if changed.any():
            rows, cols = np.where(changed)
            assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) <= round(share * 784)
        np.testing.assert_allclose(targets[i, LABELS[i]], 1 - share, rtol=1e-5)
        mixed += share > 0
    assert 5 < mixed < 32
    untouched, same = TWINS[twin]["cutmix"](IMAGES, one_hot, 0.0, 4)
    np.testing.assert_array_equal(untouched, IMAGES)
    np.testing.assert_array_equal(same, one_hot)


@pytest.mark.parametrize("numpy_stream", [False, True], ids=["tf.data", "numpy"])
def test_a_cutmix_stream_trains_on_mixed_one_hot_targets(numpy_stream):
    config = TrainConfig(batch_size=8, seed=3, cutmix=1.0)
    assert config.one_hot_targets
    batches = (list(numpy_batches(IMAGES, LABELS, config, 0, 1)) if numpy_stream
               else _stream(config, 0, 1))
    targets = np.concatenate([np.asarray(t) for _, t in batches])
    assert targets.shape == (37, 10)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-5)
    assert ((targets > 0).sum(axis=1) <= 2).all() and (targets.max(axis=1) < 1).any()


def test_numpy_draws_are_keyed_by_seed_and_key():
    aug = Augmentation(flip=True, translate=2, erase=0.5)
    a = numpy_augment(IMAGES, 5, aug, seed=1)
    np.testing.assert_array_equal(a, numpy_augment(IMAGES, 5, aug, seed=1))
    assert not np.array_equal(a, numpy_augment(IMAGES, 6, aug, seed=1))
    assert not np.array_equal(a, numpy_augment(IMAGES, 5, aug, seed=2))


@pytest.mark.parametrize("config", [
    TrainConfig(batch_size=8, seed=3),
    TrainConfig(batch_size=8, seed=3, label_smoothing=0.1),
], ids=["sparse labels", "one-hot targets"])
def test_the_numpy_stream_cuts_the_same_batches_as_tf_data(config):
    """Without augmentation the two pipelines must yield the very same batches: same
    epoch order, same cut, same targets; only the dtype of the images differs."""
    soft = np.random.default_rng(1).dirichlet(np.ones(10), 37).astype(np.float32)
    # A teacher's soft targets come with one-hot targets (a run with a teacher has them).
    for teacher in (None, soft) if config.one_hot_targets else (None,):
        tf_batches = [(x.numpy(), y.numpy()) for x, y in
                      training_batches(IMAGES, LABELS, config, 1, 3, teacher)]
        np_batches = list(numpy_batches(IMAGES, LABELS, config, 1, 3, teacher))
        assert len(np_batches) == len(tf_batches) == 2 * steps_per_epoch(37, 8)
        for (a, la), (b, lb) in zip(tf_batches, np_batches):
            assert b.dtype == np.float32
            np.testing.assert_array_equal(a.astype(np.float32), b)
            np.testing.assert_allclose(la, lb, rtol=1e-6)


def test_the_numpy_stream_augments_and_a_resumed_one_equals_its_tail():
    config = TrainConfig(batch_size=8, seed=3, flip=True, translate=2, erase=0.3)
    full = list(numpy_batches(IMAGES, LABELS, config, 0, 3))
    tail = list(numpy_batches(IMAGES, LABELS, config, 1, 3))
    steps = steps_per_epoch(37, 8)
    for (a, la), (b, lb) in zip(full[steps:], tail):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    plain = list(numpy_batches(IMAGES, LABELS, TrainConfig(batch_size=8, seed=3), 0, 3))
    assert [y.tolist() for _, y in full] == [y.tolist() for _, y in plain]
    assert any(not np.array_equal(a, b) for (a, _), (b, _) in zip(full, plain))


def test_numpy_validation_batches_cover_the_split_in_order():
    batches = _numpy_validation(IMAGES, LABELS, 16)
    assert len(batches) == 3
    images = np.concatenate([batches[i][0] for i in range(len(batches))])
    labels = np.concatenate([batches[i][1] for i in range(len(batches))])
    np.testing.assert_array_equal(images, IMAGES.astype(np.float32))
    np.testing.assert_array_equal(labels, LABELS)


def _stream(config: TrainConfig, first: int, epochs: int):
    return [(x.numpy(), y.numpy()) for x, y in training_batches(IMAGES, LABELS, config, first, epochs)]


def test_stream_keeps_labels_aligned_with_their_images():
    plain = _stream(TrainConfig(batch_size=8, seed=3), 0, 2)
    assert len(plain) == 2 * steps_per_epoch(37, 8)
    for images, labels in plain:
        for image, label in zip(images, labels):
            index = next(i for i in range(37) if np.array_equal(IMAGES[i], image))
            assert LABELS[index] == label
    augmented = _stream(TrainConfig(batch_size=8, seed=3, flip=True, translate=2), 0, 2)
    assert [y.tolist() for _, y in augmented] == [y.tolist() for _, y in plain]


def test_each_epoch_visits_every_image_once():
    for epoch in range(2):
        batches = _stream(TrainConfig(batch_size=8, seed=3), epoch, epoch + 1)
        seen = np.concatenate([x for x, _ in batches])
        assert sorted(map(bytes, seen)) == sorted(map(bytes, IMAGES))


def test_a_resumed_stream_equals_the_tail_of_the_full_one():
    config = TrainConfig(batch_size=8, seed=3, flip=True, translate=2, erase=0.3,
                         label_smoothing=0.1)
    full = _stream(config, 0, 3)
    tail = _stream(config, 1, 3)
    assert len(tail) == 2 * steps_per_epoch(37, 8)
    for (a, la), (b, lb) in zip(full[steps_per_epoch(37, 8):], tail):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


def test_label_smoothing_streams_one_hot_labels():
    images, labels = _stream(TrainConfig(batch_size=8, label_smoothing=0.1), 0, 1)[0]
    assert labels.shape == (8, 10) and labels.dtype == np.float32
    np.testing.assert_array_equal(labels.sum(axis=1), 1.0)


@pytest.mark.parametrize("stream", ["tensorflow", "numpy"])
def test_an_alternating_flip_shows_each_image_both_ways_every_two_epochs(stream):
    """``alternate_flip``: no image keeps its orientation from one epoch to the next, the
    first epoch's coins come from the seed, and a resumed stream equals the tail."""
    def epochs(config, first, last):
        if stream == "numpy":
            batches = list(numpy_batches(IMAGES, LABELS, config, first, last))
        else:
            batches = _stream(config, first, last)
        images = np.concatenate([x for x, _ in batches]).astype(np.uint8)
        return images.reshape(last - first, len(IMAGES), 28, 28)

    def mirrored(epoch_images):  # bool per original image, in index order
        flags = np.zeros(len(IMAGES), bool)
        for image in epoch_images:
            same = [i for i in range(len(IMAGES)) if np.array_equal(IMAGES[i], image)]
            mirror = [i for i in range(len(IMAGES)) if np.array_equal(IMAGES[i][:, ::-1], image)]
            assert len(same) + len(mirror) == 1
            if mirror:
                flags[mirror[0]] = True
        return flags

    config = TrainConfig(batch_size=8, seed=3, flip=True, alternate_flip=True)
    three = epochs(config, 0, 3)
    flags = [mirrored(images) for images in three]
    assert 0 < flags[0].sum() < len(IMAGES)  # a coin per image, not all one way
    np.testing.assert_array_equal(flags[1], ~flags[0])
    np.testing.assert_array_equal(flags[2], flags[0])
    np.testing.assert_array_equal(epochs(config, 0, 3), three)  # the seed fixes it
    np.testing.assert_array_equal(epochs(config, 1, 3), three[1:])  # resumed
    other = mirrored(epochs(config.replace(seed=4), 0, 1)[0])
    assert not np.array_equal(other, flags[0])


def test_an_alternating_flip_needs_flips():
    from fmnist.errors import ConfigError

    with pytest.raises(ConfigError, match="alternate_flip: true needs flips"):
        TrainConfig(alternate_flip=True)


def test_the_distributed_stream_alternates_flips_by_epoch():
    """The tf.distribute stream keys its augmentation by step, but an alternating flip by
    the epoch: an image seen in epochs 0 and 1 shows both orientations."""
    from fmnist.pipeline import distributed_batches

    config = TrainConfig(batch_size=8, seed=3, flip=True, alternate_flip=True)
    strategy = tf.distribute.get_strategy()  # one replica
    steps = len(IMAGES) // 8
    batches = [x.numpy() for x, _ in distributed_batches(strategy, IMAGES, LABELS, config, 0, 2)]
    assert len(batches) == 2 * steps
    seen: list[dict[int, bool]] = [{}, {}]
    for step, images in enumerate(batches):
        for image in images:
            index = next((i for i in range(len(IMAGES)) if np.array_equal(IMAGES[i], image)), None)
            mirror = next(i for i in range(len(IMAGES)) if np.array_equal(
                IMAGES[i][:, ::-1], image)) if index is None else index
            seen[step // steps][mirror] = index is None
    both = set(seen[0]) & set(seen[1])
    assert len(both) > len(IMAGES) // 2
    assert all(seen[0][i] != seen[1][i] for i in both)
