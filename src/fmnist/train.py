"""Training: fit on the training split, validate on the validation split, write a run dir.

The test set is not loaded here. `fmnist train` calls evaluate.evaluate_run afterwards.
This module is imported only by the commands that train (it imports Keras).

Determinism and resume work together: the seed fixes the split and the initial weights,
and epoch ``e`` visits the training images in the order drawn from
``numpy.random.default_rng([seed, e])``, which does not depend on what ran before. A
run killed at any point resumes from the checkpoint of its last finished epoch (weights
and optimizer state) and ends with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np

from fmnist import __version__, rundir
from fmnist.data import load_split
from fmnist.errors import RunDirError
from fmnist.models import build_model
from fmnist.plots import plot_history
from fmnist.split import DEFAULT_VAL_SIZE, train_val_split


@dataclass
class TrainConfig:
    """Everything that decides a run's result; saved as the run's config.json."""

    model: str = "mlp"
    model_options: dict = field(default_factory=dict)  # keyword arguments of the factory
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    val_size: int = DEFAULT_VAL_SIZE  # validation images carved from the 60,000
    train_size: int | None = None  # None: all the rest (54,000 by default)
    test_size: int | None = None  # None: all 10,000 test images

    @classmethod
    def from_json(cls, payload: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in payload.items() if key in names})


def versions() -> dict:
    found = {"python": platform.python_version(), "fmnist": __version__,
             "keras": keras.__version__, "backend": keras.backend.backend(),
             "numpy": np.__version__}
    if found["backend"] == "tensorflow":
        import tensorflow as tf

        found["tensorflow"] = tf.__version__
    return found


def default_run_dir(config: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.model}-seed{config.seed}-{stamp}"


def train(config: TrainConfig, out_dir: str | Path | None = None, data_dir=None,
          verbose: int | str = "auto", train_data=None) -> Path:
    """Train a new run into ``out_dir`` (created; must be absent or empty). Returns it.

    ``train_data``: the 60,000 training ``(images, labels)`` if already loaded (the CLI
    verifies the data before importing TensorFlow); else they are loaded from ``data_dir``.
    """
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir(config)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise RunDirError(
            f"{run_dir} already exists and is not empty; choose another --out, "
            f"or continue it with --resume {run_dir}"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_json(run_dir / rundir.CONFIG, {
        **dataclasses.asdict(config),
        "versions": versions(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    if train_data is None:
        train_data = load_split("train", data_dir)
    _fit(run_dir, config, train_data, verbose)
    return run_dir


def resume(run_dir: str | Path, data_dir=None, verbose: int | str = "auto",
           train_data=None) -> Path:
    """Continue a run from its last checkpoint (or finish it if training was done)."""
    run_dir = rundir.require_run_dir(run_dir)
    config = TrainConfig.from_json(rundir.read_json(run_dir / rundir.CONFIG))
    if train_data is None:
        train_data = load_split("train", data_dir)
    _fit(run_dir, config, train_data, verbose)
    return run_dir


def _configure_determinism(seed: int) -> None:
    keras.utils.set_random_seed(seed)  # Python, NumPy and backend generators
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch ``epoch`` (0-based) visits ``n`` training images.

    Drawn from its own generator, so it is the same whether or not earlier epochs ran
    in this process: that is what lets a resumed run match an uninterrupted one.
    """
    return np.random.default_rng([seed, epoch]).permutation(n)


def training_batches(x, y, seed: int, batch_size: int, first_epoch: int, epochs: int):
    """A tf.data stream of ``(images, labels)`` batches for epochs ``first_epoch..epochs-1``.

    images uint8 (B, 28, 28), labels uint8 (B,). Each epoch ends with its own (possibly
    smaller) last batch, so ``ceil(n / batch_size)`` steps make exactly one epoch.
    The whole dataset stays in memory; batches are gathered by index, with no Python
    per sample.
    """
    import tensorflow as tf

    n = len(y)
    orders = np.stack([epoch_order(seed, e, n) for e in range(first_epoch, epochs)])
    images, labels = tf.constant(x), tf.constant(y)
    batches = tf.data.Dataset.from_tensor_slices(orders).flat_map(
        lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size))
    batches = batches.map(lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)),
                          num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)


