"""Cross-validation, comparison tables and figures: end to end at the `tiny` preset, plus fast fake-run checks."""

import csv
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from tests.fake_runs import FakeTrainer
from wbcdg_jax import protocol, report
from wbcdg_jax.classes import CLASS_NAMES

# The module fixture below trains four runs: one pytest-xdist worker runs every test here, so it trains them once.
pytestmark = pytest.mark.xdist_group("protocol")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGORITHMS = ("erm", "boda")
FOLDS = (0, 1)


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _sklearn_scores(run_dir):
  """F1-micro / F1-macro (present classes) straight from the saved predictions, independent of wbcdg_jax."""
  z = np.load(os.path.join(run_dir, "target_predictions.npz"))
  y, pred = z["labels"], z["logits"].argmax(-1)
  return {"f1_micro": skm.f1_score(y, pred, average="micro"),
          "f1_macro": skm.f1_score(y, pred, labels=np.unique(y), average="macro", zero_division=0)}


# ---------------------------------------------------------------------------------------- end to end (real)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
  """Two algorithms x two folds trained for real at the tiny preset (about 1.5-2 minutes on 2 CPU cores)."""
  data_dir = str(tmp_path_factory.mktemp("data"))
  workdir = str(tmp_path_factory.mktemp("compare"))
  overrides = [f"data.data_dir={data_dir}"]
  runs = protocol.run_comparison(ALGORITHMS, "tiny", workdir, folds=FOLDS, overrides=overrides)
  results = report.write_comparison(runs, workdir)
  return {"workdir": workdir, "data_dir": data_dir, "runs": runs, "results": results}


def test_every_fold_trained_in_its_directory(compared):
  for alg in ALGORITHMS:
    for k in FOLDS:
      run_dir = os.path.join(compared["workdir"], alg, f"fold_{k}")
      assert compared["runs"][alg][k] == run_dir
      m = protocol.load_metrics(run_dir)
      assert m["algorithm"] == alg and m["fold"] == k
      assert protocol.load_run_config(run_dir).data.fold == k
    with open(os.path.join(compared["workdir"], alg, "crossval.json")) as f:
      cv = json.load(f)
    assert cv["folds"] == list(FOLDS) and set(cv["aggregate"]) == {"val", "target"}


def test_tables_match_sklearn_on_saved_predictions(compared):
  table2 = {r["algorithm"]: r for r in _read_csv(os.path.join(compared["workdir"], "table2_unseen_domain.csv"))}
  table1 = {r["algorithm"]: r for r in _read_csv(os.path.join(compared["workdir"], "table1_source_val.csv"))}
  assert set(table1) == set(table2) == set(ALGORITHMS)
  for alg in ALGORITHMS:
    per_fold = [_sklearn_scores(compared["runs"][alg][k]) for k in FOLDS]
    for score in ("f1_micro", "f1_macro"):
      values = [p[score] for p in per_fold]
      assert float(table2[alg][f"{score}_mean"]) == pytest.approx(np.mean(values), abs=1e-9)
      assert float(table2[alg][f"{score}_std"]) == pytest.approx(np.std(values), abs=1e-9)
      stored = [protocol.load_metrics(compared["runs"][alg][k])["target"][score] for k in FOLDS]
      assert stored == pytest.approx(values, abs=1e-9)  # the trainer's numbers are sklearn's numbers
      val = [protocol.load_metrics(compared["runs"][alg][k])["val"][score] for k in FOLDS]
      assert float(table1[alg][f"{score}_mean"]) == pytest.approx(np.mean(val), abs=1e-9)
    assert int(table2[alg]["n_runs"]) == len(FOLDS)


