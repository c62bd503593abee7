"""Rebuild the default model that ships in the package (`make default-model`).

    python scripts/default_model.py [--run runs/default-model] [--data-dir DIR]

Trains cnn-fast with seed 0 and the recipe in RECIPE (`fmnist train`, which evaluates
and calibrates it), exports
it to ONNX (`fmnist export`, checked against Keras), and copies the graph into
src/fmnist/default_model/ with its sidecar: the export's parity report and thresholds
(sidecar format 2), the run's validation and test figures, the seed, the data files'
SHA-256, the machine kind and the commands that made it. The run directory stays in
runs/ (not committed).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "src" / "fmnist" / "default_model"
MODEL, SEED = "cnn-fast", 0
# cnn-fast with Nesterov SGD for 10 epochs at batch 256 rather than its preset's Adam: the
# shipped model's job is answering uploads, and with SGD its out-of-distribution flag
# lets fewer photo crops through at the same threshold, for a little less test accuracy
# (the note on the step profile and the levers in docs/experiments measures both). The
# learned stride-2 stem is the one whose flag was measured; the preset's whitening stem
# is a speed lever of training, not measured on uploads.
RECIPE = ("--optimizer", "sgd", "--learning-rate", "0.2", "--weight-decay", "0.0005",
          "--batch-size", "256", "--epochs", "10",
          "--model-option", "stem=conv-s2", "--model-option", "stem_width=32")
# metrics.json keys the sidecar keeps: what the model scores, and what it costs.
KEPT_METRICS = ("val_accuracy", "test_accuracy", "test_loss", "n_test", "test_ece",
                "test_ece_calibrated", "test_nll", "test_nll_calibrated", "temperature",
                "ood_threshold", "val_uploads_accepted", "epochs", "train_seconds", "params")


def fmnist(*args: str) -> list[str]:
    command = ["fmnist", *args]
    subprocess.run([sys.executable, "-m", "fmnist.cli", *args], check=True)
    return command


def onnx_test_accuracy(path: Path, data_dir) -> float:
    """The shipped graph's own accuracy on the 10,000 test images (what tests recheck)."""
    from fmnist.data import load_split
    from fmnist.predict import Predictor

    images, labels = load_split("test", data_dir)
    return float((Predictor.load(path).probabilities(images).argmax(1) == labels).mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/default-model")
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)

    from fmnist import __version__, hardware, rundir
    from fmnist.data import FILES, sha256_file

    data = ["--data-dir", args.data_dir] if args.data_dir else []
    run = Path(args.run)
    if run.exists():
        shutil.rmtree(run)
    commands = [fmnist("train", "--model", MODEL, *RECIPE, "--seed", str(SEED), "--out", str(run),
                       "--quiet", *data),
                fmnist("export", str(run), *data)]
    report = rundir.read_json(run / "model.onnx.json")
    metrics = rundir.read_metrics(run)
    config = rundir.read_json(run / rundir.CONFIG)
    TARGET.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "model.onnx", TARGET / "model.onnx")
    sidecar = {
        **{key: value for key, value in report.items() if key not in ("onnx", "source")},
        "onnx": "model.onnx",
        "model": MODEL, "seed": SEED, "precision_used": config.get("precision_used"),
        "metrics": {key: metrics.get(key) for key in KEPT_METRICS},
        "data": {spec.name: spec.sha256 for spec in FILES},
        "commands": [" ".join(command) for command in commands],
        "machine_kind": hardware.cpu_kind(hardware.read_cpu_flags()),
        "fmnist_version": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    sidecar["sha256"] = sha256_file(TARGET / "model.onnx")
    sidecar["onnx_test_accuracy"] = onnx_test_accuracy(TARGET / "model.onnx", args.data_dir)
    rundir.write_json(TARGET / "model.onnx.json", sidecar)
    print(f"wrote {TARGET.relative_to(ROOT)}/model.onnx ({(TARGET / 'model.onnx').stat().st_size:,} "
          f"bytes): test accuracy {metrics['test_accuracy']:.4f}, test ECE "
          f"{metrics['test_ece']:.4f} -> {metrics['test_ece_calibrated']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