def _fit(run_dir: Path, config: TrainConfig, train_data, verbose) -> None:
    _configure_determinism(config.seed)
    x, y = train_data  # uint8 (60000, 28, 28), (60000,)
    train_idx, val_idx = train_val_split(y, config.val_size, config.seed, config.train_size)
    x_train, y_train = x[train_idx], y[train_idx]  # uint8 (n_train, 28, 28), (n_train,)
    x_val, y_val = x[val_idx], y[val_idx]

    state_path = run_dir / rundir.STATE
    if state_path.exists():
        state = rundir.read_json(state_path)
        done = int(state["epochs_done"])
        model = keras.saving.load_model(run_dir / state["checkpoint"], safe_mode=True)
        # history.json may hold one epoch more than the checkpoint if the kill came
        # between the two writes; the checkpoint is the truth.
        history = rundir.read_json(run_dir / rundir.HISTORY)[:done]
    else:
        done = 0
        model = build_model(config.model, learning_rate=config.learning_rate,
                            **config.model_options)
        history = []

    if done < config.epochs:
        model.fit(
            training_batches(x_train, y_train, config.seed, config.batch_size, done, config.epochs),
            steps_per_epoch=-(-len(y_train) // config.batch_size),
            epochs=config.epochs, initial_epoch=done,
            validation_data=(x_val, y_val), validation_batch_size=1024,
            shuffle=False,  # the stream is already in each epoch's seeded order
            callbacks=[EpochCheckpoint(run_dir, history)],
            verbose=verbose,
        )
    _finish(run_dir, config, model, history, n_train=len(y_train), n_val=len(y_val))


class EpochCheckpoint(keras.callbacks.Callback):
    """Times each epoch, appends it to ``history`` and checkpoints the model."""

    def __init__(self, run_dir: Path, history: list[dict]):
        super().__init__()
        self.run_dir, self.history = run_dir, history
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1}
        row.update({key: float(value) for key, value in (logs or {}).items()})
        row["seconds"] = time.perf_counter() - self.started  # training + validation
        self.history.append(row)
        _checkpoint(self.run_dir, self.model, self.history)


def _checkpoint(run_dir: Path, model, history: list[dict]) -> None:
    """Save model and optimizer after an epoch; the order of writes makes it kill-safe.

    1. the checkpoint lands under a new name (written to a partial name, then renamed);
    2. history.json, then state.json, which names the checkpoint, are replaced;
    3. older checkpoints are deleted. A kill between any two steps leaves a state.json
       that points to a complete checkpoint of the epoch it says.
    """
    folder = run_dir / rundir.CHECKPOINTS
    folder.mkdir(exist_ok=True)
    name = f"epoch-{len(history):03d}.keras"
    partial = folder / f"partial-{name}"
    model.save(partial)
    os.replace(partial, folder / name)
    rundir.write_json(run_dir / rundir.HISTORY, history)
    rundir.write_json(run_dir / rundir.STATE, {
        "epochs_done": len(history),
        "checkpoint": f"{rundir.CHECKPOINTS}/{name}",
    })
    for old in folder.glob("*.keras"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _finish(run_dir: Path, config: TrainConfig, model, history: list[dict],
            n_train: int, n_val: int) -> None:
    partial = run_dir / f"partial-{rundir.MODEL}"
    model.save(partial)
    os.replace(partial, run_dir / rundir.MODEL)
    plot_history(history, run_dir / rundir.CURVES)
    last = history[-1] if history else {}
    rundir.write_json(run_dir / rundir.METRICS, {
        "model": config.model,
        "params": int(model.count_params()),
        "epochs": len(history),
        "seed": config.seed,
        "batch_size": config.batch_size,
        "n_train": n_train,
        "n_val": n_val,
        "train_seconds": float(sum(row["seconds"] for row in history)),
        "train_accuracy": last.get("accuracy"),
        "train_loss": last.get("loss"),
        "val_accuracy": last.get("val_accuracy"),
        "val_loss": last.get("val_loss"),
    })
