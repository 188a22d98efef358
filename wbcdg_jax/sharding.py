"""Data parallelism with `jax.jit` + `NamedSharding` over a one-axis device mesh.

The batch is split along its first axis over every device of every process ('data' axis); the train state is
replicated. The same code runs on one CPU, on N fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`), on one GPU and on several hosts: each process passes the
rows it read itself and `jax.make_array_from_process_local_data` assembles the global array.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over all devices of all processes, axis name 'data'.

  The axis is 'Auto' (XLA's sharding propagation decides intermediate layouts): the step is written as
  single-device code and the compiler inserts the cross-device reductions that batch statistics (CORAL, BoDA)
  need.
  """
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_global_batch(global_batch: int, mesh: jax.sharding.Mesh, what: str) -> None:
  """Raises a ValueError naming `what` when the global batch cannot be split evenly over the devices."""
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f"{what}={global_batch} is not divisible by the {n} devices of the mesh; "
                     f"choose a batch that is a multiple of {n}")


def shard_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Turns this process's host rows into global arrays split over the 'data' axis."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a pytree of host values on every device (identical on every process)."""
  return jax.device_put(tree, replicated(mesh))
