#!/bin/bash
# The GPU measurement of a device session, as prepared commands (see README "Benchmark"):
#
#   here, once:   bash launch/device/fetch_wheels.sh       # wheels the GPU image lacks -> .whl/ (git-ignored)
#   device call:  bash launch/device/gpu_check.sh steps    # carry [".whl"]; ~7 min: every algorithm's step, the
#                                                          # PyTorch reference, model variants, a profile
#   device call:  bash launch/device/gpu_check.sh rest     # same warm machine; ~4 min: BoDA refresh, input
#                                                          # pipeline, scaling, the GPU test subset
#   dry run here: PYTHON=/path/to/venv/bin/python WHEELS=0 BENCH_ARGS=--smoke OUT=/tmp/dry \
#                 bash launch/device/gpu_check.sh steps
#
# Writes the benchmark JSON and logs (and the profile of the BoDA step) under $OUT (or runs/device). The two
# parts share /tmp/jax_cache, so "rest" loads the steps "steps" compiled when it runs on the same machine.
set -uo pipefail
cd "$(dirname "$0")/../.."
PART=${1:-steps}
OUT=${OUT:-runs/device}
PY=${PYTHON:-python3}
BENCH_ARGS=${BENCH_ARGS:---preset=gpu}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT"
if [ "${WHEELS:-1}" = 1 ] && [ ! -d "$SITE/grain" ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || exit 1
fi
[ "${WHEELS:-1}" = 1 ] && [ -d "$SITE" ] && export PYTHONPATH=$SITE:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true; } \
  | tee "$OUT/gpu.txt"
"$PY" -c "import jax, flax, optax, orbax.checkpoint as o, grain, sys; print(jax.devices(), 'jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'grain', grain.__version__, 'python', sys.version.split()[0])" \
  2>&1 | tee -a "$OUT/gpu.txt"
case "$PART" in
  steps)
    rm -rf /tmp/wbcdg_profile
    timeout "${STEPS_LIMIT:-470}" "$PY" launch/benchmark.py $BENCH_ARGS --sections=steps,torch,variants \
      --torch_timeout_s="${TORCH_LIMIT:-200}" --profile_dir=/tmp/wbcdg_profile --json="$OUT/benchmark_steps.json" \
      --compilation_cache_dir=/tmp/jax_cache 2>&1 | grep -v "it/s\]\|examples/s\]" | tee "$OUT/benchmark_steps.log"
    trace=$(find /tmp/wbcdg_profile -name '*.xplane.pb' 2>/dev/null | head -1)
    if [ -n "$trace" ]; then gzip -c "$trace" > "$OUT/profile_boda.xplane.pb.gz"; fi ;;
  rest)
    timeout "${REST_LIMIT:-210}" "$PY" launch/benchmark.py $BENCH_ARGS --sections=refresh,pipeline,scaling \
      --num_workers="${NUM_WORKERS:-12}" --json="$OUT/benchmark_rest.json" --compilation_cache_dir=/tmp/jax_cache \
      2>&1 | grep -v "it/s\]\|examples/s\]" | tee "$OUT/benchmark_rest.log"
    # The models and train steps on the GPU keep their contracts (float32 matmuls: the tests compare to 1e-5).
    JAX_DEFAULT_MATMUL_PRECISION=float32 timeout "${TEST_LIMIT:-150}" "$PY" -m pytest -q -x -p no:cacheprovider \
      tests/models/test_resnet.py tests/train/test_train_step.py -k "not sharded" 2>&1 | tail -8 \
      | tee "$OUT/gpu_tests.txt" ;;
  *) echo "usage: $0 steps|rest" >&2; exit 2 ;;
esac
