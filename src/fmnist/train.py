"""Training: fit on the training split, validate on the validation split, write a run dir.

The test set is not loaded here. `fmnist train` calls evaluate.evaluate_run afterwards.
This module is imported only by the commands that train (it imports Keras). The input
pipeline is :mod:`fmnist.pipeline`, the compiled model :mod:`fmnist.recipe`, the time
budget's arithmetic :mod:`fmnist.budget`, a teacher's targets :mod:`fmnist.distill`; this
is the loop around them, and :class:`fmnist.rundir.RunDir` keeps the run's files.

Determinism and resume work together: the seed fixes the split and the initial weights,
and epoch ``e`` visits the training images in an order that does not depend on what ran
before (:func:`fmnist.pipeline.epoch_order`). A run killed at any point resumes from the
checkpoint of its last finished epoch (weights and optimizer state) and ends with the
same metrics as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from fmnist.runtime import prepare_tensorflow

prepare_tensorflow()  # before Keras' first import: backend and oneDNN defaults

import keras  # noqa: E402
import numpy as np  # noqa: E402

from fmnist import __version__, budget, distill, faults, rundir  # noqa: E402
from fmnist.batchnorm import with_keras_layers  # noqa: E402
from fmnist.config import TrainConfig  # noqa: E402,F401  (TrainConfig: re-exported for callers)
from fmnist.data import load_split  # noqa: E402
from fmnist.errors import FmnistError  # noqa: E402
from fmnist.hardware import choose_precision, dtype_policy  # noqa: E402
from fmnist.metrics import classification_metrics, predict_proba  # noqa: E402
from fmnist.pipeline import (distributed_batches, fit_targets, steps_per_epoch,  # noqa: E402
                             training_batches, validation_batches)
from fmnist.plots import plot_history  # noqa: E402
from fmnist.recipe import (announce_precision, configure_determinism, new_model,  # noqa: E402
                           recorded_precision, replan_onecycle)
from fmnist.rundir import RunDir  # noqa: E402
from fmnist.split import split_of_run  # noqa: E402


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
          verbose: int | str = "auto", train_data=None, stop_after: int | None = None,
          log=print) -> Path:
    """Train a new run into ``out_dir`` (created; must be absent or empty). Returns it.

    ``train_data``: the 60,000 training ``(images, labels)`` if already loaded (the CLI
    verifies the data before importing TensorFlow); else they are loaded from ``data_dir``.
    ``stop_after``: leave the run after this many epochs, unfinished but resumable (as a
    preempted job would be; `resume` continues it). ``log``: where the one line saying
    which precision was chosen, and why, goes (None: nowhere).
    """
    choice = choose_precision(config.precision)  # a bad value fails before anything is written
    run_dir = rundir.require_new_run_dir(out_dir if out_dir is not None else default_run_dir(config))
    existed, locked = run_dir.exists(), False
    try:
        with rundir.exclusive(run_dir):
            locked = True
            rundir.require_new_run_dir(run_dir)  # again, now that no one else can be writing it
            run = RunDir.create(run_dir, {
                **config.to_dict(),
                "layout": rundir.LAYOUT,
                "precision_used": choice.precision,
                "precision_reason": choice.reason,
                "versions": versions(),
                "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })
            announce_precision(choice, log)
            if train_data is None:
                train_data = load_split("train", data_dir)
            _fit(run, config, train_data, verbose, choice.precision, stop_after)
    except BaseException:
        # A run that failed before its first checkpoint leaves nothing behind, so the
        # same command can simply be run again.
        if locked and not (run_dir / rundir.STATE).exists():
            if existed:  # it was empty: empty it again
                for child in run_dir.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(run_dir, ignore_errors=True)
        raise
    _calibrate_if_finished(run_dir, train_data, log)
    return run_dir


def _calibrate_if_finished(run_dir: Path, train_data, log) -> None:
    """Fit the finished model's temperature and out-of-distribution threshold (trust.py)."""
    if (run_dir / rundir.MODEL).is_file():
        from fmnist.trust import calibrate_run

        calibrate_run(run_dir, train_data, log=log)


