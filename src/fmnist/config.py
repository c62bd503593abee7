"""The training configuration: what decides a run's result, checked before anything runs.

:class:`TrainConfig` is saved as a run's ``config.json``. Its values come, each one
overriding the last, from the defaults below (the seed notebook's recipe), the model's
registered preset (``models.register``), a ``--config`` JSON file, and command-line flags.

The configuration is strict: an unknown key (a typo in a file or a preset) or a value
outside what fmnist can run is a :class:`~fmnist.errors.ConfigError` naming the key and
what it accepts, raised before a run directory exists. This module imports no Keras, so
the CLI checks a configuration in milliseconds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from fmnist.distribute import STRATEGIES
from fmnist.errors import ConfigError
from fmnist.hardware import PRECISIONS
from fmnist.models import model_names, model_preset
from fmnist.split import DEFAULT_VAL_SIZE, TRAIN_POOL

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "onecycle")
# `fmnist tune --tuner`: KerasTuner's searches (fmnist.tune builds them; Keras-free here).
TUNERS = ("hyperband", "random", "bayesian")
TRAIN_IMAGES, TEST_IMAGES = TRAIN_POOL, 10_000
# Keys a run's config.json records besides the settings (versions, derived values, the
# legacy mixed_precision flag), so a run's config.json can be passed back as --config.
RECORDED_KEYS = frozenset({"versions", "created_utc", "precision_used", "precision_reason",
                           "replicas", "global_batch_size", "scaled_learning_rate",
                           "epochs_requested", "probe_epochs", "probe_seconds", "probe_epoch_seconds",
                           "mixed_precision",
                           "teacher_run"})


@dataclass
class TrainConfig:
    """Everything that decides a run's result; saved as the run's config.json."""

    model: str = "mlp"
    model_options: dict = field(default_factory=dict)  # keyword arguments of the factory
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"  # "adam", "adamw", or "sgd" (Nesterov momentum)
    learning_rate: float = 1e-3  # the peak rate when a schedule is used
    schedule: str = "constant"  # "constant" or "onecycle" (linear warmup, cosine decay)
    warmup_fraction: float = 0.2  # onecycle: share of all steps spent warming up
    weight_decay: float = 0.0  # decoupled weight decay (AdamW-style), per unit of LR
    momentum: float = 0.9  # sgd only
    label_smoothing: float = 0.0
    ema: float | None = None  # momentum of an exponential moving average of the weights
    # "auto": bfloat16 where the hardware computes it natively, else float32 (see
    # hardware.py); "bfloat16": mixed precision (bfloat16 compute, float32 weights and
    # outputs); "float32". What a run used is recorded as config.json's precision_used.
    precision: str = "auto"
    flip: bool = False  # augmentation: random left-right flips
    translate: int = 0  # augmentation: random shifts of up to N pixels
    erase: float = 0.0  # augmentation: probability of random erasing
    # CutMix: the probability that a training image gets a box pasted from another image
    # of its batch, its target mixed by the box's share of the pixels.
    cutmix: float = 0.0
    time_budget: float | None = None  # seconds; caps the number of epochs (see train())
    seed: int = 0
    # The split's own seed, where runs of several seeds must hold out the same validation
    # images (the members of an ensemble that is then validated, or taught from); None:
    # the split follows ``seed``.
    split_seed: int | None = None
    val_size: int = DEFAULT_VAL_SIZE  # validation images carved from the 60,000
    train_size: int | None = None  # None: all the rest (54,000 by default)
    test_size: int | None = None  # None: all 10,000 test images
    distribute: str = "none"  # "none", "mirrored" or "multiworker" (see distribute.py)
    cpu_replicas: int = 1  # without GPUs: logical CPU devices for the mirrored replicas
    tensorboard: bool = False  # write TensorBoard logs into RUN_DIR/logs
    tensorboard_histograms: bool = False  # ...with weight histograms every epoch
    # Distillation: a trained run directory whose probabilities on the training images
    # become soft targets beside the true labels; the loss (recipe.DistillationLoss) is
    # (1 - w) * CE(label, student) + w * T^2 * KL(teacher at T || student at T).
    teacher: str | None = None
    distill_weight: float = 0.5  # w, the teacher's share of the loss
    # The teacher's probabilities on each image, or their mean over the image and its
    # mirror (flip TTA, for a teacher trained with flips): a pass more, a better teacher.
    distill_tta: bool = False
    # T: above 1 softens both distributions, so the teacher's ranking of the wrong
    # classes weighs more; 1 matches the student to the teacher's probabilities as they are.
    distill_temperature: float = 1.0

    @property
    def one_hot_targets(self) -> bool:
        """Whether training targets are (10,) float vectors rather than class indices."""
        return self.label_smoothing > 0 or self.teacher is not None or self.cutmix > 0

    def __post_init__(self):
        validate(self)

    @classmethod
    def from_json(cls, payload: dict, source: str = "the configuration",
                  strict: bool = True) -> "TrainConfig":
        """A config from a JSON object; keys a run's config.json records besides the
        settings are ignored, any other unknown key is a ConfigError naming ``source``
        (``strict=False``: ignored too, for config.json files of older versions)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(payload) - names - RECORDED_KEYS)
        if unknown and strict:
            raise ConfigError(f"{source}: unknown setting {unknown[0]!r}"
                              f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}; "
                              f"the settings are: {', '.join(sorted(names))}")
        payload = dict(payload)
        if "precision" not in payload and legacy_precision(payload):
            payload["precision"] = legacy_precision(payload)
        return cls(**{key: value for key, value in payload.items() if key in names})

    @classmethod
    def resolve(cls, model: str, file: dict | None = None, flags: dict | None = None,
                file_name: str = "the --config file") -> "TrainConfig":
        """Defaults < ``model``'s preset < ``file`` (a --config object) < ``flags`` (None:
        not given)."""
        if model not in model_names():
            raise ConfigError(f"model: unknown model {model!r}; choose one of: "
                              f"{', '.join(model_names())}")
        preset = model_preset(model)
        cls.from_json(preset, f"the preset of {model}")  # a typo in a preset fails too
        if file:
            cls.from_json({"model": model, **file}, file_name)
        given = {key: value for key, value in (flags or {}).items() if value is not None}
        return cls.from_json({**preset, **(file or {}), **given, "model": model})

    @classmethod
    def for_model(cls, model: str, **overrides) -> "TrainConfig":
        """Defaults, then the model's registered preset, then ``overrides`` (None = unset)."""
        return cls.resolve(model, flags=overrides)


