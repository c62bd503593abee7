"""Where a training step's time goes, op by op, from TensorFlow's profiler.

usage: python scripts/stepprofile.py [MODEL] [--steps N] [--batch B] [--top K] [--csv FILE]
                                     [--train-arg=--flag=value ...]

Trains MODEL (default cnn-fast) with its preset and this machine's precision on the
real training images (FMNIST_DATA_DIR), through the same pipeline and the same compiled
model `fmnist train` uses, and traces steps 20 .. 20+N (default 30) with
``tf.profiler``. The trace's host ops are summed by kind: convolutions (forward,
input gradient, filter gradient), batch norm, the optimizer's update, the input
pipeline, casts, and the rest. Prints a table of milliseconds per step and shares of the
traced wall time; ``--csv`` also writes it. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import collections
import csv
import sys
import tempfile
import time
from pathlib import Path

from fmnist.runtime import prepare_tensorflow

prepare_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from fmnist.bench.measure import layer_forward_flops  # noqa: E402
from fmnist.config import TrainConfig  # noqa: E402
from fmnist.data import load_split  # noqa: E402
from fmnist.hardware import choose_precision, dtype_policy  # noqa: E402
from fmnist.pipeline import training_batches  # noqa: E402
from fmnist.recipe import new_model  # noqa: E402
from fmnist.split import train_val_split  # noqa: E402

WARMUP = 20

# (kind, test on the op's type): the first that matches names the op's kind.
KINDS = (
    ("conv forward", lambda t: t in ("Conv2D", "_MklConv2D", "_MklNativeConv2D",
                                     "_MklNativeConv2DWithBias", "_MklConv2DWithBias",
                                     "_MklNativeFusedConv2D", "_MklFusedConv2D")),
    ("conv input gradient", lambda t: "Conv2DBackpropInput" in t),
    ("conv filter gradient", lambda t: "Conv2DBackpropFilter" in t),
    ("batch norm", lambda t: "FusedBatchNorm" in t),
    ("matmul (dense)", lambda t: "MatMul" in t),
    ("max pool", lambda t: "MaxPool" in t),
    ("optimizer update", lambda t: t.startswith("ResourceApply") or t.startswith("AssignSub")
     or t.startswith("AssignAdd") or t.startswith("AssignVariable")),
    ("input pipeline", lambda t: t.startswith("Iterator") or "Dataset" in t
     or t in ("GatherV2", "StatelessRandomUniformV2", "Reverse", "ReverseV2", "Pad",
              "PadV2", "SelectV2")),
    ("cast", lambda t: t in ("Cast", "_MklCast")),
    ("elementwise and reductions", lambda t: True),
)


def op_kind(op_type: str) -> str:
    return next(kind for kind, match in KINDS if match(op_type))


def conv_flops(model, batch: int) -> dict[str, float]:
    """Forward FLOPs of one batch through each Conv2D layer, by layer name; each gradient
    of a conv costs as many again."""
    return {layer.name: float(batch * layer_forward_flops(layer)) for layer in model.layers
            if type(layer).__name__ == "Conv2D"}


def trace_steps(config: TrainConfig, steps: int, logdir: Path) -> tuple[float, dict]:
    """Train ``config`` for WARMUP + ``steps`` steps, tracing the last ``steps``; the
    traced wall seconds, and each conv layer's forward FLOPs per step."""
    choice = choose_precision(config.precision)
    keras.config.set_dtype_policy(dtype_policy(choice.precision))
    x, y = load_split("train")
    train_idx, _ = train_val_split(y, val_size=config.val_size, seed=config.seed)
    x_train, y_train = x[train_idx], y[train_idx]
    n = len(y_train)
    steps_per_epoch = -(-n // config.batch_size)
    model = new_model(config, total_steps=steps_per_epoch * config.epochs, images=x_train)
    batches = training_batches(x_train, y_train, config, 0, config.epochs)
    stamps: dict[str, float] = {}

    class Trace(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == WARMUP:
                tf.profiler.experimental.start(str(logdir))
                stamps["start"] = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if batch == WARMUP + steps - 1:
                stamps["stop"] = time.perf_counter()
                tf.profiler.experimental.stop()

    model.fit(batches, epochs=1, steps_per_epoch=WARMUP + steps, verbose=0, callbacks=[Trace()])
    print(f"precision: {choice.precision}; batch {config.batch_size}; "
          f"traced {steps} steps", file=sys.stderr)
    return stamps["stop"] - stamps["start"], conv_flops(model, config.batch_size)


def op_seconds(logdir: Path) -> tuple[collections.Counter, collections.Counter]:
    """Seconds per op type, and per (layer, op kind), over the trace's host threads
    (TensorFlow op events)."""
    totals: collections.Counter = collections.Counter()
    layers: collections.Counter = collections.Counter()
    for path in logdir.rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            for line in plane.lines:
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    op_type = _op_type(name)
                    if op_type:
                        totals[op_type] += event.duration_ps * 1e-12
                        layers[_layer(name), op_kind(op_type)] += event.duration_ps * 1e-12
    return totals, layers


def _op_type(name: str) -> str | None:
    """The op type of a TensorFlow op event ("dense/MatMul:_MklMatMul"), or None for the
    runtime's own events ("ExecutorState::Process") and for function calls, whose time
    is their ops' time."""
    if ":" not in name or "::" in name:
        return None
    op_type = name.rsplit(":", 1)[1].strip()
    if op_type.startswith("__inference") or "PartitionedCall" in op_type:
        return None
    return op_type


def _layer(name: str) -> str:
    """The model layer an op belongs to: ".../cnn_fast_1/conv14_0_1/convolution:..." and
    its gradient ".../gradient_tape/cnn_fast_1/conv14_0_1/..." -> "conv14_0"."""
    parts = [part for part in name.rsplit(":", 1)[0].split("/")
             if part not in ("StatefulPartitionedCall", "gradient_tape")]
    if len(parts) < 3:
        return "(outside the layers)"
    stem, _, suffix = parts[1].rpartition("_")
    return stem if suffix.isdigit() else parts[1]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="cnn-fast")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--top", type=int, default=12, help="op types to list")
    parser.add_argument("--csv", type=Path)
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for item in rest:  # --train-arg=--key=value: TrainConfig fields, JSON values
        key, value = item.removeprefix("--train-arg=--").split("=", 1)
        overrides[key.replace("-", "_")] = _value(value)
    config = TrainConfig.for_model(args.model, **overrides)
    with tempfile.TemporaryDirectory() as logdir:
        wall, flops = trace_steps(config, args.steps, Path(logdir))
        totals, layers = op_seconds(Path(logdir))
    kinds: collections.Counter = collections.Counter()
    for op_type, seconds in totals.items():
        kinds[op_kind(op_type)] += seconds
    per_step = 1000 / args.steps
    rows = [(kind, seconds * per_step, seconds / wall) for kind, seconds in kinds.most_common()]
    busy = sum(kinds.values())
    rows.append(("all ops (summed over threads)", busy * per_step, busy / wall))
    rows.append(("wall time", wall * per_step, 1.0))
    print(f"{'kind':32s} {'ms/step':>8s} {'share':>7s}")
    for kind, ms, share in rows:
        print(f"{kind:32s} {ms:8.2f} {share:7.1%}")
    print("\ntop op types:")
    for op_type, seconds in totals.most_common(args.top):
        print(f"  {op_type:40s} {seconds * per_step:8.2f} ms/step  ({op_kind(op_type)})")
    print("\ntop layers and kinds:")
    for (layer, kind), seconds in layers.most_common(args.top):
        print(f"  {layer:24s} {kind:26s} {seconds * per_step:8.2f} ms/step")
    print("\nconvolutions, GFLOP/s (forward FLOPs; each gradient the same count):")
    for layer, count in flops.items():
        rates = []
        for kind in ("conv forward", "conv input gradient", "conv filter gradient"):
            seconds = layers.get((layer, kind), 0.0) / args.steps
            rates.append(f"{kind.removeprefix('conv ')} "
                         + (f"{count / seconds / 1e9:6.0f}" if seconds else "     —"))
        print(f"  {layer:12s} {count / 1e9:6.3f} GFLOP/step   " + "   ".join(rates))
    if args.csv:
        with args.csv.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["kind", "ms per step", "share of wall time"])
            writer.writerows([kind, f"{ms:.2f}", f"{share:.3f}"] for kind, ms, share in rows)


def _value(text: str):
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main(sys.argv[1:])
