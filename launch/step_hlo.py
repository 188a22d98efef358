r"""Compiles a benchmark train step for a GPU this machine may not have, and lists its kernels' memory traffic.

  # once, in a virtual environment of its own: the CUDA build of this project's JAX version (no GPU needed)
  python3 -m venv /tmp/cuda_venv && /tmp/cuda_venv/bin/pip install -e . "jax[cuda12]==$(python -c \
      'import jax; print(jax.__version__)')"
  JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 /tmp/cuda_venv/bin/python launch/step_hlo.py --algorithm=boda --batch=64 \
      --variants=,max_pool=taps,optim.flatten=true --hlo_dir=runs/step_hlo
  python launch/step_hlo.py --target=local --preset=cpu --batch=32     # this machine's devices (no CUDA build)

XLA compiles for an H100 ahead of time from `launch/device/h100_target.textproto` (the GPU's published
properties; `--target_config` takes another GPU's), without running anything, so it autotunes nothing: cuDNN
and cuBLAS choose by their heuristics, which can change a kernel's speed but not what is fused. For each variant
(`field=value` of configs/base.py, as the benchmark's --variants; '' is the default step) it prints the kernels,
the bytes they read and write by part of the step (`wbcdg_jax/bench/hlo_traffic.py`), the copies and the cuDNN
convolutions by fused activation, and, with --top, the kernels that move the most. Use it where no GPU is lent
to see what a change does to the compiled GPU step; time it on a GPU (launch/benchmark.py) before relying on it.
"""

import json
import os

import _paths  # noqa: F401  (repository root on sys.path)
from absl import app, flags, logging

_ALGORITHM = flags.DEFINE_string("algorithm", "boda", "Benchmark algorithm name (launch/benchmark.py's).")
_BATCH = flags.DEFINE_integer("batch", 64, "Total batch.")
_VARIANTS = flags.DEFINE_list("variants", [""], "Variants to compile, '' for the default step: e.g. "
                              "',max_pool=taps,optim.flatten=true'.")
_PRESET = flags.DEFINE_string("preset", "gpu", "Benchmark preset giving the shapes (gpu: ResNet-50, 224 px, bf16).")
_TARGET = flags.DEFINE_enum("target", "h100", ["h100", "local"], "h100: compile for the GPU of --target_config "
                            "without one; local: for this machine's devices.")
_TARGET_CONFIG = flags.DEFINE_string("target_config", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                  "device", "h100_target.textproto"),
                                     "XLA GPU target description (gpu_device_info, cuDNN and CUDA versions).")
_HLO_DIR = flags.DEFINE_string("hlo_dir", None, "Write each variant's optimized HLO here.")
_TOP = flags.DEFINE_integer("top", 0, "Also list each variant's N kernels that move the most bytes.")
_JSON = flags.DEFINE_string("json", None, "Write the summaries here.")


def _target_mesh(target: str, config_path: str):
  """The mesh to compile for: one device of the target GPU (no GPU needed), or this machine's devices."""
  import jax
  from wbcdg_jax import sharding

  if target == "local":
    return sharding.make_mesh()
  from jax.experimental import topologies
  try:
    with open(config_path) as f:
      target_config = f.read()
  except OSError as e:
    raise app.UsageError(f"--target_config: cannot read {config_path}: {e}")
  try:
    topology = topologies.get_topology_desc(platform="cuda", target_config=target_config, topology="1x1x1")
  except Exception as e:  # pylint: disable=broad-except  # no CUDA plugin: say how to get one
    raise app.UsageError(
        f"--target=h100 needs JAX's CUDA plugin of this JAX version ({jax.__version__}) installed, e.g. "
        f"`pip install \"jax[cuda12]=={jax.__version__}\"` in a virtual environment of its own, and, on a "
        f"machine without a GPU, JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 ({type(e).__name__}: {e})")
  return topologies.make_mesh(topology, (1,), (sharding.DATA_AXIS,))


