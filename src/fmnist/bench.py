"""`fmnist bench`: accuracy x time for each model over several seeds, measured here.

Each training run is a separate `fmnist train` process, as a user would run it, so no
run inherits another's warm caches or memory, and each process's peak memory is its
own (``os.wait4`` returns the rusage of exactly that child).

Figures are kept per machine kind (``machine_kind``: the CPU's instruction set as far as
training speed goes, its cores, or the GPU): a bench on one kind replaces rows of that
kind only, so an AVX2 laptop's numbers never overwrite those of an AVX-512 BF16 server.
bench.json holds them all; BENCHMARKS.md (one section per kind) and the README's
results tables are regenerated from it every time, never edited by hand.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fmnist import hardware, rundir
from fmnist.errors import FmnistError

FORMAT = 2  # bench.json layout: {"format": 2, "machines": {kind: section}}
# cnn-best (about an hour a seed here) is benchmarked only when asked for by name.
DEFAULT_MODELS = ("mlp", "mlp-plus", "cnn-tfdocs", "cnn-fast")
DEFAULT_MODEL = "cnn-fast"  # the model `fmnist train` and `make run` train
REFERENCE_MODEL = "cnn-tfdocs"  # the TensorFlow-docs CNN the default is measured against
TARGETS = {  # model -> (test accuracy target, training-seconds limit or None)
    "mlp": (0.875, None),
    "mlp-plus": (0.900, 30.0),
    "cnn-fast": (0.930, None),  # its time target is relative: see DEFAULT_TARGET
    "cnn-best": (0.950, 3600.0),
}
# The default model, on every machine kind, in one bench run: at least this test
# accuracy (mean over seeds, no TTA) in at most this share of the reference's training
# time, with a steady epoch at most this many times the machine's compute floor.
DEFAULT_TARGET = {"accuracy": 0.930, "time_ratio": 0.5, "floor_ratio": 1.5}
VAL_THRESHOLDS = (0.91, 0.92, 0.93)  # validation accuracies whose first crossing is timed
ONNX_TARGET = ("cnn-fast", 30_000)  # onnxruntime images/s at batch 1024
SERVE_TARGETS = {"p50_ms": 10.0, "p99_ms": 50.0, "clients": 8, "growth_percent": 10.0}
# Issue 11: while 8 clients send the largest requests allowed, /health answers within 50 ms
# (p99), the server stays under 1 GB, and a saturated server says 503, not "wait".
BURST_TARGETS = {"clients": 8, "health_p99_ms": 50.0, "peak_rss_mb": 1024.0}
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"
MODEL_ORDER = ("mlp", "mlp-plus", "cnn-tfdocs", "cnn-fast", "cnn-best")


# ---------------------------------------------------------------- the machine


def machine(measure: bool = True) -> dict:
    """What this machine is, as far as the figures depend on it.

    CPU model, its speed-relevant flags and kind, cores, and the software versions;
    with ``measure``, also the device TensorFlow trains on and its float32 and bfloat16
    matmul peaks (imports TensorFlow). Without, the device is "CPU" (what the serving
    and inference figures run on) and no peak is measured.
    """
    flags = hardware.read_cpu_flags()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    record = {
        "cpu": hardware.cpu_model(),
        "cpu_flags": [flag for flag in hardware.RELEVANT_CPU_FLAGS if flag in flags],
        "cpu_kind": hardware.cpu_kind(flags),
        "cores": cores,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(TensorFlow's default)"),
        "device": "CPU",
    }
    if measure:
        from fmnist.train import versions

        record["device"] = device_name()
        from fmnist.runtime import filtered_stderr

        # Where bfloat16 is emulated, oneDNN says so on stderr; the peak shows it anyway.
        with filtered_stderr(lambda line: "oneDNN supports DT_BFLOAT16 only" in line):
            record["peak_gflops"] = {"float32": matmul_peak_gflops("float32"),
                                     "bfloat16": matmul_peak_gflops("bfloat16")}
        record.update(versions())
    else:
        import platform

        from fmnist import __version__

        record.update({"python": platform.python_version(), "fmnist": __version__})
    return record


def machine_kind(record: dict) -> str:
    """The key figures are filed under: GPU name, or CPU kind and core count."""
    if record.get("device", "CPU") != "CPU":
        name = record["device"].removeprefix("GPU: ")
        return "gpu-" + "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())
    return f"cpu-{record['cpu_kind']}-{record['cores']}cores"


def machine_label(record: dict) -> str:
    """The kind in words, for headings."""
    if record.get("device", "CPU") != "CPU":
        return f"{record['device']} (host CPU: {record['cpu']})"
    kind = record["cpu_kind"]
    words = {"amx-bf16": "x86-64 with AMX (native bfloat16)",
             "avx512-bf16": "x86-64 AVX-512 with native bfloat16 (avx512_bf16)",
             "avx512": "x86-64 AVX-512, no native bfloat16",
             "avx2": "x86-64 AVX2, no AVX-512, no native bfloat16",
             "other": "CPU without AVX2 (or not x86)"}[kind]
    return f"{words}, {record['cores']} cores"


def device_name() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU: {details.get('device_name', gpus[0].name)}"
    return "CPU"


def repo_relative_command(argv: list[str], cwd: str | None = None) -> str:
    """``fmnist ARGS`` as one line, with every absolute path made relative to ``cwd``:
    committed bench files hold no machine's paths, and the command reruns from the repo."""
    cwd = cwd or os.getcwd()
    return shlex.join(["fmnist", *_map_paths(argv, lambda path: os.path.relpath(path, cwd))])


def _map_paths(words: list[str], change) -> list[str]:
    """``words`` with ``change`` applied to each absolute path, alone or after ``--flag=``."""
    out = []
    for word in words:
        flag, sep, value = word.partition("=") if word.startswith("-") else ("", "", word)
        if not sep:
            flag, value = "", word
        if os.path.isabs(value):
            value = change(value)
        out.append(f"{flag}{sep}{value}" if sep else value)
    return out


# ---------------------------------------------------------------- bench.json


