#!/bin/bash
# The GPU rows of the benchmarks page on a CUDA machine that has JAX but no TensorFlow,
# in one command within a time limit:
#   1. a 2-epoch smoke run (Keras on JAX; torch if JAX fails);
#   2. `fmnist bench train --models cnn-best` one seed at a time, each writing the report;
#   3. if time is left, cnn-best twice as wide for up to 100 epochs in the time left.
# Needs, beside the checkout: .gpu/whl (Keras 3 and the two dependencies JAX images
# lack: namex, optree) and .gpu/data (the four Fashion-MNIST .gz files); docs/scaling.md,
# "A GPU", says how to fill them.
# Results go to $OUT (default: gpu-out/): bench.json, BENCHMARKS.md, wide-*.json.
set -u
START=$(date +%s); LIMIT=${LIMIT:-530}; OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
left() { echo $(( LIMIT - ($(date +%s) - START) )); }
SCRATCH=$(mktemp -d)  # fresh folders every call, so a warm machine's leftovers never clash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SCRATCH/site" .gpu/whl/*.whl || exit 3
export PYTHONPATH=$SCRATCH/site:$PWD/src FMNIST_DATA_DIR=$PWD/.gpu/data PYTHONUNBUFFERED=1
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
smoke() { timeout 150 python3 -m fmnist.cli train --model cnn-fast --epochs 2 --train-size 5000 \
  --val-size 1000 --out "$SCRATCH/smoke-$KERAS_BACKEND" --quiet; }
if ! smoke; then echo "$KERAS_BACKEND smoke failed; trying torch"; export KERAS_BACKEND=torch; smoke || exit 5; fi
echo "backend $KERAS_BACKEND; $(left) s left"
for seed in 0 1 2; do
  [ "$(left)" -lt 150 ] && { echo "stop before seed $seed: $(left) s left"; break; }
  timeout $(( $(left) - 20 )) python3 -m fmnist.cli bench train --models cnn-best --seeds 1 \
    --seed-start $seed --json "$OUT/bench.json" --markdown "$OUT/BENCHMARKS.md" \
    --runs-dir "$SCRATCH/runs"
  echo "seed $seed done; $(left) s left"
done
if [ "$(left)" -gt 200 ]; then
  timeout $(( $(left) - 15 )) python3 -m fmnist.cli train --model cnn-best --seed 0 --epochs 100 \
    --time-budget $(( $(left) - 60 )) --model-option widths14=[128,128] \
    --model-option widths7=[256,256] --model-option dense=512 --out "$SCRATCH/wide" --tta --quiet \
    && cp "$SCRATCH/wide/metrics.json" "$OUT/wide-metrics.json" \
    && cp "$SCRATCH/wide/config.json" "$OUT/wide-config.json"
fi
echo "end; $(left) s left"