def resume(run_dir: str | Path, data_dir=None, verbose: int | str = "auto",
           train_data=None, log=print) -> Path:
    """Continue a run from its last checkpoint (or finish it if training was done).

    The run keeps the precision recorded in its config.json, whatever this machine would
    choose today: a checkpoint continues in the arithmetic it was trained in.
    """
    run_dir = rundir.require_run_dir(run_dir)
    with rundir.exclusive(run_dir):
        run = RunDir.open(run_dir)
        config = TrainConfig.from_json(run.config, f"{run_dir / rundir.CONFIG}", strict=False)
        precision = recorded_precision(run.config)
        if precision is None:  # recorded by no version of fmnist: decide now, and record it
            choice = choose_precision(config.precision)
            run.record(precision_used=choice.precision, precision_reason=choice.reason)
            announce_precision(choice, log)
            precision = choice.precision
        elif log is not None:
            log(f"precision: {precision} (kept from {run_dir / rundir.CONFIG})")
        if train_data is None:
            train_data = load_split("train", data_dir)
        _fit(run, config, train_data, verbose, precision)
    _calibrate_if_finished(run_dir, train_data, log)
    return run_dir


def _epochs_within_budget(config: TrainConfig, x_train, y_train, n_val: int,
                          soft_targets=None) -> tuple[int, float, float]:
    """Time a few training steps; return (epochs that fit, probe seconds, epoch estimate).

    The chosen count also caps at ``config.epochs``. The probe's time counts against the
    budget; the model it trained is thrown away, so the run itself starts from the same
    initial weights as a run without a budget.
    """
    started = time.perf_counter()
    steps = steps_per_epoch(len(y_train), config.batch_size)
    model = new_model(config, config.epochs * steps, images=x_train)
    stamps: list[float] = []
    stamp = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs=None: stamps.append(time.perf_counter()))
    # The very steps the run takes: with a teacher, its targets and the distillation loss.
    model.fit(training_batches(x_train, y_train, config, 0, 1, soft_targets),
              steps_per_epoch=min(budget.PROBE_STEPS, steps),
              epochs=1, verbose=0, shuffle=False, callbacks=[stamp])
    epoch_seconds = budget.estimate_epoch_seconds(np.diff(stamps), steps,
                                                  steps_per_epoch(n_val, config.batch_size))
    probe_seconds = time.perf_counter() - started
    epochs = budget.epochs_that_fit(config.time_budget, probe_seconds, epoch_seconds, config.epochs)
    return epochs, probe_seconds, epoch_seconds


def _fit(run: RunDir, config: TrainConfig, train_data, verbose, precision: str,
         stop_after=None) -> None:
    """Train the run from where it stands (nothing, or its last checkpoint) to its end,
    then save its model and metrics; ``stop_after``: leave it after that many epochs."""
    (x_train, y_train), validation = _split(config, train_data)
    from fmnist.distribute import make_strategy

    strategy = make_strategy(config.distribute, config.cpu_replicas)  # before any TF op
    # In float32, before the run's precision is set; None without a teacher.
    soft_targets = distill.soft_targets_for(run, config, x_train)
    keras.config.set_dtype_policy(dtype_policy(precision))
    try:
        config, steps, replicas = _scaled(config, strategy, len(y_train))
        config, model = _model(run, config, strategy, steps, replicas, (x_train, y_train),
                               len(validation[1]), soft_targets)
        done = run.epochs_done
        if done < config.epochs:
            # A budgeted run's re-plan may lengthen its plan up to the epochs asked for:
            # fit and the stream run to those, and EpochCheckpoint stops at the plan.
            ceiling = max(config.epochs, int(run.config.get("epochs_requested") or 0)
                          if config.time_budget else 0)
            stream = (training_batches(x_train, y_train, config, done, ceiling, soft_targets)
                      if strategy is None else
                      distributed_batches(strategy, x_train, y_train, config, done, ceiling,
                                          soft_targets))
            checkpoint = EpochCheckpoint(run, config, steps, stop_after, ceiling)
            model.fit(stream, steps_per_epoch=steps, epochs=ceiling, initial_epoch=done,
                      validation_data=validation_batches(validation[0],
                                                         fit_targets(validation[1], config)),
                      shuffle=False,  # the stream is already in each epoch's seeded order
                      callbacks=_callbacks(run, config, checkpoint), verbose=verbose)
            # With EMA, fit has ended by overwriting the weights with their average.
            if stop_after is not None and len(run.history) < checkpoint.planned_epochs:
                return  # interrupted on purpose: the checkpoint is the run's state
        elif model.optimizer.use_ema:
            # Resumed after the last checkpoint: apply the average fit would have applied.
            model.optimizer.finalize_variable_values(model.trainable_weights)
        _finish(run, config, model, len(y_train), validation)
    finally:
        keras.config.set_dtype_policy("float32")


def _split(config: TrainConfig, train_data):
    """The run's training and validation arrays: uint8 (n, 28, 28) images, uint8 (n,) labels."""
    x, y = train_data  # uint8 (60000, 28, 28), (60000,)
    train_idx, val_idx = split_of_run(config.to_dict(), y)
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


