"""The run directory: one folder per training run, enough to rebuild and audit it.

    config.json       what was asked for (model, options, optimizer, epochs, seed, split
                      sizes) and the versions it ran with; `fmnist train --resume` and
                      rebuilding need nothing else
    state.json        training progress: epochs done, the checkpoint to resume from and
                      the one before it, each with its size and SHA-256
    checkpoints/      the model (with optimizer state) after the last two finished epochs
    history.json      per-epoch loss/accuracy on train and validation, seconds
    model.keras       the final model (raw 0..255 pixels in, probabilities out)
    curves.png        loss and accuracy curves, train vs validation
    metrics.json      test metrics (written by evaluation, the only reader of the test
                      set) next to the training summary

Every file is written to a temporary name, flushed to disk (fsync) and renamed into
place, so a run killed at any moment, or a machine losing power, leaves either the old
file or the new one, never half of one.

A resume checks the checkpoint state.json names against its recorded size and SHA-256;
one that is missing, truncated or altered is named in one line, and the run falls back
to the previous checkpoint (it says so), or, with none left, says how to start again.
config.json records the run directory's ``layout`` and state.json its ``format``, so a
later layout can tell old runs from new.

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

from fmnist import faults
from fmnist.errors import RunDirError

CONFIG = "config.json"
STATE = "state.json"
HISTORY = "history.json"
METRICS = "metrics.json"
MODEL = "model.keras"
ONNX_MODEL = "model.onnx"  # written by `fmnist export`
# The file each prediction engine reads from a run directory.
ENGINE_FILES = {"keras": MODEL, "onnx": ONNX_MODEL}
ENGINES = tuple(ENGINE_FILES)
CURVES = "curves.png"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"
# The run directory's layout: config.json's "layout" and state.json's "format". 2: state
# names the last two checkpoints with their size and SHA-256; 1 (no field): one, unchecked.
LAYOUT = 2


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


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` atomically (temp file + rename): no partial file on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def read_metrics(run_dir: Path) -> dict:
    """A run's metrics.json, or {} before training has written it."""
    path = Path(run_dir) / METRICS
    return read_json(path) if path.is_file() else {}


def run_record(run_dir: str | Path) -> dict:
    """What another run records of a trained one it builds on (an ensemble of its members,
    a student of its teacher): where it is, what it is, the SHA-256 of its model.keras,
    and its own training cost and test figures."""
    from fmnist.data import sha256_file

    run_dir = require_run_dir(run_dir, needs=MODEL)
    config, metrics = read_json(run_dir / CONFIG), read_metrics(run_dir)
    return {"run": str(run_dir), "model": metrics.get("model") or config.get("model"),
            "seed": config.get("seed"), "flip": bool(config.get("flip")),
            "sha256": sha256_file(run_dir / MODEL), "params": metrics.get("params"),
            "train_seconds": metrics.get("train_seconds"),
            "test_accuracy": metrics.get("test_accuracy"),
            "test_accuracy_tta": metrics.get("test_accuracy_tta")}


def require_teacher(run_dir: str | Path, tta: bool = False) -> Path:
    """Return a teacher's run directory, or say in one line why it cannot teach: no
    trained model there, or ``tta`` (its mean over each image and its mirror) asked of a
    teacher that never saw mirrored images."""
    run_dir = require_run_dir(run_dir, needs=MODEL)
    if tta and not read_json(run_dir / CONFIG).get("flip"):
        raise RunDirError(f"the teacher {run_dir} was not trained with flips, so its mirror-image "
                          "answers mean nothing; drop --distill-tta")
    return run_dir


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
    path, problem = _located(run_dir, state)
    if problem is not None:
        raise RunDirError(f"{run_dir / STATE}: {problem}; the run directory is damaged")
    return path


def _located(run_dir: Path, entry: dict) -> tuple[Path | None, str | None]:
    """The file a state entry names, or None and what is wrong with the name: not a
    string, outside the run directory, or no such file."""
    named = entry.get("checkpoint")
    if not isinstance(named, str):
        return None, "state.json names no checkpoint"
    path = (run_dir / named).resolve()
    if not path.is_relative_to(run_dir.resolve()):
        return None, f"the checkpoint {named!r} lies outside {run_dir}"
    if not path.is_file():
        return None, f"{named} (epoch {entry.get('epochs_done')}) is missing"
    return path, None


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