def load_report(path: Path) -> dict:
    """bench.json as ``{"format": 2, "machines": {kind: section}}``; a file written before
    figures were kept per machine is migrated (see ``migrate_v1``); no file: empty."""
    if not path.is_file():
        return {"format": FORMAT, "machines": {}}
    return upgrade(json.loads(path.read_text()))


def upgrade(report: dict) -> dict:
    """``report`` itself if it is in the current layout, else its migration."""
    return report if report.get("format") == FORMAT else migrate_v1(report)


def migrate_v1(old: dict) -> dict:
    """A single-machine bench.json (format 1) as format 2.

    Format 1 recorded the CPU only as "AMD EPYC, 2 cores", without its flags. Its kind
    is inferred from its matmul peaks: a bfloat16 peak well above float32's means
    native bfloat16 (emulated bfloat16 is many times slower than float32), which on
    these machines means AVX-512 with avx512_bf16. Recorded commands lose absolute
    paths; the flip-TTA figures of models trained without flips are dropped (they
    measured an out-of-distribution mirror, see evaluate.tta_applies); each row notes
    the precision its runs used (the presets of the time: bfloat16 for cnn-fast and
    cnn-best).
    """
    peaks = old.get("peak_gflops") or {}
    native = peaks.get("bfloat16", 0) > 1.5 * peaks.get("float32", float("inf"))
    record = {**old.get("machine", {}), "peak_gflops": peaks,
              "cpu_kind": "avx512-bf16" if native else "avx2",
              "cpu_flags": ["avx2", "fma", "avx512f", "avx512_bf16"] if native else ["avx2", "fma"],
              "cpu_flags_inferred": True, "onednn": "(TensorFlow's default: on)" if native else
              "(TensorFlow's default)"}
    bench_id = old.get("updated_utc")
    rows = []
    for row in old.get("rows", []):
        row = dict(row)
        flip = row["model"] in ("cnn-fast", "cnn-best")  # the presets of format 1's time
        row.update(flip=flip, precision="bfloat16" if flip and native else "float32",
                   commands=[_relative_words(c) for c in row.get("commands", [])])
        # cnn-best's seeds came from other invocations than the rest.
        row["bench_id"] = bench_id if len(row["commands"]) == 1 else None
        if not flip:
            row["test_accuracy_tta"], row["test_accuracy_tta_mean_std"] = [], None
            for run in row.get("runs", []):
                run["test_accuracy_tta"] = None
        for run in row.get("runs", []):  # format 1 timed the crossing of 0.91 only
            seconds = run.pop("seconds_to_val_target", None)
            run["val_crossings"] = {"0.91": None if seconds is None else
                                    {"epoch": None, "seconds": seconds}}
        row["val_crossings_median"] = median_crossings(row.get("runs", []))
        for key in ("seconds_to_val_target", "seconds_to_val_target_median"):
            row.pop(key, None)
        _refloor(row, peaks)
        rows.append(row)
    section = {"machine": record, "rows": rows,
               "command": _relative_words(old.get("command", "")),
               "updated_utc": old.get("updated_utc")}
    for key in ("inference", "inference_command", "inference_utc", "serve"):
        if key in old:
            section[key] = old[key]
    for result in section.get("serve", []):
        result["command"] = _relative_words(result.get("command", ""))
    return {"format": FORMAT, "machines": {machine_kind(record): section}}


def _relative_words(command: str) -> str:
    """A format-1 command without the absolute paths of the machine it ran on: a path
    through the repository's runs/ folder keeps its part from runs/ on (where the bench
    wrote), any other keeps its last component."""

    def strip(value: str) -> str:
        parts = Path(value).parts
        return str(Path(*parts[parts.index("runs"):])) if "runs" in parts else Path(value).name

    return shlex.join(_map_paths(shlex.split(command), strip))


def _refloor(row: dict, peaks: dict) -> None:
    """Set a row's compute floor from the peak of the precision its runs used."""
    peak = peaks.get(row.get("precision", "float32")) or peaks.get("float32")
    epoch_flops = 3 * row["forward_mflops"] * 1e6 * row["n_train"]
    row["epoch_floor_seconds"] = epoch_flops / (peak * 1e9) if peak else None
    steady = row.get("steady_epoch_seconds")
    row["achieved_gflops"] = epoch_flops / steady / 1e9 if steady else None


# ---------------------------------------------------------------- measuring


def forward_flops(model) -> int:
    """Multiply-adds x 2 of one image's forward pass through Conv2D and Dense layers.

    Batch norm, activations and pooling are left out: they are a few percent of the
    FLOPs and are memory-bound rather than compute-bound.
    """
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("Conv2D", "SeparableConv2D", "DepthwiseConv2D"):
            out_h, out_w, out_c = layer.output.shape[1:4]
            kh, kw = layer.kernel_size
            in_c = layer.input.shape[-1]
            if kind == "Conv2D":
                total += 2 * out_h * out_w * out_c * kh * kw * in_c
            else:  # depthwise kh x kw per input channel, then (separable) a 1x1 pointwise
                total += 2 * out_h * out_w * kh * kw * in_c
                if kind == "SeparableConv2D":
                    total += 2 * out_h * out_w * in_c * out_c
        elif kind == "Dense":
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)


