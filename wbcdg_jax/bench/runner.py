"""Runs the benchmark's sections in order and returns one JSON-ready dict (see report.py for the table).

Order matters on a GPU: the PyTorch reference runs first, in child processes, before this process's JAX claims
the accelerator's memory (XLA preallocates most of it on first use).
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import jax

from wbcdg_jax.bench import profile_summary, report
from wbcdg_jax.bench.settings import SECTIONS, Settings, step_label
from wbcdg_jax.bench.steps import StepCache, algorithm_config, time_steps
from wbcdg_jax.models import IMPLEMENTATION_FIELDS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "dm-pix")


def _stderr(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def environment() -> dict[str, Any]:
  """Device name, counts and library versions."""
  versions = {}
  for name in _VERSIONED:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  device = jax.devices()[0]
  return {"device_kind": device.device_kind, "platform": device.platform, "device_count": jax.device_count(),
          "local_device_count": jax.local_device_count(), "process_count": jax.process_count(),
          "versions": versions, "python": platform.python_version(), "cpu_count": os.cpu_count(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ----------------------------------------------------------------------------------------------------- PyTorch


def _torch_child(spec: dict[str, Any], timeout_s: int) -> list[dict[str, Any]]:
  """Runs one PyTorch variant over its batches in a child process; the batches it did not report (a crash, the
  time limit) come back as skipped rows with the reason."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
  cmd = [sys.executable, "-m", "wbcdg_jax.bench.torch_reference", json.dumps(spec)]
  try:
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    stdout = out.stdout
    reason = f"child exited with {out.returncode}: {out.stderr.strip()[-1500:]}"
  except subprocess.TimeoutExpired as e:
    stdout = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    reason = f"child ran past --torch_timeout_s={timeout_s}"
  return rows_from_child(stdout, spec, reason)


def rows_from_child(stdout: str, spec: dict[str, Any], reason: str) -> list[dict[str, Any]]:
  """The rows a PyTorch child printed, then a skipped row (with `reason`) for each batch it did not report."""
  rows = [json.loads(line)["row"] for line in stdout.splitlines() if line.startswith('{"row"')]
  reported = {r["batch"] for r in rows}
  rows += [{"variant": spec["variant"], "batch": b, "status": "skipped", "reason": reason}
           for b in spec["batches"] if b not in reported]
  return rows


def torch_variant(mode: str) -> str:
  """The variant name of a torch.compile mode: 'compile' (the default mode) or 'compile reduce-overhead'."""
  return "compile" if mode == "default" else f"compile {mode}"


def torch_label(variant: str) -> str:
  """How rows and ratios name a PyTorch variant: 'torch eager', 'torch.compile', 'torch.compile reduce-overhead'."""
  return "torch eager" if variant == "eager" else "torch." + variant


def torch_rows(settings: Settings, config) -> dict[str, Any]:
  """PyTorch eager (and torch.compile) rows at settings.torch_batches, or the reason they were skipped."""
  if settings.torch == "off":
    return {"status": "skipped", "reason": "--torch=off", "rows": []}
  if importlib.util.find_spec("torch") is None:
    if settings.torch == "on":
      raise RuntimeError("--torch=on but torch is not importable")
    return {"status": "skipped", "reason": "torch not importable", "rows": []}
  spec = {"depth": settings.depth, "image_size": settings.image_size, "batches": list(settings.torch_batches),
          "dtype": settings.dtype, "warmup": settings.warmup, "steps": settings.steps, "repeats": settings.repeats,
          "num_classes": 13, "head": config.model.head, "mlp_width": int(config.model.mlp_width),
          "lr": float(config.optim.lr)}
  rows = _torch_child(dict(spec, variant="eager", mode=None), settings.torch_timeout_s)
  compiled = [torch_variant(mode) for mode in settings.torch_compile_modes]
  if settings.torch_compile == "on" or (settings.torch_compile == "auto" and
                                        any(r.get("device", "cpu") != "cpu" for r in rows)):
    for variant, mode in zip(compiled, settings.torch_compile_modes):
      rows += _torch_child(dict(spec, variant=variant, mode=mode), settings.torch_timeout_s)
  else:
    reason = ("--torch_compile=off" if settings.torch_compile == "off"
              else "torch.compile runs on CUDA only unless --torch_compile=on")
    rows += [{"variant": v, "batch": b, "status": "skipped", "reason": reason} for v in compiled
             for b in spec["batches"]]
  for row in rows:
    row["name"] = torch_label(row["variant"])
    row["devices"] = 1
    if row.get("status") == "ok":
      row["note"] = f"{row['impl']}, torch {row['torch']}, {row['device']}"
  return {"status": "ok", "rows": rows}


