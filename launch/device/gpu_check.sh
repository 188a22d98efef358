#!/bin/bash
# The GPU measurement of a device session, as prepared commands (see README "Benchmark"). Each part is one
# device call; run them back to back on the same warm machine (they share /tmp/site and /tmp/jax_cache).
#
#   here, once:  bash launch/device/fetch_wheels.sh     # wheels the GPU image lacks -> .whl/ (git-ignored)
#   device call: bash launch/device/gpu_check.sh PART   # carry [".whl"]
#
# PART (one H100; session 7, 2026-11-27: 17 steps compiled 8 at a time took 262 s, 140-165 s each in the first
# round, all autotuning the same convolutions one at a time, and 25-35 s each after it; the gpu preset now compiles
# ERM's step at each batch first (--compile_seeds); with the compilation cache of an earlier call, ~11 s):
#   full   one process: every algorithm, PyTorch eager and torch.compile (default and reduce-overhead modes),
#          the variants, profiles of BoDA at 64 and 256 (FULL_SECTIONS=all adds the pipeline, refresh and scaling,
#          which do not fit: session 13's full, all sections, stopped at 574 s building the pipeline's data); then,
#          in the time left of a 10-minute call, the GPU test subset                                  (~8-9 min)
#   steps  every algorithm's step at batch 64, and the profile                                       (~2-4 min)
#   torch  the PyTorch reference at 64 and 256, JAX ERM/BoDA beside it, the model variants            (~5-7 min)
#   rest   input pipeline (read as the trainer reads by default, in threads, and also by 12x4, 0x8 and 0x16
#          worker processes x threads), BoDA refresh (4, 8, 16 reading threads), scaling, the GPU test subset
#                                                                                                     (~3-4 min)
# A session has 15 device minutes, the machine's start (a minute or more), idle waits and transfers included; the
# lent kind is now an H200 (same run, same ratios: the issue's targets are ratios measured in one run): `full`
# (run timeout_s 600), then at once `rest` on the still-warm machine with LIMIT set from the reply's
# lease.budget_left_s minus ~60 s (at most 220; session 13's rest took 172 s with `full`'s compilation cache,
# before the readers and thread counts were added) and TEST_LIMIT=0 (the GPU tests ran in `full`'s time left),
# then give the machine back. Short of time, CALL_LIMIT=480 ends `full` without the GPU tests.
# dry run here: PYTHON=/path/to/venv/bin/python WHEELS=0 BENCH_ARGS=--smoke OUT=/tmp/dry bash ... PART
# then, here: python launch/benchmark.py --merge=<the parts' JSON files> --json=... gives one table and the targets.
#
# Writes the benchmark JSON and logs (and the BoDA step's profile) under $OUT (or runs/device): at most 8 files.
set -uo pipefail
cd "$(dirname "$0")/../.."
PART=${1:-full}
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
    | grep -v "it/s\]\|examples/s\]\|splits/s\]" | tee "$OUT/$name.log"
}

profile_files() {  # per traced batch (a folder boda_<batch>): three summaries (by part of the step, by HLO op
  # kind, by instruction) -> $OUT/profile_boda.txt; the traces and optimized HLOs -> $OUT/profile_boda.tar.gz
  local dir trace
  for dir in /tmp/wbcdg_profile/boda_*/; do
    trace=$(find "$dir" -name '*.xplane.pb' 2>/dev/null | head -1)
    [ -n "$trace" ] || continue
    echo "== $(basename "$dir")"
    "$PY" launch/profile_summary.py --trace="$trace" --by=part --hlo="$dir/boda_step.hlo.txt" --top=20
    "$PY" launch/profile_summary.py --trace="$trace" --top=40
    "$PY" launch/profile_summary.py --trace="$trace" --top=60 --by=instruction
  done 2>&1 | tee "$OUT/profile_boda.txt"
  tar -C /tmp/wbcdg_profile -czf "$OUT/profile_boda.tar.gz" . 2>/dev/null || true
  if [ "$(stat -c %s "$OUT/profile_boda.tar.gz" 2>/dev/null || echo 0)" -gt 15000000 ]; then  # 16 MiB a file back
    tar -C /tmp/wbcdg_profile -czf "$OUT/profile_boda.tar.gz" $(cd /tmp/wbcdg_profile && ls -d */*.hlo.txt)
  fi
}

gpu_tests() {  # gpu_tests SECONDS: the models, train steps and the augmentation (separate planes on a GPU) keep
  # their contracts on the GPU (float32 matmuls: the tests compare to 1e-5). One process (the addopts' pytest-xdist
  # workers would each claim the GPU, and the image may lack xdist), -q once: a second -q drops the count of passed
  # tests, and the warnings would push it out of the last 8 lines. 0 seconds: none.
  [ "$1" -gt 0 ] || return 0
  JAX_DEFAULT_MATMUL_PRECISION=float32 timeout "$1" "$PY" -m pytest -x -rfE -p no:cacheprovider -p no:warnings \
    -p no:xdist -o addopts="-q -m 'not slow'" \
    tests/models/test_resnet.py tests/train/test_train_step.py tests/test_augment.py -k "not sharded" 2>&1 \
    | tail -8 | tee "$OUT/gpu_tests.txt"
}

case "$PART" in
  full)
    rm -rf /tmp/wbcdg_profile
    sections=${FULL_SECTIONS:-steps,torch,variants}
    [ "$sections" = all ] && sections=steps,torch,variants,refresh,pipeline,scaling
    LIMIT=${FULL_LIMIT:-550} bench full --sections="$sections" ${NUM_WORKERS:+--num_workers=$NUM_WORKERS} \
      --torch_timeout_s="${TORCH_LIMIT:-200}" --profile_dir=/tmp/wbcdg_profile --compilation_cache_dir=/tmp/jax_cache
    profile_files
    left=$(( ${CALL_LIMIT:-585} - SECONDS ))
    if [ "$left" -gt 45 ]; then gpu_tests "$left"; fi ;;
  steps)
    rm -rf /tmp/wbcdg_profile
    bench steps --sections=steps --profile_dir=/tmp/wbcdg_profile --compilation_cache_dir=/tmp/jax_cache
    profile_files ;;
  torch)
    bench torch --sections=torch,variants --torch_timeout_s="${TORCH_LIMIT:-200}" \
      --compilation_cache_dir=/tmp/jax_cache ;;
  rest)
    bench rest --sections=refresh,pipeline,scaling ${NUM_WORKERS:+--num_workers=$NUM_WORKERS} \
      --compilation_cache_dir=/tmp/jax_cache
    gpu_tests "${TEST_LIMIT:-150}" ;;
  *) echo "usage: $0 full|steps|torch|rest" >&2; exit 2 ;;
esac
