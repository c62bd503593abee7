"""Time a training step with Keras' batch norm and with the fused kernel fmnist trains with.

usage: python scripts/stepbench.py {keras,fused,none} [MODEL [KEY=JSON ...]]
       PRECISION=bfloat16 python scripts/stepbench.py ...   (mixed bfloat16; default float32)

``none``: the model built with ``batch_norm=false`` (only the cnn factories have it), the
floor the fused kernel could reach. Prints one JSON line: median, mean and 90th
percentile of 55 steps at batch 256 on random images, after 5 warm-up steps. Run each
variant in its own process on an idle machine; the experiment note on the fused batch
norm lists what it gave on the AVX2 and AMX kinds.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from fmnist.runtime import prepare_tensorflow

prepare_tensorflow()

import keras  # noqa: E402

from fmnist.batchnorm import fused_for_training  # noqa: E402
from fmnist.config import TrainConfig  # noqa: E402
from fmnist.hardware import dtype_policy  # noqa: E402
from fmnist.models import get_factory  # noqa: E402
from fmnist.recipe import compile_for_training, configure_determinism  # noqa: E402

BATCH, WARMUP, TIMED = 256, 5, 55


def main(argv: list[str]) -> None:
    variant = argv[0]
    model_name = argv[1] if len(argv) > 1 else "cnn-fast"
    options = {key: json.loads(value) for key, value in (a.split("=", 1) for a in argv[2:])}
    if variant == "none":
        options["batch_norm"] = False
    config = TrainConfig.for_model(model_name, model_options=options)
    configure_determinism(0)
    precision = os.environ.get("PRECISION", "float32")
    if precision not in ("float32", "bfloat16"):
        sys.exit(f"stepbench: PRECISION={precision!r} is not a precision; use float32 or bfloat16")
    keras.config.set_dtype_policy(dtype_policy(precision))
    model = get_factory(model_name)(**options)
    if variant == "fused":
        model = fused_for_training(model)
    compile_for_training(model, config, total_steps=10_000)
    rng = np.random.default_rng(0)
    # One epoch of exactly the steps timed, so no epoch boundary falls between them.
    count = BATCH * (WARMUP + TIMED + 1)
    images = rng.integers(0, 256, (count, 28, 28)).astype("float32")
    targets = np.eye(10, dtype="float32")[rng.integers(0, 10, count)]
    stamps: list[float] = []
    stamp = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs=None: stamps.append(time.perf_counter()))
    model.fit(images, targets, batch_size=BATCH, epochs=1,
              verbose=0, shuffle=False, callbacks=[stamp])
    steps = np.diff(stamps)[WARMUP:WARMUP + TIMED] * 1000
    print(json.dumps({"variant": variant, "precision": precision, "model": model_name,
                      "options": options,
                      "median_ms": round(float(np.median(steps)), 1),
                      "mean_ms": round(float(np.mean(steps)), 1),
                      "p90_ms": round(float(np.percentile(steps, 90)), 1)}))


if __name__ == "__main__":
    main(sys.argv[1:])