def compare_with_torch(torch_section: dict[str, Any], jax_rows: list[dict[str, Any]]) -> None:
  """Adds the JAX rows and the JAX / PyTorch ratios (per batch, to each PyTorch variant) to the torch section, in
  place; a JAX row's own ratio is to torch.compile's default mode if it ran, else to the first variant that ran."""
  ok = {(r["variant"], r["batch"]): r for r in torch_section["rows"] if r.get("status") == "ok"}
  variants = sorted({v for v, _ in ok}, key=lambda v: (v != "compile", v == "eager", v))
  ratios = {}
  for row in jax_rows:
    batch = row["batch"]
    for variant in variants:
      ref, label = ok.get((variant, batch)), torch_label(variant)
      if ref is not None:
        ratios.setdefault(str(batch), {})[f"{row['name']} / {label}"] = row["images_per_s"] / ref["images_per_s"]
        if row.get("ratio") is None:
          row["ratio"], row["ratio_to"] = row["images_per_s"] / ref["images_per_s"], label
    row["name"] = f"JAX {row['name']}"
  torch_section["rows"] = torch_section["rows"] + jax_rows
  torch_section["ratios"] = ratios


# ---------------------------------------------------------------------------------------------------- sections


def _rows_for(cache: StepCache, settings: Settings, known: dict, keys: list[tuple]) -> list[dict[str, Any]]:
  """A copy of the row of each step key: timed now (all together) unless `known` has it; new rows join `known`."""
  todo = [k for k in keys if k not in known]
  known.update(zip(todo, time_steps([cache.get(*k) for k in todo], settings)))
  return [dict(known[k]) for k in keys]


def _scaling_keys(settings: Settings) -> tuple[list[tuple], int]:
  """The scaling rows' step keys (fixed per-device batch on 1, 2, 4, ... and all devices) and that batch."""
  total = jax.device_count()
  per_device = settings.scaling_per_device_batch or settings.batch // total
  if per_device < 1:
    raise ValueError(f"--batch={settings.batch} is smaller than the {total} devices; set "
                     f"--scaling_per_device_batch")
  counts = sorted({2**i for i in range(total.bit_length()) if 2**i < total} | {total})
  return [StepCache.key(settings.scaling_algorithm, per_device * n, n) for n in counts], per_device


def scaling_rows(cache: StepCache, settings: Settings, known: dict) -> list[dict[str, Any]]:
  """settings.scaling_algorithm at a fixed per-device batch on 1, 2, 4, ... and all devices."""
  if jax.process_count() > 1:
    return [{"name": settings.scaling_algorithm, "status": "skipped", "reason": "multi-process run"}]
  keys, per_device = _scaling_keys(settings)
  rows = _rows_for(cache, settings, known, keys)
  base = rows[0]["images_per_s"]
  for row in rows:
    # Weak scaling: the per-device batch stays fixed, so linear scaling multiplies throughput by the devices.
    row["ratio"], row["ratio_to"] = row["images_per_s"] / (base * row["devices"]), "linear"
    row["note"] = f"{per_device} images per device"
  return rows


def variant_rows(cache: StepCache, settings: Settings, known: dict) -> list[dict[str, Any]]:
  """settings.variant_algorithm with the default model and with each variant, at each of the variant batches."""
  rows = []
  for batch in settings.variant_batch_list:
    keys = [StepCache.key(settings.variant_algorithm, batch, None, v) for v in ("", *settings.variants)]
    group = _rows_for(cache, settings, known, keys)
    model = algorithm_config(settings.variant_algorithm, settings, batch).model
    default = "default: " + ", ".join(f"{field}={model[field]}" for field in IMPLEMENTATION_FIELDS)
    for row in group:
      row["ratio"], row["ratio_to"] = row["images_per_s"] / group[0]["images_per_s"], "default model"
      row["note"] = row["model_variant"] or default
    rows += group
  return rows


def _log_rows(log: Callable[[str], None], section: str, rows: list[dict[str, Any]]) -> None:
  for row in rows:
    if row.get("status") == "skipped":
      log(f"  {section}: {row['name']} @ {row.get('batch')}: skipped ({row.get('reason', '')[:200]})")
    else:
      log(f"  {section}: {step_label(row['name'], row.get('model_variant', ''))} @ {row.get('batch')}: "
          f"{row['images_per_s']:.1f} img/s, "
          f"{row['step_ms']:.2f} ms")


