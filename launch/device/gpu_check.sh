#!/bin/bash
# The GPU measurement of a device session, as prepared commands (see README "Benchmark"). Each part is one
# device call; run them back to back on the same warm machine (they share /tmp/site and /tmp/jax_cache).
#
#   here, once:  bash launch/device/fetch_wheels.sh     # wheels the GPU image lacks -> .whl/ (git-ignored)
#   device call: bash launch/device/gpu_check.sh PART   # carry [".whl"]
#
# PART (times seen on one H100, 2026-11-26: a ResNet-50 step compiles in ~130 s at total batch 64 and ~30 s at
# 256, also 4-8 at a time in threads; a warm cache loads one in ~3 s):
#   flags  ERM at batch 64 compiled with XLA's fusion autotuner off, then with Triton GEMMs off: does either make
#          batch 64 compile faster without a slower step?                                  (2-5 min)
#   steps  every algorithm's step at batch 64, and a profile of BoDA's                      (~4 min)
#   torch  the PyTorch reference at 64 and 256, JAX ERM/BoDA beside it, the model variants   (~6 min)
#   rest   BoDA refresh, input pipeline, scaling, the GPU test subset                        (~4 min)
# dry run here: PYTHON=/path/to/venv/bin/python WHEELS=0 BENCH_ARGS=--smoke OUT=/tmp/dry bash ... PART
# then, here: python launch/benchmark.py --merge=<the parts' JSON files> --json=... gives one table and the targets.
#
# Writes the benchmark JSON and logs (and the BoDA step's profile) under $OUT (or runs/device).
set -uo pipefail
cd "$(dirname "$0")/../.."
PART=${1:-steps}
OUT=${OUT:-runs/device}
PY=${PYTHON:-python3}
BENCH_ARGS=${BENCH_ARGS:---preset=gpu}
SITE=${SITE:-/tmp/site}
LIMIT=${LIMIT:-400}
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

bench() {  # bench NAME ARGS...: one benchmark process, its JSON and log under $OUT
  local name=$1; shift
  timeout "$LIMIT" "$PY" launch/benchmark.py $BENCH_ARGS "$@" --json="$OUT/$name.json" 2>&1 \
    | grep -v "it/s\]\|examples/s\]" | tee "$OUT/$name.log"
}

case "$PART" in
  flags)
    # Which autotuner makes batch 64 compile in ~130 s (ERM at 64: 4,891 img/s with the default flags)?
    LIMIT=${FLAGS_LIMIT:-170}  # each
    XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_experimental_enable_fusion_autotuner=false" \
      bench flags_no_fusion_autotuner --sections=steps --algorithms=erm
    XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_triton_gemm=false" \
      bench flags_no_triton_gemm --sections=steps --algorithms=erm ;;
  steps)
    rm -rf /tmp/wbcdg_profile
    bench steps --sections=steps --profile_dir=/tmp/wbcdg_profile --compilation_cache_dir=/tmp/jax_cache
    trace=$(find /tmp/wbcdg_profile -name '*.xplane.pb' 2>/dev/null | head -1)
    if [ -n "$trace" ]; then
      gzip -c "$trace" > "$OUT/profile_boda.xplane.pb.gz"
      "$PY" launch/profile_summary.py --trace="$trace" --top=40 2>&1 | tee "$OUT/profile_boda.txt"
    fi ;;
  torch)
    bench torch --sections=torch,variants --torch_timeout_s="${TORCH_LIMIT:-200}" \
      --compilation_cache_dir=/tmp/jax_cache ;;
  rest)
    bench rest --sections=refresh,pipeline,scaling --num_workers="${NUM_WORKERS:-12}" \
      --compilation_cache_dir=/tmp/jax_cache
    # The models and train steps on the GPU keep their contracts (float32 matmuls: the tests compare to 1e-5).
    JAX_DEFAULT_MATMUL_PRECISION=float32 timeout "${TEST_LIMIT:-150}" "$PY" -m pytest -q -x -p no:cacheprovider \
      tests/models/test_resnet.py tests/train/test_train_step.py -k "not sharded" 2>&1 | tail -8 \
      | tee "$OUT/gpu_tests.txt" ;;
  *) echo "usage: $0 flags|steps|torch|rest" >&2; exit 2 ;;
esac
