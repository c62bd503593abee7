"""The training recipe: a run's settings -> a seeded, compiled Keras model.

Optimizer, learning-rate schedule, weight averaging, loss (with label smoothing) and the
numeric precision, from a :class:`~fmnist.config.TrainConfig`. `fmnist train`, `fmnist
tune` and the registry tests all build their models here, so the path a preset runs is
the path that is tested.
"""

from __future__ import annotations

import sys

from fmnist.runtime import prepare_tensorflow

prepare_tensorflow()  # before Keras' first import: backend and oneDNN defaults

import keras  # noqa: E402

from fmnist.batchnorm import fused_for_training  # noqa: E402
from fmnist.config import TrainConfig  # noqa: E402
from fmnist.distill import DistillationLoss, label_accuracy  # noqa: E402
from fmnist.errors import FmnistError  # noqa: E402
from fmnist.hardware import PRECISIONS, PrecisionChoice  # noqa: E402
from fmnist.models import build_model, whiten_stem, whitening_stem  # noqa: E402


@keras.saving.register_keras_serializable(package="fmnist")
class BiasRateSGD(keras.optimizers.SGD):
    """Keras' SGD whose step on each batch norm's shift (a variable named ``beta``) is
    ``bias_rate`` times the learning rate; weight decay is unchanged. Run checkpoints
    save it, so a resumed run keeps the same rates."""

    def __init__(self, bias_rate: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.bias_rate = bias_rate
        self._shifts: set = set()

    def build(self, variables):
        super().build(variables)
        # By key: the step gets the backend's variable, which has no Keras path.
        self._shifts = {self._var_key(v) for v in variables if v.path.rsplit("/", 1)[-1] == "beta"}

    def update_step(self, gradient, variable, learning_rate):
        if self._var_key(variable) in self._shifts:
            learning_rate = learning_rate * self.bias_rate
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "bias_rate": self.bias_rate}


def configure_determinism(seed: int) -> None:
    keras.utils.set_random_seed(seed)  # Python, NumPy and backend generators
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


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
    betas = dict(beta_1=config.beta_1, beta_2=config.beta_2)
    if config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(**betas, **common)
    elif config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(weight_decay=config.weight_decay, **betas, **common)
    elif config.optimizer == "sgd":
        sgd = dict(momentum=config.momentum, nesterov=config.nesterov,
                   weight_decay=config.weight_decay or None, **common)
        optimizer = (keras.optimizers.SGD(**sgd) if config.bias_rate == 1.0
                     else BiasRateSGD(bias_rate=config.bias_rate, **sgd))
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; use adam, adamw or sgd")
    if config.teacher is not None:  # targets (B, 20): the label, then the teacher's (distill)
        loss = DistillationLoss(config.distill_weight, config.distill_temperature,
                                config.label_smoothing)
        accuracy = keras.metrics.MeanMetricWrapper(label_accuracy, name="accuracy")
    elif config.one_hot_targets:  # label smoothing or CutMix: (B, 10) targets
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
        accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy])
    return model


def replan_onecycle(model, config: TrainConfig, total_steps: int, step: int) -> bool:
    """Lay a compiled model's one-cycle schedule over ``total_steps`` instead, from optimizer
    step ``step`` on, so it still anneals to zero at the end; False (and nothing changed)
    for a constant rate or ``total_steps`` equal to the current plan.

    A warm-up still under way is moved too, to ``warmup_fraction`` of the new total (never
    behind ``step``). The rate moves a little at the switch: at epoch 3 of 133 cut to 124,
    0.0148 -> 0.0156; past the warm-up a longer plan raises it a little, a shorter one
    lowers it. The schedule reads its steps when the training step is traced, so the train
    function is rebuilt; the next checkpoint saves the new schedule, which a resume then
    continues.
    """
    # Keras keeps the schedule object in `_learning_rate` (`learning_rate` is its value).
    schedule = getattr(model.optimizer, "_learning_rate", None)
    if not isinstance(schedule, keras.optimizers.schedules.CosineDecay) \
            or schedule.warmup_target is None:
        return False
    warmup = schedule.warmup_steps
    if total_steps == warmup + schedule.decay_steps:
        return False
    if step < warmup:
        warmup = max(step, int(config.warmup_fraction * total_steps))
    schedule.warmup_steps = warmup
    schedule.decay_steps = max(1, total_steps - warmup)
    model.make_train_function(force=True)
    return True


def new_model(config: TrainConfig, total_steps: int, images=None):
    """The run's model, seeded and compiled with its recipe for ``total_steps`` steps.

    ``images``: the run's training images, uint8 (n, 28, 28), which a data-dependent
    initialization (a "whiten" stem, :func:`fmnist.models.whiten_stem`) needs."""
    configure_determinism(config.seed)  # the same initial weights every time
    try:
        model = build_model(config.model, **config.model_options)
    except (TypeError, ValueError) as error:  # a --model-option of the wrong kind
        raise FmnistError(f"cannot build {config.model} with options {config.model_options}: "
                          f"{error}; see the factory's arguments in `fmnist models`") from None
    if whitening_stem(model) is not None:
        if images is None:
            raise FmnistError("stem='whiten' is set from the training images, and none were "
                              "given; build this model through `fmnist train`")
        whiten_stem(model, images, seed=config.seed)
    return compile_for_training(fused_for_training(model), config, total_steps)


def recorded_precision(saved: dict) -> str | None:
    """The precision a run's config.json says it trained in (None: not recorded)."""
    return saved["precision_used"] if saved.get("precision_used") in PRECISIONS[1:] else None


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
