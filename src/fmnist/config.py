"""The training configuration: what decides a run's result, checked before anything runs.

:class:`TrainConfig` is the one home of every training setting: a field with its type,
its bounds, its default and what it means. Everything else derives from it: the flags of
`fmnist train` (``cli/train.py`` reads the fields), strict ``--config`` loading, the keys
a run records in its ``config.json``, the settings `fmnist tune` leaves out of a found
model, and the check of every point of a search space. Adding a setting is adding a
field here and the code that uses it.

Its values come, each one overriding the last, from the defaults below (the seed
notebook's recipe), the model's registered preset (``models.register``), a ``--config``
JSON file, and command-line flags; the factory arguments in ``model_options`` override
key by key. The configuration is strict: an unknown key (a typo in a file or a preset)
or a value outside what fmnist can run is a
:class:`~fmnist.errors.ConfigError` of one line naming the key and what it accepts,
raised before a run directory exists. This module imports no Keras, so the CLI checks a
configuration in milliseconds.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fmnist.distribute import STRATEGIES
from fmnist.errors import ConfigError
from fmnist.hardware import PRECISIONS
from fmnist.models import DEFAULT_MODEL, model_names, model_preset
from fmnist.split import DEFAULT_VAL_SIZE, TRAIN_POOL

OPTIMIZERS = ("adam", "adamw", "sgd")
# The settings each optimizer leaves unused (fmnist.recipe.compile_for_training):
# `fmnist train` warns when a flag given names one.
UNUSED_BY = {"adam": ("weight_decay", "momentum", "nesterov"),
             "adamw": ("momentum", "nesterov"), "sgd": ("beta_1", "beta_2")}
SCHEDULES = ("constant", "onecycle")
# `fmnist tune --tuner`: KerasTuner's searches (fmnist.tune builds them; Keras-free here).
TUNERS = ("hyperband", "random", "bayesian")
TRAIN_IMAGES, TEST_IMAGES = TRAIN_POOL, 10_000

# What a field's ``group`` says: where its flag shows in `fmnist train --help`, and
# whether a model found by `fmnist tune` keeps it. "model" and "recipe" make the model;
# "run" (seed, split, sizes, budget) and "scale" (how it is spread and tracked) describe
# one run of it, so a search's best config leaves them out.
GROUPS = {"model": None, "recipe": "recipe (defaults: the model's preset, see `fmnist models`)",
          "run": "the run: seed, split and sizes", "scale": "scale and tracking"}
NOT_SEARCHED_GROUPS = ("run", "scale")


def users_of(name: str) -> str:
    """The optimizers that use setting ``name``, in words: "adamw and sgd use it"."""
    users = [optimizer for optimizer in OPTIMIZERS if name not in UNUSED_BY[optimizer]]
    return " and ".join(users) + (" uses it" if len(users) == 1 else " use it")


def setting(default: Any = None, description: str = "", *, group: str, must: str = "",
            metavar: str | None = None, flag: str | None = None, **bounds) -> Any:
    """A TrainConfig field: its default, its bounds (pydantic's ``ge``, ``lt``...), and
    what the CLI needs of it: the help ``group``, ``must`` (what a bad value is told it
    must be), a ``metavar``, and ``flag`` where it is not ``--`` plus the dashed name."""
    extra = {"group": group, "must": must, "metavar": metavar, "flag": flag}
    if callable(default):
        return Field(default_factory=default, description=description, json_schema_extra=extra,
                     **bounds)
    return Field(default, description=description, json_schema_extra=extra, **bounds)


class TrainConfig(BaseModel):
    """Everything that decides a run's result; saved as the run's ``config.json``.

    Build one with :meth:`resolve` (defaults < preset < file < flags) or directly, as
    ``TrainConfig(model="cnn-fast", epochs=3)``: unknown keys and bad values raise
    :class:`~fmnist.errors.ConfigError`.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True,
                              protected_namespaces=(), validate_default=True)

    model: str = setting("mlp", f"registered model name (`fmnist train` trains {DEFAULT_MODEL} "
                                "unless told; `fmnist models` lists them)",
                         group="model", must="a registered model name", min_length=1)
    model_options: dict[str, Any] = setting(
        dict, "factory argument of the model, VALUE as JSON (repeatable; each replaces that "
              "key of the preset's), e.g. 'widths14=[32,32]'",
        group="model", must="an object of the model's keyword arguments", metavar="KEY=VALUE",
        flag="--model-option")
    epochs: int = setting(10, "epochs to train (an upper bound with --time-budget)",
                          group="recipe", must="at least 1", ge=1)
    batch_size: int = setting(128, "images per step", group="recipe", must="at least 1", ge=1)
    optimizer: Literal[*OPTIMIZERS] = setting("adam", "adam, adamw, or sgd (with momentum)",
                                              group="recipe")
    learning_rate: float = setting(1e-3, "(peak) learning rate", group="recipe",
                                   must="above 0", gt=0)
    schedule: Literal[*SCHEDULES] = setting(
        "constant", "constant, or onecycle (linear warm-up, cosine decay to zero)", group="recipe")
    warmup_fraction: float = setting(0.2, "onecycle: the share of all steps spent warming up",
                                     group="recipe", must="from 0 up to, not including, 1",
                                     ge=0, lt=1)
    weight_decay: float = setting(0.0, "decoupled weight decay (AdamW-style), per unit of rate",
                                  group="recipe", must="0 or more", ge=0)
    momentum: float = setting(0.9, "sgd's momentum", group="recipe",
                              must="from 0 up to, not including, 1", ge=0, lt=1)
    nesterov: bool = setting(True, "sgd: Nesterov's momentum, which looks one step ahead",
                             group="recipe", must="true or false")
    beta_1: float = setting(0.9, "adam, adamw: decay of the gradient's running mean (sgd "
                                 "has none)",
                            group="recipe", must="from 0 up to, not including, 1", ge=0, lt=1)
    beta_2: float = setting(0.999, "adam, adamw: decay of the squared gradient's running "
                                   "mean (sgd has none)",
                            group="recipe", must="from 0 up to, not including, 1", ge=0, lt=1)
    bias_rate: float = setting(
        1.0, "sgd: multiply the learning rate of the batch norms' shifts (beta) by this "
             "(airbench trains them 64x faster than the weights)",
        group="recipe", must="from 1 to 1000", metavar="FACTOR", ge=1, le=1000)
    label_smoothing: float = setting(0.0, "share of each target spread over the other classes",
                                     group="recipe", must="from 0 up to, not including, 1",
                                     ge=0, lt=1)
    ema: float | None = setting(None, "average the weights with this momentum (e.g. 0.999)",
                                group="recipe", must="between 0 and 1, or null", metavar="MOMENTUM",
                                gt=0, lt=1)
    precision: Literal[*PRECISIONS] = setting(
        "auto", "auto (every preset): bfloat16 where the hardware computes it natively (CPUs "
                "with avx512_bf16 or amx_bf16, GPUs of compute capability >= 8.0), float32 "
                "elsewhere; bfloat16 is mixed precision, float32 weights and outputs",
        group="recipe")
    flip: bool = setting(False, "augment with random left-right flips", group="recipe",
                         must="true or false")
    alternate_flip: bool = setting(
        False, "with --flip: mirror each image in every other epoch, from a seeded random "
               "first epoch, instead of by a fresh coin each epoch (airbench's alternating "
               "flip: every two epochs see each image both ways)",
        group="recipe", must="true or false")
    translate: int = setting(0, "augment with random shifts of up to PIXELS", group="recipe",
                             must="0 to 27 pixels", metavar="PIXELS", ge=0, le=27)
    erase: float = setting(0.0, "augment with random erasing, probability P", group="recipe",
                           must="a probability from 0 to 1", metavar="P", ge=0, le=1)
    cutmix: float = setting(0.0, "CutMix: paste a box of another image of the batch into each "
                                 "image with probability P, mixing their targets by its area",
                            group="recipe", must="a probability from 0 to 1", metavar="P",
                            ge=0, le=1)
    teacher: str | None = setting(
        None, "distil: train against this run's probabilities on the training images mixed "
              "with the true labels (its cost is reported apart)",
        group="recipe", must="a run directory path, or null", metavar="RUN_DIR", min_length=1)
    distill_weight: float = setting(0.5, "w, the teacher's share of the loss, 0..1",
                                    group="recipe", must="a share from 0 to 1", metavar="W",
                                    ge=0, le=1)
    distill_temperature: float = setting(
        1.0, "T: soften teacher and student by T in the teacher's share of the loss, scaled by "
             "T^2 (Hinton's distillation); 1 keeps the teacher's probabilities as they are",
        group="recipe", must="from 0.1 to 100", metavar="T", ge=0.1, le=100)
    distill_tta: bool = setting(
        False, "the teacher's probabilities averaged over each image and its mirror (a teacher "
               "trained with flips; one pass more, reported apart)",
        group="recipe", must="true or false")
    time_budget: float | None = setting(
        None, "fit the training into this many seconds: a short speed probe picks the epoch "
              "count, and the schedule is laid over it",
        group="run", must="above 0 seconds, or null", metavar="SECONDS", gt=0)
    seed: int = setting(0, "fixes split, initialization, shuffling and augmentation",
                        group="run", must="0 or more", ge=0)
    split_seed: int | None = setting(
        None, "hold out seed N's validation images instead of --seed's: runs of several seeds "
              "on one split, so that their ensemble, or a student taught by it, validates on "
              "images none of them trained on",
        group="run", must="0 or more, or null", metavar="N", ge=0)
    val_size: int = setting(DEFAULT_VAL_SIZE, "validation images carved from the 60,000",
                            group="run", must=f"1 to {TRAIN_IMAGES - 1}", ge=1, lt=TRAIN_IMAGES)
    train_size: int | None = setting(
        None, "use a stratified subset of this many training images (quick runs; default: "
              "all the rest)", group="run", must="at least 1, or null", ge=1)
    test_size: int | None = setting(
        None, "evaluate on the first N test images only (quick runs; default: all 10,000)",
        group="run", must=f"1 to {TEST_IMAGES}, or null", ge=1, le=TEST_IMAGES)
    distribute: Literal[*STRATEGIES] = setting(
        "none", "data-parallel training: mirrored (local GPUs, or --cpu-replicas), "
                "multiworker (one process per worker, cluster in TF_CONFIG)", group="scale")
    cpu_replicas: int = setting(1, "without GPUs, split the CPU into N logical devices for the "
                                   "mirrored replicas", group="scale", must="at least 1",
                                metavar="N", ge=1)
    tensorboard: bool = setting(False, "write TensorBoard logs (losses, accuracy, learning "
                                       "rate) to RUN_DIR/logs", group="scale",
                                must="true or false")
    tensorboard_histograms: bool = setting(False, "with --tensorboard, also weight histograms "
                                                  "every epoch", group="scale",
                                           must="true or false")

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        """Checks that span several settings; each names the fix."""
        if self.bias_rate != 1.0 and self.optimizer != "sgd":
            raise ConfigError(f"bias_rate: {self.bias_rate} is sgd's; pass --optimizer sgd, "
                              "or drop --bias-rate")
        if self.alternate_flip and not self.flip:
            raise ConfigError("alternate_flip: true needs flips; pass --flip too, or drop it")
        if self.distill_tta and self.teacher is None:
            raise ConfigError("distill_tta: true needs a teacher; pass --teacher RUN_DIR, or drop it")
        if self.distill_temperature != 1.0 and self.teacher is None:
            raise ConfigError(f"distill_temperature: {self.distill_temperature} needs a teacher; "
                              "pass --teacher RUN_DIR, or drop it")
        if self.time_budget is not None and self.distribute == "multiworker":
            # Each worker would time its own epochs and could stop, or re-plan, at another
            # epoch than the rest, which would then wait for it in their next all-reduce.
            raise ConfigError("time_budget: a multi-worker run cannot take one (each worker "
                              "would stop at its own epoch); drop --time-budget and pass --epochs")
        if self.train_size is not None and self.train_size + self.val_size > TRAIN_IMAGES:
            raise ConfigError(f"train_size + val_size: {self.train_size} + {self.val_size} is "
                              f"more than the {TRAIN_IMAGES:,} training images")
        return self

    def __init__(self, **settings):
        try:
            super().__init__(**settings)
        except ValidationError as error:
            raise ConfigError(_one_line(error)) from None

    def unused(self, names) -> list[str]:
        """Those of the settings ``names`` that this config's optimizer does not use."""
        return [name for name in names if name in UNUSED_BY[self.optimizer]]

    @property
    def one_hot_targets(self) -> bool:
        """Whether training targets are (10,) float vectors rather than class indices."""
        return self.label_smoothing > 0 or self.teacher is not None or self.cutmix > 0

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes``, checked like any new config."""
        return TrainConfig(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        """The settings as JSON-ready values, in field order (what config.json records)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, payload: dict, source: str = "the configuration",
                  strict: bool = True) -> "TrainConfig":
        """A config from a JSON object; the keys a run's config.json records besides the
        settings (:class:`RunRecord`) are ignored, any other unknown key is a ConfigError
        naming ``source`` (``strict=False``: ignored too)."""
        names = set(cls.model_fields)
        unknown = sorted(set(payload) - names - RECORDED_KEYS)
        if unknown and strict:
            raise ConfigError(f"{source}: unknown setting {unknown[0]!r}"
                              f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}; "
                              f"the settings are: {', '.join(sorted(names))}")
        return cls(**{key: value for key, value in payload.items() if key in names})

    @classmethod
    def resolve(cls, model: str, file: dict | None = None, flags: dict | None = None,
                file_name: str = "the --config file") -> "TrainConfig":
        """Defaults < ``model``'s preset < ``file`` (a --config object) < ``flags`` (None:
        not given). ``model_options`` merge key by key in the same order, so one factory
        argument given keeps the preset's others; a run's own config.json replaces the
        preset's options whole."""
        if model not in model_names():
            raise ConfigError(f"model: unknown model {model!r}; choose one of: "
                              f"{', '.join(model_names())}")
        preset = model_preset(model)
        cls.from_json(preset, f"the preset of {model}")  # a typo in a preset fails too
        if file:
            cls.from_json({"model": model, **file}, file_name)
        given = {key: value for key, value in (flags or {}).items() if value is not None}
        layers = (preset, file or {}, given)
        merged = {key: value for layer in layers for key, value in layer.items()}
        # Key by key: `--model-option dense=256` keeps the preset's other options. A run's
        # own config.json (it carries the run's record) names every option its model was
        # built with, so it replaces the preset's and still rebuilds that model.
        if file and not RECORDED_KEYS.isdisjoint(file):
            layers = layers[1:]
        options = [layer["model_options"] for layer in layers if "model_options" in layer]
        if all(isinstance(each, dict) for each in options):  # else from_json names the bad one
            merged["model_options"] = {key: value for each in options
                                       for key, value in each.items()}
        return cls.from_json({**merged, "model": model})

    @classmethod
    def for_model(cls, model: str, **overrides) -> "TrainConfig":
        """Defaults, then the model's registered preset, then ``overrides`` (None = unset)."""
        return cls.resolve(model, flags=overrides)


