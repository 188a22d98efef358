r"""Measures train-step, input-pipeline, BoDA-refresh, PyTorch-reference and multi-device throughput.

  python launch/benchmark.py --preset=gpu --json=runs/benchmark_gpu.json   # the issue's GPU measurement
  python launch/benchmark.py --preset=cpu                                   # quick-preset shapes on a CPU
  python launch/benchmark.py --smoke                                        # seconds: checks every section runs
  python launch/benchmark.py --merge=a.json,b.json --json=all.json          # one table from runs in parts

Prints a Markdown table (section, name, batch, devices, img/s, step ms, compile s, ratio, note), the issue's
targets, and writes every setting and number to the JSON file. Any preset field can be overridden, e.g.
`--preset=gpu --batch=256 --algorithms=erm,boda --sections=steps,torch`. Timings never fail; the run fails only
when a number is not a positive finite value (or a loss is NaN).
"""

import json
import os

import _paths  # noqa: F401  (repository root on sys.path)
from absl import app, flags, logging

from wbcdg_jax import files
from wbcdg_jax.bench import report, runner, settings as settings_lib

_PRESET = flags.DEFINE_enum("preset", "cpu", sorted(settings_lib.PRESETS), "Starting values of every setting.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Same as --preset=smoke: tiny shapes, 2 timed steps, seconds.")
_JSON = flags.DEFINE_string("json", None, "Output JSON path (default runs/benchmark_<preset>.json).")
_MERGE = flags.DEFINE_list("merge", None, "Measure nothing: merge these result JSON files (runs in parts on one "
                           "device kind) into one table, targets and --json.")
_ALGORITHMS = flags.DEFINE_list("algorithms", None, f"'all' or names from {sorted(settings_lib.ALGORITHMS)}.")
_SECTIONS = flags.DEFINE_list("sections", None, f"Sections to run (default all): {settings_lib.SECTIONS}.")
_TORCH_BATCHES = flags.DEFINE_list("torch_batches", None, "Total batches of the JAX-vs-PyTorch comparison.")
_VARIANTS = flags.DEFINE_list("variants", None, "Variants timed against the default, each "
                              "'field=value[+field=value]' of configs/base.py: the model's when bare "
                              "(max_pool=slices), another section's when dotted (train.check_updated_params=true); "
                              "'none' for none.")
_VARIANT_BATCHES = flags.DEFINE_list("variant_batches", None, "Total batches of the variants (default: "
                                     "--torch_batches).")
_TORCH_COMPILE_MODES = flags.DEFINE_list("torch_compile_modes", None, "torch.compile modes timed, a child process "
                                         f"each: {', '.join(settings_lib.TORCH_COMPILE_MODES)}.")
_PROFILE_BATCHES = flags.DEFINE_list("profile_batches", None, "Total batches traced with --profile_dir (default: "
                                     "--batch).")
_REFRESH_THREADS = flags.DEFINE_list("refresh_threads", None, "Eval reading-thread counts the refresh section "
                                     "times (config.data.num_threads; default: the config's).")
_ALT_READERS = flags.DEFINE_list("alt_readers", None, "Other readers the pipeline section times, each 'WxT': W "
                                 "grain worker processes with T threads each ('none' for none).")
_INTS = {name: flags.DEFINE_integer(name, None, help_) for name, help_ in (
    ("image_size", "Network input px."), ("stored_size", "Stored / host image px."), ("depth", "ResNet depth."),
    ("batch", "Total batch of the algorithm table."), ("warmup", "Untimed steps after the compiling call."),
    ("steps", "Timed steps per window."), ("repeats", "Timed windows (median reported)."),
    ("pipeline_steps", "Timed batches per pipeline row."), ("torch_timeout_s", "Limit per PyTorch child."),
    ("scaling_per_device_batch", "Per-device batch of the scaling rows (0: batch / devices)."),
    ("num_workers", "grain worker processes."), ("num_threads", "grain reading threads."),
    ("prefetch", "grain read-ahead batches (>= num_threads)."), ("seed", "Seed."),
    ("compile_threads", "Steps compiled at once."),
    ("refresh_images", "Images a timed refresh pass covers at least (training indices repeated; 0: once)."))}
