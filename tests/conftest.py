"""Test-session setup: one persistent XLA compilation cache for the whole run.

Many tests build the same tiny stage (same config, same shapes) and so compile the same train step, evaluation
and initialization again; JAX's persistent cache, keyed by the compiled module and its options, turns the
repeats into loads. Set through the environment before JAX is imported, so that the scripts the tests start in
subprocesses share it (launch scripts set their own `<workdir>/jax_cache`, as in real runs). A cache directory the
caller already set is kept.
"""

import os
import shutil
import tempfile

_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="wbcdg_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
