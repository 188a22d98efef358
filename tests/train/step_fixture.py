"""Builds a tiny stage and a deterministic random batch; shared by the step tests and the sharding script."""

from __future__ import annotations

import numpy as np

from wbcdg_jax import sharding
from wbcdg_jax.classes import NUM_CLASSES
from wbcdg_jax.stage import build_stage

NUM_DOMAINS = 2


def tiny_config(module: str):
  """`configs/<module>.py:tiny` with shapes small enough for a CPU test."""
  import importlib

  config = importlib.import_module(f"configs.{module}").get_config("tiny")
  config.data.per_domain_batch = 4
  config.model.image_size = 32
  config.boda.start_step = 0
  return config


def tiny_counts(seed: int = 0) -> np.ndarray:
  """N[d, c] with a missing pair and a class present in one domain only."""
  rng = np.random.default_rng(seed)
  counts = rng.integers(5, 50, size=(NUM_DOMAINS, NUM_CLASSES)).astype(np.float32)
  counts[1, 3] = 0  # myeloblast missing from domain 1 (as in Acevedo)
  return counts


def tiny_batch(config, step: int = 0, stored: int = 32) -> dict[str, np.ndarray]:
  """Domain-blocked host batch: rows [d*b:(d+1)*b] from domain d."""
  rng = np.random.default_rng(100 + step)
  b = int(config.data.per_domain_batch)
  labels = rng.integers(0, 4, size=NUM_DOMAINS * b).astype(np.int32)
  return {
      "image": rng.integers(0, 256, size=(NUM_DOMAINS * b, stored, stored, 3), dtype=np.uint8),
      "label": labels,
      "domain": np.repeat(np.arange(NUM_DOMAINS, dtype=np.int32), b),
      "mask": np.ones(NUM_DOMAINS * b, bool),
  }


def seeded_boda_stats(stage, counts, seed: int = 1):
  """Initialised BoDA statistics with random centroids, so the BoDA term is active from step 0."""
  import jax.numpy as jnp

  rng = np.random.default_rng(seed)
  boda = stage.state.boda
  means = jnp.asarray(rng.normal(size=boda.means.shape), jnp.float32)
  return boda.replace(means=means, initialized=jnp.asarray(True))


def run_steps(module: str, num_steps: int = 2, mesh=None, o_major_kernels: bool = False):
  """Builds configs/<module>.py:tiny (with train.o_major_kernels) and applies `num_steps` steps; returns (stage,
  state, list of metrics)."""
  import jax

  config = tiny_config(module)
  config.train.o_major_kernels = str(o_major_kernels).lower()
  mesh = mesh or sharding.make_mesh()
  counts = tiny_counts()
  stage = build_stage(config, mesh=mesh, counts=counts)
  state = stage.state
  if state.boda is not None:
    state = state.replace(boda=sharding.replicate(seeded_boda_stats(stage, counts), mesh))
  history = []
  for step in range(num_steps):
    state, metrics = stage.train_step(state, sharding.shard_batch(tiny_batch(config, step), mesh))
    history.append(jax.device_get(metrics))
  return stage, state, history
