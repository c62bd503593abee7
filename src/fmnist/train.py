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

import contextlib
import dataclasses
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from fmnist.runtime import prepare_tensorflow

prepare_tensorflow()  # before Keras' first import: backend and oneDNN defaults

import keras  # noqa: E402
import numpy as np

from fmnist import __version__, rundir
from fmnist.data import NUM_CLASSES, load_split
from fmnist.errors import FmnistError
from fmnist.augment import Augmentation, augment_batch
from fmnist.hardware import PRECISIONS, PrecisionChoice, choose_precision, dtype_policy
from fmnist.metrics import classification_metrics, predict_proba
from fmnist.config import TrainConfig, legacy_precision
from fmnist.models import get_factory
from fmnist.plots import plot_history
from fmnist.split import train_val_split


def augmentation_of(config: TrainConfig) -> Augmentation:
    return Augmentation(flip=config.flip, translate=config.translate, erase=config.erase)


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
            rundir.write_json(run_dir / rundir.CONFIG, {
                **dataclasses.asdict(config),
                "precision_used": choice.precision,
                "precision_reason": choice.reason,
                "versions": versions(),
                "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })
            announce_precision(choice, log)
            if train_data is None:
                train_data = load_split("train", data_dir)
            _fit(run_dir, config, train_data, verbose, choice.precision, stop_after)
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
    return run_dir


def resume(run_dir: str | Path, data_dir=None, verbose: int | str = "auto",
           train_data=None, log=print) -> Path:
    """Continue a run from its last checkpoint (or finish it if training was done).

    The run keeps the precision recorded in its config.json, whatever this machine would
    choose today: a checkpoint continues in the arithmetic it was trained in.
    """
    run_dir = rundir.require_run_dir(run_dir)
    with rundir.exclusive(run_dir):
        saved = rundir.read_json(run_dir / rundir.CONFIG)
        config = TrainConfig.from_json(saved, f"{run_dir / rundir.CONFIG}", strict=False)
        precision = recorded_precision(saved)
        if precision is None:  # recorded by no version of fmnist: decide now, and record it
            choice = choose_precision(config.precision)
            _record(run_dir, precision_used=choice.precision, precision_reason=choice.reason)
            announce_precision(choice, log)
            precision = choice.precision
        elif log is not None:
            log(f"precision: {precision} (kept from {run_dir / rundir.CONFIG})")
        if train_data is None:
            train_data = load_split("train", data_dir)
        _fit(run_dir, config, train_data, verbose, precision)
    return run_dir


def recorded_precision(saved: dict) -> str | None:
    """The precision a run's config.json says it trained in (None: not recorded)."""
    if saved.get("precision_used") in PRECISIONS[1:]:
        return saved["precision_used"]
    return legacy_precision(saved)


def announce_precision(choice: PrecisionChoice, log=print) -> None:
    """Print the chosen precision and its reason; warn (stderr) about emulated bfloat16."""
    if log is not None:
        log(f"precision: {choice.precision} ({choice.reason})")
    if choice.warning:
        print(f"fmnist: warning: {choice.warning}", file=sys.stderr)
        _absorb_bfloat16_notice()


def _absorb_bfloat16_notice() -> None:
    """Trigger, and drop, the C++ line TensorFlow logs once per process on its first
    bfloat16 op where oneDNN cannot run it ("E0000 ... oneDNN supports DT_BFLOAT16 only
    on platforms with AVX-512"): the warning above already says so, in words."""
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    from fmnist.runtime import filtered_stderr

    with filtered_stderr(lambda line: "oneDNN supports DT_BFLOAT16 only" in line):
        ones = tf.ones((2, 2), dtype=tf.bfloat16)
        tf.linalg.matmul(ones, ones).numpy()


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


def training_batches(x, y, config: TrainConfig, first_epoch: int, epochs: int):
    """A tf.data stream of training batches for epochs ``first_epoch..epochs-1``.

    Yields ``(images, labels)``: images uint8 (B, 28, 28), augmented as configured;
    labels uint8 (B,), or float32 one-hot (B, 10) when label smoothing is on. Each epoch
    ends with its own (possibly smaller) last batch, so ``steps_per_epoch(n, B)`` steps
    make exactly one epoch. The data stays in memory. Each epoch is gathered in its
    seeded order and augmented as one tensor (random draws keyed by the epoch), then cut
    into batches: one pipeline call per epoch instead of one per batch, so the pipeline
    needs no thread of its own beside training on a 2-core CPU.
    """
    import tensorflow as tf

    n = len(y)
    orders = np.stack([epoch_order(config.seed, e, n) for e in range(first_epoch, epochs)])
    gather = _batch_gatherer(x, y, config)

    def one_epoch(epoch, order):
        return tf.data.Dataset.from_tensor_slices(gather(epoch, order)).batch(config.batch_size)

    epoch_ids = np.arange(first_epoch, epochs, dtype=np.int64)
    # No prefetch and no autotuning: a batch is a slice of a ready tensor, and on a
    # 2-core CPU a prefetch thread competes with oneDNN's threads (in a scratch timing
    # here it was never faster, and up to 10% slower, within run-to-run noise).
    options = tf.data.Options()
    options.autotune.enabled = False
    return (tf.data.Dataset.from_tensor_slices((epoch_ids, orders)).flat_map(one_epoch)
            .with_options(options))


def _batch_gatherer(x, y, config: TrainConfig):
    """``gather(key, indices) -> (images, labels)``: the images at ``indices`` (a batch,
    or a whole epoch) of the in-memory arrays, augmented (random draws keyed by ``key``)
    and with one-hot labels under smoothing."""
    import tensorflow as tf

    images, labels = tf.constant(x), tf.constant(y)
    augmentation, one_hot = augmentation_of(config), config.label_smoothing > 0

    def gather(key, idx):
        batch_images, batch_labels = tf.gather(images, idx), tf.gather(labels, idx)
        if augmentation.active:
            batch_images = augment_batch(batch_images, key, augmentation, config.seed)
        if one_hot:
            batch_labels = tf.one_hot(tf.cast(batch_labels, tf.int32), NUM_CLASSES)
        return batch_images, batch_labels

    return gather


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def distributed_batches(strategy, x, y, config: TrainConfig, first_epoch: int, epochs: int):
    """The training stream of :func:`training_batches`, split over the strategy's replicas.

    ``config.batch_size`` images go to each replica per step; the global batch is that
    times ``strategy.num_replicas_in_sync``. Global batch ``g`` holds the same images as
    a single-process run with that batch size would (the epoch's seeded order, cut into
    global batches; the last, incomplete one dropped so every replica gets a full
    batch), and replica ``r`` of ``R`` takes its images ``r, r + R, ...``. Each worker's
    input pipeline builds only the slices of its own replicas.
    """
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size * replicas
    n = len(y)
    steps = n // global_batch
    orders = np.stack([epoch_order(config.seed, e, n)[:steps * global_batch]
                       for e in range(first_epoch, epochs)]).reshape(-1, global_batch)
    gather = _batch_gatherer(x, y, config)

    def dataset_fn(context):
        local = replicas // context.num_input_pipelines
        first_replica = context.input_pipeline_id * local
        # (global step, indices of one replica's share); local replicas take turns.
        mine = np.stack([orders[:, first_replica + k::replicas] for k in range(local)], axis=1)
        step_ids = np.arange(first_epoch * steps, first_epoch * steps + len(orders))
        # Augmentation keyed by global step and replica, so replicas draw differently.
        keys = (step_ids[:, None] * replicas + first_replica + np.arange(local)[None, :]).ravel()
        dataset = tf.data.Dataset.from_tensor_slices((keys, mine.reshape(-1, config.batch_size)))
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return (dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
                .prefetch(tf.data.AUTOTUNE).with_options(options))

    return strategy.distribute_datasets_from_function(dataset_fn)


def compile_for_training(model, config: TrainConfig, total_steps: int):
    """Compile ``model`` with the run's optimizer, learning-rate schedule and loss."""
    learning_rate = config.learning_rate
    if config.schedule == "onecycle":
        warmup = int(config.warmup_fraction * total_steps)
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.learning_rate / 25.0,  # one-cycle's usual start
            warmup_target=config.learning_rate, warmup_steps=warmup,
            decay_steps=max(1, total_steps - warmup), alpha=0.0)
    elif config.schedule != "constant":
        raise ValueError(f"unknown schedule {config.schedule!r}; use 'constant' or 'onecycle'")
    common = dict(learning_rate=learning_rate, use_ema=config.ema is not None,
                  ema_momentum=config.ema or 0.99)
    if config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(**common)
    elif config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(weight_decay=config.weight_decay, **common)
    elif config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(momentum=config.momentum, nesterov=True,
                                         weight_decay=config.weight_decay or None, **common)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; use adam, adamw or sgd")
    if config.label_smoothing > 0:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
        accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy])
    return model