def section_steps(settings: Settings) -> dict[str, list[tuple]]:
  """The StepCache keys of the steps each of settings.sections times (and 'profile': the one traced), by section."""
  sections = set(settings.sections)
  keys: dict[str, list[tuple]] = {}
  if "steps" in sections:
    keys["steps"] = [StepCache.key(name, settings.batch) for name in settings.algorithms]
  if "torch" in sections:
    keys["torch"] = [StepCache.key(name, b) for b in settings.torch_batches for name in ("erm", "boda")]
  if "variants" in sections and settings.variants:
    keys["variants"] = [StepCache.key(settings.variant_algorithm, b, None, v)
                        for b in settings.variant_batch_list for v in ("", *settings.variants)]
  if settings.profile_dir:
    keys["profile"] = [StepCache.key(settings.profile_algorithm, b) for b in settings.profile_batch_list]
  if "refresh" in sections:  # the loop algorithm's BoDA statistics, or plain BoDA's
    name = settings.loop_algorithm if "boda" in settings.loop_algorithm else "boda"
    keys["refresh"] = [StepCache.key(name, settings.batch)]
  if "pipeline" in sections:
    keys["pipeline"] = [StepCache.key(settings.loop_algorithm, b) for b in sorted({settings.batch,
                                                                                   *settings.torch_batches})]
  if "scaling" in sections and jax.process_count() == 1:
    keys["scaling"] = _scaling_keys(settings)[0]
  return keys


def steps_to_compile(settings: Settings) -> list[tuple]:
  """The StepCache keys of every step settings.sections will time (and profile), slowest to compile first."""
  keys = dict.fromkeys(key for section in section_steps(settings).values() for key in section)
  # Small batches compile slowest (one H100, plain 7x7 stem: ~130 s at total batch 64, ~30 s at 256): first.
  return sorted(keys, key=lambda key: key[1])


PROFILED_STEPS = 3


