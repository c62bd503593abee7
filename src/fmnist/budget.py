"""Time-budget planning: how many epochs of a schedule fit in ``--time-budget`` seconds.

Pure arithmetic on measured seconds: no Keras, no TensorFlow, so it is tested on its own
and read in one sitting. `fmnist.train` times the probe and the epochs and asks here:

1. before training, :func:`estimate_epoch_seconds` and :func:`epochs_that_fit` turn the
   probe's step times into the plan;
2. after each epoch from the third, :func:`replanned_epochs` moves the plan when the
   epochs so far say it will not fit, or that a few more would;
3. after each epoch, :func:`another_epoch_fits` stops training before an epoch that
   would end past the budget.

Seconds are wall-clock; an epoch's are its training plus its validation pass.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

PROBE_STEPS = 36  # steps timed to fit --time-budget; the first few (tracing) are dropped
WARMUP_STEPS = 4  # of those, left out of the timing: tracing and the first calls' warm-up
VALIDATION_STEP_SHARE = 1 / 3  # a validation batch (forward only) against a training step
REPLAN_MARGIN = 1.03  # a re-plan budgets each epoch 3% over the typical one: it is rare
REPLAN_GROWTH = 2  # the fewest epochs a plan grows by: each re-plan retraces the step


def estimate_epoch_seconds(step_seconds: Sequence[float], train_steps: int, val_steps: int) -> float:
    """An epoch's wall time from the probe's step times.

    The mean of the steps after the warm-up, not the median: an epoch pays for its slow
    steps too. Validation is a forward pass over ``val_steps`` batches, about a third of
    a training step each. Still a little short: what an epoch spends between its steps is
    not timed, which the re-plan (:func:`replanned_epochs`) and the guard
    (:func:`another_epoch_fits`) absorb.
    """
    steps = [float(second) for second in step_seconds]
    steady = steps[WARMUP_STEPS:] if len(steps) > WARMUP_STEPS + 2 else steps
    step = statistics.fmean(steady) if steady else 0.1
    return step * (train_steps + val_steps * VALIDATION_STEP_SHARE)


def epochs_that_fit(budget_seconds: float, probe_seconds: float, epoch_seconds: float,
                    max_epochs: int) -> int:
    """Whole epochs of ``epoch_seconds`` that fit in what the probe left of the budget,
    at least 1 and at most ``max_epochs``."""
    fits = int((budget_seconds - probe_seconds) // epoch_seconds) if epoch_seconds > 0 else max_epochs
    return max(1, min(max_epochs, fits))


def typical_epoch(epoch_seconds: Sequence[float]) -> float:
    """The median epoch after the first (which also traces the graph), or the first while
    it is the only one; 0 before any."""
    return float(statistics.median(epoch_seconds[1:] or epoch_seconds[:1] or [0.0]))


def replanned_epochs(epoch_seconds: Sequence[float], probe_seconds: float, budget_seconds: float,
                     planned_epochs: int, ceiling: int | None = None) -> int | None:
    """The epoch count a budgeted run should move its plan to, or None to keep it.

    ``epoch_seconds``: each epoch's wall time so far. Waits for two epochs after the first.
    Then the count that fits is the one whose remaining epochs, of the typical length with
    :data:`REPLAN_MARGIN` to spare, end within the budget. The plan shrinks to it when the
    planned epochs of the typical length would end past the budget; it grows to it, up to
    ``ceiling`` (default: never past the plan), when that adds :data:`REPLAN_GROWTH`
    epochs or more. Between the two the plan is kept, so jitter and the retrace a re-plan
    costs do not call for another.
    """
    done = len(epoch_seconds)
    if done < 3 or done >= planned_epochs:
        return None
    left = budget_seconds - probe_seconds - sum(epoch_seconds)
    typical = typical_epoch(epoch_seconds)
    if typical <= 0:
        return None
    fits = max(done, done + int(left // (typical * REPLAN_MARGIN)))
    if done + left / typical < planned_epochs:
        return fits
    grown = min(fits, ceiling or planned_epochs)
    return grown if grown >= planned_epochs + REPLAN_GROWTH else None


def another_epoch_fits(epoch_seconds: Sequence[float], probe_seconds: float,
                       budget_seconds: float) -> bool:
    """Whether one more epoch, as long as the typical one so far, ends within the budget:
    the guard for a constant rate, or a slowdown in the last epochs."""
    return probe_seconds + sum(epoch_seconds) + typical_epoch(epoch_seconds) <= budget_seconds