class RunDir:
    """A run directory being trained: its config, state and history held in memory.

    Written at defined points only, never re-read mid-run:

    - ``config.json``: on :meth:`create`, and by :meth:`record` for settings derived
      before the first epoch (replicas, the epoch count a time budget allows);
    - a checkpoint, then ``history.json``, then ``state.json``: by :meth:`checkpoint`,
      after each epoch, in the order that makes a kill at any point resumable;
    - ``model.keras`` and the training part of ``metrics.json``: by :meth:`finish`.

    Keras-free: models are saved through the ``save(path)`` callable they are passed.
    """

    def __init__(self, path: Path, config: dict, history: list[dict] | None = None,
                 state: dict | None = None):
        self.path = Path(path)
        self.config = config
        self.history = history if history is not None else []
        self.state = state

    @classmethod
    def create(cls, path: str | Path, config: dict) -> "RunDir":
        """Start a new run in ``path`` (which the caller has checked is new, and locked)."""
        run = cls(Path(path), dict(config))
        write_json(run.path / CONFIG, run.config)
        return run

    @classmethod
    def open(cls, path: str | Path, warn=None) -> "RunDir":
        """A run as it was left: config, and the state and history of its last good
        checkpoint (history.json may hold an epoch more, when a kill came between the two
        writes, or when a damaged checkpoint sent the run back one: the checkpoint is the
        truth). ``warn``: where the one-line notices of a damaged checkpoint go (default:
        stderr)."""
        path = require_run_dir(path)
        config = read_json(path / CONFIG)
        state = read_json(path / STATE) if (path / STATE).is_file() else None
        if state is not None:
            state = good_state(path, state, warn or _stderr)
        history = read_json(path / HISTORY)[:int(state["epochs_done"])] if state else []
        return cls(path, config, history, state)

    @property
    def epochs_done(self) -> int:
        return int(self.state["epochs_done"]) if self.state else 0

    def checkpoint_file(self) -> Path:
        """The checkpoint to resume from (:func:`checkpoint_path` checks it is inside)."""
        return checkpoint_path(self.path, self.state or {})

    def record(self, **values) -> None:
        """Add derived settings to config.json, for audit and for an exact resume."""
        self.config.update(values)
        write_json(self.path / CONFIG, self.config)

    def checkpoint(self, save, epoch_row: dict) -> None:
        """Append ``epoch_row`` to the history and checkpoint the model after it.

        1. the checkpoint lands under a new name (``save`` writes a partial name, then it
           is renamed); 2. history.json, then state.json, which names it with its size
           and SHA-256 and keeps the one before as ``previous``, are replaced; 3. the
        checkpoints older than those two are deleted. A kill between any two steps leaves
        a state.json that points to complete checkpoints of the epochs it says.
        """
        epoch = len(self.history) + 1
        folder = self.path / CHECKPOINTS
        folder.mkdir(exist_ok=True)
        name = f"epoch-{epoch:03d}.keras"
        partial = folder / f"partial-{name}"
        faults.reached("before-checkpoint", epoch)
        save(partial)
        faults.reached("during-checkpoint", epoch)
        replace_durably(partial, folder / name)
        self.history.append(epoch_row)
        write_json(self.path / HISTORY, self.history)
        current = _checkpoint_entry(self.path, f"{CHECKPOINTS}/{name}", epoch)
        previous = _entry_of(self.state) if self.state else None
        self.state = {"format": LAYOUT, **current, "previous": previous}
        write_json(self.path / STATE, self.state)
        kept = {name, Path(previous["checkpoint"]).name if previous else None}
        for old in folder.glob("*.keras"):
            if old.name not in kept:
                old.unlink(missing_ok=True)

    def finish(self, save, metrics: dict) -> None:
        """Write the final model (through ``save``) and the training summary."""
        partial = self.path / f"partial-{MODEL}"
        save(partial)
        replace_durably(partial, self.path / MODEL)
        write_json(self.path / METRICS, metrics)


def _stderr(line: str) -> None:
    import sys

    print(f"fmnist: {line}", file=sys.stderr)


def _checkpoint_entry(run_dir: Path, relative: str, epochs_done: int) -> dict:
    from fmnist.data import sha256_file

    path = run_dir / relative
    return {"epochs_done": epochs_done, "checkpoint": relative, "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def _entry_of(state: dict) -> dict:
    return {key: state[key] for key in ("epochs_done", "checkpoint", "bytes", "sha256")
            if key in state}


def checkpoint_problem(run_dir: Path, entry: dict) -> str | None:
    """What is wrong with the checkpoint a state entry names, in words; None: it is the
    file that was written (its recorded size and SHA-256, where recorded)."""
    from fmnist.data import sha256_file

    path, problem = _located(run_dir, entry)
    if problem is not None:
        return problem
    named = entry["checkpoint"]
    size = path.stat().st_size
    if "bytes" in entry and size != entry["bytes"]:
        return (f"{named} is truncated: {size:,} bytes where {entry['bytes']:,} were written"
                if size < entry["bytes"] else
                f"{named} has {size:,} bytes where {entry['bytes']:,} were written")
    if "sha256" in entry and sha256_file(path) != entry["sha256"]:
        return f"{named} is altered: its SHA-256 is not the one state.json recorded"
    return None


def good_state(run_dir: Path, state: dict, warn) -> dict:
    """``state`` itself when its checkpoint is good; else, saying so through ``warn``,
    the state of its previous checkpoint when that one is good. With none good, a
    RunDirError saying what is wrong and how to start again."""
    problems = []
    for entry in (state, state.get("previous")):
        if not entry:
            continue
        problem = checkpoint_problem(run_dir, entry)
        if problem is None:
            if problems:
                warn(f"resuming from {entry['checkpoint']} (epoch {entry['epochs_done']}), "
                     "the previous good checkpoint")
                return {"format": state.get("format", 1), **entry, "previous": None}
            return state
        warn(f"warning: {run_dir}: {problem}")
        problems.append(problem)
    raise RunDirError(f"{run_dir} has no good checkpoint to resume from ({'; '.join(problems)}); "
                      f"start it again: fmnist train --config {run_dir / CONFIG} --out NEW_DIR")
