"""What one benchmark run measures: a preset (gpu, cpu, smoke) with any field overridden.

* `gpu`:   the paper's shapes: ResNet-50, 224 px (stored 256 px), bfloat16 compute, every algorithm at total batch
           64, ERM and BoDA against PyTorch eager and torch.compile (default and reduce-overhead modes) at total
           batches 64 and 256, and ERM at 256 with the open implementation choices (_GPU_VARIANTS); all compiled
           in one round ahead of the timing, ERM's step at each batch first; --profile_dir traces BoDA at 64 and
           256.
* `cpu`:   the `quick` preset's model (ResNet-10, 64 px, float32) at total batch 32; PyTorch eager only.
* `smoke`: seconds per section (ResNet-10, 32 px, batch 8, 2 timed steps, unoptimised XLA compiles): checks that
           every section runs; its numbers mean nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Benchmark name -> (configs/<module>.py, training stage).
ALGORITHMS: dict[str, tuple[str, int]] = {
    "erm": ("erm", 1),
    "coral": ("coral", 1),
    "mmd": ("mmd", 1),
    "dann": ("dann", 1),
    "cdann": ("cdann", 1),
    "boda": ("boda", 1),
    "boda_mahalanobis": ("boda_mahalanobis", 1),
    "decoupled_stage2": ("boda_decoupled", 2),
}
SECTIONS = ("steps", "torch", "variants", "refresh", "pipeline", "scaling")
TORCH_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclasses.dataclass
class Settings:
  """Every knob of a run (all recorded in the JSON).

  Attributes:
    preset: the preset the values started from.
    config_preset: configs/base.py preset the algorithm configs start from (paper, quick, tiny).
    image_size: px side fed to the network.
    stored_size: px side of the stored / host images (the step crops and resizes them to image_size).
    depth: ResNet depth.
    dtype: compute dtype ('bfloat16' or 'float32'); parameters and losses stay float32.
    batch: total batch (over devices and source domains) of the algorithm table.
    torch_batches: total batches of the JAX-versus-PyTorch comparison (and of the pipeline section).
    algorithms: names from ALGORITHMS.
    sections: names from SECTIONS to run.
    warmup: untimed steps after the first (compiling) call.
    steps: timed steps per window; repeats: windows (the median window is reported).
    pipeline_steps: timed batches per pipeline measurement.
    torch: 'auto' (run if torch is importable), 'on' or 'off'; torch_compile: 'auto' (on CUDA only), 'on', 'off'.
    torch_compile_modes: the torch.compile modes timed, one child process each ('default'; 'reduce-overhead'
      replays CUDA graphs, so PyTorch does not wait on the host's kernel launches).
    torch_timeout_s: limit on each PyTorch child process.
    scaling_algorithm: the algorithm timed over 1, 2, 4, ... devices; scaling_per_device_batch: its per-device
      batch (0: batch / device count, so the all-device row is the algorithm table's setting).
    variants: implementations timed against the default one: each is `field=value` (several joined by '+')
      overriding configs/base.py fields, the model's when bare ('fold_frozen_bn=false', 'max_pool=slices'),
      another section's when dotted ('train.check_updated_params=true').
    variant_algorithm: the algorithm the variants are timed with, at each of variant_batches (default: each of
      torch_batches).
    compile_threads: steps compiled at once, in threads (XLA compiles release Python's lock).
    compile_ahead: compile every section's steps in one round before timing any (more compiles overlap, so the
      run is shorter; a run stopped while compiling keeps nothing), instead of each section's before its timing.
    compile_seeds: in each round, compile one step per total batch first (ERM's), then the rest: on a GPU they
      then reuse its autotuned convolutions instead of all tuning them at once (steps.seed_steps).
    loop_algorithm: the step fed by the input pipeline (and whose BoDA statistics the refresh section rebuilds).
    data_dir: where the synthetic domains are built ('' = a temporary directory, deleted afterwards).
    synthetic_scale: fraction of the real dataset sizes generated.
    refresh_images: images the refresh row's pass covers at least: each source's training indices are repeated
      (the records are read again) until they add up to it, so that a pass is long enough to time its steady
      state (0: the training split once; session 13's gpu run timed 543 images, 5 batches of 128, where a paper
      run refreshes ~26,300).
    refresh_threads: the reading-thread counts (config.data.num_threads) the refresh section times the reading
      and the refresh at (empty: the config's).
    num_workers, num_threads, prefetch: grain reading processes, threads and read-ahead batches (the defaults are
      the trainer's; raise them to find the pipeline's limit, keeping prefetch >= num_threads).
    alt_readers: other ways to read the pipeline section times beside num_workers x num_threads (a host-read and
      a full-loop row each), as 'WxT': W grain worker processes (0: the trainer's process) with T threads each.
    fast_compile: compile with XLA's backend optimisations off (the smoke: faster compiles, slower steps).
    compilation_cache_dir: JAX persistent compilation cache ('' = off; reported compile times are then loads).
    profile_dir: if set, a jax.profiler trace of a few steps of `profile_algorithm` at each total batch of
      `profile_batches` (empty: `batch`) is written there, in a folder per batch.
    seed: PRNG seed of the synthetic batches and models.
  """

  preset: str = "cpu"
  config_preset: str = "quick"
  image_size: int = 64
  stored_size: int = 64
  depth: int = 10
  dtype: str = "float32"
  batch: int = 32
  torch_batches: tuple[int, ...] = (32,)
  algorithms: tuple[str, ...] = tuple(ALGORITHMS)
  sections: tuple[str, ...] = SECTIONS
  warmup: int = 1
  steps: int = 5
  repeats: int = 1
  pipeline_steps: int = 10
  torch: str = "auto"
  torch_compile: str = "auto"
  torch_compile_modes: tuple[str, ...] = ("default",)
  torch_timeout_s: int = 600
  scaling_algorithm: str = "boda"
  scaling_per_device_batch: int = 0
  variants: tuple[str, ...] = ()
  variant_algorithm: str = "erm"
  variant_batches: tuple[int, ...] = ()
  compile_threads: int = 1
  compile_ahead: bool = False
  compile_seeds: bool = False
  loop_algorithm: str = "boda"
  data_dir: str = ""
  synthetic_scale: float = 0.02
  refresh_images: int = 0
  refresh_threads: tuple[int, ...] = ()
  num_workers: int = 0
  num_threads: int = 4
  prefetch: int = 4
  alt_readers: tuple[str, ...] = ()
  fast_compile: bool = False
  compilation_cache_dir: str = ""
  profile_dir: str = ""
  profile_algorithm: str = "boda"
  profile_batches: tuple[int, ...] = ()
  seed: int = 0

  def validate(self) -> None:
    unknown = [a for a in self.algorithms if a not in ALGORITHMS]
    if unknown:
      raise ValueError(f"--algorithms: unknown {unknown}; choose from {sorted(ALGORITHMS)} or 'all'")
    for name in ("loop_algorithm", "scaling_algorithm", "profile_algorithm", "variant_algorithm"):
      if getattr(self, name) not in ALGORITHMS:
        raise ValueError(f"--{name}={getattr(self, name)!r} is not one of {sorted(ALGORITHMS)}")
    unknown = [s for s in self.sections if s not in SECTIONS]
    if unknown:
      raise ValueError(f"--sections: unknown {unknown}; choose from {SECTIONS}")
    if self.dtype not in ("bfloat16", "float32"):
      raise ValueError(f"--dtype={self.dtype!r} is not 'bfloat16' or 'float32'")
    for name in ("torch", "torch_compile"):
      if getattr(self, name) not in ("auto", "on", "off"):
        raise ValueError(f"--{name}={getattr(self, name)!r} is not 'auto', 'on' or 'off'")
    unknown = [m for m in self.torch_compile_modes if m not in TORCH_COMPILE_MODES]
    if unknown or not self.torch_compile_modes:
      raise ValueError(f"--torch_compile_modes={','.join(self.torch_compile_modes)}: choose one or more of "
                       f"{', '.join(TORCH_COMPILE_MODES)}")
    for variant in self.variants:
      parse_variant(variant)
    for name in ("torch_batches", "variant_batches", "profile_batches"):
      if any(int(b) < 1 for b in getattr(self, name)):
        raise ValueError(f"--{name}={','.join(map(str, getattr(self, name)))}: batches must be >= 1")
    for name in ("steps", "repeats", "pipeline_steps", "batch", "compile_threads"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"--{name}={getattr(self, name)} must be >= 1")
    if int(self.refresh_images) < 0:
      raise ValueError(f"--refresh_images={self.refresh_images} must be >= 0")
    _ = self.alt_reader_list  # raises on a malformed reader
    if any(int(t) < 1 for t in self.refresh_threads):
      raise ValueError(f"--refresh_threads={','.join(map(str, self.refresh_threads))}: thread counts must be >= 1")
    if self.stored_size < self.image_size:
      raise ValueError(f"--stored_size={self.stored_size} is smaller than --image_size={self.image_size}")

  @property
  def variant_batch_list(self) -> tuple[int, ...]:
    """The total batches the variants are timed at: variant_batches, or else torch_batches."""
    return self.variant_batches or self.torch_batches

  @property
  def alt_reader_list(self) -> tuple[tuple[int, int], ...]:
    """alt_readers as (worker processes, threads) pairs."""
    out = []
    for reader in self.alt_readers:
      parts = str(reader).lower().split("x")
      try:
        workers, threads = (int(p) for p in parts)
      except ValueError:
        workers = threads = -1
      if workers < 0 or threads < 1:
        raise ValueError(f"--alt_readers: {reader!r} is not 'WxT' (W >= 0 grain worker processes, T >= 1 threads "
                         f"each), e.g. 0x8")
      out.append((workers, threads))
    return tuple(out)

  @property
  def refresh_thread_list(self) -> tuple[int, ...]:
    """The eval reading-thread counts of the refresh rows: refresh_threads, or else configs/base.py's."""
    return tuple(int(t) for t in self.refresh_threads) or (int(_base_config()["data"]["num_threads"]),)

  @property
  def profile_batch_list(self) -> tuple[int, ...]:
    """The total batches traced with profile_dir: profile_batches, or else (batch,)."""
    return self.profile_batches or (self.batch,)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# The implementations timed against the defaults (same function, configs/base.py fields); the quick and tiny
# presets (the CPU ones) keep the state undonated and the plain stem, so their variants try the other way.
_VARIANTS = ("fold_frozen_bn=false", "max_pool=window", "max_pool=slices", "max_pool=taps",
             "stem_space_to_depth=false", "relu_grad_from_output=false", "train.check_updated_params=true",
             "train.donate_state=false", "optim.flatten=true", "train.o_major_kernels=true")
_CPU_VARIANTS = tuple(v.replace("=false", "=true") if v.startswith(("stem_space_to_depth", "train.donate_state")) else v
                      for v in _VARIANTS)
# On a GPU each variant costs a compile (~30 s, 8 at a time) of a 10-minute device call: only the open questions.
# Settled on an H100 (ERM at batch 256 against the defaults of the time; `--variants=` still times any):
# session 7 (launch/device/results/2026-11-27-h100-session7): fold_frozen_bn=false 0.86x, max_pool=window 0.98x,
# slices 0.97x, stem_space_to_depth=false 0.95x, check_updated_params=true 0.98x, donate_state=false 1.00x;
# session 13 (.../2026-11-27-h100-session13): relu_grad_from_output=false 0.90x, and against 'taps' and row-major
# kernels max_pool=index 1.04x, optim.flatten=true 1.03x, train.o_major_kernels=true 1.02x, which made 'index' and
# o-major kernels (on GPUs) the defaults. Open: whether the two new defaults add up, flatten on top of them, and
# CUDA graphs for the convolutions too; at batch 64 as well, where the host's kernel launches (~6.5 of 10.3 ms a
# step) are what may be saved.
_GPU_VARIANTS = ("max_pool=taps+train.o_major_kernels=false", "optim.flatten=true", "train.gpu_command_buffers=all")

# The gpu preset's repeats=5: at batch 64 the host's launches leave the GPU waiting now and then, and session 13's
# 3 windows a step spread by 7-15% (ERM 10.18-10.90 ms, BoDA 10.46-11.88; at 256 by 0.1%); a window of 20 steps
# takes 0.2 s there.
# The gpu preset's readers: the trainer's default (0 worker processes, 4 threads) first, as the loop target is the
# trainer's; session 13 read with 12 worker processes, and the host read (6,161 images/s at batch 64) was the
# step's rate (6,204), which kept the full loop at 0.74x: on 2 CPU cores a worker process hands a batch over
# through new shared memory at ~3x the cost of reading it in a thread (2,006-2,230 against 6,036 images/s).
PRESETS: dict[str, dict[str, Any]] = {
    "gpu": dict(config_preset="paper", image_size=224, stored_size=256, depth=50, dtype="bfloat16", batch=64,
                torch_batches=(64, 256), warmup=5, steps=20, repeats=5, pipeline_steps=40, torch_timeout_s=420,
                refresh_images=8192, refresh_threads=(4, 8, 16), alt_readers=("12x4", "0x8", "0x16"),
                torch_compile_modes=("default", "reduce-overhead"),
                variants=_GPU_VARIANTS, variant_batches=(64, 256), compile_threads=8, compile_ahead=True,
                compile_seeds=True, profile_batches=(64, 256)),
    "cpu": dict(config_preset="quick", image_size=64, stored_size=64, depth=10, dtype="float32", batch=32,
                torch_batches=(32,), warmup=1, steps=3, repeats=3, pipeline_steps=6, refresh_threads=(2, 4),
                variants=_CPU_VARIANTS),
    "smoke": dict(config_preset="tiny", image_size=32, stored_size=32, depth=10, dtype="float32", batch=8,
                  torch_batches=(8,), warmup=1, steps=2, repeats=1, pipeline_steps=2, synthetic_scale=0.004,
                  torch_compile="off", fast_compile=True, refresh_threads=(1, 4), alt_readers=("0x2",),
                  variants=("+".join(v for v in _CPU_VARIANTS if v not in ("max_pool=slices", "max_pool=taps")),),
                  compile_threads=2),
}


def step_label(name: str, variant: str = "") -> str:
  """How logs and tables name a step: 'erm', or 'erm [max_pool=slices]' for a variant."""
  return f"{name} [{variant}]" if variant else name


def _base_config() -> dict[str, Any]:
  from configs import base  # local import: configs/ sits beside the package, on the path of every launcher
  return base.get_config().to_dict()


def parse_variant(text: str) -> dict[str, Any]:
  """'field=value[+field=value]' -> {'section.field': typed value}; a bare field is the model's ('max_pool'),
  a dotted one any section's scalar field ('train.check_updated_params'). A bad variant raises ValueError naming
  it."""
  config = _base_config()
  out: dict[str, Any] = {}
  for part in text.split("+"):
    name, sep, raw = part.partition("=")
    name, raw = name.strip(), raw.strip()
    if not sep or not name:
      raise ValueError(f"--variants: {text!r}: expected field=value (several joined by '+'), got {part!r}")
    section, _, field = name.rpartition(".")
    section = section or "model"
    fields = config.get(section)
    if not isinstance(fields, dict) or not isinstance(fields.get(field), (bool, int, float, str)):
      known = sorted(k for k, v in (fields or {}).items() if isinstance(v, (bool, int, float, str)))
      raise ValueError(f"--variants: {text!r}: {section}.{field} is not a scalar field of configs/base.py"
                       + (f" (its {section} has {known})" if known else ""))
    default = fields[field]
    try:
      if isinstance(default, bool):
        if raw.lower() not in ("true", "false"):
          raise ValueError(raw)
        value: Any = raw.lower() == "true"
      else:
        value = type(default)(raw)
    except ValueError:
      raise ValueError(f"--variants: {text!r}: {section}.{field}={raw!r} is not a {type(default).__name__}") \
          from None
    out[f"{section}.{field}"] = value
  return out


def make_settings(preset: str, **overrides: Any) -> Settings:
  """The preset's settings with `overrides` (None values are ignored) applied, validated."""
  if preset not in PRESETS:
    raise ValueError(f"--preset={preset!r} is not one of {sorted(PRESETS)}")
  values = dict(PRESETS[preset], preset=preset)
  values.update({k: v for k, v in overrides.items() if v is not None})
  settings = Settings(**values)
  settings.validate()
  return settings