def compile_variant(name: str, settings, batch: int, variant: str, mesh):
  """Optimized HLO text of `name`'s train step (variant applied) compiled for `mesh`."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from wbcdg_jax import sharding
  from wbcdg_jax.bench.steps import prepare_step
  from wbcdg_jax.train_step import compile_train_step

  # The stage is built on this machine (one device), then its train step is compiled again for the target.
  prepared = prepare_step(name, settings, total_batch=batch, num_devices=1, variant=variant)
  replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(sharding.DATA_AXIS))
  state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), prepared.state)
  # train.o_major_kernels='auto' was resolved for this machine's mesh; the target's platform decides it.
  options = dict(prepared.stage.step_options,
                 o_major_kernels=sharding.o_major_kernels_on(prepared.config.train.o_major_kernels, mesh))
  step = compile_train_step(mesh, state=state, **options)
  batch_shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=split) for k, v in prepared.batch.items()}
  return step.lower(state, batch_shapes).compile().as_text()


def _row(variant: str, summary: dict, base: dict | None) -> str:
  gb = lambda b: f"{b / 1e9:.3f}"
  parts = summary["by_part"]
  part = lambda *names: sum(parts.get(n, {}).get("bytes", 0) for n in names)
  delta = "" if base is None else f" ({(summary['bytes'] - base['bytes']) / 1e9:+.3f})"
  activations = ", ".join(f"{k} {n}" for k, n in summary["convolution_activations"].items())
  return (f"| {variant or 'default'} | {summary['kernels']} | {gb(summary['bytes'])}{delta} | "
          f"{gb(part('augment'))} | {gb(part('model forward'))} | {gb(part('model backward'))} | "
          f"{gb(part('optimizer', 'keep_or_drop'))} | {summary['copies']} ({gb(summary['copy_bytes'])} GB) | "
          f"{activations} |")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import warnings
  from wbcdg_jax.bench import hlo_traffic, settings as settings_lib

  settings = settings_lib.make_settings(_PRESET.value)
  if _ALGORITHM.value not in settings_lib.ALGORITHMS:
    raise app.UsageError(f"--algorithm={_ALGORITHM.value!r} is not one of {sorted(settings_lib.ALGORITHMS)}")
  variants = [v.strip() for v in _VARIANTS.value] or [""]
  for variant in variants:
    if variant:
      try:
        settings_lib.parse_variant(variant)
      except ValueError as e:
        raise app.UsageError(str(e))
  mesh = _target_mesh(_TARGET.value, _TARGET_CONFIG.value)
  print(f"{_ALGORITHM.value} at total batch {_BATCH.value}, preset {_PRESET.value}, compiled for "
        f"{mesh.devices.flat[0].device_kind} ({_TARGET.value})\n")
  lines = ["| variant | kernels | GB read + written | augment | model forward | model backward | optimizer | "
           "copies | cuDNN convolutions by fused activation |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | "
           "---: | --- |"]
  summaries, base = {}, None
  for variant in variants:
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message="config.init.checkpoint is empty")  # random weights on purpose
      hlo = compile_variant(_ALGORITHM.value, settings, _BATCH.value, variant, mesh)
    if _HLO_DIR.value:
      os.makedirs(_HLO_DIR.value, exist_ok=True)
      with open(os.path.join(_HLO_DIR.value, f"{_ALGORITHM.value}_{_BATCH.value}_{variant or 'default'}.hlo.txt"),
                "w") as f:
        f.write(hlo)
    summary = hlo_traffic.summarize(hlo)
    summaries[variant or "default"] = summary
    lines.append(_row(variant, summary, base))
    base = base or summary
    if _TOP.value:
      top = sorted(hlo_traffic.kernels(hlo), key=lambda k: -k.bytes)[:_TOP.value]
      print(f"{variant or 'default'}: the {len(top)} kernels that move the most\n" +
            "\n".join(f"  {k.bytes / 1e6:9.1f} MB  {k.name}  ({k.part})" for k in top) + "\n")
  print("\n".join(lines))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"algorithm": _ALGORITHM.value, "batch": _BATCH.value, "preset": _PRESET.value,
                 "target": _TARGET.value, "summaries": summaries}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