def test_per_class_csv_is_pooled_sklearn(compared):
  rows = _read_csv(os.path.join(compared["workdir"], "per_class_unseen.csv"))
  for alg in ALGORITHMS:
    zs = [np.load(os.path.join(compared["runs"][alg][k], "target_predictions.npz")) for k in FOLDS]
    y = np.concatenate([z["labels"] for z in zs])
    pred = np.concatenate([z["logits"].argmax(-1) for z in zs])
    present = np.unique(y)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=np.arange(len(CLASS_NAMES)), zero_division=0)
    mine = {row["class"]: row for row in rows if row["algorithm"] == alg}
    assert list(mine) == list(CLASS_NAMES)
    for c, name in enumerate(CLASS_NAMES):
      assert (mine[name]["present"] == "True") == (c in present)
      if c in present:
        assert float(mine[name]["f1"]) == pytest.approx(f[c], abs=1e-6)
        assert float(mine[name]["recall"]) == pytest.approx(r[c], abs=1e-6)
        assert int(mine[name]["support"]) == s[c]
      else:
        assert mine[name]["f1"] == ""  # absent: no score, not a silent zero


def test_files_written_and_results_hold_configs(compared):
  wd = compared["workdir"]
  names = ["table1_source_val.md", "table2_unseen_domain.md", "table1_source_val.csv", "table2_unseen_domain.csv",
           "per_class_unseen.csv", "confusion_erm.png", "confusion_boda.png", "confusion_erm_vs_boda.png",
           "class_distribution.png", "results.json"]
  for name in names:
    assert os.path.getsize(os.path.join(wd, name)) > 0, name
  for png in [n for n in names if n.endswith(".png")]:
    with open(os.path.join(wd, png), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(wd, "table2_unseen_domain.md")) as f:
    assert f.read().count("**") >= 4  # best F1-micro and F1-macro in bold
  with open(os.path.join(wd, "results.json")) as f:
    results = json.load(f)
  for alg in ALGORITHMS:
    for k in FOLDS:
      with open(os.path.join(wd, alg, f"fold_{k}", "config.json")) as f:
        assert results["algorithms"][alg]["runs"][str(k)]["config"] == json.load(f)
  dist = results["class_distribution"]["0"]
  cfg = protocol.load_run_config(compared["runs"]["erm"][0])
  assert set(dist) == set(cfg.data.sources) | {cfg.data.target}
  n_target = sum(dist[cfg.data.target]["target-test"])
  assert n_target == protocol.load_metrics(compared["runs"]["erm"][0])["target"]["n"]