def new_model(config: TrainConfig, total_steps: int):
    """The run's model, seeded and compiled with its recipe for ``total_steps`` steps."""
    _configure_determinism(config.seed)  # the same initial weights every time
    try:
        model = get_factory(config.model)(**config.model_options)
    except (TypeError, ValueError) as error:  # a --model-option of the wrong kind
        raise FmnistError(f"cannot build {config.model} with options {config.model_options}: "
                          f"{error}; see the factory's arguments in `fmnist models`") from None
    return compile_for_training(model, config, total_steps)


PROBE_STEPS = 24  # steps timed to fit --time-budget; the first few (tracing) are dropped


def _epochs_within_budget(config: TrainConfig, x_train, y_train, n_val: int) -> tuple[int, float]:
    """Time a few training steps and return (epochs that fit the budget, probe seconds).

    The chosen count also caps at ``config.epochs``. The probe's time counts against the
    budget; the model it trained is thrown away, so the run itself starts from the same
    initial weights as a run without a budget.
    """
    started = time.perf_counter()
    steps = steps_per_epoch(len(y_train), config.batch_size)
    model = new_model(config, config.epochs * steps)
    stamps: list[float] = []
    stamp = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs=None: stamps.append(time.perf_counter()))
    model.fit(training_batches(x_train, y_train, config, 0, 1), steps_per_epoch=min(PROBE_STEPS, steps),
              epochs=1, verbose=0, shuffle=False, callbacks=[stamp])
    # Median step time, leaving out the first steps (graph tracing, warm-up).
    steady = stamps[4:] if len(stamps) > 6 else stamps
    step_seconds = float(np.median(np.diff(steady))) if len(steady) > 1 else 0.1
    # An epoch: its training steps plus validation, a forward pass (about 1/3 of a step).
    epoch_seconds = step_seconds * (steps + steps_per_epoch(n_val, config.batch_size) / 3)
    probe_seconds = time.perf_counter() - started
    fits = int((config.time_budget - probe_seconds) // epoch_seconds)
    return max(1, min(config.epochs, fits)), probe_seconds


def validation_batches(x_val, y_val, batch_size: int = 1024):
    """The validation split as a tf.data stream of ``batch_size`` batches, in order.

    Given as arrays, Keras would wrap them in a pipeline whose parallel map TensorFlow
    rewrites under op determinism, and it logs an alarming C++ "error" about an unknown
    attribute every epoch; a plain sliced dataset does the same work without it.
    """
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(batch_size)


def _fit(run_dir: Path, config: TrainConfig, train_data, verbose, precision: str,
         stop_after=None) -> None:
    x, y = train_data  # uint8 (60000, 28, 28), (60000,)
    train_idx, val_idx = train_val_split(y, config.val_size, config.seed, config.train_size)
    x_train, y_train = x[train_idx], y[train_idx]  # uint8 (n_train, 28, 28), (n_train,)
    x_val, y_val = x[val_idx], y[val_idx]
    # With label smoothing the loss wants one-hot labels, during training only.
    y_val_fit = np.eye(NUM_CLASSES, dtype=np.float32)[y_val] if config.label_smoothing > 0 else y_val

    from fmnist.distribute import make_strategy

    strategy = make_strategy(config.distribute, config.cpu_replicas)  # before any TF op
    keras.config.set_dtype_policy(dtype_policy(precision))
    try:
        replicas = strategy.num_replicas_in_sync if strategy else 1
        if replicas > 1:  # linear scaling rule: replicas x the batch, replicas x the rate
            config = dataclasses.replace(config, learning_rate=config.learning_rate * replicas)
        steps = (steps_per_epoch(len(y_train), config.batch_size) if strategy is None
                 else len(y_train) // (config.batch_size * replicas))
        if steps == 0:
            raise FmnistError(f"{len(y_train)} training images make no full global batch of "
                              f"{config.batch_size} x {replicas} replicas; lower --batch-size")
        state_path = run_dir / rundir.STATE
        with strategy.scope() if strategy else contextlib.nullcontext():
            if state_path.exists():
                state = rundir.read_json(state_path)
                done = int(state["epochs_done"])
                _configure_determinism(config.seed)
                model = keras.saving.load_model(rundir.checkpoint_path(run_dir, state),
                                                safe_mode=True)
                # history.json may hold one epoch more than the checkpoint if the kill came
                # between the two writes; the checkpoint is the truth.
                history = rundir.read_json(run_dir / rundir.HISTORY)[:done]
            else:
                done, history = 0, []
                _record(run_dir, replicas=replicas, global_batch_size=config.batch_size * replicas,
                        scaled_learning_rate=config.learning_rate)
                if config.time_budget:
                    config = _fix_epochs_to_budget(run_dir, config, x_train, y_train, len(y_val))
                model = new_model(config, config.epochs * steps)

        if strategy is not None and isinstance(strategy, _multiworker_type()):
            from fmnist.distribute import patch_keras_for_multiworker

            patch_keras_for_multiworker(model, strategy)
        if done < config.epochs:
            stream = (training_batches(x_train, y_train, config, done, config.epochs)
                      if strategy is None else
                      distributed_batches(strategy, x_train, y_train, config, done, config.epochs))
            callbacks = [EpochCheckpoint(run_dir, history, config.time_budget,
                                         _probe_seconds(run_dir), stop_after, config.seed)]
            if config.tensorboard:
                callbacks = [LogLearningRate(), *callbacks, keras.callbacks.TensorBoard(
                    log_dir=str(run_dir / "logs"), update_freq="epoch",
                    histogram_freq=1 if config.tensorboard_histograms else 0)]
            model.fit(
                stream, steps_per_epoch=steps,
                epochs=config.epochs, initial_epoch=done,
                validation_data=validation_batches(x_val, y_val_fit),
                shuffle=False,  # the stream is already in each epoch's seeded order
                callbacks=callbacks,
                verbose=verbose,
            )  # with EMA, fit ends by overwriting the weights with their average
            if stop_after is not None and len(history) < config.epochs:
                return  # interrupted on purpose: the checkpoint is the run's state
        elif model.optimizer.use_ema:
            # Resumed after the last checkpoint: apply the average fit would have applied.
            model.optimizer.finalize_variable_values(model.trainable_weights)
        _finish(run_dir, config, model, history, len(y_train), (x_val, y_val))
    finally:
        keras.config.set_dtype_policy("float32")


def _multiworker_type():
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy


def _record(run_dir: Path, **values) -> None:
    """Add derived settings (replicas, scaled rate...) to config.json, for audit and resume."""
    saved = rundir.read_json(run_dir / rundir.CONFIG)
    saved.update(values)
    rundir.write_json(run_dir / rundir.CONFIG, saved)


class LogLearningRate(keras.callbacks.Callback):
    """Put the optimizer's current learning rate into each epoch's logs (for TensorBoard)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def _fix_epochs_to_budget(run_dir: Path, config: TrainConfig, x_train, y_train, n_val: int):
    """Probe the speed, then record the epoch count in config.json so resume is exact."""
    epochs, probe_seconds = _epochs_within_budget(config, x_train, y_train, n_val)
    saved = rundir.read_json(run_dir / rundir.CONFIG)
    saved.update({"epochs": epochs, "epochs_requested": config.epochs,
                  "probe_seconds": probe_seconds})
    rundir.write_json(run_dir / rundir.CONFIG, saved)
    return dataclasses.replace(config, epochs=epochs)


class EpochCheckpoint(keras.callbacks.Callback):
    """Times each epoch, appends it to ``history`` and checkpoints the model.

    With ``budget_seconds``, also stops training once the epochs so far (plus
    ``spent_seconds`` before them) have used the budget: the probe's estimate can be
    wrong on a busy machine, and a budget is a promise.
    """

    def __init__(self, run_dir: Path, history: list[dict], budget_seconds: float | None = None,
                 spent_seconds: float = 0.0, stop_after: int | None = None, seed: int = 0):
        super().__init__()
        self.run_dir, self.history = run_dir, history
        self.budget_seconds, self.spent_seconds = budget_seconds, spent_seconds
        self.stop_after = stop_after
        self.seed = seed
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        reseed_layers(self.model, self.seed, epoch)
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1}
        row.update({key: float(value) for key, value in (logs or {}).items()})
        row["seconds"] = time.perf_counter() - self.started  # training + validation
        self.history.append(row)
        _checkpoint(self.run_dir, self.model, self.history)
        used = self.spent_seconds + sum(r["seconds"] for r in self.history)
        if self.budget_seconds and used >= self.budget_seconds:
            self.model.stop_training = True
        if self.stop_after is not None and len(self.history) >= self.stop_after:
            self.model.stop_training = True


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
    rundir.replace_durably(partial, folder / name)
    rundir.write_json(run_dir / rundir.HISTORY, history)
    rundir.write_json(run_dir / rundir.STATE, {
        "epochs_done": len(history),
        "checkpoint": f"{rundir.CHECKPOINTS}/{name}",
    })
    for old in folder.glob("*.keras"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _probe_seconds(run_dir: Path) -> float:
    return float(rundir.read_json(run_dir / rundir.CONFIG).get("probe_seconds", 0.0))


def _finish(run_dir: Path, config: TrainConfig, model, history: list[dict],
            n_train: int, validation: tuple[np.ndarray, np.ndarray]) -> None:
    partial = run_dir / f"partial-{rundir.MODEL}"
    model.save(partial)
    rundir.replace_durably(partial, run_dir / rundir.MODEL)
    plot_history(history, run_dir / rundir.CURVES)
    last = history[-1] if history else {}
    epoch_seconds = [row["seconds"] for row in history]
    # The saved model on the validation split: after EMA it differs from the last
    # epoch's log. Plain cross-entropy, so losses compare across recipes.
    final_val = classification_metrics(predict_proba(model, validation[0]), validation[1])
    probe = _probe_seconds(run_dir)
    rundir.write_json(run_dir / rundir.METRICS, {
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
        # The first epoch also traces the graph; later ones show the steady speed.
        "steady_epoch_seconds": float(np.median(epoch_seconds[1:] or epoch_seconds or [0.0])),
        "time_budget": config.time_budget,
        "train_accuracy": last.get("accuracy"),
        "train_loss": last.get("loss"),
        "val_accuracy": final_val["accuracy"],
        "val_loss": final_val["loss"],
        "last_epoch_val_accuracy": last.get("val_accuracy"),
    })
