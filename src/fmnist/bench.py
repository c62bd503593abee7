"""`fmnist bench`: accuracy x time for each model over several seeds, measured here.

Each training run is a separate `fmnist train` process, as a user would run it, so no
run inherits another's warm caches or memory, and each process's peak memory is its
own (``os.wait4`` returns the rusage of exactly that child). Results accumulate in
bench.json (a model's rows are replaced when it is benchmarked again on the same
device); BENCHMARKS.md and the README's results table are regenerated from bench.json
every time, never edited by hand.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fmnist import rundir
from fmnist.errors import FmnistError

# cnn-best (about an hour a seed here) is benchmarked only when asked for by name.
DEFAULT_MODELS = ("mlp", "mlp-plus", "cnn-tfdocs", "cnn-fast")
TARGETS = {  # model -> (test accuracy target, training-seconds limit or None)
    "mlp": (0.875, None),
    "mlp-plus": (0.900, 30.0),
    "cnn-fast": (0.930, 120.0),
    "cnn-best": (0.950, 3600.0),
}
TIME_TO_ACCURACY = 0.91  # validation accuracy whose time-to-reach is compared
ONNX_TARGET = ("cnn-fast", 30_000)  # onnxruntime images/s at batch 1024
SERVE_TARGETS = {"p50_ms": 10.0, "p99_ms": 50.0, "clients": 8, "growth_percent": 10.0}
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


# ---------------------------------------------------------------- measuring


def machine() -> dict:
    """CPU model, cores, memory and software versions of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from fmnist.train import versions

    return {"cpu": cpu, "cores": cores, "device": device_name(), **versions()}


def device_name() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU: {details.get('device_name', gpus[0].name)}"
    return "CPU"


def forward_flops(model) -> int:
    """Multiply-adds x 2 of one image's forward pass through Conv2D and Dense layers.

    Batch norm, activations and pooling are left out: they are a few percent of the
    total and are memory-bound rather than compute-bound.
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
    """GFLOP/s of a large square matmul: what this machine's BLAS reaches at best."""
    import tensorflow as tf

    a = tf.random.stateless_uniform([size, size], seed=[1, 2], dtype=tf.float32)
    a = tf.cast(a, dtype)
    matmul = tf.function(lambda m: tf.linalg.matmul(m, m))
    return 2 * size**3 / median_seconds(lambda: matmul(a).numpy(), repeats) / 1e9


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


