"""Ensembles: several trained runs as one model that averages their probabilities.

`fmnist ensemble RUN_DIR RUN_DIR ... --out DIR` writes a run directory like any other:

    config.json    "model": "ensemble", the members (run directory, model, seed, SHA-256
                   of its model.keras), and the split settings of the first member
    metrics.json   the training summary: parameters and training seconds summed over
                   the members (the ensemble itself trains nothing); evaluation adds the
                   test figures, as for any run
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
from fmnist.data import sha256_file
from fmnist.errors import FmnistError

MODEL_NAME = "ensemble"


def member_summary(run_dir: Path) -> dict:
    """What the ensemble records of one member (its run directory must hold a model)."""
    run_dir = rundir.require_run_dir(run_dir, needs=rundir.MODEL)
    config = rundir.read_json(run_dir / rundir.CONFIG)
    metrics_path = run_dir / rundir.METRICS
    metrics = rundir.read_json(metrics_path) if metrics_path.is_file() else {}
    return {"run": str(run_dir), "model": config.get("model"), "seed": config.get("seed"),
            "flip": bool(config.get("flip")), "sha256": sha256_file(run_dir / rundir.MODEL),
            "params": metrics.get("params"), "train_seconds": metrics.get("train_seconds"),
            "test_accuracy": metrics.get("test_accuracy"), "config": config}


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


def create_ensemble(run_dirs: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write the ensemble of ``run_dirs`` (at least two) as a new run directory ``out``."""
    if len(run_dirs) < 2:
        raise FmnistError("an ensemble needs at least two run directories")
    members = [member_summary(Path(path)) for path in run_dirs]
    duplicates = {m["sha256"] for m in members if [n["sha256"] for n in members].count(m["sha256"]) > 1}
    if duplicates:
        raise FmnistError("the same model is given twice; pass distinct run directories")
    out = rundir.require_new_run_dir(out)
    first = members[0]["config"]
    with rundir.exclusive(out):
        rundir.require_new_run_dir(out)
        model = build_ensemble([Path(m["run"]) / rundir.MODEL for m in members])
        config = {"model": MODEL_NAME,
                  "members": [{k: v for k, v in m.items() if k != "config"} for m in members],
                  "flip": all(m["flip"] for m in members),
                  # Export checks its ONNX copy on the first member's validation split.
                  "seed": first.get("seed"), "val_size": first.get("val_size"),
                  "train_size": first.get("train_size"),
                  "test_size": min((m["config"].get("test_size") or 10**9 for m in members)),
                  "precision_used": "float32"}
        if config["test_size"] == 10**9:
            config["test_size"] = None
        seconds = [m["train_seconds"] for m in members]
        summary = {
            "model": ensemble_label([m["model"] or "?" for m in members]),
            "members": len(members),
            "params": int(model.count_params()),
            "members_test_accuracy": [m["test_accuracy"] for m in members],
            # The members validated on different splits: no validation figure is honest.
            "val_accuracy": None,
        }
        if None not in seconds:  # what it cost: the members' training, one after the other
            summary["train_seconds"] = float(sum(seconds))
        run = rundir.RunDir.create(out, config)
        run.finish(model.save, summary)
    return out