class RunRecord(BaseModel):
    """What a run's config.json records beside its settings: measured or derived when the
    run was made, so that it can be rebuilt and audited, and never an input."""

    model_config = ConfigDict(extra="forbid")

    layout: int | None = Field(None, description="the run directory's layout version "
                                                 "(rundir.LAYOUT; absent: the first)")
    versions: dict[str, str] = Field(description="Python, fmnist, Keras, its backend, NumPy")
    created_utc: str = Field(description="when the run directory was made, ISO 8601")
    precision_used: str = Field(description="what --precision auto chose, or the precision asked")
    precision_reason: str = Field(description="why, in words")
    replicas: int | None = Field(None, description="tf.distribute replicas in sync")
    global_batch_size: int | None = Field(None, description="batch_size x replicas")
    scaled_learning_rate: float | None = Field(None, description="learning_rate x replicas")
    epochs_requested: int | None = Field(None, description="--epochs before a time budget "
                                                           "re-planned it")
    probe_epochs: int | None = Field(None, description="the epochs the budget probe planned")
    probe_seconds: float | None = Field(None, description="the budget probe's own seconds")
    probe_epoch_seconds: float | None = Field(None, description="the probe's estimate of an epoch")
    teacher_run: dict | None = Field(None, description="the teacher's record: path, SHA-256, "
                                                       "model, split")


