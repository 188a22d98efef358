"""The benchmark harness in its smoke mode: every section and algorithm runs and reports sane numbers.

Timings are never checked against thresholds; only that each measured number is a positive finite value.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
import time

import pytest

from tests.child_env import cpu_env
from wbcdg_jax.bench import inputs, report, runner, settings as settings_lib
from wbcdg_jax.bench.steps import StepCache, algorithm_config, compiler_options, seed_steps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _positive(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_smoke_runs_every_section_and_algorithm():
  settings = settings_lib.make_settings("smoke")
  result = runner.run_benchmark(settings, log=lambda message: None)
  json.loads(json.dumps(result))  # the launcher writes it as JSON

  sections = result["sections"]
  assert list(sections) == list(settings_lib.SECTIONS)
  assert result["meta"]["device_kind"] and result["meta"]["versions"]["jax"]
  steps = {r["name"]: r for r in sections["steps"]["rows"]}
  assert list(steps) == list(settings_lib.ALGORITHMS)
  for name, row in steps.items():
    assert row["finite"], name
    assert _positive(row["images_per_s"]) and _positive(row["step_ms"]) and _positive(row["compile_s"]), name
    assert row["batch"] == settings.batch and len(row["window_step_ms"]) == settings.repeats
  assert steps["erm"]["ratio"] == pytest.approx(1.0)
  assert all(_positive(r["ratio"]) for r in steps.values())

  torch_rows = sections["torch"]["rows"]
  jax_names = [r["name"] for r in torch_rows if r["name"].startswith("JAX")]
  assert jax_names == ["JAX erm", "JAX boda"]
  eager = [r for r in torch_rows if r["name"] == "torch eager"]
  if importlib.util.find_spec("torch") is not None:
    assert eager[0]["status"] == "ok", eager[0].get("reason")
    assert _positive(eager[0]["images_per_s"]) and math.isfinite(eager[0]["loss"])
    assert _positive(sections["torch"]["ratios"][str(settings.batch)]["boda / torch eager"])
  compile_row = [r for r in torch_rows if r["name"] == "torch.compile"][0]
  assert compile_row["status"] == "skipped" and compile_row["reason"] == "--torch_compile=off"

  # The model variant is timed against the default model (the same ERM step the torch section timed).
  variants = sections["variants"]["rows"]
  assert [r["model_variant"] for r in variants] == ["", *settings.variants]
  assert variants[0]["ratio"] == pytest.approx(1.0) and variants[0]["note"].startswith("default: fold_frozen_bn")
  assert all(r["finite"] and _positive(r["images_per_s"]) and r["name"] == "erm" for r in variants)
  erm_torch = next(r for r in torch_rows if r["name"] == "JAX erm")
  assert variants[0]["images_per_s"] == erm_torch["images_per_s"]

  # The forward pass, then the reading alone and the whole refresh at each reading-thread count.
  refresh = sections["refresh"]["rows"]
  assert [r["name"].split(" (")[0] + r["name"].split(")")[-1] for r in refresh] == [
      "eval forward", "eval read [data.num_threads=1]", "refresh_boda [data.num_threads=1]",
      "eval read [data.num_threads=4]", "refresh_boda [data.num_threads=4]"]
  assert all(_positive(r["images_per_s"]) for r in refresh)
  for r in refresh[1:]:
    assert r["ratio"] == pytest.approx(r["images_per_s"] / refresh[0]["images_per_s"])
    assert r["ratio_to"] == refresh[0]["name"] and r["note"].endswith("training images per pass")
  pipeline = [r["name"] for r in sections["pipeline"]["rows"]]
  # The smoke builds its synthetic domains, so the records it reads are uncompressed.
  assert sections["pipeline"]["rows"][0]["note"] == ("data.num_workers=0, data.num_threads=4; records stored with "
                                                     "compression 'none'")
  other = " [data.num_workers=0+data.num_threads=2]"  # the smoke's alt_readers
  assert pipeline == ["host read (grain, array_record)", "read + device augmentation", "step on device data",
                      "full loop (pipeline -> step)", "full loop, batches placed inline",
                      "host read (grain, array_record)" + other, "full loop (pipeline -> step)" + other]
  assert sections["pipeline"]["rows"][5]["note"].startswith("data.num_workers=0, data.num_threads=2;")
  loops = [sections["pipeline"]["rows"][i] for i in (3, 4, 6)]
  assert [r["note"].split(":")[0] for r in loops] == ["data.prefetch=2", "data.prefetch=0", "data.prefetch=2"]
  assert all(r["finite"] and _positive(r["ratio"]) for r in loops)
  assert [k for k in result["targets"] if k.startswith("full loop")] == [f"full loop / step on device at batch "
                                                                          f"{loops[0]['batch']}"]
  assert [r["devices"] for r in sections["scaling"]["rows"]] == [1]

  report.check_numbers(result)
  table = report.format_table(result)
  for name in settings_lib.ALGORITHMS:
    assert f"| steps | {name} |" in table
  assert f"| variants | erm [{settings.variants[0]}] |" in table
  assert any(key.startswith("slowest step / ERM") for key in result["targets"])


def test_check_numbers_names_the_bad_row():
  result = {"sections": {"steps": {"rows": [
      {"name": "erm", "batch": 8, "images_per_s": 10.0, "step_ms": 800.0, "compile_s": 1.0, "loss": 2.5},
      {"name": "boda", "batch": 8, "images_per_s": float("nan"), "step_ms": 800.0, "loss": 2.5},
      {"name": "dann", "batch": 8, "images_per_s": 10.0, "step_ms": 800.0, "loss": float("inf")}]}}}
  with pytest.raises(ValueError, match=r"steps/boda@8: images_per_s=nan.*steps/dann@8: loss=inf"):
    report.check_numbers(result)
  result["sections"]["steps"]["rows"] = result["sections"]["steps"]["rows"][:1]
  report.check_numbers(result)


def test_torch_child_rows_survive_a_cut_short_child():
  spec = {"variant": "compile", "batches": [64, 256]}
  stdout = 'compiling...\n{"row": {"variant": "compile", "batch": 64, "status": "ok", "images_per_s": 10.0}}\n'
  rows = runner.rows_from_child(stdout, spec, "child ran past --torch_timeout_s=5")
  assert [(r["batch"], r["status"]) for r in rows] == [(64, "ok"), (256, "skipped")]
  assert rows[1]["reason"] == "child ran past --torch_timeout_s=5"
  assert [r["status"] for r in runner.rows_from_child("", spec, "child exited with 1")] == ["skipped"] * 2


def test_torch_children_one_per_compile_mode(monkeypatch):
  """Eager, then a child per torch.compile mode; when compile is off, a skipped row per mode and batch."""
  specs = []

  def child(spec, timeout_s):
    specs.append(spec)
    return [{"variant": spec["variant"], "batch": b, "status": "ok", "images_per_s": 10.0, "impl": "x",
             "torch": "2", "device": "cpu"} for b in spec["batches"]]

  monkeypatch.setattr(runner, "_torch_child", child)
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
  settings = settings_lib.make_settings("smoke", torch_compile="on", torch_compile_modes=("default", "reduce-overhead"))
  config = algorithm_config("erm", settings, 8)
  rows = runner.torch_rows(settings, config)["rows"]
  assert [(s["variant"], s["mode"]) for s in specs] == [("eager", None), ("compile", "default"),
                                                         ("compile reduce-overhead", "reduce-overhead")]
  assert [r["name"] for r in rows] == ["torch eager", "torch.compile", "torch.compile reduce-overhead"]
  specs.clear()
  rows = runner.torch_rows(settings_lib.make_settings("smoke", torch_compile_modes=("default", "reduce-overhead")),
                           config)["rows"]
  assert [s["variant"] for s in specs] == ["eager"]
  assert [(r["name"], r["status"], r.get("reason")) for r in rows[1:]] == [
      ("torch.compile", "skipped", "--torch_compile=off"),
      ("torch.compile reduce-overhead", "skipped", "--torch_compile=off")]
  with pytest.raises(ValueError, match=r"--torch_compile_modes=default,cudagraphs: choose one or more of default, "
                                       r"reduce-overhead"):
    settings_lib.make_settings("smoke", torch_compile_modes=("default", "cudagraphs"))


def test_ratios_and_targets_against_every_torch_compile_mode():
  torch_rows = [{"variant": v, "batch": 64, "status": "ok", "images_per_s": ips}
                for v, ips in (("eager", 50.0), ("compile reduce-overhead", 100.0), ("compile", 80.0))]
  torch_rows.append({"variant": "compile", "batch": 256, "status": "skipped", "reason": "x"})
  section = {"rows": torch_rows}
  jax_rows = [{"name": "boda", "batch": 64, "images_per_s": 120.0},
              {"name": "boda", "batch": 256, "images_per_s": 300.0}]
  runner.compare_with_torch(section, jax_rows)
  assert section["ratios"] == {"64": {"boda / torch.compile": 1.5, "boda / torch.compile reduce-overhead": 1.2,
                                      "boda / torch eager": 2.4}}
  at_64 = next(r for r in section["rows"] if r.get("name") == "JAX boda" and r["batch"] == 64)
  assert (at_64["ratio"], at_64["ratio_to"]) == (1.5, "torch.compile")  # the reference: the default mode
  assert next(r for r in section["rows"] if r.get("name") == "JAX boda" and r["batch"] == 256).get("ratio") is None
  targets = report.targets({"sections": {"torch": section}})
  assert {k: t["met"] for k, t in targets.items()} == {"BoDA / torch.compile at batch 64": True,
                                                       "BoDA / torch.compile reduce-overhead at batch 64": False}


def test_profile_table_says_which_activations_ran_inside_the_convolutions():
  profile = {"algorithm": "boda", "batch": 256, "source": "device kernels", "busy_ms_per_step": 30.0,
             "wall_ms_per_step": 31.0, "by_part": [{"part": "model backward", "ms_per_step": 18.0, "share": 0.6}]}
  plain = report.format_profile({"profiles": [profile]})
  assert plain.startswith("Profile: boda at total batch 256, device kernels: 30.00 ms busy per step of 31.00 ms "
                          "(traced)\n") and "| model backward | 18.000 | 60.0% |" in plain
  gpu = report.format_profile({"profiles": [dict(profile, convolution_activations={"kRelu": 60, "kNone": 98})]})
  assert "(traced); cuDNN convolutions by fused activation: kRelu 60, kNone 98\n" in gpu
  cpu = report.format_profile({"profiles": [dict(profile, source="CPU XLA ops", async_ms_per_step=21.5)]})
  assert "(traced); 21.50 ms of it asynchronous ops' work on XLA:CPU's threads\n" in cpu


def test_seed_steps_pick_erm_once_per_batch_and_device_count():
  keys = runner.steps_to_compile(settings_lib.make_settings("gpu", profile_dir="/tmp/unused"))
  assert sorted(seed_steps(keys)) == [("erm", 64, 1, ""), ("erm", 256, 1, "")]
  assert seed_steps(keys, built=[("boda", 64, 1, "")]) == [("erm", 256, 1, "")]
  # Without ERM's default step: a stage-1 default step, before a variant or the forward-only stage 2.
  others = [("decoupled_stage2", 8, 2, ""), ("erm", 8, 2, "max_pool=taps"), ("coral", 8, 2, ""),
            ("decoupled_stage2", 4, 1, "")]
  assert seed_steps(others) == [("coral", 8, 2, ""), ("decoupled_stage2", 4, 1, "")]


def test_prebuild_compiles_the_seeds_before_the_rest(monkeypatch):
  events, logged = [], []

  def fake_build(self, key):
    events.append(("start", key))
    time.sleep(0.05)
    events.append(("end", key))
    return key

  monkeypatch.setattr(StepCache, "_build", fake_build)
  keys = [("coral", 8, 1, ""), ("erm", 8, 1, ""), ("boda", 8, 1, ""), ("erm", 16, 1, "max_pool=taps"),
          ("boda", 16, 1, "")]
  cache = StepCache(settings_lib.make_settings("smoke", compile_threads=4, compile_seeds=True), logged.append)
  cache.prebuild(keys)
  assert sorted(cache._built) == sorted(keys)  # pylint: disable=protected-access
  seeds = {("erm", 8, 1, ""), ("boda", 16, 1, "")}
  last_seed_end = max(i for i, (kind, key) in enumerate(events) if kind == "end" and key in seeds)
  first_other = min(i for i, (kind, key) in enumerate(events) if kind == "start" and key not in seeds)
  assert last_seed_end < first_other
  assert logged == ["compiling first, to fill XLA's autotuning cache: erm at 8, boda at 16"]
  events.clear()
  cache.prebuild(keys + [("mmd", 8, 1, "")])  # a batch already compiled needs no seed
  assert events == [("start", ("mmd", 8, 1, "")), ("end", ("mmd", 8, 1, ""))]


def _result(device, rows, ratios=None):
  torch = {"rows": [r for r in rows if r["name"].startswith(("JAX", "torch"))]}
  if ratios:
    torch["ratios"] = ratios
  return {"meta": {"device_kind": device, "device_count": 1}, "settings": {"preset": "gpu"},
          "sections": {"steps": {"rows": [r for r in rows if not r["name"].startswith(("JAX", "torch"))]},
                       "torch": torch}}


def test_merge_results_of_runs_in_parts():
  row = lambda name, batch, ips, **kw: {"name": name, "batch": batch, "devices": 1, "images_per_s": ips,
                                         "step_ms": 1e3 * batch / ips, **kw}
  first = _result("H100", [row("erm", 64, 100.0), row("boda", 64, 90.0, ratio=0.9, ratio_to="ERM"),
                           row("torch.compile", 64, 70.0, status="ok")], {"64": {"boda / torch.compile": 1.29}})
  second = _result("H100", [row("boda", 64, 96.0, ratio=0.96, ratio_to="ERM"), row("mmd", 64, 99.0)],
                   {"256": {"boda / torch.compile": 1.1}})
  merged = report.merge_results([("a.json", first), ("b.json", second)])
  steps = merged["sections"]["steps"]["rows"]
  assert [(r["name"], r["images_per_s"]) for r in steps] == [("erm", 100.0), ("boda", 96.0), ("mmd", 99.0)]
  assert merged["sections"]["torch"]["ratios"] == {"64": {"boda / torch.compile": 1.29},
                                                   "256": {"boda / torch.compile": 1.1}}
  assert merged["meta"]["merged_from"] == ["a.json", "b.json"]
  assert merged["targets"]["BoDA / torch.compile at batch 64"]["met"] is False
  assert merged["targets"]["slowest step / ERM (boda)"]["value"] == pytest.approx(0.96)
  with pytest.raises(ValueError, match=r"b.json: measured on 1 x A100, but a.json on 1 x H100"):
    report.merge_results([("a.json", first), ("b.json", _result("A100", []))])


def test_variants_run_at_their_own_batches_compiled_ahead():
  # Timed at 8, not at the settings' batch 4: the two steps are then programs the training tests compile too
  # (tests/train/test_train_step.py), which the persistent compilation cache holds once for both.
  settings = settings_lib.make_settings("smoke", sections=("variants",), variants=("train.check_updated_params=true",),
                                        batch=4, variant_batches=(8,), compile_ahead=True)
  logged = []
  result = runner.run_benchmark(settings, log=logged.append)
  rows = result["sections"]["variants"]["rows"]
  assert [(r["model_variant"], r["batch"]) for r in rows] == [("", 8), ("train.check_updated_params=true", 8)]
  assert all(r["finite"] and _positive(r["images_per_s"]) for r in rows)
  # Both compiled in the one round ahead of the timing, and only there.
  assert sum(line.startswith("compiling") for line in logged) == 2
  assert any(line.startswith("compiled 2 steps in") for line in logged)
  assert _positive(result["meta"]["compile_ahead_s"])


def test_steps_to_compile_covers_every_section_once_small_batches_first():
  settings = settings_lib.make_settings("gpu", profile_dir="/tmp/unused")
  assert settings.compile_ahead and settings.profile_batch_list == (64, 256)
  keys = runner.steps_to_compile(settings)
  assert len(keys) == len(set(keys))
  assert [k[1] for k in keys] == sorted(k[1] for k in keys)  # batch 64 (the slow compiles) first
  at_64 = {(name, variant) for name, batch, _, variant in keys if batch == 64}
  at_256 = {(name, variant) for name, batch, _, variant in keys if batch == 256}
  variants = {("erm", v) for v in settings.variants}
  assert at_64 == {(name, "") for name in settings_lib.ALGORITHMS} | variants
  assert at_256 == {("erm", ""), ("boda", ""), *variants}
  only_steps = runner.steps_to_compile(settings_lib.make_settings("gpu", sections=("steps",)))
  assert {(k[0], k[1]) for k in only_steps} == {(name, 64) for name in settings_lib.ALGORITHMS}
  # Only what the chosen sections time: the pipeline's loop step at its batches, no refresh or variant steps.
  only_pipeline = runner.steps_to_compile(settings_lib.make_settings("gpu", sections=("pipeline", "variants"),
                                                                     variants=()))
  assert [(k[0], k[1]) for k in only_pipeline] == [("boda", 64), ("boda", 256)]


def test_fast_compile_option_leaves_a_level_set_in_xla_flags_alone(monkeypatch):
  """The smoke's steps are the programs the training tests compile: with the tests' XLA_FLAGS level they must be
  compiled with the same options, or the persistent compilation cache would hold each of them twice."""
  smoke, gpu = settings_lib.make_settings("smoke"), settings_lib.make_settings("gpu")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  assert compiler_options(smoke) == {"xla_backend_optimization_level": 0} and compiler_options(gpu) is None
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  assert compiler_options(smoke) is None and compiler_options(gpu) is None


def test_settings_errors_name_the_flag():
  with pytest.raises(ValueError, match="--algorithms"):
    settings_lib.make_settings("smoke", algorithms=("erm", "bodda"))
  with pytest.raises(ValueError, match="--stored_size=16"):
    settings_lib.make_settings("smoke", stored_size=16)
  settings = settings_lib.make_settings("gpu", batch=None)  # None keeps the preset's value
  assert settings.batch == 64 and settings.torch_batches == (64, 256) and settings.dtype == "bfloat16"
  # The variants at both batches: ERM's step at each is compiled first (--compile_seeds), so that theirs find the
  # convolutions tuned (session 13: 8-60 s each after 119-121 s for the seeds).
  assert settings.variant_batches == (64, 256)
  with pytest.raises(ValueError, match=r"--profile_batches=8,0: batches must be >= 1"):
    settings_lib.make_settings("smoke", profile_batches=(8, 0))
  assert settings_lib.make_settings("smoke").profile_batch_list == (8,)  # default: --batch
  with pytest.raises(ValueError, match="batches must be >= 1"):
    settings_lib.make_settings("smoke", variant_batches=(0,))
  with pytest.raises(ValueError, match=r"model.max_pol is not a scalar field .*'max_pool'"):
    settings_lib.make_settings("smoke", variants=("max_pol=slices",))
  with pytest.raises(ValueError, match=r"model.fold_frozen_bn='maybe' is not a bool"):
    settings_lib.make_settings("smoke", variants=("max_pool=slices+fold_frozen_bn=maybe",))
  with pytest.raises(ValueError, match=r"trian.steps is not a scalar field of configs/base.py$"):
    settings_lib.make_settings("smoke", variants=("trian.steps=3",))
  with pytest.raises(ValueError, match=r"train.check_updated_param is not .*'check_updated_params'"):
    settings_lib.make_settings("smoke", variants=("train.check_updated_param=false",))
  with pytest.raises(ValueError, match="expected field=value"):
    settings_lib.make_settings("smoke", variants=("slices",))
  parsed = settings_lib.parse_variant("fold_frozen_bn=False+max_pool=slices+depth=18+train.check_updated_params=true")
  assert parsed == {"model.fold_frozen_bn": False, "model.max_pool": "slices", "model.depth": 18,
                    "train.check_updated_params": True}
  config = algorithm_config("erm", settings_lib.make_settings("smoke"), 8,
                            "max_pool=slices+train.check_updated_params=true")
  assert config.model.max_pool == "slices" and config.train.check_updated_params is True
  with pytest.raises(ValueError, match="total batch 9 is not divisible by the 2 source domains"):
    algorithm_config("boda", settings_lib.make_settings("smoke"), 9)
  with pytest.raises(ValueError, match="--refresh_images=-1 must be >= 0"):
    settings_lib.make_settings("smoke", refresh_images=-1)
  assert settings_lib.make_settings("gpu").refresh_images == 8192
  with pytest.raises(ValueError, match="--refresh_threads=4,0: thread counts must be >= 1"):
    settings_lib.make_settings("smoke", refresh_threads=(4, 0))
  assert settings_lib.make_settings("gpu").refresh_thread_list == (4, 8, 16)
  assert settings_lib.make_settings("smoke", refresh_threads=()).refresh_thread_list == (4,)  # configs/base.py's
  assert settings_lib.make_settings("gpu").alt_reader_list == ((12, 4), (0, 8), (0, 16))
  assert settings_lib.make_settings("smoke", alt_readers=("12X4", "0x1")).alt_reader_list == ((12, 4), (0, 1))
  for bad in ("8", "0x0", "-1x4", "2x4x1", "ax4"):
    with pytest.raises(ValueError, match=f"--alt_readers: '{bad}' is not 'WxT'"):
      settings_lib.make_settings("smoke", alt_readers=(bad,))


def test_refresh_pass_repeats_the_training_split_to_the_asked_length():
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tests.memory_domain import MemoryDomain  # pylint: disable=import-outside-toplevel
  from wbcdg_jax.experiment import ExperimentData  # pylint: disable=import-outside-toplevel

  domains = [MemoryDomain("a", 13, 1), MemoryDomain("b", 9, 2)]
  data = ExperimentData(domains, [np.arange(13), np.arange(1, 9)], [np.arange(0)] * 2, None, np.zeros(0, np.int64))
  assert inputs._repeated_training_split(data, 0) == (data, 1)
  assert inputs._repeated_training_split(data, 21) == (data, 1)
  longer, repeats = inputs._repeated_training_split(data, 22)  # 21 images: twice covers 22
  assert repeats == 2 and [len(i) for i in longer.train_idx] == [26, 16]
  np.testing.assert_array_equal(longer.train_idx[1], np.tile(np.arange(1, 9), 2))
  assert longer.sources is data.sources and longer.val_idx is data.val_idx


def test_launcher_on_two_fake_cpu_devices(tmp_path):
  """The launcher end to end on 2 fake CPU devices: the table's steps span both, scaling times 1 and 2, and
  --profile_dir writes a trace. BoDA's step on 2 devices is the program test_sharded_step_matches_1_device
  compiles (the persistent compilation cache holds it once for both)."""
  out = str(tmp_path / "bench.json")
  env = cpu_env(2, PYTHONPATH=ROOT)
  profile = tmp_path / "profile"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "benchmark.py"), "--smoke",
                         "--algorithms=boda", "--sections=steps,scaling", "--scaling_algorithm=boda", f"--json={out}",
                         "--compile_threads=1", "--alt_readers=1X3,0x6", "--refresh_threads=2,5",
                         f"--profile_dir={profile}", "--profile_algorithm=boda"],
                        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert list(profile.rglob("*.xplane.pb")), "no jax.profiler trace written"
  assert "HloModule" in (profile / "boda_8" / "boda_step.hlo.txt").read_text()
  assert "| scaling | boda | 8 | 2 |" in proc.stdout
  with open(out) as f:
    result = json.load(f)
  # Where the traced step's time went, by the train step's named scopes (the model's both ways, the augmentation).
  [profiled] = result["profiles"]
  parts = {row["part"]: row for row in profiled["by_part"]}
  assert {"model forward", "model backward", "augment", "optimizer"} <= set(parts), sorted(parts)
  assert sum(row["share"] for row in parts.values()) == pytest.approx(1.0)
  assert profiled["batch"] == 8
  assert _positive(profiled["wall_ms_per_step"]) and _positive(profiled["busy_share_of_wall"])
  assert "Profile: boda at total batch 8" in proc.stdout and "| model forward |" in proc.stdout
  assert result["meta"]["device_count"] == 2 and result["settings"]["preset"] == "smoke"
  assert result["settings"]["alt_readers"] == ["1X3", "0x6"] and result["settings"]["refresh_threads"] == [2, 5]
  assert [(r["devices"], r["batch"]) for r in result["sections"]["steps"]["rows"]] == [(2, 8)]
  scaling = result["sections"]["scaling"]["rows"]
  assert [(r["devices"], r["batch"]) for r in scaling] == [(1, 4), (2, 8)]
  assert scaling[0]["ratio"] == pytest.approx(1.0) and _positive(scaling[1]["ratio"])
  report.check_numbers(result)


def test_pipeline_rows_start_timing_once_every_worker_made_a_batch():
  started = inputs._started  # pylint: disable=protected-access
  for workers, taken in ((0, 1), (1, 1), (12, 12)):
    it = iter(range(100))
    same, seconds = started(it, workers)
    assert same is it and next(it) == taken and seconds >= 0
