"""Distillation: a trained run teaches a new one through its probabilities.

Everything about a teacher lives here: its soft targets on the student's training
images (:func:`teacher_targets`), the loss that weighs them against the labels
(:class:`DistillationLoss`), whether it trained on the student's split
(:func:`teacher_shares_split`), and what the student records of it and checks on resume
(:func:`soft_targets_for`). The settings are TrainConfig's ``teacher``,
``distill_weight``, ``distill_temperature`` and ``distill_tta``; the input pipeline packs
the targets as float32 (B, 20), the label then the teacher's probabilities.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fmnist.runtime import prepare_tensorflow

prepare_tensorflow()  # before Keras' first import: backend and oneDNN defaults

import keras  # noqa: E402
import numpy as np  # noqa: E402

from fmnist import rundir  # noqa: E402
from fmnist.config import TrainConfig  # noqa: E402
from fmnist.data import NUM_CLASSES  # noqa: E402
from fmnist.errors import FmnistError  # noqa: E402
from fmnist.metrics import mirrored, predict_proba  # noqa: E402
from fmnist.split import split_key  # noqa: E402


def teacher_targets(teacher: str, images: np.ndarray, tta: bool = False,
                    temperature: float = 1.0) -> tuple[np.ndarray, dict]:
    """A teacher run's probabilities on ``images`` (uint8 (n, 28, 28) -> float32 (n, 10)),
    the soft targets of distillation, and what the student records of its teacher.

    Computed once per process, on the unaugmented training images: one forward pass (two
    with ``tta``: the mean over each image and its mirror, for a teacher trained with
    flips), whose seconds are reported apart from the student's training (``seconds``),
    as is what the teacher itself cost to train (``train_seconds``, from its metrics.json).
    ``temperature`` T: the probabilities softened to ``softmax(log p / T)``.
    """
    record = rundir.run_record(rundir.require_teacher(teacher, tta))
    started = time.perf_counter()
    model = keras.saving.load_model(Path(teacher) / rundir.MODEL, compile=False, safe_mode=True)
    soft = predict_proba(model, images)
    if tta:
        soft = (soft + predict_proba(model, mirrored(images))) / 2
    return warmed(soft, temperature), {**record, "tta": tta,
                                       "seconds": time.perf_counter() - started}


def teacher_shares_split(teacher: str | Path, student: dict) -> bool:
    """Whether the model in ``teacher`` trained on the split of ``student`` (a config as a
    dict), so held out the same validation images: the teacher's own split, or each
    member's for an ensemble (a member moved away since: the split the ensemble recorded,
    its first member's). Otherwise the student's validation accuracy flatters it."""
    config = rundir.read_json(Path(teacher) / rundir.CONFIG)
    members = [Path(member["run"]) / rundir.CONFIG for member in config.get("members", [])]
    taught_by = [rundir.read_json(path) if path.is_file() else config for path in members] or [config]
    return {split_key(c) for c in taught_by} == {split_key(student)}


def warn_if_teacher_saw_validation(config: TrainConfig) -> None:
    """Warn (stderr) when the teacher, or a member of it, trained on another split: most of
    the student's validation images were its training images, so the student's validation
    accuracy (and any choice made on it) is flattered; its test accuracy is not."""
    if not teacher_shares_split(config.teacher, config.to_dict()):
        print(f"fmnist: warning: the teacher {config.teacher} trained on another split than this "
              "run's, so on most of its validation images: validation accuracy will flatter the "
              "student; for a fair one, train the teacher (each member) and the student with "
              "one --split-seed", file=sys.stderr)


def soft_targets_for(run: rundir.RunDir, config: TrainConfig, images: np.ndarray) -> np.ndarray | None:
    """The teacher's targets on the student's training ``images`` (None without a teacher),
    after recording the teacher in the run's config.json (``teacher_run``: what it is, its
    SHA-256, its cost, whether it shares the split) or, on resume, checking that it is
    still the model the run started with."""
    if config.teacher is None:
        return None
    soft, teacher = teacher_targets(config.teacher, images, config.distill_tta,
                                    config.distill_temperature)
    teacher["shares_split"] = teacher_shares_split(config.teacher, config.to_dict())
    recorded = run.config.get("teacher_run")
    if recorded is None:
        run.record(teacher_run=teacher)
    elif recorded.get("sha256") != teacher["sha256"]:
        raise FmnistError(f"the teacher {config.teacher} holds another model than when this "
                          "run started; resuming would train against other targets")
    return soft


@keras.saving.register_keras_serializable(package="fmnist")
class DistillationLoss(keras.losses.Loss):
    """Knowledge distillation (Hinton et al., 2015) on targets packed as float32 (B, 20):

    ``y_true[:, :10]`` the label as a distribution (one-hot, or mixed by CutMix), smoothed
    by ``label_smoothing``; ``y_true[:, 10:]`` the teacher's probabilities at temperature
    ``T``, or all zero where an image has no teacher (the validation split). ``y_pred``:
    the student's probabilities (B, 10). Per image,

        (1 - w) * CE(label, p) + w * T^2 * KL(teacher_T || softmax(log p / T))

    (log p are the student's logits up to a constant, so ``softmax(log p / T)`` is its
    distribution at temperature T; T^2 keeps the gradients' scale as T changes). An image
    without a teacher gets the cross-entropy alone. At T = 1 the gradient is that of the
    cross-entropy against ``(1 - w) * label + w * teacher``.
    """

    def __init__(self, weight: float = 0.5, temperature: float = 1.0,
                 label_smoothing: float = 0.0, name: str = "distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        self.weight, self.temperature = float(weight), float(temperature)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        ops = keras.ops
        labels, teacher = y_true[..., :NUM_CLASSES], y_true[..., NUM_CLASSES:]
        if self.label_smoothing:
            labels = labels * (1.0 - self.label_smoothing) + self.label_smoothing / NUM_CLASSES
        log_p = ops.log(ops.clip(y_pred, keras.config.epsilon(), 1.0))
        cross_entropy = -ops.sum(labels * log_p, axis=-1)
        log_p_warm = ops.log_softmax(log_p / self.temperature, axis=-1)
        log_teacher = ops.log(ops.clip(teacher, keras.config.epsilon(), 1.0))
        divergence = ops.sum(teacher * (log_teacher - log_p_warm), axis=-1)
        weight = self.weight * ops.sum(teacher, axis=-1)  # w, or 0 without a teacher
        return ((1.0 - weight) * cross_entropy
                + weight * self.temperature ** 2 * divergence)

    def get_config(self):
        return {**super().get_config(), "weight": self.weight, "temperature": self.temperature,
                "label_smoothing": self.label_smoothing}


def warmed(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities (n, 10) at temperature T: ``softmax(log p / T)``, float32; T = 1
    leaves them as they are, a higher T flattens them toward uniform, keeping their order."""
    if temperature == 1.0:
        return probabilities.astype(np.float32)
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)).astype(np.float32) / temperature
    return keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1)).astype(np.float32)


@keras.saving.register_keras_serializable(package="fmnist")
def label_accuracy(y_true, y_pred):
    """Accuracy against the label part of distillation targets (see DistillationLoss)."""
    return keras.metrics.categorical_accuracy(y_true[..., :NUM_CLASSES], y_pred)
