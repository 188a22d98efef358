"""Random hyperparameter search: reproducible in-range draws, well-formed commands, dry run, skips, best draw."""

import math
import os
import shlex
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from tests.fake_runs import FakeTrainer
from wbcdg_jax import protocol, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGS = ("erm", "coral", "mmd", "dann", "cdann", "boda", "boda_decoupled")


def test_draws_are_reproducible_and_differ_between_indices():
  for alg in ALGS:
    a = sweep.draw(alg, 3, sweep_seed=7, train_steps=5001)
    assert a == sweep.draw(alg, 3, sweep_seed=7, train_steps=5001)
    assert a != sweep.draw(alg, 4, sweep_seed=7, train_steps=5001)
    assert a != sweep.draw(alg, 3, sweep_seed=8, train_steps=5001)


def test_draws_stay_inside_the_documented_ranges():
  expected = {  # REFERENCE.md section 1, written out independently of wbcdg_jax.sweep
      "optim.lr": (1e-5, 10 ** -3.5), "model.dropout": {0.0, 0.1, 0.5}, "boda.weight": (1e-2, 10 ** -0.5),
      "boda.nu": (10 ** -0.5, 1.0), "boda.temperature": (0.1, 10 ** 0.5), "boda.momentum": (0.0, 0.4),
      "coral.weight": (0.1, 10.0), "mmd.weight": (0.1, 10.0), "dann.weight": (1e-2, 1e2),
      "boda.start_step": {300, 400, 500, 600}, "boda.feat_update_freq": set(range(100, 151))}
  seen = {}
  for alg in ALGS:
    for i in range(200):
      for field, value in sweep.draw(alg, i, sweep_seed=0, train_steps=5001).items():
        rng = expected[field]
        if isinstance(rng, set):
          assert value in rng, (field, value)
        else:
          assert rng[0] <= value <= rng[1], (field, value)
        seen.setdefault(field, set()).add(value)
  assert seen["boda.start_step"] == {300, 400, 500, 600} and seen["model.dropout"] == {0.0, 0.1, 0.5}
  assert min(seen["boda.feat_update_freq"]) == 100 and max(seen["boda.feat_update_freq"]) == 150
  lr = [math.log10(v) for v in seen["optim.lr"]]
  assert min(lr) < -4.9 and max(lr) > -3.6  # log-uniform spread over the whole range


def test_each_algorithm_draws_only_its_fields():
  assert set(sweep.draw("erm", 0, sweep_seed=0, train_steps=5001)) == {"optim.lr", "model.dropout"}
  assert set(sweep.draw("dann", 0, sweep_seed=0, train_steps=5001)) == {"optim.lr", "model.dropout", "dann.weight"}
  boda = sweep.draw("boda", 0, sweep_seed=0, train_steps=5001)
  assert {"boda.start_step", "boda.feat_update_freq", "coral.weight"} <= set(boda)
  short = sweep.draw("boda", 0, sweep_seed=0, train_steps=300)  # quick/tiny keep their own BoDA schedule
  assert not {"boda.start_step", "boda.feat_update_freq"} & set(short)


def test_draws_do_not_depend_on_the_other_swept_algorithms(tmp_path):
  kw = dict(preset="tiny", num_draws=3, seeds=[0], folds=[0], workdir=str(tmp_path))
  alone = [r["hparams"] for r in sweep.plan(["boda"], **kw)]
  mixed = [r["hparams"] for r in sweep.plan(["erm", "boda"], **kw) if r["algorithm"] == "boda"]
  assert alone == mixed


def _parse_command(line):
  """Parses one commands.txt line with train.py's own flag definitions; returns (config, workdir)."""
  argv = shlex.split(line)
  assert argv[:2] == ["python", "launch/train.py"]
  fv = flags.FlagValues()
  # sys_argv: config_flags defines the --config.x override flags from the arguments it is shown.
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv[1:])
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  fv(argv[1:])
  return fv.config, fv.workdir


def test_commands_rebuild_exactly_the_planned_configs(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)  # config file paths in the commands are relative to the repository root
  runs = sweep.plan(["erm", "boda"], preset="tiny", num_draws=2, seeds=[0, 1], folds=None, workdir=str(tmp_path),
                    extra=["data.data_dir=/some/data"])
  assert len(runs) == 2 * 2 * 2 * 2
  path = str(tmp_path / "commands.txt")
  sweep.write_commands(runs, path)
  lines = open(path).read().splitlines()
  assert len(lines) == len(runs) and len(set(lines)) == len(lines)
  assert len({r["workdir"] for r in runs}) == len(runs)
  for line, r in zip(lines, runs):
    config, workdir = _parse_command(line)
    assert workdir == r["workdir"]
    assert config.to_dict() == r["config"].to_dict()
    assert config.seed == r["seed"] and config.data.fold == r["fold"] and config.data.data_dir == "/some/data"
    for field, value in r["hparams"].items():
      section, name = field.split(".")
      assert config[section][name] == value  # floats round-trip exactly


def test_dry_run_only_writes_commands(tmp_path):
  wd = str(tmp_path / "sw")
  out = subprocess.run([sys.executable, "launch/sweep.py", "--algorithms=erm,dann", "--preset=paper",
                        "--num_draws=3", "--seeds=0,1", "--folds=0,2", f"--workdir={wd}", "--dry_run"],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert sorted(os.listdir(wd)) == ["commands.txt"]
  lines = open(os.path.join(wd, "commands.txt")).read().splitlines()
  assert len(lines) == 2 * 3 * 2 * 2
  assert all(l.startswith("python launch/train.py --config=configs/") for l in lines)
  assert all(f"--workdir={wd}/" in l for l in lines)


def test_local_run_skips_finished_and_selects_best_draw(tmp_path):
  wd = str(tmp_path)
  runs = sweep.plan(["erm", "boda"], preset="tiny", num_draws=3, seeds=[0, 1], folds=None, workdir=wd)
  fake = FakeTrainer()
  assert sweep.run_local(runs[:5], train_fn=fake) == 5
  assert sweep.run_local(runs, train_fn=fake) == len(runs) - 5  # the first five are finished
  assert len(fake.calls) == len(runs)
  assert sweep.run_local(runs, train_fn=fake) == 0 and len(fake.calls) == len(runs)
  summary = sweep.write_summary(runs, wd, distribution=False)
  for alg in ("erm", "boda"):
    means = {}
    for i in range(3):
      rs = [r for r in runs if r["algorithm"] == alg and r["draw"] == i]
      means[i] = sum(protocol.load_metrics(r["workdir"])["val"]["f1_macro"] for r in rs) / len(rs)
    best = summary["best"][alg]
    assert best["draw"] == max(means, key=means.get)
    assert best["score"] == pytest.approx(means[best["draw"]]) and len(best["runs"]) == 4
  for name in ("table1_source_val.md", "table2_unseen_domain.csv", "per_class_unseen.csv", "results.json"):
    assert os.path.getsize(os.path.join(wd, "tables", name)) > 0
  assert os.path.isfile(os.path.join(wd, "sweep.json"))


def test_unfinished_draws_do_not_compete(tmp_path):
  runs = sweep.plan(["erm"], preset="tiny", num_draws=2, seeds=[0], folds=None, workdir=str(tmp_path))
  fake = FakeTrainer()
  sweep.run_local([r for r in runs if r["draw"] == 1] + [runs[0]], train_fn=fake)  # draw 0 misses fold 1
  assert sweep.select_best(runs)["erm"]["candidates"].keys() == {1}