def median_seconds(call, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``call()`` over ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def matmul_peak_gflops(dtype: str = "float32", size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a large square matmul at its best of ``repeats``: the most this
    machine's TensorFlow gets out of its cores in ``dtype`` (a peak, so the fastest run
    counts, not a median that a busy moment would drag down)."""
    import tensorflow as tf

    a = tf.random.stateless_uniform([size, size], seed=[1, 2], dtype=tf.float32)
    a = tf.cast(a, dtype)
    matmul = tf.function(lambda m: tf.linalg.matmul(m, m))
    matmul(a).numpy()  # trace and warm up
    fastest = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(a).numpy()
        fastest = min(fastest, time.perf_counter() - started)
    return 2 * size**3 / fastest / 1e9


def predict_throughput(model_path: Path, batch: int = 1024, batches: int = 10) -> float:
    """Images per second of ``model.predict_on_batch`` at ``batch`` images, median of runs."""
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    images = np.random.default_rng(0).integers(0, 256, (batch, 28, 28), dtype=np.uint8)
    # Warm-up traces the graph.
    return batch / median_seconds(lambda: model.predict_on_batch(images), batches, warmup=3)


def engine_speed(engine, batch: int = 1024, batches: int = 10, singles: int = 200) -> dict:
    """Images/s of ``engine`` ((N, 28, 28) float32 -> (N, 10)) at ``batch``, and the
    median latency of one image, after warm-up."""
    images = np.random.default_rng(0).integers(0, 256, (batch, 28, 28)).astype(np.float32)
    return {"images_per_second": batch / median_seconds(lambda: engine(images), batches, warmup=3),
            "one_image_ms": 1000 * median_seconds(lambda: engine(images[:1]), singles, warmup=3)}


def measure_inference(rows: list[dict], runs_dir: Path, train_data, log=print) -> list[dict]:
    """Keras vs onnxruntime (float32 and int8) on each benchmarked model's first-seed run.

    Exports ``model.onnx`` into the run, checked on the run's validation images rebuilt
    from ``train_data`` (the 60,000 training images and labels; the test set is never
    read here), quantizes it (calibrated on the run's training images) and times the
    engines on the same random batch.
    """
    from fmnist.export import ExportError, export_images, export_onnx, quantize_int8
    from fmnist.predict import KerasEngine, OnnxEngine

    results = []
    for row in rows:
        run = runs_dir / f"{row['model']}-seed{row['seeds'][0]}"
        if not (run / rundir.MODEL).is_file():
            log(f"bench: no {run / rundir.MODEL}; skipping {row['model']}", flush=True)
            continue
        log(f"bench: exporting and timing {row['model']} ...", flush=True)
        validation, calibration = export_images(run, train_data)
        parity = export_onnx(run, validation)
        keras_speed = engine_speed(KerasEngine(run / rundir.MODEL))
        onnx_speed = engine_speed(OnnxEngine(run / "model.onnx"))
        try:
            int8 = quantize_int8(run / "model.onnx", calibration, validation)
            int8_speed = engine_speed(OnnxEngine(run / "model.int8.onnx"))
        except ExportError as error:
            log(f"bench: no int8 model for {row['model']}: {error}", flush=True)
            int8, int8_speed = {"class_agreement": None}, {"images_per_second": None, "one_image_ms": None}
        results.append({
            "model": row["model"], "device": row["device"], "run": str(run),
            "checked_on": "validation",  # rows of older benches were checked on test images
            "keras_images_per_second": keras_speed["images_per_second"],
            "keras_one_image_ms": keras_speed["one_image_ms"],
            "onnx_images_per_second": onnx_speed["images_per_second"],
            "onnx_one_image_ms": onnx_speed["one_image_ms"],
            "int8_images_per_second": int8_speed["images_per_second"],
            "int8_one_image_ms": int8_speed["one_image_ms"],
            "int8_class_agreement": int8["class_agreement"],
            **{key: parity[key] for key in ("images", "max_abs_difference", "class_mismatches",
                                            "mixed_precision_trained",
                                            "agreement_with_trained_model", "opset",
                                            "onnxruntime")}})
    return results


def run_inference_bench(json_path: Path, markdown_path: Path, readme_path: Path | None,
                        runs_dir: Path, train_data, command: str, log=print) -> dict:
    """Add Keras/onnxruntime throughput and ONNX parity for this machine's stored rows."""
    if not json_path.is_file():
        raise FmnistError(f"{json_path} does not exist; run `fmnist bench` first")
    report = load_report(json_path)
    record = machine(measure=False)
    kind = machine_kind(record)
    section = report["machines"].get(kind)
    if not section or not section.get("rows"):
        raise FmnistError(f"{json_path} has no training rows for this machine ({kind}); "
                          "run `fmnist bench` here first")
    device = device_name()
    rows = [row for row in section["rows"] if row["device"] == device]
    section["inference"] = measure_inference(rows, runs_dir, train_data, log)
    section["inference_command"] = command
    section["inference_utc"] = _now()
    rundir.write_json(json_path, report)
    render(report, markdown_path, readme_path, current=kind)
    return report


def run_serve_bench(model: str, engine: str | None, json_path: Path, markdown_path: Path,
                    readme_path: Path | None, images: np.ndarray, requests: int, clients: list[int],
                    command: str, log=print, workers: int = 1, burst_seconds: float = 30.0) -> dict:
    """Load-test `fmnist serve MODEL`, then run the burst scenario against it; store both
    under this machine's kind."""
    from fmnist.loadtest import run_burst, run_load_test

    report = load_report(json_path)
    record = machine(measure=False)  # serving runs on the CPU; no TensorFlow needed here
    kind = machine_kind(record)
    result = run_load_test(model, images, engine=engine, requests=requests, concurrency=clients,
                           log=log, workers=workers)
    result["burst"] = run_burst(model, engine, clients=BURST_TARGETS["clients"],
                                seconds=burst_seconds, log=log)
    result.update({"command": command, "utc": _now()})
    section = report["machines"].setdefault(kind, {"machine": record, "rows": []})
    section["serve"] = [old for old in section.get("serve", [])
                        if (old["engine"], old.get("workers", 1)) != (result["engine"], workers)]
    section["serve"].append(result)
    rundir.write_json(json_path, report)
    render(report, markdown_path, readme_path, current=kind)
    return result


def run_training(model: str, seed: int, out: Path, data_dir, extra: list[str]) -> dict:
    """Train one model/seed in a child `fmnist train` process; return its metrics + peak RSS."""
    command = [sys.executable, "-m", "fmnist.cli", "train", "--model", model, "--seed", str(seed),
               "--out", str(out), "--tta", "--quiet", *extra]
    if data_dir:
        command += ["--data-dir", str(data_dir)]
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as stream:
        child = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise FmnistError(f"training {model} seed {seed} failed ({tail[0]}); see {log}")
    metrics = rundir.read_json(out / rundir.METRICS)
    history = rundir.read_json(out / rundir.HISTORY)
    config = rundir.read_json(out / rundir.CONFIG)
    # Linux reports ru_maxrss in KiB.
    metrics["peak_rss_mb"] = usage.ru_maxrss / 1024
    metrics["val_crossings"] = crossings(history)
    metrics["precision"] = config.get("precision_used", "float32")
    metrics["flip"] = bool(config.get("flip"))
    return metrics


def crossings(history: list[dict], thresholds=VAL_THRESHOLDS) -> dict:
    """For each validation accuracy in ``thresholds``: the first epoch (1-based) whose
    validation accuracy reached it and the training seconds until then, or None."""
    found = {}
    for threshold in thresholds:
        elapsed, found[f"{threshold:.2f}"] = 0.0, None
        for row in history:
            elapsed += row["seconds"]
            if row.get("val_accuracy", 0.0) >= threshold:
                found[f"{threshold:.2f}"] = {"epoch": int(row["epoch"]), "seconds": elapsed}
                break
    return found


def seconds_to(history: list[dict], accuracy: float) -> float | None:
    """Training seconds until validation accuracy first reached ``accuracy`` (None: never)."""
    reached = crossings(history, (accuracy,))[f"{accuracy:.2f}"]
    return None if reached is None else reached["seconds"]


# ---------------------------------------------------------------- summarizing


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


RUN_KEYS = ("seed", "params", "epochs", "n_train", "n_test", "train_seconds",
            "steady_epoch_seconds", "test_accuracy", "test_accuracy_tta", "val_accuracy",
            "val_crossings", "precision", "flip", "peak_rss_mb")


def merge_runs(old_row: dict | None, new_runs: list[dict]) -> list[dict]:
    """The runs of a model: the new seeds' runs, plus stored runs of other seeds.

    Lets a long model be benchmarked a few seeds at a time (``--seed-start``) and still
    be summarized over all of them.
    """
    fresh = [{key: run.get(key) for key in RUN_KEYS} for run in new_runs]
    seeds = {run["seed"] for run in fresh}
    kept = [run for run in (old_row or {}).get("runs", []) if run["seed"] not in seeds]
    return sorted(kept + fresh, key=lambda run: run["seed"])


def summarize(model: str, runs: list[dict], throughput: float, flops: int,
              peaks: dict, device: str) -> dict:
    """One row of the table from the per-seed runs of one model."""
    accuracies = [r["test_accuracy"] for r in runs]
    tta = [r["test_accuracy_tta"] for r in runs if r.get("test_accuracy_tta") is not None]
    row = {
        "model": model,
        "device": device,
        "seeds": [r["seed"] for r in runs],
        "params": runs[0]["params"],
        "epochs": runs[0]["epochs"],
        "precision": runs[-1].get("precision") or "float32",
        "flip": bool(runs[-1].get("flip")),
        "train_seconds_median": statistics.median(r["train_seconds"] for r in runs),
        "train_seconds": [r["train_seconds"] for r in runs],
        "steady_epoch_seconds": statistics.median(r["steady_epoch_seconds"] for r in runs),
        "forward_mflops": flops / 1e6,
        "test_accuracy": accuracies,
        "test_accuracy_mean_std": _mean_std(accuracies),
        "test_accuracy_tta": tta,
        "test_accuracy_tta_mean_std": _mean_std(tta) if tta else None,
        "val_accuracy_mean": statistics.fmean(r["val_accuracy"] for r in runs),
        "val_crossings_median": median_crossings(runs),
        "predict_images_per_second": throughput,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "n_train": runs[0]["n_train"],
        "n_test": runs[0]["n_test"],
        "runs": runs,
    }
    _refloor(row, peaks)
    return row


def median_crossings(runs: list[dict]) -> dict:
    """Per threshold: median epoch and seconds over the seeds, None if a seed never got
    there (a median over the seeds that did would flatter the model)."""
    summary = {}
    for threshold in (f"{t:.2f}" for t in VAL_THRESHOLDS):
        if not runs or any(threshold not in (r.get("val_crossings") or {}) for r in runs):
            continue  # not recorded for every seed
        reached = [r["val_crossings"][threshold] for r in runs]
        if any(hit is None for hit in reached):
            summary[threshold] = None
            continue
        epochs = [hit["epoch"] for hit in reached]
        summary[threshold] = {
            "epoch": None if None in epochs else statistics.median(epochs),
            "seconds": statistics.median(hit["seconds"] for hit in reached)}
    return summary


def _fmt_acc(pair) -> str:
    if not pair:
        return "—"
    mean, std = pair
    return f"{mean:.4f} ± {std:.4f}"


def _tta_cell(row: dict) -> str:
    """Flip TTA only means something for models trained with flips (evaluate.tta_applies)."""
    return _fmt_acc(row.get("test_accuracy_tta_mean_std")) if row.get("flip") else "—"


def results_table(rows: list[dict]) -> str:
    """The Markdown table of one machine kind, shared by BENCHMARKS.md and the README."""
    lines = [
        "| model | device | precision | params | epochs | train s (median) | "
        "test acc (mean ± std) | with flip TTA | seeds | predict img/s (batch 1024) |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| `{row['model']}` | {row['device']} | {row.get('precision', 'float32')} | "
            f"{row['params']:,} | {row['epochs']} | "
            f"{row['train_seconds_median']:.1f} | {_fmt_acc(row['test_accuracy_mean_std'])} | "
            f"{_tta_cell(row)} | {len(row['seeds'])} | "
            f"{row['predict_images_per_second']:,.0f} |")
    return "\n".join(lines)


def speed_table(rows: list[dict]) -> str:
    lines = [
        "| model | device | precision | forward MFLOP/image | steady epoch s | epoch floor s | "
        "epoch / floor | achieved GFLOP/s | peak RSS MB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        floor = row.get("epoch_floor_seconds")
        ratio = f"{row['steady_epoch_seconds'] / floor:.2f}x" if floor else "—"
        achieved = row.get("achieved_gflops")
        lines.append(
            f"| `{row['model']}` | {row['device']} | {row.get('precision', 'float32')} | "
            f"{row['forward_mflops']:.2f} | {row['steady_epoch_seconds']:.1f} | "
            f"{'—' if floor is None else f'{floor:.2f}'} | {ratio} | "
            f"{'—' if achieved is None else f'{achieved:.0f}'} | {row['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def crossing_table(rows: list[dict]) -> str:
    """Epoch and training seconds at which validation accuracy first crossed each
    threshold (medians over seeds)."""
    head = " | ".join(f"val >= {t:.2f}" for t in VAL_THRESHOLDS)
    lines = [f"| model | device | {head} |", "| --- | --- |" + " --- |" * len(VAL_THRESHOLDS)]
    for row in rows:
        cells = []
        for threshold in (f"{t:.2f}" for t in VAL_THRESHOLDS):
            recorded = row.get("val_crossings_median") or {}
            hit = recorded.get(threshold)
            if threshold not in recorded:
                cells.append("(not recorded)")
            elif hit is None:
                cells.append("not reached")
            elif hit["epoch"] is None:
                cells.append(f"{hit['seconds']:.1f} s (epoch not recorded)")
            else:
                cells.append(f"epoch {hit['epoch']:g}, {hit['seconds']:.1f} s")
        lines.append(f"| `{row['model']}` | {row['device']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(rows: list[dict]) -> str:
    """Each absolute target against the measured mean (plain; TTA said separately)."""
    lines = ["| model | target | measured (plain) | with flip TTA | met |",
             "| --- | --- | --- | --- | --- |"]
    for row in rows:
        if row["model"] not in TARGETS:
            continue
        accuracy, seconds = TARGETS[row["model"]]
        plain = row["test_accuracy_mean_std"][0]
        tta = row["test_accuracy_tta_mean_std"][0] if (row.get("flip") and
                                                       row["test_accuracy_tta_mean_std"]) else None
        spent = row["train_seconds_median"]
        in_time = seconds is None or spent <= seconds
        if plain >= accuracy and in_time:
            met = "yes"
        elif tta is not None and tta >= accuracy and in_time:
            met = "with TTA only"
        else:
            met = "**no**"
        target = f">= {accuracy:.3f}" + (f" within {seconds:.0f} s" if seconds else "")
        tta_text = "—" if tta is None else f"{tta:.4f}"
        lines.append(f"| `{row['model']}` ({row['device']}, {len(row['seeds'])} seeds) | {target} | "
                     f"{plain:.4f} in {spent:.1f} s | {tta_text} | {met} |")
    return "\n".join(lines)


def default_target(rows: list[dict]) -> dict | None:
    """The default model against the reference, as measured in the same bench run.

    Returns the figures and whether each part of ``DEFAULT_TARGET`` is met; None when
    either model is missing from ``rows``.
    """
    by_model = {row["model"]: row for row in rows if row["device"] == rows[0]["device"]} if rows else {}
    fast, reference = by_model.get(DEFAULT_MODEL), by_model.get(REFERENCE_MODEL)
    if fast is None or reference is None:
        return None
    accuracy = fast["test_accuracy_mean_std"][0]
    ratio = fast["train_seconds_median"] / reference["train_seconds_median"]
    floor = fast.get("epoch_floor_seconds")
    floor_ratio = fast["steady_epoch_seconds"] / floor if floor else None
    same_run = fast.get("bench_id") is not None and fast.get("bench_id") == reference.get("bench_id")
    return {"accuracy": accuracy, "seeds": len(fast["seeds"]), "time_ratio": ratio,
            "seconds": fast["train_seconds_median"],
            "reference_seconds": reference["train_seconds_median"],
            "floor_ratio": floor_ratio, "same_run": same_run,
            "accuracy_met": accuracy >= DEFAULT_TARGET["accuracy"],
            "time_met": ratio <= DEFAULT_TARGET["time_ratio"],
            "floor_met": floor_ratio is not None and floor_ratio <= DEFAULT_TARGET["floor_ratio"]}


def default_target_text(rows: list[dict]) -> str:
    result = default_target(rows)
    if result is None:
        return f"- (needs both `{DEFAULT_MODEL}` and `{REFERENCE_MODEL}` measured on this machine)"

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    floor = ("—" if result["floor_ratio"] is None else f"{result['floor_ratio']:.2f}x")
    lines = [
        f"- test accuracy (mean of {result['seeds']} seeds, no TTA): **{result['accuracy']:.4f}** "
        f"(target >= {DEFAULT_TARGET['accuracy']:.3f}): {verdict(result['accuracy_met'])}",
        f"- training time: {result['seconds']:.1f} s vs `{REFERENCE_MODEL}`'s "
        f"{result['reference_seconds']:.1f} s (medians), a ratio of **{result['time_ratio']:.2f}** "
        f"(target <= {DEFAULT_TARGET['time_ratio']}): {verdict(result['time_met'])}",
        f"- steady epoch / compute floor: **{floor}** (target <= "
        f"{DEFAULT_TARGET['floor_ratio']}x): {verdict(result['floor_met'])}",
    ]
    if not result["same_run"]:
        lines.append(f"- note: `{DEFAULT_MODEL}` and `{REFERENCE_MODEL}` were not measured in "
                     "the same bench run, so the time ratio compares runs of different days")
    return "\n".join(lines)


def inference_section(section: dict) -> str:
    rows = section.get("inference")
    if not rows:
        return "Not measured yet: `fmnist bench --inference`."
    lines = [f"Written by `{section['inference_command']}` on {section['inference_utc']}.", "",
             "| model | device | Keras img/s | onnxruntime img/s | onnxruntime int8 img/s | "
             "1 image: Keras / onnxruntime / int8 ms | ONNX vs Keras max abs diff "
             "| class differences | agrees with the bf16-trained model | int8 agrees with float |",
             "| --- | --- | ---: | ---: | ---: | --- | --- | ---: | --- | --- |"]
    for row in rows:
        agreement = (f"{100 * row['agreement_with_trained_model']:.2f}%"
                     if row["mixed_precision_trained"] else "(trained in float32)")
        int8_speed = row.get("int8_images_per_second")
        int8_ms = row.get("int8_one_image_ms")
        int8_agreement = row.get("int8_class_agreement")
        lines.append(
            f"| `{row['model']}` | {row['device']} | {row['keras_images_per_second']:,.0f} | "
            f"{row['onnx_images_per_second']:,.0f} | "
            f"{'-' if int8_speed is None else f'{int8_speed:,.0f}'} | "
            f"{row['keras_one_image_ms']:.2f} / {row['onnx_one_image_ms']:.2f} / "
            f"{'-' if int8_ms is None else f'{int8_ms:.2f}'} | "
            f"{row['max_abs_difference']:.1e} on {row['images']:,} {row.get('checked_on', 'test')} "
            f"images | {row['class_mismatches']} | "
            f"{agreement} | {'-' if int8_agreement is None else f'{100 * int8_agreement:.2f}%'} |")
    model, target = ONNX_TARGET
    row = next((r for r in rows if r["model"] == model), None)
    if row is not None:
        float_speed, int8_speed = row["onnx_images_per_second"], row.get("int8_images_per_second")
        verdict = "met" if float_speed >= target else "**not met**"
        text = (f"Target: `{model}` on onnxruntime >= {target:,} images/s at batch 1024: float32 "
                f"{float_speed:,.0f}, {verdict}")
        if int8_speed:
            text += (f"; int8 {int8_speed:,.0f}, {'met' if int8_speed >= target else '**not met**'} "
                     f"(same class as float32 for {100 * row['int8_class_agreement']:.2f}% of the "
                     f"{row.get('checked_on', 'test')} images)")
        lines += ["", text + "."]
    lines += ["", "- *img/s*: images per second at batch 1024, median of 10 batches after "
                  "warm-up, same random batch for both engines; *1 image*: median latency of "
                  "200 single-image calls.",
              "- *int8*: `fmnist export --quantize int8`, onnxruntime static quantization "
              "(QDQ, per-channel int8 weights, uint8 activations) calibrated on 1,024 training "
              "images; kept only when it picks the float model's class for >= 99% of the checked images.",
              "- The ONNX file is float32 (`fmnist export`); models trained in mixed bfloat16 "
              "run in bfloat16 under Keras, so *agrees with the bf16-trained model* compares the two "
              "precisions' classes on the checked images.",
              "- *checked images*: the run's validation split, rebuilt from its seed (rows "
              "measured before the test set was left to `evaluate` alone say *test*)."]
    return "\n".join(lines)


def serve_section(section: dict) -> str:
    results = section.get("serve")
    if not results:
        return "Not measured yet: `fmnist bench --serve RUN_DIR`."
    parts = []
    for result in results:
        memory = result["memory"]
        lines = [f"`{result['command']}` ({result['utc']}): model `{result['model']}`, engine "
                 f"{result['engine']}, {result.get('workers', 1)} server process(es), "
                 f"{result['endpoint']} with {result['image']}, "
                 f"{result['warmup_requests']} warm-up requests first.", "",
                 "| concurrent clients | requests | req/s | p50 ms | p90 ms | p99 ms | max ms | "
                 "errors | server CPU ms/request | client CPU ms/request | server RSS after, MB |",
                 "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for level in result["levels"]:
            lines.append(
                f"| {level['clients']} | {level['requests']:,} | {level['requests_per_second']:.0f} | "
                f"{level['p50_ms']:.1f} | {level['p90_ms']:.1f} | {level['p99_ms']:.1f} | "
                f"{level['max_ms']:.1f} | {level['errors']} | "
                f"{level['server_cpu_ms_per_request']:.2f} | {level['client_cpu_ms_per_request']:.2f} | "
                f"{level['server_rss_after_mb']:.0f} |")
        lines += ["", f"Server memory: {memory['after_start_mb']:.0f} MB after start-up, "
                      f"{memory['after_warmup_mb']:.0f} MB after warm-up, "
                      f"{memory['after_all_mb']:.0f} MB after all requests "
                      f"({memory['growth_percent']:+.1f}% since warm-up)."]
        at = next((lv for lv in result["levels"] if lv["clients"] == SERVE_TARGETS["clients"]), None)
        if at is not None:
            checks = [("p50", at["p50_ms"] <= SERVE_TARGETS["p50_ms"], f"{at['p50_ms']:.1f} ms <= {SERVE_TARGETS['p50_ms']:.0f}"),
                      ("p99", at["p99_ms"] <= SERVE_TARGETS["p99_ms"], f"{at['p99_ms']:.1f} ms <= {SERVE_TARGETS['p99_ms']:.0f}"),
                      ("errors", sum(lv["errors"] for lv in result["levels"]) == 0, "0 errors"),
                      ("memory", memory["growth_percent"] < SERVE_TARGETS["growth_percent"],
                       f"growth {memory['growth_percent']:+.1f}% < {SERVE_TARGETS['growth_percent']:.0f}%")]
            lines += ["", f"Targets at {SERVE_TARGETS['clients']} clients: " + "; ".join(
                f"{name} {text}: {'met' if ok else '**not met**'}" for name, ok, text in checks) + "."]
        if "burst" in result:
            lines += ["", burst_lines(result["burst"])]
        parts.append("\n".join(lines))
    parts.append("The load generator (asyncio streams speaking HTTP/1.1 keep-alive, in the bench "
                 "process) runs on the same "
                  "machine as the server and competes with it for the cores.")
    return "\n\n".join(parts)


def burst_lines(burst: dict) -> str:
    """The burst scenario of a serve result, as Markdown."""
    statuses = ", ".join(f"{count:,} x {status}" for status, count in burst["statuses"].items())
    checks = [("/health p99", burst["health_p99_ms"] <= BURST_TARGETS["health_p99_ms"],
               f"{burst['health_p99_ms']:.1f} ms <= {BURST_TARGETS['health_p99_ms']:.0f}"),
              ("peak RSS", burst["peak_rss_mb"] <= BURST_TARGETS["peak_rss_mb"],
               f"{burst['peak_rss_mb']:.0f} MB <= {BURST_TARGETS['peak_rss_mb']:.0f}"),
              ("saturation answered", "503" in burst["statuses"], "503 + Retry-After seen")]
    return "\n".join([
        f"**Burst**: {burst['clients']} clients, each sending back to back, for "
        f"{burst['seconds']:.0f} s, the largest request the defaults accept "
        f"({burst['images_per_request']} PNGs, {burst['request_pixels']:,} pixels in all, "
        f"{burst['request_bytes']:,} bytes), ignoring Retry-After; one more client asks "
        "`/health` every 20 ms.", "",
        "| /health probes | p50 ms | p99 ms | max ms | server RSS at start, MB | peak RSS, MB | "
        "statuses |", "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| {burst['health_probes']:,} | {burst['health_p50_ms']:.1f} | {burst['health_p99_ms']:.1f} | "
        f"{burst['health_max_ms']:.1f} | {burst['rss_after_start_mb']:.0f} | "
        f"{burst['peak_rss_mb']:.0f} | {statuses} |", "",
        "Targets: " + "; ".join(f"{name} {text}: {'met' if ok else '**not met**'}"
                                for name, ok, text in checks) + "."])


def ordered_sections(report: dict, current: str | None) -> list[tuple[str, dict]]:
    """(kind, section) pairs: the kind measured now first, then the most recent first."""
    sections = list(report["machines"].items())
    sections.sort(key=lambda item: (item[0] != current, _neg_time(item[1].get("updated_utc"))))
    return sections


def _neg_time(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    return -datetime.fromisoformat(stamp).timestamp()


def latest_kind(report: dict) -> str | None:
    """The machine kind whose training rows the most recent bench run wrote."""
    trained = [(section.get("updated_utc"), kind) for kind, section in report["machines"].items()
               if section.get("rows") and section.get("updated_utc")]
    return max(trained)[1] if trained else None


def render(report: dict, markdown_path: Path, readme_path: Path | None,
           current: str | None = None) -> None:
    """Write BENCHMARKS.md (and the README's tables) from a bench report; ``current``:
    the machine kind measured by this invocation (default: the latest bench run's)."""
    current = current or latest_kind(report)
    markdown_path.write_text(render_markdown(report, current))
    if readme_path is not None:
        update_readme(readme_path, report, current)


def machine_text(record: dict) -> str:
    peaks = record.get("peak_gflops") or {}
    flags = ", ".join(record.get("cpu_flags") or []) or "none of " + ", ".join(
        hardware.RELEVANT_CPU_FLAGS)
    inferred = (" (inferred from its matmul peaks: that bench predates flag recording)"
                if record.get("cpu_flags_inferred") else "")
    text = (f"{record.get('cpu', '?')}, {record.get('cores', '?')} cores, {record.get('device', 'CPU')}; "
            f"flags: {flags}{inferred}; oneDNN: {record.get('onednn', '?')}")
    if peaks:
        text += (f"; TensorFlow 2048x2048 matmul peak: {peaks.get('float32', 0):.0f} GFLOP/s "
                 f"float32, {peaks.get('bfloat16', 0):.0f} bfloat16")
    versions = [f"{name} {record[key]}" for name, key in
                (("Python", "python"), ("Keras", "keras"), ("TensorFlow", "tensorflow"),
                 ("NumPy", "numpy")) if record.get(key)]
    return text + (f". {', '.join(versions)}." if versions else ".")


def section_markdown(kind: str, section: dict, current: str | None) -> str:
    record = section.get("machine", {})
    rows = section.get("rows", [])
    status = ("Measured in the latest bench run." if kind == current else
              f"**Not re-measured in the latest bench run** (that one ran on `{current}`): "
              "these are the figures stored in bench.json for this kind of machine."
              if current else "")
    parts = [f"## {machine_label(record)} (`{kind}`)", "",
             f"Machine: {machine_text(record)}", ""]
    if section.get("command"):
        parts += [f"Training rows last written by `{section['command']}` on "
                  f"{section.get('updated_utc')}. {status}".rstrip(), ""]
    elif status:
        parts += [status, ""]
    if rows:
        peaks = record.get("peak_gflops") or {}
        parts += [
            "### Accuracy and time", "", results_table(rows), "",
            "- *train s*: wall time of the training epochs (training plus the per-epoch "
            "validation pass), median over seeds; start-up, data loading and the test "
            "evaluation excluded.",
            "- *test acc*: mean ± sample standard deviation over the seeds (one training run "
            "each). *with flip TTA*: the mean of the probabilities of each test image and its "
            "mirror; only for models trained with flips (— for the others: their mirror "
            "images are out of distribution).",
            "- *precision*: what `--precision auto` chose on this machine (bfloat16 only where "
            "the hardware computes it natively).",
            "- *predict img/s*: `predict_on_batch` on 1,024 images at a time, median of 10 "
            "batches.", "",
            f"### The default model against the reference (`{DEFAULT_MODEL}` vs `{REFERENCE_MODEL}`)",
            "", default_target_text(rows), "",
            "### Targets", "", targets_table(rows), "",
            "### Time to accuracy (validation)", "", crossing_table(rows), "",
            "- The first epoch at which validation accuracy reached each threshold, and the "
            "training seconds until the end of that epoch; medians over seeds (\"not reached\": "
            "at least one seed never got there).", "",
            "### How close each epoch gets to its compute floor", "", speed_table(rows), "",
            "- *forward MFLOP/image*: 2 x multiply-adds of the Conv2D and Dense layers.",
            "- *epoch floor*: 3 x forward FLOPs x training images (forward + backward), divided "
            "by the peak of a 2048x2048 matmul on this machine in the precision the model "
            f"trained in ({peaks.get('float32', 0):.0f} GFLOP/s float32, "
            f"{peaks.get('bfloat16', 0):.0f} bfloat16). *epoch / floor*: how many times slower "
            "than that floor the steady epoch (median of epochs 2 onwards) runs; it includes "
            "the input pipeline, batch norm and the validation pass.",
            "- *peak RSS*: the largest resident memory of the training process.", "",
            "### Per-seed numbers", "", per_seed_table(rows), "",
            "### How each row was produced", "", commands_list(rows), ""]
    parts += ["### Inference engines: Keras vs onnxruntime", "", inference_section(section), "",
              "### Serving: load test of `fmnist serve`", "", serve_section(section), ""]
    return "\n".join(parts)


def render_markdown(report: dict, current: str | None = None) -> str:
    current = current or latest_kind(report)
    sections = ordered_sections(report, current)
    kinds = ", ".join(f"`{kind}`" for kind, _ in sections) or "none yet"
    body = "\n".join(section_markdown(kind, section, current) for kind, section in sections)
    return f"""# Benchmarks

Written by `fmnist bench` from bench.json; do not edit by hand: rerun the commands listed
under each machine. Figures are kept **per kind of machine** (CPU instruction set and
cores, or GPU), because the same model trains at very different speeds on them: a bench
replaces the rows of the kind it runs on and keeps the others. Machine kinds here:
{kinds}. Accuracies are on the 10,000 test images, read only by the final evaluation of
each run (training validates on its own 6,000-image split of the training set). Check
your own machine's kind with `grep -o -m1 'avx512_bf16\\|amx_bf16' /proc/cpuinfo`
(nothing printed: no native bfloat16).

{body}"""


def commands_list(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        commands = row.get("commands") or ["(not recorded)"]
        lines.append(f"- `{row['model']}` ({row['device']}): " + "; then ".join(f"`{c}`" for c in commands))
    return "\n".join(lines)


def per_seed_table(rows: list[dict]) -> str:
    lines = ["| model | device | seeds | test accuracy | with TTA | train seconds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        fmt = lambda values, digits=4: ", ".join(f"{v:.{digits}f}" for v in values)  # noqa: E731
        tta = fmt(row["test_accuracy_tta"]) if row.get("flip") and row["test_accuracy_tta"] else "—"
        lines.append(f"| `{row['model']}` | {row['device']} | {row['seeds']} | "
                     f"{fmt(row['test_accuracy'])} | {tta} | "
                     f"{fmt(row['train_seconds'], 1)} |")
    return "\n".join(lines)


def readme_tables(report: dict, current: str | None = None) -> str:
    """One results table per machine kind, each under the kind's name and date."""
    blocks = []
    for kind, section in ordered_sections(report, current):
        if not section.get("rows"):
            continue
        record = section.get("machine", {})
        blocks.append(f"**{machine_label(record)}** (`{kind}`; {record.get('cpu', '?')}), "
                      f"measured {str(section.get('updated_utc', '?'))[:10]}:\n\n"
                      f"{results_table(section['rows'])}")
    return "\n\n".join(blocks) or "(no benchmark yet: run `fmnist bench`)"


def update_readme(readme: Path, report: dict, current: str | None = None) -> bool:
    """Replace the README's block between the bench markers with the results tables."""
    if not readme.exists():
        return False
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    block = f"{README_START}\n{readme_tables(report, current)}\n{README_END}"
    readme.write_text(text[:start] + block + text[end + len(README_END):])
    return True


# ---------------------------------------------------------------- the command


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_bench(models: list[str], seeds: int, out_dir: Path, json_path: Path, markdown_path: Path,
              readme_path: Path | None, data_dir=None, extra: list[str] | None = None,
              command: str = "fmnist bench", log=print, seed_start: int = 0) -> dict:
    """Benchmark ``models`` over seeds ``seed_start .. seed_start+seeds-1`` on this
    machine; rewrite the reports.

    Rows of this machine's kind are replaced model by model (stored runs of the same
    model with other seeds are kept and summarized with the new ones); other kinds'
    rows are left as they are.
    """
    report = load_report(json_path)
    record = machine()  # the matmul peaks first, while nothing else runs
    kind = machine_kind(record)
    section = report["machines"].setdefault(kind, {"rows": []})
    device = record["device"]
    bench_id = _now()
    log(f"bench: {machine_label(record)} ({kind}); float32 peak "
        f"{record['peak_gflops']['float32']:.0f} GFLOP/s, bfloat16 "
        f"{record['peak_gflops']['bfloat16']:.0f}", flush=True)
    for model in models:
        runs = []
        for seed in range(seed_start, seed_start + seeds):
            out = out_dir / f"{model}-seed{seed}"
            if out.exists():
                shutil.rmtree(out)
            log(f"bench: training {model} seed {seed} ...", flush=True)
            runs.append(run_training(model, seed, out, data_dir, extra or []))
            tta = runs[-1].get("test_accuracy_tta")
            log(f"bench:   test {runs[-1]['test_accuracy']:.4f}"
                + (f" (TTA {tta:.4f})" if tta is not None else "")
                + f", {runs[-1]['train_seconds']:.1f} s ({runs[-1]['precision']})", flush=True)
        import keras

        final_model = out_dir / f"{model}-seed{seed_start}" / rundir.MODEL
        flops = forward_flops(keras.saving.load_model(final_model, compile=False))
        throughput = predict_throughput(final_model)
        old = next((r for r in section["rows"] if (r["model"], r["device"]) == (model, device)), None)
        row = summarize(model, merge_runs(old, runs), throughput, flops, record["peak_gflops"], device)
        # Which invocations produced the row's runs (a slow model is run a few seeds at a time).
        kept = {run["seed"] for run in row["runs"]} - {run["seed"] for run in runs}
        row["commands"] = [*old.get("commands", []), command] if old and kept else [command]
        row["bench_id"] = None if kept else bench_id  # all seeds from this invocation
        section["rows"] = [r for r in section["rows"] if r is not old] + [row]
    order = {name: index for index, name in enumerate(MODEL_ORDER)}
    section["rows"].sort(key=lambda r: (r["device"], order.get(r["model"], 99), r["model"]))
    section.update({"machine": record, "command": command, "updated_utc": _now()})
    rundir.write_json(json_path, report)
    render(report, markdown_path, readme_path, current=kind)
    return report
