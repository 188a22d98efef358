"""Test-session setup, in the environment before JAX is imported, so the scripts the tests start inherit it:

* one persistent XLA compilation cache for the whole run. Many tests build the same tiny stage (same config,
  same shapes) and so compile the same train step, evaluation and initialization again; JAX's persistent cache,
  keyed by the compiled module, its options and XLA_FLAGS, turns the repeats into loads. The launch scripts the
  tests start use it too (wbcdg_jax.protocol.enable_compilation_cache follows JAX_COMPILATION_CACHE_DIR). A cache
  directory the caller already set is kept.
* LLVM at -O0 instead of -O2 (`--xla_backend_optimization_level=0`). The tests compile hundreds of programs and
  run each on a few tiny arrays, so machine-code optimization costs far more than it saves: the tiny BoDA stage
  and its first step compile 1.8x faster on 2 CPU cores. The optimized HLO that tests inspect (fusions, layouts,
  YNNPACK calls) is the same text either way; only its code generation differs. A level the caller set is kept;
  where a GPU or TPU plugin is installed (and JAX_PLATFORMS does not say cpu) XLA keeps its default (3).
"""

import importlib.util
import os
import shutil
import tempfile

_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="wbcdg_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def _may_use_an_accelerator() -> bool:
  """Whether JAX could pick a GPU or TPU here (its plugin is installed and JAX_PLATFORMS does not say cpu)."""
  if os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
    return False
  return any(importlib.util.find_spec(name) for name in (
      "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "libtpu"))


if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "") and not _may_use_an_accelerator():
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