def test_rerun_skips_finished_runs(compared, monkeypatch):
  wd = compared["workdir"]
  stamps = {p: os.path.getmtime(p) for alg in ALGORITHMS for k in FOLDS
            for p in [os.path.join(wd, alg, f"fold_{k}", n) for n in ("metrics.json", "log.jsonl")]}

  def must_not_train(config, workdir):
    raise AssertionError(f"{workdir} was trained again")

  monkeypatch.setattr(protocol, "_default_train_fn", must_not_train)
  runs = protocol.run_comparison(ALGORITHMS, "tiny", wd, folds=FOLDS,
                                 overrides=[f"data.data_dir={compared['data_dir']}"])
  assert runs == compared["runs"]
  # The command line too (a fresh process: nothing patched) only collects and rewrites the tables.
  out = subprocess.run(
      [sys.executable, "launch/compare.py", "--algorithms=erm,boda", "--preset=tiny", "--folds=0,1",
       f"--workdir={wd}", f"--override=data.data_dir={compared['data_dir']}"],
      cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Table 2" in out.stdout
  assert {p: os.path.getmtime(p) for p in stamps} == stamps


def test_mismatched_predictions_are_refused(compared, tmp_path):
  import shutil
  run = str(tmp_path / "run")
  shutil.copytree(compared["runs"]["erm"][0], run, ignore=shutil.ignore_patterns("checkpoints", "best"))
  m = protocol.load_metrics(run)
  m["target"]["f1_macro"] += 0.01
  with open(os.path.join(run, "metrics.json"), "w") as f:
    json.dump(m, f)
  with pytest.raises(report.PredictionMismatchError, match="f1_macro"):
    report.collect({"erm": {0: run}})


# ------------------------------------------------------------------------------------------- fast, fake runs


def _tiny_config(name="erm"):
  return protocol.load_algorithm_config(name, "tiny")


def test_crossval_runs_each_fold_once_and_aggregates(tmp_path):
  fake = FakeTrainer()
  wd = str(tmp_path / "cv")
  summary = protocol.run_crossval(_tiny_config(), wd, train_fn=fake)
  assert [c.data.fold for c, _ in fake.calls] == [0, 1]
  assert [w for _, w in fake.calls] == [os.path.join(wd, "fold_0"), os.path.join(wd, "fold_1")]
  values = [protocol.load_metrics(w)["target"]["f1_macro"] for _, w in fake.calls]
  agg = summary["aggregate"]["target"]["f1_macro"]
  assert agg["mean"] == pytest.approx(np.mean(values)) and agg["std"] == pytest.approx(np.std(values))
  protocol.run_crossval(_tiny_config(), wd, train_fn=fake)
  assert len(fake.calls) == 2  # finished folds are not trained again
  with pytest.raises(ValueError, match="fold 2 is outside 0..1"):
    protocol.run_crossval(_tiny_config(), wd, folds=[2], train_fn=fake)


def test_a_finished_run_kept_for_another_config_is_named(tmp_path, caplog):
  fake = FakeTrainer()
  wd = str(tmp_path / "cv")
  protocol.run_crossval(_tiny_config(), wd, folds=[0], train_fn=fake)
  with caplog.at_level(logging.WARNING):
    protocol.run_crossval(_tiny_config(), wd, folds=[0], train_fn=fake)
  assert not caplog.records  # the same config: nothing to say
  changed = protocol.apply_overrides(_tiny_config(), ["optim.lr=0.5"])
  with caplog.at_level(logging.WARNING):
    protocol.run_crossval(changed, wd, folds=[0], train_fn=fake)
  assert len(fake.calls) == 1  # kept, not retrained
  assert f"kept the finished run in {os.path.join(wd, 'fold_0')}" in caplog.text
  assert f"config.optim.lr: {_tiny_config().optim.lr!r} -> 0.5" in caplog.text


def test_crossval_refuses_one_stage1_run_for_several_folds(tmp_path):
  # Fold j's validation images are in fold i's training split: one stage-1 encoder cannot serve every fold.
  fake = FakeTrainer()
  config = protocol.apply_overrides(_tiny_config("boda_decoupled"), [f"init.stage1_workdir={tmp_path / 's1'}"])
  with pytest.raises(ValueError, match="config.init.stage1_workdir=.* cannot serve folds \\[0, 1\\]"):
    protocol.run_crossval(config, str(tmp_path / "cv"), train_fn=fake)
  assert not fake.calls
  protocol.run_crossval(config, str(tmp_path / "cv"), folds=[0], train_fn=fake)
  assert len(fake.calls) == 1


def test_leave_one_domain_out_holds_out_each_domain(tmp_path):
  fake = FakeTrainer()
  config = _tiny_config("boda")
  domains = list(config.data.sources) + [config.data.target]
  summary = protocol.run_leave_one_domain_out(config, str(tmp_path), folds=[1], train_fn=fake)
  seen = [(tuple(c.data.sources), c.data.target, c.data.fold) for c, _ in fake.calls]
  assert seen == [(tuple(d for d in domains if d != t), t, 1) for t in domains]
  for t in domains:
    assert os.path.isfile(os.path.join(str(tmp_path), f"target_{protocol.domain_slug(t)}", "fold_1", "metrics.json"))
  means = [summary["per_target"][t]["aggregate"]["target"]["f1_macro"]["mean"] for t in domains]
  assert summary["mean_over_targets"]["target"]["f1_macro"]["mean"] == pytest.approx(np.mean(means))
  assert os.path.isfile(os.path.join(str(tmp_path), "leave_one_domain_out.json"))


def test_absent_target_class_is_listed_not_scored_zero(tmp_path):
  fake = FakeTrainer(absent_in_target=(5, 7))
  runs = protocol.run_comparison(["erm", "boda_decoupled"], "tiny", str(tmp_path), train_fn=fake)
  report.write_comparison(runs, str(tmp_path), distribution=False)
  rows = _read_csv(os.path.join(str(tmp_path), "per_class_unseen.csv"))
  absent = {r["class"] for r in rows if r["present"] == "False"}
  assert absent == {CLASS_NAMES[5], CLASS_NAMES[7]}
  with open(os.path.join(str(tmp_path), "results.json")) as f:
    res = json.load(f)
  t = res["algorithms"]["erm"]["runs"]["0"]["target"]
  assert set(t["absent_classes"]) == {CLASS_NAMES[5], CLASS_NAMES[7]} and CLASS_NAMES[5] not in t["per_class"]
  # Predictions of a decoupled run are read from its stage-2 directory.
  assert os.path.isfile(os.path.join(str(tmp_path), "confusion_erm_vs_boda_decoupled.png"))
  conf = np.asarray(res["algorithms"]["erm"]["pooled_target"]["confusion"])
  assert np.isnan(report.row_normalise(conf)[5]).all()
  assert np.allclose(np.nansum(report.row_normalise(conf), axis=1)[conf.sum(1) > 0], 1.0)


def test_overrides_parse_types_and_name_bad_fields():
  c = protocol.apply_overrides(_tiny_config(), ["optim.lr=0.01", "train.steps=7", "data.sources=('a','b')",
                                                "augment.enabled=false", "data.data_dir=/x"])
  assert c.optim.lr == 0.01 and c.train.steps == 7 and c.data.sources == ("a", "b")
  assert c.augment.enabled is False and c.data.data_dir == "/x"
  with pytest.raises(ValueError, match="optim.lrr"):
    protocol.apply_overrides(_tiny_config(), ["optim.lrr=1"])
  with pytest.raises(ValueError, match="not of the form"):
    protocol.apply_overrides(_tiny_config(), ["optim.lr"])
  with pytest.raises(ValueError, match="configs/nope.py"):
    protocol.load_algorithm_config("nope", "tiny")


@pytest.mark.parametrize("override,message", [
    ("train.steps=1e3", "'1e3' is not an integer (config.train.steps is of type int)"),
    ("optim.lr=1e-4x", "'1e-4x' is not a number (config.optim.lr is of type float)"),
    ("augment.enabled=yes", "'yes' is not a boolean"),
    ("augment.crop_scale=0.7,big", "'big' is not a number")])
def test_override_values_that_do_not_parse_name_the_field(override, message):
  with pytest.raises(ValueError) as err:
    protocol.apply_overrides(_tiny_config(), [override])
  assert f"override {override!r}: {message}" in str(err.value)


def test_tuple_overrides_take_bare_comma_separated_items():
  c = protocol.apply_overrides(_tiny_config(), ["data.sources=synthetic_wbc/matek19_like, synthetic_wbc/int20_like",
                                                "augment.crop_scale=0.5,1"])
  assert c.data.sources == ("synthetic_wbc/matek19_like", "synthetic_wbc/int20_like")
  assert c.augment.crop_scale == (0.5, 1.0)


# ---------------------------------------------------------------------------------------- compilation cache


def test_compilation_cache_follows_the_flag_then_the_environment_then_the_workdir(tmp_path, monkeypatch):
  import jax

  before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  try:
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.25")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.25)
    protocol.enable_compilation_cache(str(tmp_path / "run"))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "shared")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.25  # the environment's, kept
    protocol.enable_compilation_cache(str(tmp_path / "run"), str(tmp_path / "flag"))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "flag")

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
    protocol.enable_compilation_cache(str(tmp_path / "run"))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "run" / "jax_cache")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0
    protocol.enable_compilation_cache(str(tmp_path / "other"), "")  # off: nothing changes
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "run" / "jax_cache")
  finally:
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
