"""Data parallelism with `jax.jit` + `NamedSharding` over a one-axis device mesh.

The batch is split along its first axis over every device of every process ('data' axis); the train state is
replicated. The same code runs on one CPU, on N fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`), on one GPU and on several hosts: each process passes the
rows it read itself and `jax.make_array_from_process_local_data` assembles the global array.
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from wbcdg_jax import xla_options

DATA_AXIS = "data"
O_MAJOR_KERNELS = ("auto", "true", "false")  # config.train.o_major_kernels


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


def device_batches(host_batches: grain.IterDataset, mesh: jax.sharding.Mesh, *, prefetch: int) -> grain.IterDataset:
  """`host_batches` (dicts of this process's rows) placed on the mesh by `shard_batch`, with `prefetch` batches
  read and copied ahead by a background thread (0: placed when the loop asks for them, on its own thread).

  Why a thread: on one H100 at total batch 64 the host spends ~6.5 ms of the step's ~10.3 ms launching its
  kernels, and the loop's own `next` and host-to-device copy on the same thread made the full loop host-bound
  (0.74x the step on device data, session 13; 0.96x at batch 256). jaxlib releases the GIL while it launches a
  step, so the thread's reading and copying overlap with it.

  grain's thread prefetch keeps each batch's iterator state beside it: the returned dataset's iterator reports
  (`get_state`, so in checkpoints) the position after the last batch taken from it, not after the ones read ahead,
  and `set_state` drops those. Close the iterator when done: it stops the thread (and grain's worker processes).

  Returns:
    grain IterDataset of dicts of global jax.Arrays (the leading axis split over the 'data' axis).
  """
  if prefetch < 0:
    raise ValueError(f"device_batches: prefetch must be >= 0 batches, got {prefetch}")
  placed = host_batches.map(lambda batch: shard_batch(batch, mesh))
  if not prefetch:
    return placed
  return grain.experimental.ThreadPrefetchIterDataset(placed, prefetch_buffer_size=int(prefetch))


def _is_conv_kernel(path, leaf) -> bool:
  """A convolution kernel [kh, kw, Cin, Cout] of the parameters, or an optimizer moment of one (same path end)."""
  last = path[-1] if path else None
  return getattr(last, "key", getattr(last, "name", None)) == "kernel" and getattr(leaf, "ndim", 0) == 4


def o_major_kernels_on(setting: str | bool, mesh: jax.sharding.Mesh) -> bool:
  """config.train.o_major_kernels -> whether `state_shardings` keeps the kernels output-channel-major: 'auto' on
  GPUs (one H100, ERM at total batch 256: 1.02x, session 13), not on CPUs (2 cores: 0.89x, XLA:CPU's
  convolutions want the row-major kernel) nor TPUs (not timed); 'true' / 'false' (or a bool) as given."""
  if isinstance(setting, (bool, np.bool_)):
    return bool(setting)
  if setting not in O_MAJOR_KERNELS:
    raise ValueError(f"config.train.o_major_kernels={setting!r}: expected one of {O_MAJOR_KERNELS}")
  if setting == "auto":
    return xla_options.platform_of(mesh) == "gpu"
  return setting == "true"


def state_shardings(state: Any, mesh: jax.sharding.Mesh, *, o_major_kernels: bool = False) -> Any:
  """The train state's placement: replicated; with `o_major_kernels`, the convolution kernels (and their
  optimizer moments) are stored output-channel-major in device memory ([Cout][kh][kw][Cin], cuDNN's filter layout
  for NHWC), their shapes and values unchanged.

  With the default row-major [kh, kw, Cin, Cout], XLA:GPU transposes each kernel for its forward convolution
  and each weight gradient (cuDNN's output layout) in the optimizer update, which, a transpose, cannot write into
  the donated state's buffers: 147 copies follow it. O-major, the update is elementwise and in place (compiled
  for an H100: 36 copies of a few bytes left, of batch-norm scales; 0.62 GB a step less). Values read back to the
  host are the same. A state placed otherwise
  (a restored checkpoint) must be put into these shardings (`jax.device_put`) before the step: jit refuses a
  committed argument whose device layout is not the compiled one.

  Returns a NamedSharding (the whole state replicated) or, with `o_major_kernels`, a pytree like `state` of
  NamedShardings and `Format`s.
  """
  replicated_ = replicated(mesh)
  if not o_major_kernels:
    return replicated_
  # Imported here, not at the top: the layout API is still experimental (renamed in JAX 0.7), and a JAX
  # without it should only fail the runs that ask for this option, with this message.
  try:
    from jax.experimental.layout import Format, Layout  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"train.o_major_kernels=true needs jax.experimental.layout.Format/Layout, which JAX "
                      f"{jax.__version__} does not have ({e}); set train.o_major_kernels=false") from e
  o_major = Format(Layout(major_to_minor=(3, 0, 1, 2)), replicated_)
  return jax.tree_util.tree_map_with_path(lambda path, leaf: o_major if _is_conv_kernel(path, leaf) else replicated_,
                                          state)


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a pytree of host values on every device (identical on every process)."""
  return jax.device_put(tree, replicated(mesh))
