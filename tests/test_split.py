"""The train/validation split: disjoint, stratified, sized as asked, fixed by the seed."""

import numpy as np
import pytest

from fmnist.split import split_key, split_of_run, train_val_split

LABELS = np.repeat(np.arange(10, dtype=np.uint8), 6000)  # the real training set's balance


def test_default_split_is_54000_and_6000_disjoint_and_complete():
    train_idx, val_idx = train_val_split(LABELS)
    assert (len(train_idx), len(val_idx)) == (54000, 6000)
    assert np.intersect1d(train_idx, val_idx).size == 0
    assert np.union1d(train_idx, val_idx).size == 60000


def test_split_is_stratified():
    train_idx, val_idx = train_val_split(LABELS, val_size=6000, seed=3)
    assert np.bincount(LABELS[val_idx]).tolist() == [600] * 10
    assert np.bincount(LABELS[train_idx]).tolist() == [5400] * 10


def test_same_seed_same_split_other_seed_other_split():
    first = train_val_split(LABELS, seed=7)
    again = train_val_split(LABELS, seed=7)
    other = train_val_split(LABELS, seed=8)
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def test_a_split_seed_holds_out_that_seeds_images_whatever_the_run_seed():
    """Runs of seeds 0 and 3 on split 0 hold out the same images; a config without
    split_seed (every run before it existed) keeps the split of its seed."""
    base = {"val_size": 1000, "train_size": None}
    own = split_of_run({**base, "seed": 0}, LABELS)
    shared = split_of_run({**base, "seed": 3, "split_seed": 0}, LABELS)
    for ours, theirs in zip(own, shared):
        np.testing.assert_array_equal(ours, theirs)
    assert not np.array_equal(split_of_run({**base, "seed": 3}, LABELS)[1], own[1])
    assert split_key({**base, "seed": 3, "split_seed": 0}) == split_key({**base, "seed": 0})
    assert split_key({**base, "seed": 3, "split_seed": None}) == split_key({**base, "seed": 3})
    # Another validation size is another split; a training subset holds out the same images.
    assert split_key({"seed": 0, "val_size": 500}) != split_key({**base, "seed": 0})
    subset = split_of_run({**base, "seed": 0, "train_size": 2000}, LABELS)
    np.testing.assert_array_equal(subset[1], own[1])
    assert len(subset[0]) == 2000 and np.isin(subset[0], own[0]).all()
    assert split_key({**base, "seed": 0, "train_size": 2000}) == split_key({**base, "seed": 0})


def test_train_size_keeps_a_stratified_subset_outside_validation():
    train_idx, val_idx = train_val_split(LABELS, val_size=1000, seed=0, train_size=5000)
    assert len(train_idx) == 5000 and len(val_idx) == 1000
    assert np.bincount(LABELS[train_idx]).tolist() == [500] * 10
    assert np.intersect1d(train_idx, val_idx).size == 0


def test_unbalanced_labels_keep_their_proportions():
    labels = np.array([0] * 900 + [1] * 100)
    _, val_idx = train_val_split(labels, val_size=100, seed=0)
    assert np.bincount(labels[val_idx]).tolist() == [90, 10]


@pytest.mark.parametrize("val_size", [0, 60000, -5])
def test_impossible_validation_sizes_are_refused(val_size):
    with pytest.raises(ValueError, match="val_size"):
        train_val_split(LABELS, val_size=val_size)
