"""Measuring on this machine: its record and matmul peaks, model FLOPs, engine
throughput, and the ONNX export/int8 figures of benchmarked runs (imports TensorFlow
inside the functions that need it)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from fmnist import hardware, rundir


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
        # A GPU finishes a 2048-wide product in well under a millisecond, where launch
        # overhead would dominate: it is timed on a wider one.
        size = 8192 if record["device"].startswith("GPU") else 2048
        record["peak_matmul_size"] = size
        with filtered_stderr(lambda line: "oneDNN supports DT_BFLOAT16 only" in line):
            record["peak_gflops"] = {"float32": matmul_peak_gflops("float32", size),
                                     "bfloat16": matmul_peak_gflops("bfloat16", size)}
            if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
                record["peak_conv"] = CONV_PEAK_SHAPE
                record["peak_conv_gflops"] = {"float32": conv_peak_gflops("float32"),
                                              "bfloat16": conv_peak_gflops("bfloat16")}
        record.update(versions())
    else:
        import platform

        from fmnist import __version__

        record.update({"python": platform.python_version(), "fmnist": __version__})
    return record


def device_name() -> str:
    """The device the Keras backend trains on: "CPU" or "GPU: <its name>"."""
    gpu = hardware.first_gpu()
    return "CPU" if gpu is None else f"GPU: {gpu[0]}"


def forward_flops(model) -> int:
    """Multiply-adds x 2 of one image's forward pass through Conv2D and Dense layers.

    Batch norm, activations and pooling are left out: they are a few percent of the
    FLOPs and are memory-bound rather than compute-bound.
    """
    return int(sum(layer_forward_flops(layer) for layer in model.layers))


def layer_forward_flops(layer) -> int:
    """Multiply-adds x 2 of one image through ``layer``: a Conv2D, SeparableConv2D,
    DepthwiseConv2D or Dense layer; 0 for any other."""
    kind = type(layer).__name__
    if kind in ("Conv2D", "SeparableConv2D", "DepthwiseConv2D"):
        out_h, out_w, out_c = layer.output.shape[1:4]
        kh, kw = layer.kernel_size
        in_c = layer.input.shape[-1]
        if kind == "Conv2D":
            return 2 * out_h * out_w * out_c * kh * kw * in_c
        # depthwise kh x kw per input channel, then (separable) a 1x1 pointwise
        depthwise = 2 * out_h * out_w * kh * kw * in_c
        return depthwise + (2 * out_h * out_w * in_c * out_c if kind == "SeparableConv2D" else 0)
    if kind == "Dense":
        return 2 * layer.input.shape[-1] * layer.units
    return 0


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


def fastest_seconds(call, repeats: int) -> float:
    """The shortest wall time of ``call()`` over ``repeats`` calls, after one untimed call
    (tracing, compiling, warming up): a peak, so the fastest run counts, not a median
    that a busy moment would drag down."""
    call()
    fastest = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        fastest = min(fastest, time.perf_counter() - started)
    return fastest


def matmul_peak_gflops(dtype: str = "float32", size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a large square matmul at its best of ``repeats``: the most this
    machine's TensorFlow gets out of its cores in ``dtype``. On a backend other than
    TensorFlow, the same product through ``keras.ops``."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return _keras_matmul_peak_gflops(dtype, size, repeats)
    import tensorflow as tf

    a = tf.random.stateless_uniform([size, size], seed=[1, 2], dtype=tf.float32)
    a = tf.cast(a, dtype)
    matmul = tf.function(lambda m: tf.linalg.matmul(m, m))
    return 2 * size**3 / fastest_seconds(lambda: matmul(a).numpy(), repeats) / 1e9


# The convolution of the achievable floor: one of cnn-fast's 3x3 convs at 14x14 (32 in,
# 32 out), at its training batch. A CPU's library reaches less of the matmul peak on a
# conv this small, and less again on its two gradients; the profile in the experiment
# notes shows where.
CONV_PEAK_SHAPE = "batch 256, 14x14x32 -> 32, 3x3, forward and both gradients"


def conv_peak_gflops(dtype: str = "float32", repeats: int = 50) -> float:
    """GFLOP/s of one training pass through a 3x3 conv of cnn-fast's shape
    (``CONV_PEAK_SHAPE``): the forward conv and its input and filter gradients, 3x the
    forward FLOPs, at the best of ``repeats``. What a step made of such convs can reach
    at most: the achievable floor beside the matmul's. TensorFlow only.

    One pass takes about 10 ms, so the best of 50 spans half a second: a busy tenth of
    a second cannot set the peak, as it can when 10 passes span it all."""
    import tensorflow as tf

    batch, size, channels = 256, 14, 32
    images = tf.cast(tf.random.stateless_uniform([batch, size, size, channels], seed=[1, 2]), dtype)
    kernel = tf.cast(tf.random.stateless_normal([3, 3, channels, channels], seed=[3, 4]), dtype)
    upstream = tf.cast(tf.random.stateless_normal([batch, size, size, channels], seed=[5, 6]),
                       dtype)

    @tf.function
    def step(x, k):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = tf.nn.conv2d(x, k, strides=1, padding="SAME")
        # y is returned too: a function returning only the gradients would prune the
        # forward conv, which they do not need (the conv is linear).
        return [y, *tape.gradient(y, [x, k], output_gradients=upstream)]

    flops = 3 * 2 * batch * size * size * 9 * channels * channels
    seconds = fastest_seconds(lambda: [t.numpy() for t in step(images, kernel)], repeats)
    return flops / seconds / 1e9


def _keras_matmul_peak_gflops(dtype: str, size: int, repeats: int) -> float:
    import keras

    a = keras.ops.cast(keras.random.uniform((size, size), seed=1), dtype)

    def product():  # reading one element back waits for the device to finish
        keras.ops.convert_to_numpy(keras.ops.matmul(a, a)[0, 0])

    return 2 * size**3 / fastest_seconds(product, repeats) / 1e9


def predict_throughput(model_path: Path, batch: int = 1024, batches: int = 10) -> float:
    """Images per second of the saved Keras model at ``batch`` images: the one definition,
    :func:`engine_speed` of the engine `fmnist predict` and `serve` use."""
    from fmnist.predict import KerasEngine

    return engine_speed(KerasEngine(model_path), batch, batches, singles=0)["images_per_second"]


def engine_speed(engine, batch: int = 1024, batches: int = 10, singles: int = 200) -> dict:
    """Images/s of ``engine`` ((N, 28, 28) float32 -> (N, 10)) at ``batch``, and the
    median latency of one image, after warm-up."""
    images = np.random.default_rng(0).integers(0, 256, (batch, 28, 28)).astype(np.float32)
    return {"images_per_second": batch / median_seconds(lambda: engine(images), batches, warmup=3),
            "one_image_ms": (1000 * median_seconds(lambda: engine(images[:1]), singles, warmup=3)
                             if singles else None)}


def measure_inference(rows: list[dict], runs_dir: Path, train_data, log=print) -> list[dict]:
    """Keras vs onnxruntime (float32 and int8) on each benchmarked model's first-seed run.

    Exports ``model.onnx`` into the run, checked on the run's validation images rebuilt
    from ``train_data`` (the 60,000 training images and labels; the test set is never
    read here), quantizes it (calibrated on the run's training images) and times the
    engines on the same random batch.
    """
    from fmnist.bench.summary import run_name
    from fmnist.export import ExportError, export_images, export_onnx, quantize_int8
    from fmnist.predict import KerasEngine, OnnxEngine

    results = []
    for row in rows:
        run = runs_dir / run_name(row, row["seeds"][0])
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
