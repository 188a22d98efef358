"""The train step keeps the accelerator busy: no data-dependent control flow that XLA:GPU resolves on the host.

XLA runs a `conditional` on a GPU by copying its predicate to the host and blocking until the device is idle, so a
lax.cond in the step (BoDA's "switched on yet?") would stall every step twice (forward and backward).
"""

import re

import jax
import numpy as np

from tests.train.step_fixture import tiny_batch, tiny_config, tiny_counts
from wbcdg_jax import sharding
from wbcdg_jax.stage import build_stage


def test_boda_step_has_no_conditional_and_an_inactive_term_is_harmless():
  config = tiny_config("boda")
  config.boda.start_step = 3  # not yet active, and the statistics were never refreshed
  mesh = sharding.make_mesh()
  stage = build_stage(config, mesh=mesh, counts=tiny_counts())
  batch = sharding.shard_batch(tiny_batch(config), mesh)
  # The compiled program: lowered, the step holds one `case` on the platform (the augmentation's layout,
  # lax.platform_dependent), which compiling for one platform resolves.
  text = stage.train_step.lower(stage.state, batch).compile().as_text()
  assert not re.search(r"\bconditional\(", text), "the compiled step has a conditional (a host sync on GPU)"
  _, metrics = stage.train_step(stage.state, batch)
  metrics = jax.device_get(metrics)
  # Computed on zero centroids and discarded: its gradient must not turn the update non-finite.
  assert metrics["finite"] == 1.0 and metrics["boda"] == 0.0
  assert np.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