def _scaled(config: TrainConfig, strategy, n_train: int) -> tuple[TrainConfig, int, int]:
    """(config, steps per epoch, replicas): with R replicas the global batch is R x the
    batch and, by the linear scaling rule, the rate R x the rate."""
    replicas = strategy.num_replicas_in_sync if strategy else 1
    if replicas > 1:
        config = config.replace(learning_rate=config.learning_rate * replicas)
    steps = (steps_per_epoch(n_train, config.batch_size) if strategy is None
             else n_train // (config.batch_size * replicas))
    if steps == 0:
        raise FmnistError(f"{n_train} training images make no full global batch of "
                          f"{config.batch_size} x {replicas} replicas; lower --batch-size")
    return config, steps, replicas


def _model(run: RunDir, config: TrainConfig, strategy, steps: int, replicas: int, train,
           n_val: int, soft_targets) -> tuple[TrainConfig, keras.Model]:
    """The run's compiled model: its checkpoint's on resume; else a new one, after a time
    budget's probe has fixed the epochs (so the config comes back too)."""
    with strategy.scope() if strategy else contextlib.nullcontext():
        if run.state is not None:
            configure_determinism(config.seed)
            model = keras.saving.load_model(run.checkpoint_file(), safe_mode=True)
        else:
            run.record(replicas=replicas, global_batch_size=config.batch_size * replicas,
                       scaled_learning_rate=config.learning_rate)
            if config.time_budget:
                config = _fix_epochs_to_budget(run, config, *train, n_val, soft_targets)
            model = new_model(config, config.epochs * steps, images=train[0])
    if strategy is not None and isinstance(strategy, _multiworker_type()):
        from fmnist.distribute import patch_keras_for_multiworker

        patch_keras_for_multiworker(model, strategy)
    done = run.epochs_done
    if 0 < done < config.epochs:
        # A kill after a re-plan's record but before its checkpoint left the schedule of
        # the older plan in the checkpoint: lay it over config.json's.
        replan_onecycle(model, config, config.epochs * steps, done * steps)
    return config, model


def _callbacks(run: RunDir, config: TrainConfig, checkpoint) -> list:
    """The epoch checkpoint, and TensorBoard's logger with the learning rate when asked."""
    if not config.tensorboard:
        return [checkpoint]
    return [LogLearningRate(), checkpoint, keras.callbacks.TensorBoard(
        log_dir=str(run.path / "logs"), update_freq="epoch",
        histogram_freq=1 if config.tensorboard_histograms else 0)]


def _multiworker_type():
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy


class LogLearningRate(keras.callbacks.Callback):
    """Put the optimizer's current learning rate into each epoch's logs (for TensorBoard)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def _fix_epochs_to_budget(run: RunDir, config: TrainConfig, x_train, y_train, n_val: int,
                          soft_targets=None):
    """Probe the speed, then record the epoch count in config.json so resume is exact."""
    epochs, probe_seconds, epoch_seconds = _epochs_within_budget(config, x_train, y_train,
                                                                 n_val, soft_targets)
    # The estimate is kept beside the epochs' real times, so a short probe shows.
    run.record(epochs=epochs, epochs_requested=config.epochs, probe_epochs=epochs,
               probe_seconds=probe_seconds, probe_epoch_seconds=epoch_seconds)
    return config.replace(epochs=epochs)


class EpochCheckpoint(keras.callbacks.Callback):
    """Times each epoch and checkpoints the run after it (:meth:`RunDir.checkpoint`).

    With a time budget, the probe's plan is a first guess: the probe times steps, not
    what an epoch spends between them, and a machine can slow down or speed up mid-run
    (another job starts or ends). So after each epoch, when
    the epochs so far say the planned count will not fit, or that a few more than planned
    would, up to ``ceiling`` (the epochs asked for; :func:`fmnist.budget.replanned_epochs`), the
    one-cycle schedule is laid over the count that fits
    (:func:`~fmnist.recipe.replan_onecycle`) and config.json records it: the rate still
    anneals to zero instead of being cut off part way down. Last, training stops when
    another epoch would overrun the budget (:func:`fmnist.budget.another_epoch_fits`), for a constant
    rate or a slowdown in the last epochs: a budget is a promise.
    """

    def __init__(self, run: RunDir, config: TrainConfig, steps_per_epoch: int,
                 stop_after: int | None = None, ceiling: int | None = None):
        super().__init__()
        self.run = run
        self.config = config
        self.planned_epochs = config.epochs  # moved by a re-plan, up to the ceiling
        self.ceiling = ceiling or config.epochs  # given as max(plan, epochs asked for)
        self.steps_per_epoch = steps_per_epoch
        self.stop_after = stop_after
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        reseed_layers(self.model, self.config.seed, epoch)
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1}
        row.update({key: float(value) for key, value in (logs or {}).items()})
        row["seconds"] = time.perf_counter() - self.started  # training + validation
        seconds = [r["seconds"] for r in self.run.history] + [row["seconds"]]
        limit = self.config.time_budget
        if limit:
            self._replan(seconds, limit)  # before the checkpoint, which saves the schedule
        self.run.checkpoint(self.model.save, row)
        done = len(self.run.history)
        faults.reached("after-checkpoint", done)
        if limit and (done >= self.planned_epochs or not budget.another_epoch_fits(
                seconds, _probe_seconds(self.run), limit)):
            self.model.stop_training = True
        if self.stop_after is not None and done >= self.stop_after:
            self.model.stop_training = True

    def _replan(self, epoch_seconds: list[float], limit: float) -> None:
        epochs = budget.replanned_epochs(epoch_seconds, _probe_seconds(self.run), limit,
                                         self.planned_epochs, self.ceiling)
        if epochs is None or epochs <= len(epoch_seconds):
            return  # the plan fits, or no epoch is left to anneal in: the guard stops
        if replan_onecycle(self.model, self.config, epochs * self.steps_per_epoch,
                           len(epoch_seconds) * self.steps_per_epoch):
            self.planned_epochs = epochs
            self.run.record(epochs=epochs)


def reseed_layers(model, seed: int, epoch: int) -> None:
    """Set the random state of every layer that draws (Dropout...) from (seed, epoch, layer).

    Keras advances each layer's seed generator step by step, and a resumed run would
    start it over; keyed by the epoch, the draws of epoch ``e`` are the same whether or
    not epochs before it ran in this process.
    """
    layers = list(model.layers)
    for index, layer in enumerate(layers):
        if isinstance(layer, keras.Model):
            layers.extend(layer.layers)
        # Keras keeps a layer's generators in `_seed_generators` (no public accessor).
        for generator in getattr(layer, "_seed_generators", ()):
            key = np.random.default_rng([seed, epoch, index]).integers(0, 2**31 - 1)
            state = generator.state
            state.assign(np.array([key, 0]).astype(keras.backend.standardize_dtype(state.dtype)))


def _probe_seconds(run: RunDir) -> float:
    return float(run.config.get("probe_seconds", 0.0))


def _finish(run: RunDir, config: TrainConfig, model, n_train: int,
            validation: tuple[np.ndarray, np.ndarray]) -> None:
    history = run.history
    plot_history(history, run.path / rundir.CURVES)
    last = history[-1] if history else {}
    epoch_seconds = [row["seconds"] for row in history]
    # The saved model on the validation split: after EMA it differs from the last
    # epoch's log. Plain cross-entropy, so losses compare across recipes.
    final_val = classification_metrics(predict_proba(model, validation[0]), validation[1])
    probe = _probe_seconds(run)
    # Keras' own batch-norm layers in the saved model: it loads without fmnist.
    run.finish(with_keras_layers(model).save, {
        "model": config.model,
        "params": int(model.count_params()),
        "epochs": len(history),
        "seed": config.seed,
        "batch_size": config.batch_size,
        "n_train": n_train,
        "n_val": int(len(validation[1])),
        # Wall time of the epochs (training + per-epoch validation) and of the speed
        # probe a --time-budget run makes; not start-up, data loading or evaluation.
        "train_seconds": float(sum(epoch_seconds) + probe),
        "probe_seconds": probe,
        # What the probe expected an epoch to take (None without a budget): against
        # steady_epoch_seconds, how far off it was.
        "probe_epoch_seconds": run.config.get("probe_epoch_seconds"),
        # The first epoch also traces the graph; later ones show the steady speed.
        "steady_epoch_seconds": float(np.median(epoch_seconds[1:] or epoch_seconds or [0.0])),
        "time_budget": config.time_budget,
        "train_accuracy": last.get("accuracy"),
        "train_loss": last.get("loss"),
        "val_accuracy": final_val["accuracy"],
        "val_loss": final_val["loss"],
        "last_epoch_val_accuracy": last.get("val_accuracy"),
        # Distillation: the teacher, its forward pass over the training images (seconds,
        # not in train_seconds) and what it cost to train; None without a teacher.
        "teacher": run.config.get("teacher_run"),
    })