def profile_step(built, settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
  """Traces PROFILED_STEPS steps of `built` into `<profile_dir>/<algorithm>_<total batch>/`, writes the step's
  optimized HLO there (`<algorithm>_step.hlo.txt`, where profile_summary looks instructions up) and returns where
  the step's time goes by part (augment, model forward / backward, losses, optimizer, ...) and by HLO op kind, in
  ms per step, with the busy time's share of the traced steps' wall time (below 1: the device waited, e.g. on
  kernel launches)."""
  folder = os.path.join(settings.profile_dir, f"{built.name}_{built.total_batch}")
  os.makedirs(folder, exist_ok=True)
  before = set(glob.glob(os.path.join(folder, "**", "*.xplane.pb"), recursive=True))
  with jax.profiler.trace(folder):
    t0 = time.perf_counter()
    jax.block_until_ready(built.run(PROFILED_STEPS))
    wall_s = time.perf_counter() - t0
  hlo_path = os.path.join(folder, f"{built.name}_step.hlo.txt")
  hlo = built.step.as_text()
  with open(hlo_path, "w") as f:
    f.write(hlo)
  out: dict[str, Any] = {"algorithm": built.name, "batch": built.total_batch, "steps": PROFILED_STEPS,
                         "hlo": hlo_path, "wall_ms_per_step": 1e3 * wall_s / PROFILED_STEPS}
  fused = profile_summary.convolution_activations(hlo)
  if fused:  # XLA:GPU: did the ReLUs run inside the cuDNN convolutions?
    out["convolution_activations"] = fused
    log(f"profile: cuDNN convolutions by fused activation: {fused}")
  traces = sorted(set(glob.glob(os.path.join(folder, "**", "*.xplane.pb"), recursive=True)) - before,
                  key=os.path.getmtime)
  if not traces:
    log(f"profile: no .xplane.pb was written under {folder}")
    return dict(out, status="skipped", reason="the profiler wrote no .xplane.pb")
  with open(traces[-1], "rb") as f:
    trace = f.read()
  out["trace"] = traces[-1]
  for by in ("part", "op"):
    try:
      summary = profile_summary.summarize(trace, by=by, hlo_text=hlo)
    except ValueError as e:  # a trace without op events: keep the run's numbers, say why there is no summary
      log(f"profile: {traces[-1]}: {e}")
      return dict(out, status="skipped", reason=str(e))
    log(summary.table(top=15))
    out[f"by_{by}"] = [{by: name, "ms_per_step": ns / 1e6 / PROFILED_STEPS, "share": ns / summary.busy_ns}
                       for name, ns in summary.total_ns.most_common()]
    out["source"], out["busy_ms_per_step"] = summary.source, summary.busy_ns / 1e6 / PROFILED_STEPS
    if summary.async_ns:  # a CPU's asynchronous ops (convolutions), measured by their threads' untraced work
      out["async_ms_per_step"] = summary.async_ns / 1e6 / PROFILED_STEPS
  # On a CPU the busy time adds up the threads, so it can exceed the wall time.
  out["busy_share_of_wall"] = out["busy_ms_per_step"] / out["wall_ms_per_step"]
  return out


def run_benchmark(settings: Settings, log: Callable[[str], None] = _stderr,
                  on_section: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
  """Runs settings.sections and returns {'meta', 'settings', 'sections': {name: {'rows': [...]}}, 'targets'}.

  Args:
    settings: what to measure.
    log: progress lines (each measured row is logged as its section ends).
    on_section: called with the partial result after each section (e.g. to save it, so that a run stopped by a
      time limit keeps what it measured).
  """
  settings.validate()
  if settings.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", settings.compilation_cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  result: dict[str, Any] = {"settings": settings.to_dict(), "sections": {}}
  sections = result["sections"]
  cache = StepCache(settings, log)

  def done(name: str) -> None:
    _log_rows(log, name, sections[name].get("rows", []))
    if on_section is not None:
      result["targets"] = report.targets(result)
      on_section(result)

  if "torch" in settings.sections:  # first: before JAX takes the accelerator's memory
    log("PyTorch reference (child processes)")
    sections["torch"] = torch_rows(settings, algorithm_config("erm", settings, settings.torch_batches[0]))
    _log_rows(log, "torch", sections["torch"]["rows"])
  result["meta"] = environment()
  log(f"devices: {result['meta']['device_count']} x {result['meta']['device_kind']}")
  if "torch" in settings.sections and on_section is not None:
    on_section(result)  # the PyTorch rows are kept even if the JAX compiles below run out of time

  steps = section_steps(settings)
  known: dict[tuple, dict[str, Any]] = {}  # rows already measured, by StepCache key
  # Each section compiles its steps together (settings.compile_threads at a time), then times them, so that a
  # run stopped by a time limit keeps the sections it finished; compile_ahead compiles them all in one round.
  if settings.compile_ahead:
    t0, keys = time.perf_counter(), steps_to_compile(settings)
    cache.prebuild(keys)
    result["meta"]["compile_ahead_s"] = time.perf_counter() - t0
    log(f"compiled {len(keys)} steps in {result['meta']['compile_ahead_s']:.1f} s "
        f"({settings.compile_threads} at a time)")
  if "steps" in steps:
    cache.prebuild(steps["steps"])
    rows = time_steps([cache.get(*key) for key in steps["steps"]], settings)
    erm = next((r for r in rows if r["name"] == "erm"), None)
    for row in rows:
      known[StepCache.key(row["name"], row["batch"], row["devices"])] = row
      if erm is not None:
        # Each round times every step back to back: the median of per-round ratios discounts load that changes
        # between rounds (a shared CPU); on a quiet device it equals the ratio of the medians.
        row["ratio"] = statistics.median(e / w for e, w in zip(erm["window_step_ms"], row["window_step_ms"]))
        row["ratio_to"] = "ERM"
    sections["steps"] = {"rows": rows}
    done("steps")

  if "torch" in settings.sections:
    jax_rows = []
    cache.prebuild(steps["torch"])
    for batch in settings.torch_batches:
      for row in _rows_for(cache, settings, known, [StepCache.key(name, batch) for name in ("erm", "boda")]):
        row.pop("ratio", None)
        jax_rows.append(row)
    compare_with_torch(sections["torch"], jax_rows)
    done("torch")

  if "variants" in steps:
    cache.prebuild(steps["variants"])
    sections["variants"] = {"rows": variant_rows(cache, settings, known)}
    done("variants")

  if "profile" in steps:
    result["profiles"] = []
    for key in steps["profile"]:
      built = cache.get(*key)
      log(f"profiling {built.name} at total batch {built.total_batch} into {settings.profile_dir}")
      result["profiles"].append(profile_step(built, settings, log))

  if {"refresh", "pipeline"} & set(settings.sections):
    from wbcdg_jax.bench import inputs  # local import: reads TFDS / grain only when needed
    with tempfile.TemporaryDirectory(prefix="wbcdg_bench_") as tmp:
      data_dir = settings.data_dir or tmp
      log(f"synthetic domains in {data_dir}")
      if "pipeline" in steps:  # first: it has a target, the refresh has none (a time limit may stop the run)
        cache.prebuild(steps["pipeline"])
        rows = []
        for key in steps["pipeline"]:
          built = cache.get(*key)
          rows += inputs.time_pipeline(built, inputs.experiment_data(built, data_dir), settings)
        sections["pipeline"] = {"rows": rows}
        done("pipeline")
      if "refresh" in steps:
        built = cache.get(*steps["refresh"][0])
        sections["refresh"] = {"rows": inputs.time_refresh(built, inputs.experiment_data(built, data_dir), settings)}
        done("refresh")

  if "scaling" in settings.sections:
    cache.prebuild(steps.get("scaling", []))  # none in a multi-process run, whose scaling rows are skipped
    sections["scaling"] = {"rows": scaling_rows(cache, settings, known)}
    done("scaling")

  result["sections"] = {k: sections[k] for k in SECTIONS if k in sections}  # table order
  result["targets"] = report.targets(result)
  return result
