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

Every file is written to a temporary name, flushed to disk (fsync) and renamed into
place, so a run killed at any moment, or a machine losing power, leaves either the old
file or the new one, never half of one.

One writer at a time: training, resuming and evaluating hold an exclusive lock on the run
directory (:func:`exclusive`, a ``flock`` on its ``.lock`` file, released by the kernel
when the process ends, however it ends). A second writer is refused with a one-line
error before it changes anything.
"""

from __future__ import annotations

import contextlib
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
LOCK = ".lock"


def sync_file(path: Path) -> None:
    """Flush ``path``'s data to the disk."""
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())


def _sync_directory(directory: Path) -> None:
    """Flush a directory entry (a rename) to the disk, where the OS allows it."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open directories
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def replace_durably(partial: Path, final: Path) -> None:
    """fsync ``partial``, rename it to ``final``, fsync the folder: after a crash the
    name ``final`` holds the old file or the complete new one."""
    sync_file(partial)
    os.replace(partial, final)
    _sync_directory(Path(final).parent)


def write_json(path: Path, payload) -> None:
    """Write ``payload`` as indented JSON, atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    replace_durably(tmp, path)


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
    if run_dir.exists() and (not run_dir.is_dir() or
                             any(entry.name != LOCK for entry in run_dir.iterdir())):
        raise RunDirError(
            f"{run_dir} already exists and is not empty; choose another --out, "
            f"or continue it with --resume {run_dir}"
        )
    return run_dir


def checkpoint_path(run_dir: Path, state: dict) -> Path:
    """The checkpoint ``state.json`` names, which must be a file inside ``run_dir``."""
    named = state.get("checkpoint")
    if not isinstance(named, str):
        raise RunDirError(f"{run_dir / STATE} names no checkpoint; the run directory is damaged")
    path = (run_dir / named).resolve()
    if not path.is_relative_to(run_dir.resolve()) or not path.is_file():
        raise RunDirError(f"{run_dir / STATE} names the checkpoint {named!r}, which is not a "
                          f"file inside {run_dir}; the run directory is damaged")
    return path


def require_unlocked(run_dir: str | Path) -> None:
    """Raise :class:`RunDirError` now if another process holds ``run_dir``'s lock (a cheap
    early check; :func:`exclusive` is what protects the writes)."""
    if (Path(run_dir) / LOCK).is_file():
        with exclusive(run_dir):
            pass


@contextlib.contextmanager
def exclusive(run_dir: str | Path):
    """Hold the run directory's lock (creating the directory if needed) for the block.

    Raises :class:`RunDirError` at once if another process holds it. On systems without
    ``fcntl`` (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        stream = open(run_dir / LOCK, "a+")
    except OSError as error:
        raise RunDirError(f"cannot create the run directory {run_dir} ({error.strerror}); "
                          "choose a writable --out") from None
    try:
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stream.seek(0)
            holder = stream.read().strip() or "unknown"
            raise RunDirError(f"{run_dir} is being written by another fmnist process (pid "
                              f"{holder}); wait for it to finish or choose another "
                              "directory") from None
        stream.seek(0)
        stream.truncate()
        stream.write(str(os.getpid()))
        stream.flush()
        yield
    finally:
        stream.close()  # closing the descriptor releases the lock