def measure_inference(rows: list[dict], runs_dir: Path, test_images: np.ndarray,
                      calibration_images: np.ndarray, log=print) -> list[dict]:
    """Keras vs onnxruntime (float32 and int8) on each benchmarked model's first-seed run.

    Exports ``model.onnx`` into the run (checked on ``test_images``, normally all 10,000),
    quantizes it (calibrated on ``calibration_images``, training images) and times the
    engines on the same random batch.
    """
    from fmnist.export import ExportError, export_onnx, quantize_int8
    from fmnist.predict import KerasEngine, OnnxEngine

    results = []
    for row in rows:
        run = runs_dir / f"{row['model']}-seed{row['seeds'][0]}"
        if not (run / rundir.MODEL).is_file():
            log(f"bench: no {run / rundir.MODEL}; skipping {row['model']}", flush=True)
            continue
        log(f"bench: exporting and timing {row['model']} ...", flush=True)
        parity = export_onnx(run, test_images)
        keras_speed = engine_speed(KerasEngine(run / rundir.MODEL))
        onnx_speed = engine_speed(OnnxEngine(run / "model.onnx"))
        try:
            int8 = quantize_int8(run / "model.onnx", calibration_images, test_images)
            int8_speed = engine_speed(OnnxEngine(run / "model.int8.onnx"))
        except ExportError as error:
            log(f"bench: no int8 model for {row['model']}: {error}", flush=True)
            int8, int8_speed = {"class_agreement": None}, {"images_per_second": None, "one_image_ms": None}
        results.append({
            "model": row["model"], "device": row["device"], "run": str(run),
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
                        runs_dir: Path, test_images: np.ndarray, command: str, log=print,
                        calibration_images: np.ndarray | None = None) -> dict:
    """Add Keras/onnxruntime throughput and ONNX parity for the stored rows to bench.json."""
    if not json_path.is_file():
        raise FmnistError(f"{json_path} does not exist; run `fmnist bench` first")
    report = json.loads(json_path.read_text())
    device = device_name()
    rows = [row for row in report["rows"] if row["device"] == device]
    report["inference"] = measure_inference(rows, runs_dir, test_images, calibration_images, log)
    report["inference_command"] = command
    report["inference_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rundir.write_json(json_path, report)
    render(report, markdown_path, readme_path)
    return report


def run_serve_bench(model: str, engine: str | None, json_path: Path, markdown_path: Path,
                    readme_path: Path | None, images: np.ndarray, requests: int, clients: list[int],
                    command: str, log=print, workers: int = 1) -> dict:
    """Load-test `fmnist serve MODEL` and store the result in bench.json."""
    from fmnist.loadtest import run_load_test

    report = json.loads(json_path.read_text()) if json_path.is_file() else {"rows": []}
    result = run_load_test(model, images, engine=engine, requests=requests, concurrency=clients,
                           log=log, workers=workers)
    result.update({"command": command,
                   "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    report["serve"] = [old for old in report.get("serve", [])
                       if (old["engine"], old.get("workers", 1)) != (result["engine"], workers)]
    report["serve"].append(result)
    report.setdefault("machine", machine())
    rundir.write_json(json_path, report)
    render(report, markdown_path, readme_path)
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
    # Linux reports ru_maxrss in KiB.
    metrics["peak_rss_mb"] = usage.ru_maxrss / 1024
    metrics["seconds_to_val_target"] = seconds_to(history, TIME_TO_ACCURACY)
    return metrics


def seconds_to(history: list[dict], accuracy: float) -> float | None:
    """Training seconds until validation accuracy first reached ``accuracy`` (None: never)."""
    elapsed = 0.0
    for row in history:
        elapsed += row["seconds"]
        if row.get("val_accuracy", 0.0) >= accuracy:
            return elapsed
    return None


# ---------------------------------------------------------------- summarizing


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


RUN_KEYS = ("seed", "params", "epochs", "n_train", "n_test", "train_seconds",
            "steady_epoch_seconds", "test_accuracy", "test_accuracy_tta", "val_accuracy",
            "seconds_to_val_target", "peak_rss_mb")


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
              peak_gflops: float, device: str) -> dict:
    """One row of the table from the per-seed runs of one model."""
    accuracies = [r["test_accuracy"] for r in runs]
    tta = [r["test_accuracy_tta"] for r in runs if r.get("test_accuracy_tta") is not None]
    steady = statistics.median(r["steady_epoch_seconds"] for r in runs)
    epoch_flops = 3 * flops * runs[0]["n_train"]  # forward + backward ~ 3x forward
    reach = [r["seconds_to_val_target"] for r in runs]
    return {
        "model": model,
        "device": device,
        "seeds": [r["seed"] for r in runs],
        "params": runs[0]["params"],
        "epochs": runs[0]["epochs"],
        "train_seconds_median": statistics.median(r["train_seconds"] for r in runs),
        "train_seconds": [r["train_seconds"] for r in runs],
        "steady_epoch_seconds": steady,
        "forward_mflops": flops / 1e6,
        "epoch_floor_seconds": epoch_flops / (peak_gflops * 1e9),
        "achieved_gflops": epoch_flops / steady / 1e9 if steady else None,
        "test_accuracy": accuracies,
        "test_accuracy_mean_std": _mean_std(accuracies),
        "test_accuracy_tta": tta,
        "test_accuracy_tta_mean_std": _mean_std(tta) if tta else None,
        "val_accuracy_mean": statistics.fmean(r["val_accuracy"] for r in runs),
        "seconds_to_val_target": reach,
        "seconds_to_val_target_median": (statistics.median(reach) if all(t is not None for t in reach)
                                         else None),
        "predict_images_per_second": throughput,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "n_train": runs[0]["n_train"],
        "n_test": runs[0]["n_test"],
        "runs": runs,
    }


def _fmt_acc(pair) -> str:
    if not pair:
        return "-"
    mean, std = pair
    return f"{mean:.4f} ± {std:.4f}"


def results_table(rows: list[dict]) -> str:
    """The Markdown table shared by BENCHMARKS.md and the README."""
    lines = [
        "| model | device | params | epochs | train s (median) | test acc (mean ± std) | "
        "with flip TTA | seeds | predict img/s (batch 1024) |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| `{row['model']}` | {row['device']} | {row['params']:,} | {row['epochs']} | "
            f"{row['train_seconds_median']:.1f} | {_fmt_acc(row['test_accuracy_mean_std'])} | "
            f"{_fmt_acc(row['test_accuracy_tta_mean_std'])} | {len(row['seeds'])} | "
            f"{row['predict_images_per_second']:,.0f} |")
    return "\n".join(lines)


def speed_table(rows: list[dict], peak: dict) -> str:
    lines = [
        "| model | device | forward MFLOP/image | steady epoch s | epoch floor s | "
        "epoch / floor | achieved GFLOP/s | peak RSS MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        ratio = row["steady_epoch_seconds"] / row["epoch_floor_seconds"] if row["epoch_floor_seconds"] else 0
        lines.append(
            f"| `{row['model']}` | {row['device']} | {row['forward_mflops']:.2f} | "
            f"{row['steady_epoch_seconds']:.1f} | {row['epoch_floor_seconds']:.2f} | "
            f"{ratio:.1f}x | {row['achieved_gflops']:.0f} | {row['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def targets_table(rows: list[dict]) -> str:
    """Each target against the measured mean, plain and with flip TTA, said separately."""
    lines = ["| model | target | measured (plain) | with flip TTA | met |",
             "| --- | --- | --- | --- | --- |"]
    for row in rows:
        if row["model"] not in TARGETS:
            continue
        accuracy, seconds = TARGETS[row["model"]]
        plain = row["test_accuracy_mean_std"][0]
        tta = row["test_accuracy_tta_mean_std"][0] if row["test_accuracy_tta_mean_std"] else None
        spent = row["train_seconds_median"]
        in_time = seconds is None or spent <= seconds
        if plain >= accuracy and in_time:
            met = "yes"
        elif tta is not None and tta >= accuracy and in_time:
            met = "with TTA only"
        else:
            met = "**no**"
        target = f">= {accuracy:.3f}" + (f" within {seconds:.0f} s" if seconds else "")
        tta_text = "-" if tta is None else f"{tta:.4f}"
        lines.append(f"| `{row['model']}` ({row['device']}, {len(row['seeds'])} seeds) | {target} | "
                     f"{plain:.4f} in {spent:.1f} s | {tta_text} | {met} |")
    missing = [m for m in TARGETS if m not in {r["model"] for r in rows}]
    if missing:
        lines.append("")
        lines.append(f"Not benchmarked yet: {', '.join(f'`{m}`' for m in missing)}.")
    return "\n".join(lines)


def render(report: dict, markdown_path: Path, readme_path: Path | None) -> None:
    """Write BENCHMARKS.md (and the README's table) from a bench report."""
    markdown_path.write_text(render_markdown(report))
    if readme_path is not None:
        update_readme(readme_path, report["rows"])


def time_to_accuracy_line(rows: list[dict]) -> str:
    by_model = {(r["model"], r["device"]): r for r in rows}
    lines = []
    for (model, device), row in by_model.items():
        if model != "cnn-fast" or ("cnn-tfdocs", device) not in by_model:
            continue
        fast = row["seconds_to_val_target_median"]
        slow = by_model[("cnn-tfdocs", device)]["seconds_to_val_target_median"]
        if fast is None or slow is None:
            lines.append(f"- {device}: time to {TIME_TO_ACCURACY} validation accuracy: cnn-fast "
                         f"{_secs(fast)}, cnn-tfdocs {_secs(slow)} (one of them never got there)")
        else:
            lines.append(f"- {device}: time to {TIME_TO_ACCURACY} validation accuracy (median over "
                         f"seeds): **cnn-fast {fast:.1f} s** vs cnn-tfdocs {slow:.1f} s, a ratio of "
                         f"**{fast / slow:.2f}** (target <= 0.33)")
    return "\n".join(lines) or "- (needs both cnn-fast and cnn-tfdocs in the same bench file)"


def _secs(value) -> str:
    return "never" if value is None else f"{value:.1f} s"


def inference_section(report: dict) -> str:
    rows = report.get("inference")
    if not rows:
        return "Not measured yet: `fmnist bench --inference`."
    lines = [f"Written by `{report['inference_command']}` on {report['inference_utc']}.", "",
             "| model | device | Keras img/s | onnxruntime img/s | onnxruntime int8 img/s | "
             "1 image: Keras / onnxruntime / int8 ms | ONNX vs Keras max abs diff (test images) "
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
            f"{row['max_abs_difference']:.1e} on {row['images']:,} | {row['class_mismatches']} | "
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
                     "test images)")
        lines += ["", text + "."]
    lines += ["", "- *img/s*: images per second at batch 1024, median of 10 batches after "
                  "warm-up, same random batch for both engines; *1 image*: median latency of "
                  "200 single-image calls.",
              "- *int8*: `fmnist export --quantize int8`, onnxruntime static quantization "
              "(QDQ, per-channel int8 weights, uint8 activations) calibrated on 1,024 training "
              "images; kept only when it picks the float model's class for >= 99% of the test images.",
              "- The ONNX file is float32 (`fmnist export`); models trained in mixed bfloat16 "
              "run in bfloat16 under Keras, so *agrees with the bf16-trained model* compares the two "
              "precisions' classes on the test images."]
    return "\n".join(lines)


def serve_section(report: dict) -> str:
    results = report.get("serve")
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
        parts.append("\n".join(lines))
    parts.append("The load generator (asyncio streams speaking HTTP/1.1 keep-alive, in the bench "
                 "process) runs on the same "
                  "machine as the server and competes with it for the cores.")
    return "\n\n".join(parts)


def render_markdown(report: dict) -> str:
    rows = report["rows"]
    m = report["machine"]
    return f"""# Benchmarks

Last written by `{report['command']}` on {report['updated_utc']}; each row's
commands are listed at the end. Do not edit by hand: rerun the commands. Every number is measured on the machine below; accuracies are on the 10,000
test images, read only by the final evaluation of each run (training validates on its
own 6,000-image split of the training set).

Machine: {m['cpu']}, {m['cores']} cores, {m['device']}; Python {m['python']}, Keras
{m['keras']} ({m['backend']}), TensorFlow {m.get('tensorflow', '-')}, NumPy {m['numpy']}.

## Accuracy and time

{results_table(rows)}

- *train s*: wall time of the training epochs (training plus the per-epoch validation
  pass), median over seeds; start-up, data loading and the test evaluation excluded.
- *test acc*: mean ± sample standard deviation over the seeds (one training run each).
  *with flip TTA*: the same runs, scoring the mean of the probabilities of each test
  image and its mirror image.
- *predict img/s*: `predict_on_batch` on 1,024 images at a time, median of 10 batches.

## Targets

{targets_table(rows)}

## Time to {TIME_TO_ACCURACY} (validation accuracy)

{time_to_accuracy_line(rows)}

## How close each epoch gets to its compute floor

{speed_table(rows, report['peak_gflops'])}

- *forward MFLOP/image*: 2 x multiply-adds of the Conv2D and Dense layers.
- *epoch floor*: 3 x forward FLOPs x training images (forward + backward), divided by
  the peak of a 2048x2048 matmul on this machine: {report['peak_gflops']['float32']:.0f}
  GFLOP/s in float32, {report['peak_gflops']['bfloat16']:.0f} in bfloat16. The floor uses
  float32's peak for every model. *epoch / floor*: how many times slower than that
  floor the steady epoch runs (includes input pipeline, batch norm, validation).
- *peak RSS*: the largest resident memory of the training process.

## Per-seed numbers

{per_seed_table(rows)}

## How each row was produced

{commands_list(rows)}

## Inference engines: Keras vs onnxruntime

{inference_section(report)}

## Serving: load test of `fmnist serve`

{serve_section(report)}
"""


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
        lines.append(f"| `{row['model']}` | {row['device']} | {row['seeds']} | "
                     f"{fmt(row['test_accuracy'])} | {fmt(row['test_accuracy_tta']) or '-'} | "
                     f"{fmt(row['train_seconds'], 1)} |")
    return "\n".join(lines)


def update_readme(readme: Path, rows: list[dict]) -> bool:
    """Replace the README's block between the bench markers with the results table."""
    if not readme.exists():
        return False
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    block = f"{README_START}\n{results_table(rows)}\n{README_END}"
    readme.write_text(text[:start] + block + text[end + len(README_END):])
    return True


# ---------------------------------------------------------------- the command


def run_bench(models: list[str], seeds: int, out_dir: Path, json_path: Path, markdown_path: Path,
              readme_path: Path | None, data_dir=None, extra: list[str] | None = None,
              command: str = "fmnist bench", log=print, seed_start: int = 0) -> dict:
    """Benchmark ``models`` over seeds ``seed_start .. seed_start+seeds-1``; rewrite reports.

    Stored runs of the same model and device with other seeds are kept and summarized
    with the new ones; runs of the same seeds are replaced.
    """
    report = json.loads(json_path.read_text()) if json_path.exists() else {"rows": []}
    device = device_name()
    peak = {"float32": matmul_peak_gflops("float32"), "bfloat16": matmul_peak_gflops("bfloat16")}
    for model in models:
        runs = []
        for seed in range(seed_start, seed_start + seeds):
            out = out_dir / f"{model}-seed{seed}"
            if out.exists():
                shutil.rmtree(out)
            log(f"bench: training {model} seed {seed} ...", flush=True)
            runs.append(run_training(model, seed, out, data_dir, extra or []))
            log(f"bench:   test {runs[-1]['test_accuracy']:.4f} (TTA "
                f"{runs[-1].get('test_accuracy_tta', float('nan')):.4f}), "
                f"{runs[-1]['train_seconds']:.1f} s", flush=True)
        import keras

        final_model = out_dir / f"{model}-seed{seed_start}" / rundir.MODEL
        flops = forward_flops(keras.saving.load_model(final_model, compile=False))
        throughput = predict_throughput(final_model)
        old = next((r for r in report["rows"] if (r["model"], r["device"]) == (model, device)), None)
        row = summarize(model, merge_runs(old, runs), throughput, flops, peak["float32"], device)
        # Which invocations produced the row's runs (a slow model is run a few seeds at a time).
        kept = {run["seed"] for run in row["runs"]} - {run["seed"] for run in runs}
        row["commands"] = [*old.get("commands", []), command] if old and kept else [command]
        report["rows"] = [r for r in report["rows"] if r is not old] + [row]
    order = {name: index for index, name in enumerate(
        ("mlp", "mlp-plus", "cnn-tfdocs", "cnn-fast", "cnn-best"))}
    report["rows"].sort(key=lambda r: (r["device"], order.get(r["model"], 99), r["model"]))
    report.update({"machine": machine(), "peak_gflops": peak, "command": command,
                   "updated_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    rundir.write_json(json_path, report)
    render(report, markdown_path, readme_path)
    return report
