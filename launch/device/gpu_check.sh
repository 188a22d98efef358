#!/bin/bash
# The GPU measurement of a device session, as prepared commands (see README "Benchmark"). Each part is one
# device call; run them back to back on the same warm machine (they share /tmp/site and /tmp/jax_cache).
#
#   here, once:  bash launch/device/fetch_wheels.sh     # wheels the GPU image lacks -> .whl/ (git-ignored)
#   device call: bash launch/device/gpu_check.sh PART   # carry [".whl", ".devcache"]
#   here, after: cp <files_at>/xla_autotune.tar.gz .devcache/   # XLA's autotuning results, for the next session
#
# PART (times seen on one H100, 2026-11-26: a ResNet-50 step compiles in ~130 s at total batch 64 and ~30 s at
# 256, also 4-8 at a time in threads; a warm cache loads one in ~3 s):
#   full   everything in one process (the whole table in one run, for one call of up to 10 min), a profile of
#          BoDA at 256                                                                     (~8-9 min)
#   flags  ERM at batch 64 compiled with an empty autotune cache, again in a new process with the cache it wrote,
#          then with Triton GEMMs off (or FLAGS_TRY): is autotuning the ~130 s, does a kept cache remove it? (4-8 min)
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
# XLA's autotuning results (convolution algorithms, GEMM tilings; keyed by the op and the GPU, so they outlive code
# changes that the JAX compilation cache does not) kept across device sessions: unpacked from the carried
# .devcache/, packed into $OUT after every part.
AUTOTUNE_DIR=${AUTOTUNE_DIR:-/tmp/xla_autotune}
mkdir -p "$AUTOTUNE_DIR"
if [ -f .devcache/xla_autotune.tar.gz ] && [ -z "$(ls -A "$AUTOTUNE_DIR")" ]; then
  tar xzf .devcache/xla_autotune.tar.gz -C "$AUTOTUNE_DIR" && echo "autotune cache: $(ls "$AUTOTUNE_DIR" | wc -l) entries"
fi
trap 'tar czf "$OUT/xla_autotune.tar.gz" -C "$AUTOTUNE_DIR" . 2>/dev/null' EXIT
autotune_flag() { echo "--xla_gpu_per_fusion_autotune_cache_dir=$1"; }
BASE_XLA_FLAGS=${XLA_FLAGS:-}
export XLA_FLAGS="$BASE_XLA_FLAGS $(autotune_flag "$AUTOTUNE_DIR")"
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

profile_files() {  # the BoDA trace, its optimized HLO and two summaries (by HLO op kind, by instruction) -> $OUT
  local trace
  trace=$(find /tmp/wbcdg_profile -name '*.xplane.pb' 2>/dev/null | head -1)
  [ -n "$trace" ] || return 0
  gzip -c "$trace" > "$OUT/profile_boda.xplane.pb.gz"
  gzip -c /tmp/wbcdg_profile/boda_step.hlo.txt > "$OUT/boda_step.hlo.txt.gz" 2>/dev/null
  { "$PY" launch/profile_summary.py --trace="$trace" --top=40
    "$PY" launch/profile_summary.py --trace="$trace" --top=40 --by_instruction; } 2>&1 | tee "$OUT/profile_boda.txt"
}

case "$PART" in
  flags)
    # Is autotuning why batch 64 compiles in ~130 s (ERM at 64: 4,891 img/s with the default flags)? No JAX
    # compilation cache here, so every process compiles.
    LIMIT=${FLAGS_LIMIT:-170}  # each
    cold=$(mktemp -d)
    XLA_FLAGS="$BASE_XLA_FLAGS $(autotune_flag "$cold")" bench flags_autotune_cold --sections=steps --algorithms=erm
    XLA_FLAGS="$BASE_XLA_FLAGS $(autotune_flag "$cold")" bench flags_autotune_warm --sections=steps --algorithms=erm
    cp -rn "$cold"/. "$AUTOTUNE_DIR"/ 2>/dev/null
    # Batch 256 compiled 4x faster: at 64 XLA may turn more convolutions into GEMMs and autotune Triton tilings.
    XLA_FLAGS="$BASE_XLA_FLAGS $(autotune_flag "$(mktemp -d)") ${FLAGS_TRY:---xla_gpu_enable_triton_gemm=false}" \
      bench flags_try --sections=steps --algorithms=erm ;;
  steps)
    rm -rf /tmp/wbcdg_profile
    bench steps --sections=steps --profile_dir=/tmp/wbcdg_profile --compilation_cache_dir=/tmp/jax_cache
    profile_files ;;
  full)
    rm -rf /tmp/wbcdg_profile
    LIMIT=${FULL_LIMIT:-540} bench full --num_workers="${NUM_WORKERS:-12}" --torch_timeout_s="${TORCH_LIMIT:-200}" \
      --profile_dir=/tmp/wbcdg_profile --compilation_cache_dir=/tmp/jax_cache
    profile_files
    # With the time left of a 10-minute call: does the autotune cache the run just wrote remove most of the ~130 s
    # that ERM at batch 64 takes to compile? (a new process, no JAX compilation cache; log only, 8 files come back)
    left=$(( ${CALL_LIMIT:-585} - SECONDS ))
    if [ "$left" -gt 45 ]; then
      timeout "$left" "$PY" launch/benchmark.py $BENCH_ARGS --sections=steps --algorithms=erm --compile_ahead=false \
        --json=/tmp/autotune_warm.json 2>&1 | grep -v "it/s\]" | tee "$OUT/autotune_warm.log"
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
  *) echo "usage: $0 flags|steps|torch|rest|full" >&2; exit 2 ;;
esac