RECORDED_KEYS = frozenset(RunRecord.model_fields)


def flag_of(name: str) -> str:
    """The `fmnist train` flag of a TrainConfig field."""
    extra = TrainConfig.model_fields[name].json_schema_extra
    return extra["flag"] or "--" + name.replace("_", "-")


def field_kind(name: str) -> tuple[type, tuple | None, bool]:
    """(base type, the choices of a Literal or None, whether None is allowed) of a field."""
    annotation = TrainConfig.model_fields[name].annotation
    optional = False
    if get_origin(annotation) not in (None, Literal, dict) and type(None) in get_args(annotation):
        optional = True
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    if get_origin(annotation) is Literal:
        return str, get_args(annotation), optional
    return (get_origin(annotation) or annotation), None, optional


def searched_settings(config: TrainConfig) -> dict:
    """A config's model and recipe settings, without those of the run that found it."""
    return {name: value for name, value in config.to_dict().items()
            if TrainConfig.model_fields[name].json_schema_extra["group"] not in NOT_SEARCHED_GROUPS}


def _one_line(error: ValidationError) -> str:
    """The first problem of a validation error as fmnist says it: the setting, the value,
    and what it must be."""
    problem = error.errors()[0]
    name = str(problem["loc"][0]) if problem["loc"] else "?"
    value = problem.get("input")
    if problem["type"] == "value_error":  # a ConfigError of _consistent: already one line
        return str(problem["ctx"]["error"])
    if problem["type"] == "extra_forbidden":
        return (f"unknown setting {name!r}; the settings are: "
                f"{', '.join(sorted(TrainConfig.model_fields))}")
    field = TrainConfig.model_fields.get(name)
    if field is None:
        return problem["msg"]
    _, choices, _ = field_kind(name)
    if choices:
        return f"{name}: {value!r} is not one of {', '.join(choices)}"
    shown = repr(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return f"{name}: {shown} is not valid; it must be {field.json_schema_extra['must']}"
