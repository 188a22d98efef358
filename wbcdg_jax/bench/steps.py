"""Train-step timing: each algorithm's step built by `stage.build_stage` exactly as training builds it, run on a
synthetic batch already on the devices.

The step is compiled ahead of time (`jit(...).lower(state, batch).compile()`: the same executable, with the same
state donation, that the training loop's first call compiles), so compile time is measured on its own; then one
call, `warmup` calls, and `repeats` windows of `steps` calls each closed by `jax.block_until_ready`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import os
import statistics
import time
import warnings
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wbcdg_jax import checkpoint, sharding
from wbcdg_jax.bench.settings import ALGORITHMS, Settings, parse_variant, step_label
from wbcdg_jax.classes import NUM_CLASSES
from wbcdg_jax.models import Classifier
from wbcdg_jax.stage import Stage, build_stage, init_variables


def algorithm_config(name: str, settings: Settings, total_batch: int, variant: str = "") -> ml_collections.ConfigDict:
  """configs/<module>.py at settings.config_preset, with the benchmark's shapes (and a variant's fields)."""
  module, _ = ALGORITHMS[name]
  config = importlib.import_module(f"configs.{module}").get_config(settings.config_preset)
  num_domains = len(config.data.sources)
  if total_batch % num_domains:
    raise ValueError(f"benchmark: total batch {total_batch} is not divisible by the {num_domains} source domains "
                     f"of configs/{module}.py")
  config.seed = int(settings.seed)
  config.model.image_size = int(settings.image_size)
  config.model.depth = int(settings.depth)
  config.model.dtype = settings.dtype
  config.data.stored_size = int(settings.stored_size)
  config.data.per_domain_batch = total_batch // num_domains
  config.data.synthetic_scale = float(settings.synthetic_scale)
  config.data.num_workers = int(settings.num_workers)
  config.data.target = ""  # no unseen domain is read
  # Active from the first step, with seeded statistics, so the timed step is the step BoDA trains with.
  config.boda.start_step = 0
  for path, value in (parse_variant(variant) if variant else {}).items():
    section, field = path.split(".")
    config[section][field] = value
  return config


def synthetic_counts(num_domains: int, seed: int = 0) -> np.ndarray:
  """float32 [K, C] training counts N[d, c] with a few missing pairs (as Acevedo lacks three classes)."""
  rng = np.random.default_rng(seed)
  counts = rng.integers(5, 300, size=(num_domains, NUM_CLASSES)).astype(np.float32)
  if num_domains > 1:
    counts[1, [3, 11, 12]] = 0
  return counts


def synthetic_batch(config: ml_collections.ConfigDict, counts: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
  """A host batch in the pipeline's format: domain blocks, labels drawn from each domain's present classes."""
  rng = np.random.default_rng(seed)
  b, size = int(config.data.per_domain_batch), int(config.data.stored_size)
  num_domains = counts.shape[0]
  labels = np.concatenate([rng.choice(np.flatnonzero(counts[d] > 0), size=b) for d in range(num_domains)])
  return {"image": rng.integers(0, 256, size=(num_domains * b, size, size, 3), dtype=np.uint8),
          "label": labels.astype(np.int32),
          "domain": np.repeat(np.arange(num_domains, dtype=np.int32), b),
          "mask": np.ones(num_domains * b, bool)}


def mesh_of(num_devices: int) -> jax.sharding.Mesh:
  """The training mesh (all devices) or the same 'data' mesh over the first `num_devices` devices."""
  if num_devices == jax.device_count():
    return sharding.make_mesh()
  return jax.make_mesh((num_devices,), (sharding.DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:num_devices])


def compiler_options(settings: Settings) -> dict[str, Any] | None:
  """Extra options of the benchmark's ahead-of-time compiles: none, or, with settings.fast_compile (the smoke),
  XLA's backend optimisations off, which roughly halves CPU compile times (the steps run slower).

  A level already set in XLA_FLAGS (the tests set 0) is left to apply by itself: the same request passed again
  as a compile option changes the persistent compilation cache's key, and the smoke's steps, the very programs
  the training tests compile, would then miss the cache entries those tests wrote.
  """
  if not settings.fast_compile or "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
    return None
  return {"xla_backend_optimization_level": 0}


@dataclasses.dataclass
class BuiltStep:
  """One algorithm's compiled step with its (latest, donated-forward) state and device batch."""

  name: str
  variant: str
  config: ml_collections.ConfigDict
  stage: Stage
  mesh: jax.sharding.Mesh
  step: Callable
  state: Any
  batch: dict[str, jax.Array]
  total_batch: int
  compile_s: float

  @property
  def num_devices(self) -> int:
    return int(self.mesh.devices.size)

  def run(self, num_steps: int, batches=None):
    """Applies `num_steps` steps (on `next(batches)`, device batches as `sharding.device_batches` gives them, if
    given, else on the device batch); returns the last metrics."""
    state, metrics = self.state, None
    for _ in range(num_steps):
      batch = self.batch if batches is None else next(batches)
      state, metrics = self.step(state, batch)
    self.state = state
    return metrics


