#!/bin/bash
# The GPU measurement of a device session, as one prepared command (see README "Benchmark"):
#
#   here, once:  bash launch/device/fetch_wheels.sh          # wheels the GPU image lacks -> .whl/ (git-ignored)
#   device call: bash launch/device/gpu_check.sh steps       # carry [".whl"]; ~6 min: ERM..BoDA steps + PyTorch
#   device call: bash launch/device/gpu_check.sh rest        # ~3 min: BoDA refresh, input pipeline, scaling
#
# Writes the benchmark JSON and log (and a short GPU test run for "steps") under $OUT (or runs/device).
set -uo pipefail
cd "$(dirname "$0")/../.."
PART=${1:-steps}
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, flax, optax, grain, torch; print(jax.devices(), jax.__version__, flax.__version__, \
optax.__version__, torch.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"
case "$PART" in
  steps)
    # The train steps on the GPU agree with their contracts (every algorithm, determinism, stage 2, guards).
    timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/train/test_train_step.py -k "not sharded" \
      2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
    timeout 420 python3 launch/benchmark.py --preset=gpu --sections=steps,torch --json="$OUT/benchmark_steps.json" \
      --compilation_cache_dir=/tmp/jax_cache 2>&1 | tee "$OUT/benchmark_steps.log" ;;
  rest)
    timeout 300 python3 launch/benchmark.py --preset=gpu --sections=refresh,pipeline,scaling --num_workers=8 \
      --json="$OUT/benchmark_rest.json" 2>&1 | tee "$OUT/benchmark_rest.log" ;;
  *) echo "usage: $0 steps|rest" >&2; exit 2 ;;
esac
