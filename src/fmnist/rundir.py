"""The run directory: one folder per training run, enough to rebuild and audit it.

    config.json       what was asked for (model, options, optimizer, epochs, seed, split
                      sizes) and the versions it ran with; `fmnist train --resume` and
                      rebuilding need nothing else
    state.json        training progress: epochs done and the checkpoint to resume from
    checkpoints/      the model (with optimizer state) after the last finished epoch
    history.json      per-epoch loss/accuracy on train and validation, seconds
    model.keras       the final model (raw 0..255 pixels in, probabilities out)
    curves.png        loss and accuracy curves, train vs validation
    metrics.json      test metrics (written by evaluation, the only reader of the test
                      set) next to the training summary

Every JSON file is written to a temporary name and renamed into place, so a run killed
at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fmnist.errors import RunDirError

CONFIG = "config.json"
STATE = "state.json"
HISTORY = "history.json"
METRICS = "metrics.json"
MODEL = "model.keras"
CURVES = "curves.png"
CHECKPOINTS = "checkpoints"


def write_json(path: Path, payload) -> None:
    """Write ``payload`` as indented JSON, atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing; is {path.parent} an fmnist run directory?") from None
    except json.JSONDecodeError as error:
        raise RunDirError(f"{path} is not valid JSON ({error.msg}); the run directory is damaged") from None


def require_run_dir(run_dir: str | Path, needs: str = CONFIG) -> Path:
    """Return ``run_dir`` as a Path, or explain in one line why it is not a usable run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist; pass the folder `fmnist train` wrote")
    if not (run_dir / needs).is_file():
        raise RunDirError(f"{run_dir} has no {needs}; pass a folder written by `fmnist train`")
    return run_dir


def require_new_run_dir(run_dir: str | Path) -> Path:
    """Refuse a run directory that exists and holds anything (a run would be overwritten)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise RunDirError(
            f"{run_dir} already exists and is not empty; choose another --out, "
            f"or continue it with --resume {run_dir}"
        )
    return run_dir
