"""Time-budget planning (fmnist.budget): pure arithmetic, tested without TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_the_budget_module_imports_no_keras():
    script = "import sys, fmnist.budget; print('keras' in sys.modules, 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_budget_probe_plans_with_the_mean_step_after_the_warm_up():
    from fmnist.budget import WARMUP_STEPS, epochs_that_fit, estimate_epoch_seconds

    # Tracing steps are left out; one slow step in ten counts (the median would drop it).
    steps = [5.0] * WARMUP_STEPS + [0.1] * 27 + [1.0] * 3
    assert estimate_epoch_seconds(steps, 100, 0) == pytest.approx(100 * 0.19)
    # Validation: a forward pass, a third of a training step per batch.
    assert estimate_epoch_seconds([0.3] * 20, 10, 6) == pytest.approx(0.3 * 12)
    # Too few steps to drop any: all of them count.
    assert estimate_epoch_seconds([1.0, 2.0], 4, 0) == pytest.approx(6.0)
    # Whole epochs in what the probe left, at least one, at most the requested.
    assert epochs_that_fit(3600.0, 20.0, 89.5, 60) == 40
    assert epochs_that_fit(3600.0, 20.0, 89.5, 30) == 30
    assert epochs_that_fit(10.0, 20.0, 89.5, 30) == 1


def test_a_budgeted_run_stops_before_an_epoch_that_would_overrun_it():
    from fmnist.budget import another_epoch_fits

    # 39 epochs of 93.5 s after a 19.5 s probe: 3,666 s, so the 39th must not start.
    assert another_epoch_fits([93.5] * 37, 19.5, 3600.0)
    assert not another_epoch_fits([93.5] * 38, 19.5, 3600.0)
    # The first epoch's tracing does not count as the typical epoch once others ran...
    assert another_epoch_fits([60.0, 10.0, 10.0], 0.0, 95.0)
    # ...but stands for it while it is the only one.
    assert not another_epoch_fits([60.0], 0.0, 100.0)
    assert another_epoch_fits([], 5.0, 10.0)


def test_a_budgeted_run_shrinks_its_plan_when_its_epochs_run_long():
    from fmnist.budget import REPLAN_MARGIN, replanned_epochs

    # Planned 133 epochs of the probe's 26.9 s; they take 28.8 s: 124 would fit, the
    # re-plan leaves 3% to spare per epoch and plans 120.
    seconds = [33.0, 28.8, 28.8]
    assert replanned_epochs(seconds, 11.6, 3600.0, 133) == 3 + int(
        (3600.0 - 11.6 - sum(seconds)) // (28.8 * REPLAN_MARGIN)) == 120
    assert replanned_epochs(seconds, 11.6, 3600.0, 120) is None  # now it fits: kept
    assert replanned_epochs(seconds[:2], 11.6, 3600.0, 133) is None  # too early to tell
    assert replanned_epochs([10.0, 10.0, 10.0], 0.0, 35.0, 10) == 3  # no epoch left: stop


def test_a_budgeted_run_grows_its_plan_up_to_the_epochs_asked_for():
    from fmnist.budget import REPLAN_GROWTH, replanned_epochs

    # The probe planned 104 epochs of 34 s on a machine still busy; they take 27 s: 128
    # fit with 3% to spare, so the plan grows to them, or to the 120 asked for.
    seconds = [33.0, 27.0, 27.0]
    assert replanned_epochs(seconds, 11.6, 3600.0, 104, ceiling=150) == 128
    assert replanned_epochs(seconds, 11.6, 3600.0, 104, ceiling=120) == 120
    assert replanned_epochs(seconds, 11.6, 3600.0, 104) is None  # no ceiling: kept
    # Growth by fewer than REPLAN_GROWTH epochs is not worth a retrace; nor is none.
    assert replanned_epochs(seconds, 11.6, 3600.0, 128 - REPLAN_GROWTH + 1, ceiling=150) is None
    assert replanned_epochs(seconds, 11.6, 3600.0, 128 - REPLAN_GROWTH, ceiling=150) == 128
    assert replanned_epochs(seconds, 11.6, 3600.0, 128, ceiling=150) is None
    # Right after a shrink the plan is stable: the margin keeps it from growing back.
    shrunk = replanned_epochs([33.0, 28.8, 28.8], 11.6, 3600.0, 133, ceiling=150)
    assert replanned_epochs([33.0, 28.8, 28.8], 11.6, 3600.0, shrunk, ceiling=150) is None
