"""Deterministic fault injection: a named point of a run where a test can stop the process.

A test that kills training must kill it at a known point, not after a guessed sleep.
With ``FMNIST_FAULT=POINT:EPOCH`` in its environment, a training process that reaches
that point (``after-checkpoint`` of epoch EPOCH, counted from 1) creates the file named
by ``FMNIST_FAULT_SIGNAL`` and waits there until it is killed; the test waits for the
file, then sends the signal it studies. Without the variable, :func:`reached` returns at
once: a name comparison per epoch, nothing more.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

FAULT_ENV, SIGNAL_ENV = "FMNIST_FAULT", "FMNIST_FAULT_SIGNAL"


def reached(point: str, epoch: int) -> None:
    """Hold the process at ``point`` of ``epoch`` when the environment asks for it."""
    if os.environ.get(FAULT_ENV) != f"{point}:{epoch}":
        return
    Path(os.environ[SIGNAL_ENV]).write_text(f"{point}:{epoch}\n")
    threading.Event().wait()  # until the test's signal ends the process