@dataclasses.dataclass
class PreparedStep:
  """One algorithm's stage (its train step jitted, not yet compiled), initial state and device batch."""

  config: ml_collections.ConfigDict
  stage: Stage
  mesh: jax.sharding.Mesh
  state: Any
  batch: dict[str, jax.Array]


def prepare_step(name: str, settings: Settings, *, total_batch: int, num_devices: int,
                 variant: str = "") -> PreparedStep:
  """`name`'s stage at this total batch on the first `num_devices` devices, with a state whose BoDA statistics
  are seeded (so the BoDA term is computed) and a synthetic device batch.

  Random initial weights on purpose: callers silence the 'config.init.checkpoint is empty' warning (StepCache
  does), since changing warning filters is not thread-safe.
  """
  config = algorithm_config(name, settings, total_batch, variant)
  _, stage_index = ALGORITHMS[name]
  mesh = mesh_of(num_devices)
  counts = synthetic_counts(len(config.data.sources), settings.seed)
  variables = None
  if stage_index == 2:  # stage 2 starts from a stage-1 encoder; random weights time the same
    model = checkpoint.model_from_config(config, Classifier)
    variables = init_variables(model, config, jax.random.key(settings.seed))
  st = build_stage(config, mesh=mesh, counts=counts, stage=stage_index, variables=variables)
  state = st.state
  if state.boda is not None:
    # Centroids as after a refresh, so the BoDA term is computed (it is skipped until statistics exist).
    rng = np.random.default_rng(settings.seed + 1)
    boda = state.boda.replace(means=jnp.asarray(rng.normal(size=state.boda.means.shape), jnp.float32),
                              initialized=jnp.asarray(True))
    state = state.replace(boda=sharding.replicate(boda, mesh))
  batch = sharding.shard_batch(synthetic_batch(config, counts, settings.seed), mesh)
  return PreparedStep(config=config, stage=st, mesh=mesh, state=state, batch=batch)


def build_step(name: str, settings: Settings, *, total_batch: int, num_devices: int, variant: str = "") -> BuiltStep:
  """Builds and compiles `name`'s step at this total batch on the first `num_devices` devices (see
  `prepare_step`)."""
  prepared = prepare_step(name, settings, total_batch=total_batch, num_devices=num_devices, variant=variant)
  t0 = time.perf_counter()
  compiled = prepared.stage.train_step.lower(prepared.state, prepared.batch).compile(compiler_options(settings))
  compile_s = time.perf_counter() - t0
  return BuiltStep(name=name, variant=variant, config=prepared.config, stage=prepared.stage, mesh=prepared.mesh,
                   step=compiled, state=prepared.state, batch=prepared.batch, total_batch=total_batch,
                   compile_s=compile_s)


def timed_windows(run: Callable[[int], Any], *, warmup: int, steps: int, repeats: int) -> dict[str, Any]:
  """Times `run(n)` (n steps, returns something to block on): first call, warmup, median of `repeats` windows.

  Returns:
    dict: first_call_s, step_s (median seconds per step), window_step_s (every window), last (run's output).
  """
  t0 = time.perf_counter()
  last = jax.block_until_ready(run(1))
  first = time.perf_counter() - t0
  if warmup:
    last = jax.block_until_ready(run(warmup))
  windows = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    last = jax.block_until_ready(run(steps))
    windows.append((time.perf_counter() - t0) / steps)
  return {"first_call_s": first, "step_s": statistics.median(windows), "window_step_s": windows, "last": last}


def time_steps(builts: list[BuiltStep], settings: Settings, *, steps: int | None = None,
               batches=None) -> list[dict[str, Any]]:
  """One row per step: first call, `warmup` calls, then `repeats` rounds that time one window of every step in
  turn, so that drifting clocks or a busy shared machine slow all of them alike (ratios stay comparable).

  Args:
    builts: compiled steps.
    steps: timed steps per window (default settings.steps).
    batches: an iterator of device batches (`sharding.device_batches`) feeding the (single) step as the trainer
      does, instead of its device batch.

  Returns:
    rows with images_per_s and step_ms from the median window, best_step_ms, compile_s, first_call_s, the last
    step's loss and whether it was finite.
  """
  steps = int(steps or settings.steps)
  if batches is not None and len(builts) != 1:
    raise ValueError("time_steps: a batch iterator can feed only one step")

  def run(built, n):
    metrics = built.run(n, batches)
    return jax.block_until_ready((built.state, metrics))[1]

  first, last, windows = [], [], [[] for _ in builts]
  for built in builts:
    t0 = time.perf_counter()
    last.append(run(built, 1))
    first.append(time.perf_counter() - t0)
    if settings.warmup:
      last[-1] = run(built, settings.warmup)
  for _ in range(settings.repeats):
    for i, built in enumerate(builts):
      t0 = time.perf_counter()
      last[i] = run(built, steps)
      windows[i].append((time.perf_counter() - t0) / steps)
  rows = []
  for built, first_s, metrics, win in zip(builts, first, jax.device_get(last), windows):
    step_s = statistics.median(win)
    rows.append({"name": built.name, "model_variant": built.variant, "batch": built.total_batch,
                 "devices": built.num_devices,
                 "images_per_s": built.total_batch / step_s, "step_ms": 1e3 * step_s,
                 "best_step_ms": 1e3 * min(win), "compile_s": built.compile_s, "first_call_s": first_s,
                 "window_step_ms": [1e3 * w for w in win], "loss": float(metrics["total"]),
                 "finite": bool(metrics["finite"] > 0)})
  return rows


