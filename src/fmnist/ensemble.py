"""Ensembles: several trained runs as one model that averages their probabilities.

`fmnist ensemble RUN_DIR RUN_DIR ... --out DIR` writes a run directory like any other:

    config.json    "model": "ensemble", the members (run directory, model, seed, SHA-256
                   of its model.keras), and the split settings of the first member
    metrics.json   the training summary: parameters and training seconds summed over
                   the members (the ensemble itself trains nothing); the validation
                   accuracy when every member held out the same images (same seed and
                   split sizes), else none; evaluation adds the test figures, as for any run
    model.keras    one Keras model: pixels -> each member -> the mean of their
                   probabilities, so `evaluate`, `predict`, `serve` and `export` (one ONNX
                   graph, same parity check) take it as they take a single model

Members keep their own precision inside the graph. Flip TTA applies when every member
was trained with flips.
"""

from __future__ import annotations

import os
from pathlib import Path

from fmnist import rundir
from fmnist.errors import FmnistError
from fmnist.split import split_key

MODEL_NAME = "ensemble"


def ensemble_label(models: list[str]) -> str:
    """``ensemble of 3 cnn-fast``, or ``ensemble of mlp, cnn-fast`` for mixed members."""
    if len(set(models)) == 1:
        return f"{MODEL_NAME} of {len(models)} {models[0]}"
    return f"{MODEL_NAME} of {', '.join(models)}"


def build_ensemble(member_paths: list[Path]):
    """The Keras model averaging the probabilities of the models at ``member_paths``:
    float32 (N, 28, 28) pixels 0..255 in, float32 (N, 10) probabilities out."""
    from fmnist.runtime import prepare_tensorflow

    prepare_tensorflow()
    import keras

    members = []
    for index, path in enumerate(member_paths):
        member = keras.saving.load_model(path, compile=False, safe_mode=True)
        member.name = f"member_{index}"  # each nested model needs a name of its own
        members.append(member)
    pixels = keras.Input(shape=(28, 28), dtype="float32", name="pixels")
    mean = keras.layers.Average(name="probabilities", dtype="float32")([m(pixels) for m in members])
    return keras.Model(pixels, mean, name=MODEL_NAME)


def shared_split(configs: list[dict]) -> bool:
    """Whether runs with these config.json contents all held out the same validation
    images (same split seed and validation size), so that their ensemble can be scored on them: the
    choice between ensembles (a teacher, say) can then stay off the test set."""
    return len({split_key(config) for config in configs}) == 1


def create_ensemble(run_dirs: list[str | os.PathLike], out: str | os.PathLike,
                    train_data=None) -> Path:
    """Write the ensemble of ``run_dirs`` (at least two) as a new run directory ``out``.

    ``train_data``: the 60,000 training ``(images, labels)``; given, and where the members
    share their split (:func:`shared_split`), the ensemble is scored on that validation
    split (``val_accuracy``, ``val_loss``, ``n_val`` in metrics.json)."""
    if len(run_dirs) < 2:
        raise FmnistError("an ensemble needs at least two run directories")
    members = [rundir.run_record(path) for path in run_dirs]
    if len({m["sha256"] for m in members}) < len(members):
        raise FmnistError("the same model is given twice; pass distinct run directories")
    configs = [rundir.read_json(Path(m["run"]) / rundir.CONFIG) for m in members]
    test_sizes = [c["test_size"] for c in configs if c.get("test_size")]
    out = rundir.require_new_run_dir(out)
    with rundir.exclusive(out):
        rundir.require_new_run_dir(out)
        model = build_ensemble([Path(m["run"]) / rundir.MODEL for m in members])
        config = {"model": MODEL_NAME, "members": members,
                  "flip": all(m["flip"] for m in members),
                  # Export checks its ONNX copy on the first member's validation split.
                  "seed": configs[0].get("seed"), "split_seed": configs[0].get("split_seed"),
                  "val_size": configs[0].get("val_size"),
                  "train_size": configs[0].get("train_size"),
                  "test_size": min(test_sizes) if test_sizes else None,  # the smallest asked for
                  "precision_used": "float32"}
        seconds = [m["train_seconds"] for m in members]
        summary = {
            "model": ensemble_label([m["model"] or "?" for m in members]),
            "members": len(members),
            "params": int(model.count_params()),
            "members_test_accuracy": [m["test_accuracy"] for m in members],
            # Members that validated on different splits: no validation figure is honest.
            "val_accuracy": None,
        }
        if train_data is not None and shared_split(configs):
            summary.update(_validation_scores(model, configs[0], train_data))
        if None not in seconds:  # what it cost: the members' training, one after the other
            summary["train_seconds"] = float(sum(seconds))
        run = rundir.RunDir.create(out, config)
        run.finish(model.save, summary)
    return out


def _validation_scores(model, config: dict, train_data) -> dict:
    """The ensemble's accuracy and loss on the validation split its members share."""
    from fmnist.metrics import classification_metrics, predict_proba
    from fmnist.split import split_of_run

    images, labels = train_data
    _, val_idx = split_of_run(config, labels)
    scores = classification_metrics(predict_proba(model, images[val_idx]), labels[val_idx])
    return {"val_accuracy": scores["accuracy"], "val_loss": scores["loss"], "n_val": int(len(val_idx))}
