"""Several JAX processes training one model: starting the distributed runtime, and work done by one process first.

Every process runs the same program. Each reads its own rows of every global batch (data_pipelines/pipeline.py),
`sharding.shard_batch` assembles the global arrays, the jitted step all-reduces gradients across processes, and
evaluation gathers every process's predictions, so the run computes what one process would with the same global
batch. Files other than checkpoints are written by process 0; orbax checkpoints are written by all processes
together (the work directory must be on a filesystem every host sees).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax
from jax.experimental import multihost_utils


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Starts the JAX distributed runtime; call before anything touches a device.

  With no arguments JAX detects the cluster (Cloud TPU pods, SLURM, Open MPI). Otherwise give all three:
  `coordinator_address` is 'host:port' of process 0, reachable from every process. CPU processes exchange
  collectives through gloo (without it cross-process computations on CPU fail).
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise ValueError(f"distributed: give coordinator_address, num_processes and process_id together (or none, to "
                     f"auto-detect), got {coordinator_address!r}, {num_processes!r}, {process_id!r}")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"distributed: process_id={process_id} is not in [0, num_processes={num_processes})")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


@contextlib.contextmanager
def main_process_first(name: str) -> Iterator[None]:
  """Runs the body on process 0, then on the others (e.g. building a dataset the others then only open).

  `name` labels the barrier; every process must enter with the same name.
  """
  if jax.process_count() == 1:
    yield
    return
  if jax.process_index() != 0:
    multihost_utils.sync_global_devices(f"{name}: process 0 done")
  yield
  if jax.process_index() == 0:
    multihost_utils.sync_global_devices(f"{name}: process 0 done")