_STRINGS = {name: flags.DEFINE_string(name, None, help_) for name, help_ in (
    ("dtype", "Compute dtype: bfloat16 or float32."), ("torch", "auto | on | off."),
    ("torch_compile", "auto (CUDA only) | on | off."), ("scaling_algorithm", "Algorithm of the scaling rows."),
    ("loop_algorithm", "Algorithm fed by the pipeline."), ("data_dir", "Synthetic data folder ('' = temporary)."),
    ("compilation_cache_dir", "JAX persistent compilation cache."),
    ("profile_dir", "Write a jax.profiler trace of a few steps here."),
    ("profile_algorithm", "Algorithm traced with --profile_dir."),
    ("variant_algorithm", "Algorithm the --variants are timed with."))}
_SCALE = flags.DEFINE_float("synthetic_scale", None, "Fraction of the real dataset sizes generated.")
_FAST_COMPILE = flags.DEFINE_bool("fast_compile", None, "Compile with XLA backend optimisations off.")
_COMPILE_AHEAD = flags.DEFINE_bool("compile_ahead", None, "Compile every section's steps in one round before "
                                   "timing any (shorter; a run stopped while compiling keeps nothing).")
_COMPILE_SEEDS = flags.DEFINE_bool("compile_seeds", None, "Compile one step per total batch before the others "
                                   "(on a GPU they reuse its autotuned convolutions).")


def settings_from_flags() -> settings_lib.Settings:
  overrides = {name: flag.value for name, flag in {**_INTS, **_STRINGS}.items()}
  overrides["synthetic_scale"] = _SCALE.value
  overrides["fast_compile"] = _FAST_COMPILE.value
  overrides["compile_ahead"] = _COMPILE_AHEAD.value
  overrides["compile_seeds"] = _COMPILE_SEEDS.value
  if _ALGORITHMS.value is not None:
    overrides["algorithms"] = (tuple(settings_lib.ALGORITHMS) if _ALGORITHMS.value == ["all"]
                               else tuple(_ALGORITHMS.value))
  if _SECTIONS.value is not None:
    overrides["sections"] = tuple(_SECTIONS.value)
  if _TORCH_COMPILE_MODES.value is not None:
    overrides["torch_compile_modes"] = tuple(_TORCH_COMPILE_MODES.value)
  if _ALT_READERS.value is not None:
    overrides["alt_readers"] = () if _ALT_READERS.value == ["none"] else tuple(_ALT_READERS.value)
  if _VARIANTS.value is not None:
    overrides["variants"] = () if _VARIANTS.value == ["none"] else tuple(_VARIANTS.value)
  for name, flag in (("torch_batches", _TORCH_BATCHES), ("variant_batches", _VARIANT_BATCHES),
                     ("profile_batches", _PROFILE_BATCHES), ("refresh_threads", _REFRESH_THREADS)):
    if flag.value is not None:
      try:
        overrides[name] = tuple(int(b) for b in flag.value)
      except ValueError:
        raise app.UsageError(f"--{name}={','.join(flag.value)}: expected integers") from None
  return settings_lib.make_settings("smoke" if _SMOKE.value else _PRESET.value, **overrides)


def _load(path: str) -> dict:
  try:
    with open(path) as f:
      result = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise app.UsageError(f"--merge: cannot read {path}: {e}")
  if not isinstance(result, dict) or "meta" not in result or "sections" not in result:
    raise app.UsageError(f"--merge: {path} is not a benchmark result (no 'meta' and 'sections')")
  return result


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # TFDS and orbax log every open at INFO
  if _MERGE.value:
    try:
      result = report.merge_results([(p, _load(p)) for p in _MERGE.value])
    except ValueError as e:
      raise app.UsageError(f"--merge: {e}")
    path = _JSON.value or os.path.join("runs", "benchmark_merged.json")
  else:
    settings = settings_from_flags()
    path = _JSON.value or os.path.join("runs", f"benchmark_{settings.preset}.json")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def save(result):  # after every section, so that a run cut short keeps what it measured
    files.write_json(path, result, indent=1)

  if not _MERGE.value:
    result = runner.run_benchmark(settings, on_section=save)
  save(result)
  meta, used = result["meta"], result["settings"]
  print(f"\n{meta['device_count']} x {meta['device_kind']} ({meta['platform']}), jax {meta['versions']['jax']}, "
        f"flax {meta['versions']['flax']}; preset {used['preset']}: {used['depth']}-layer ResNet, "
        f"{used['image_size']} px, {used['dtype']}\n")
  print(report.format_table(result))
  profile = report.format_profile(result)
  if profile:
    print("\n" + profile)
  targets = report.format_targets(result)
  if targets:
    print("\nTargets (issue 7; meant for one H100 at the gpu preset):\n" + targets)
  print(f"\nwrote {path}")
  report.check_numbers(result)


if __name__ == "__main__":
  app.run(main)