def legacy_precision(saved: dict) -> str | None:
    """The precision of a config.json written before --precision replaced the boolean
    --mixed-precision (None: not such a config)."""
    if "mixed_precision" not in saved:
        return None
    return "bfloat16" if saved["mixed_precision"] else "float32"


def _kind(value, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    return isinstance(value, bool)


# field -> (kind, optional, check, what the check says)
_RULES = {
    "epochs": ("int", False, lambda v: v >= 1, "at least 1"),
    "batch_size": ("int", False, lambda v: v >= 1, "at least 1"),
    "learning_rate": ("number", False, lambda v: v > 0, "above 0"),
    "warmup_fraction": ("number", False, lambda v: 0 <= v < 1, "from 0 up to, not including, 1"),
    "weight_decay": ("number", False, lambda v: v >= 0, "0 or more"),
    "momentum": ("number", False, lambda v: 0 <= v < 1, "from 0 up to, not including, 1"),
    "label_smoothing": ("number", False, lambda v: 0 <= v < 1, "from 0 up to, not including, 1"),
    "ema": ("number", True, lambda v: 0 < v < 1, "between 0 and 1, or null"),
    "flip": ("bool", False, lambda v: True, "true or false"),
    "translate": ("int", False, lambda v: 0 <= v <= 27, "0 to 27 pixels"),
    "erase": ("number", False, lambda v: 0 <= v <= 1, "a probability from 0 to 1"),
    "cutmix": ("number", False, lambda v: 0 <= v <= 1, "a probability from 0 to 1"),
    "time_budget": ("number", True, lambda v: v > 0, "above 0 seconds, or null"),
    "seed": ("int", False, lambda v: v >= 0, "0 or more"),
    "split_seed": ("int", True, lambda v: v >= 0, "0 or more, or null"),
    "val_size": ("int", False, lambda v: 1 <= v < TRAIN_IMAGES, f"1 to {TRAIN_IMAGES - 1}"),
    "train_size": ("int", True, lambda v: v >= 1, "at least 1, or null"),
    "test_size": ("int", True, lambda v: 1 <= v <= TEST_IMAGES, f"1 to {TEST_IMAGES}, or null"),
    "cpu_replicas": ("int", False, lambda v: v >= 1, "at least 1"),
    "tensorboard": ("bool", False, lambda v: True, "true or false"),
    "tensorboard_histograms": ("bool", False, lambda v: True, "true or false"),
    "distill_weight": ("number", False, lambda v: 0 <= v <= 1, "a share from 0 to 1"),
    "distill_tta": ("bool", False, lambda v: True, "true or false"),
    "distill_temperature": ("number", False, lambda v: 0.1 <= v <= 100, "from 0.1 to 100"),
}
_CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "precision": PRECISIONS,
            "distribute": STRATEGIES}


def validate(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` for the first setting fmnist cannot run, naming it."""
    for name, choices in _CHOICES.items():
        value = getattr(config, name)
        if value not in choices:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}")
    for name, (kind, optional, check, words) in _RULES.items():
        value = getattr(config, name)
        if value is None and optional:
            continue
        if not _kind(value, kind) or not check(value):
            raise ConfigError(f"{name}: {value!r} is not valid; it must be {words}")
    if not isinstance(config.model, str) or not config.model:
        raise ConfigError(f"model: {config.model!r} is not a model name")
    if config.teacher is not None and (not isinstance(config.teacher, str) or not config.teacher):
        raise ConfigError(f"teacher: {config.teacher!r} is not a run directory path, or null")
    if config.distill_tta and config.teacher is None:
        raise ConfigError("distill_tta: true needs a teacher; pass --teacher RUN_DIR, or drop it")
    if config.distill_temperature != 1.0 and config.teacher is None:
        raise ConfigError(f"distill_temperature: {config.distill_temperature} needs a teacher; "
                          "pass --teacher RUN_DIR, or drop it")
    if config.time_budget is not None and config.distribute == "multiworker":
        # Each worker would time its own epochs and could stop, or re-plan, at another
        # epoch than the rest, which would then wait for it in their next all-reduce.
        raise ConfigError("time_budget: a multi-worker run cannot take one (each worker "
                          "would stop at its own epoch); drop --time-budget and pass --epochs")
    if not isinstance(config.model_options, dict):
        raise ConfigError(f"model_options: {config.model_options!r} is not an object of "
                          "the model's keyword arguments")
    if config.train_size is not None and config.train_size + config.val_size > TRAIN_IMAGES:
        raise ConfigError(f"train_size + val_size: {config.train_size} + {config.val_size} is "
                          f"more than the {TRAIN_IMAGES:,} training images")
