"""XLA compiler options that this project's jitted functions pass per compilation (`jax.jit(compiler_options=)`).

For CPUs: XLA:CPU (JAX 0.10) hands convolutions to YNNPACK by default, and on a 2-core AVX2 machine
(AMD EPYC, Zen 3) its convolutions ran slower than XLA's own (Eigen) ones in every case timed, worst in the weight
gradients: batch 32 at 32x32 px, 3x3 64->64, forward 2.2x, input gradient 2.2x, weight gradient 19x (687 vs 36
ms); the 7x7 stem's weight gradient 12x. Without them the CPU benchmark's BoDA step ran at 2.0x the images/s
(81 -> 166, `launch/benchmark.py --preset=cpu`). `compiler_options(platform)` therefore keeps YNNPACK for matrix
products and reductions only on CPUs.

For GPUs, on request (`train.gpu_command_buffers='all'`): which kinds of work XLA:GPU records into command buffers
(CUDA graphs, each launched by one call). With XLA's default, one H100 running BoDA's step at total batch 64
(session 13's profile) still launched 362 of its 943 kernels one by one (the cuDNN convolutions, cuBLASLt matrix
products and memsets), and the host spent 6.5-7.1 ms of each 10.3 ms step launching it, so the GPU waited
whenever the host was slow. 'all' adds convolutions and cuBLASLt; not yet timed on a GPU.

Set per compilation, not in `XLA_FLAGS`: an XLA that does not know the option (a newer JAX may rename an
experimental one) rejects it when compiling, which `_accepted` checks once, whereas an unknown name in
`XLA_FLAGS` aborts the process, GPU runs included. A choice of the user's in `XLA_FLAGS` is left alone.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from absl import logging

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# The kinds of computation XLA:CPU may give YNNPACK. The value replaces XLA's default list, which in JAX 0.10.2 is
# INDIVIDUAL_DOT, REDUCE, INDIVIDUAL_CONVOLUTION (read from `--xla_dump_to`'s debug_options): the same without
# convolutions. (Without REDUCE too, the quick preset's ERM step ran at 0.64x: XLA's own reductions were slower.)
YNN_WITHOUT_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
COMMAND_BUFFER_OPTION = "xla_gpu_enable_command_buffer"
# config.train.gpu_command_buffers -> the option's value (None: XLA's default list). 'all': the command types (as
# JAX 0.10.2's XLA names them; `_accepted` checks them against the XLA at hand) of the work the train step does; it
# has no loops, conditionals or (on one GPU) collectives.
GPU_COMMAND_BUFFERS = {
    "xla": None,
    "all": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONVOLUTION,DYNAMIC_SLICE_FUSION",
}


def platform_of(mesh: jax.sharding.Mesh) -> str:
  """'cpu', 'gpu' or 'tpu': the platform of the mesh's devices."""
  return mesh.devices.flat[0].platform


@functools.cache
def _accepted(option: str, value: str) -> bool:
  """Whether this JAX's XLA compiles with `option=value` (a trivial function on the CPU, once per process: XLA's
  debug options are one set for every platform, so a GPU option's name and value are checked there too)."""
  cpu = jax.devices("cpu")[0]
  fn = jax.jit(lambda x: x + 1, compiler_options={option: value},
               in_shardings=jax.sharding.SingleDeviceSharding(cpu))
  try:
    fn.lower(jax.ShapeDtypeStruct((), jnp.float32)).compile()
  except Exception as e:  # pylint: disable=broad-except  (JaxRuntimeError: INVALID_ARGUMENT, or a renamed type)
    logging.warning("XLA compiler option %s=%s not accepted by jax %s; compiling with XLA's defaults (%s)",
                    option, value, jax.__version__, str(e).splitlines()[-1] if str(e) else type(e).__name__)
    return False
  return True


def compiler_options(platform: str, *, cpu_ynn_convolutions: bool = False,
                     gpu_command_buffers: str = "xla") -> dict[str, str] | None:
  """The `compiler_options` for a jit whose computation runs on `platform` ('cpu', 'gpu', 'tpu').

  On a CPU, unless `cpu_ynn_convolutions` or the user's `XLA_FLAGS` sets the YNNPACK option itself: convolutions
  compiled by XLA, not YNNPACK. On a GPU, `gpu_command_buffers` ('xla' or 'all', a key of GPU_COMMAND_BUFFERS)
  picks the command-buffer types, unless `XLA_FLAGS` sets them (see the module docstring). None (XLA's defaults)
  otherwise, or where this XLA does not know the option.
  """
  if gpu_command_buffers not in GPU_COMMAND_BUFFERS:
    raise ValueError(f"config.train.gpu_command_buffers={gpu_command_buffers!r}: expected one of "
                     f"{tuple(GPU_COMMAND_BUFFERS)}")
  flags = os.environ.get("XLA_FLAGS", "")
  if platform == "gpu":
    value = GPU_COMMAND_BUFFERS[gpu_command_buffers]
    if value is None or COMMAND_BUFFER_OPTION in flags or not _accepted(COMMAND_BUFFER_OPTION, value):
      return None
    return {COMMAND_BUFFER_OPTION: value}
  if platform != "cpu" or cpu_ynn_convolutions or YNN_OPTION in flags:
    return None
  if not _accepted(YNN_OPTION, YNN_WITHOUT_CONVOLUTIONS):
    return None
  return {YNN_OPTION: YNN_WITHOUT_CONVOLUTIONS}