def time_step(built: BuiltStep, settings: Settings, *, steps: int | None = None, batches=None) -> dict[str, Any]:
  """`time_steps` of one step."""
  return time_steps([built], settings, steps=steps, batches=batches)[0]


StepKey = tuple[str, int, int, str]  # (algorithm, total batch, devices, model variant)


def seed_steps(keys: list[StepKey], built: Iterable[StepKey] = ()) -> list[StepKey]:
  """The steps to compile before the others: one per (total batch, devices) that `built` has none of, ERM's
  default step where `keys` has it.

  Why: XLA:GPU autotunes each convolution and matmul while compiling, one compile at a time on a GPU (a lock), and
  keeps the results in a per-process cache keyed by the instruction. Compiled together, steps that share the
  backbone's shapes all wait on that lock and tune the same convolutions (one H100, session 7: 8 at a time took
  140-165 s each; the steps compiled after them, on the filled cache, 25-35 s). Compiled after one step of
  their shapes, they find the backbone tuned.
  """
  def rank(key: StepKey) -> int:  # ERM's default step; else a stage-1 step (forward and backward), default first
    name, _, _, variant = key
    return 0 if (name, variant) == ("erm", "") else 1 + bool(variant) + 2 * (ALGORITHMS[name][1] != 1)

  done = {(batch, devices) for _, batch, devices, _ in built}
  seeds: dict[tuple[int, int], StepKey] = {}
  for key in keys:
    group = (key[1], key[2])
    if group not in done and (group not in seeds or rank(key) < rank(seeds[group])):
      seeds[group] = key
  return list(seeds.values())


class StepCache:
  """Builds each (algorithm, total batch, devices, variant) step once per run; sections share them."""

  def __init__(self, settings: Settings, log: Callable[[str], None] = print):
    self.settings = settings
    self.log = log
    self._built: dict[StepKey, BuiltStep] = {}

  @staticmethod
  def key(name: str, total_batch: int, num_devices: int | None = None, variant: str = "") -> StepKey:
    return (name, int(total_batch), int(num_devices or jax.device_count()), variant)

  def _build(self, key: StepKey) -> BuiltStep:
    name, batch, devices, variant = key
    label = step_label(name, variant)
    self.log(f"compiling {label} at total batch {batch} on {devices} device(s)")
    built = build_step(name, self.settings, total_batch=batch, num_devices=devices, variant=variant)
    self.log(f"  compiled {label} at {batch} in {built.compile_s:.1f} s")
    return built

  def prebuild(self, keys: Iterable[StepKey]) -> None:
    """Compiles the missing steps, settings.compile_threads at a time (with settings.compile_seeds, one step per
    total batch and device count first: see `seed_steps`).

    XLA compiles release Python's lock and each runs mostly on one core, so threads overlap them: on one H100
    (16 cores) five ResNet-50 steps at total batch 64 compiled 4 at a time took 134-146 s each, against 127 s
    for one alone.
    """
    todo = list(dict.fromkeys(k for k in keys if k not in self._built))
    if not todo:
      return
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message="config.init.checkpoint is empty")  # random weights on purpose
      if self.settings.compile_seeds:
        seeds = seed_steps(todo, built=self._built)
        if seeds and len(seeds) < len(todo):
          self.log("compiling first, to fill XLA's autotuning cache: "
                   + ", ".join(f"{step_label(k[0], k[3])} at {k[1]}" for k in seeds))
          self._compile(seeds)
          todo = [k for k in todo if k not in seeds]
      self._compile(todo)

  def _compile(self, todo: list[StepKey]) -> None:
    threads = min(max(1, int(self.settings.compile_threads)), len(todo))
    if threads == 1:
      for key in todo:
        self._built[key] = self._build(key)
      return
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      for key, built in zip(todo, pool.map(self._build, todo)):
        self._built[key] = built

  def get(self, name: str, total_batch: int, num_devices: int | None = None, variant: str = "") -> BuiltStep:
    key = self.key(name, total_batch, num_devices, variant)
    self.prebuild([key])
    return self._built[key]
