"""scripts/pairedruns.py: the paired test that decides whether a lever beats noise."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pairedruns.py"


@pytest.fixture(scope="module")
def paired():
    spec = importlib.util.spec_from_file_location("pairedruns", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mcnemar_is_the_two_sided_binomial_test_at_one_half(paired):
    assert paired.mcnemar_p(0, 10) == pytest.approx(2 / 2 ** 10)
    assert paired.mcnemar_p(10, 0) == paired.mcnemar_p(0, 10)
    assert paired.mcnemar_p(2, 8) == pytest.approx(2 * sum(math.comb(10, k) for k in range(3)) / 2 ** 10)
    assert paired.mcnemar_p(5, 5) == 1.0  # capped: both tails hold the middle
    assert paired.mcnemar_p(0, 0) == 1.0  # no disagreement, no evidence


def test_disagreements_count_the_images_only_one_run_got_right(paired):
    a = np.array([True, True, False, False, True])
    b = np.array([True, False, True, False, False])
    assert paired.disagreements(a, b) == (2, 1)
    assert paired.disagreements(b, a) == (1, 2)


def test_pooling_sums_each_side_before_testing(paired):
    # Two seeds each short of significance in the same direction pool into one test.
    counts = [(79, 87), (78, 90)]
    only_a, only_b, p = paired.pooled(counts)
    assert (only_a, only_b) == (157, 177)
    assert p == paired.mcnemar_p(157, 177)
    assert p < min(paired.mcnemar_p(*pair) for pair in counts)
