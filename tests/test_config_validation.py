"""Config validation before any compute (wbcdg_jax/config_validation.py): one test per rule, each checking that the
error names the field."""

import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import boda, boda_decoupled, coral, erm
from wbcdg_jax import config_validation as cv
from wbcdg_jax import checkpoint, protocol, trainer
from wbcdg_jax.classes import CLASS_NAMES, NUM_CLASSES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_CONFIGS = ("erm", "coral", "mmd", "dann", "cdann", "boda", "boda_mahalanobis", "boda_decoupled")


def _raises(config, *fragments, error=cv.ConfigError):
  """Validates `config`, expecting `error` whose message holds every fragment (plain text)."""
  with pytest.raises(error) as info:
    cv.validate_config(config)
  for fragment in fragments:
    assert fragment in str(info.value), (fragment, str(info.value))
  return info.value


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_shipped_config_and_preset_is_valid_also_after_a_json_round_trip(name):
  for preset in ("paper", "quick", "tiny"):
    config = protocol.load_algorithm_config(name, preset)
    cv.validate_config(config)
    # config.json of a run (tuples become lists) validates too.
    cv.validate_config(ml_collections.ConfigDict(json.loads(config.to_json_best_effort())))


def test_misspelt_field_is_named_with_the_closest_known_field():
  config = boda.get_config("tiny")
  config.optim.lrr = 1e-4  # a config file may add fields to the unlocked ConfigDict
  _raises(config, "config.optim.lrr is not a known field; did you mean config.optim.lr?")


def test_misspelt_section_and_unknown_field_without_a_close_match():
  config = boda.get_config("tiny")
  config.optimm = ml_collections.ConfigDict({"lr": 1e-4})
  config.model.zzz = 1
  error = _raises(config, "config.optimm is not a known field; did you mean config.optim?",
                  "config.model.zzz is not a known field; known fields of config.model: bn_mode, depth, dropout")
  assert len(error.problems) == 2  # Every problem of the pass is listed at once.


def test_optional_augment_fields_are_known_and_checked():
  config = erm.get_config("tiny")
  config.augment.crop_ratio = (0.8, 1.25)  # AugmentOptions fields that base.py leaves at their defaults
  config.augment.pad_mode = "nearest"
  cv.validate_config(config)
  config.augment.pad_mode = "wrap"
  _raises(config, "config.augment.pad_mode must be one of")


def test_missing_field_is_named():
  d = erm.get_config("tiny").to_dict()
  del d["train"]["log_every"]
  _raises(ml_collections.ConfigDict(d), "config.train.log_every is missing")


@pytest.mark.parametrize("section, field, value, fragment", [
    ("optim", "lr", "1e-4", "config.optim.lr should be float (or int), got str '1e-4'"),
    ("train", "steps", 3.0, "config.train.steps should be int, got float 3.0"),
    ("train", "steps", True, "config.train.steps should be int, got bool True"),
    ("augment", "hflip", 1, "config.augment.hflip should be bool, got int 1"),
    ("model", "head", 2, "config.model.head should be str, got int 2"),
    ("data", "sources", "synthetic_wbc/matek19_like", "config.data.sources should be a tuple (or list), got str"),
    ("data", "sources", ["synthetic_wbc/matek19_like", 3], "config.data.sources[1] should be str, got int 3"),
    ("augment", "crop_scale", (0.5, "1"), "config.augment.crop_scale[1] should be float (or int), got str '1'"),
    ("model", "depth", {"a": 1}, "config.model.depth should be int, got ConfigDict"),
    ("optim", "lr", ml_collections.ConfigDict({"a": 1}), "config.optim.lr should be float (or int), got ConfigDict"),
    ("data", "data_dir", None, "config.data.data_dir should be str, got NoneType None"),
    ("data", "stored_variants", ("mylab-px1", 2), "config.data.stored_variants[1] should be str, got int 2"),
])
def test_wrong_type_names_field_expected_and_got(section, field, value, fragment):
  # A config built without the reference's type checks (e.g. from a dict or a JSON file).
  d = erm.get_config("tiny").to_dict()
  d[section][field] = value
  _raises(ml_collections.ConfigDict(d), fragment)


def test_int_for_float_list_for_tuple_and_none_for_optional_paths_are_accepted():
  d = erm.get_config("tiny").to_dict()
  d["optim"]["lr"] = 1
  d["data"]["sources"] = list(d["data"]["sources"])
  d["augment"]["crop_scale"] = [1, 1]
  d["data"]["target"] = None
  d["init"]["checkpoint"] = None
  cv.validate_config(ml_collections.ConfigDict(d))


def test_section_replaced_by_a_value_is_named():
  d = erm.get_config("tiny").to_dict()
  d["optim"] = 1e-3
  _raises(ml_collections.ConfigDict(d), "config.optim should be a section (ConfigDict) with fields ", "grad_clip, lr",
          "got float 0.001")


def test_target_that_is_also_a_source():
  config = erm.get_config("tiny")
  config.data.target = config.data.sources[1]
  _raises(config, f"config.data.target={config.data.sources[1]!r} is also a source domain")


@pytest.mark.parametrize("module", [coral, boda, boda_decoupled, "dann", "cdann", "mmd"])
def test_alignment_algorithms_need_two_sources(module):
  config = (protocol.load_algorithm_config(module, "tiny") if isinstance(module, str) else module.get_config("tiny"))
  config.data.sources = ("synthetic_wbc/matek19_like",)
  _raises(config, f"config.algorithm={config.algorithm!r} aligns source domains", "at least two in "
          "config.data.sources")


def test_erm_with_one_source_is_fine_and_sources_must_not_be_empty_or_repeated():
  config = erm.get_config("tiny")
  config.data.sources = ("synthetic_wbc/matek19_like",)
  cv.validate_config(config)
  config.data.sources = ()
  _raises(config, "config.data.sources is empty")
  config.data.sources = ("synthetic_wbc/matek19_like", "synthetic_wbc/matek19_like")
  _raises(config, "names a domain twice")


@pytest.mark.parametrize("field, value, fragment", [
    ("data.sources", ("synthetic_wbc/matek19_lik", "synthetic_wbc/acevedo20_like"),
     "config.data.sources[0]='synthetic_wbc/matek19_lik' is not a synthetic domain; did you mean "
     "'synthetic_wbc/matek19_like'?"),
    ("data.target", "matek20", "config.data.target='matek20' is not a known dataset; did you mean 'matek19'?"),
    ("data.target", "matek19/x", "config.data.target='matek19/x': matek19 has no '/<variant>' part"),
])
def test_dataset_names_are_checked_before_anything_is_read(field, value, fragment):
  config = erm.get_config("tiny")
  section, name = field.split(".")
  config[section][name] = value
  _raises(config, fragment)


@pytest.mark.parametrize("field, value, fragment", [
    ("data.fold", 2, "config.data.fold=2 is outside 0..1 (config.data.num_folds=2)"),
    ("data.fold", -1, "config.data.fold=-1 is outside"),
    ("data.num_folds", 1, "config.data.num_folds=1 must be >= 2"),
    ("data.per_domain_batch", 0, "config.data.per_domain_batch=0 must be >= 1"),
    ("data.eval_batch", -4, "config.data.eval_batch=-4 must be >= 1"),
    ("data.num_threads", 0, "config.data.num_threads=0 must be >= 1"),
    ("data.stored_size", 0, "config.data.stored_size=0 must be >= 1"),
    ("data.fov_um", 0.0, "config.data.fov_um=0.0 must be > 0"),
    ("data.target_split", "alll", "config.data.target_split='alll' is not one of ['fold', 'all']; did you mean "
     "'all'?"),
    ("data.data_dir", "", "config.data.data_dir is empty"),
    ("model.image_size", 0, "config.model.image_size=0 must be >= 1"),
    ("model.depth", 20, "config.model.depth=20 is not one of [10, 18, 34, 50, 101, 152]"),
    ("model.dtype", "bf16", "config.model.dtype='bf16' is not one of ['float32', 'bfloat16', 'float16']; did you "
     "mean 'bfloat16'?"),
    ("model.bn_mode", "Frozen", "config.model.bn_mode='Frozen' is not one of ['frozen', 'train']; did you mean "
     "'frozen'?"),
    ("model.head", "mpl", "config.model.head='mpl' is not one of ['linear', 'mlp']"),
    ("model.dropout", 1.0, "config.model.dropout=1.0 must be in [0, 1)"),
    ("optim.lr", 0.0, "config.optim.lr=0.0 must be > 0"),
    ("optim.lr", float("nan"), "config.optim.lr=nan must be > 0"),
    ("optim.name", "sgd", "config.optim.name='sgd' is not one of ['adam', 'adamw']"),
    ("optim.weight_decay", -0.1, "config.optim.weight_decay=-0.1 must be >= 0"),
    ("train.steps", 0, "config.train.steps=0 must be >= 1"),
    ("train.eval_every", 0, "config.train.eval_every=0 must be >= 1"),
    ("train.on_nonfinite", "ignore", "config.train.on_nonfinite='ignore' is not one of ['stop', 'skip']"),
    ("augment.hue", 0.7, "config.augment.hue must be <= 0.5"),
    ("augment.crop_scale", (0.9, 0.5), "config.augment.crop_scale must be (lo, hi)"),
    ("dann.schedule", "linear", "config.dann.schedule='linear' is not one of ['ganin', 'constant']"),
    ("boda.temperature", 0.0, "config.boda.temperature=0.0 must be > 0"),
    ("boda.momentum", 1.5, "config.boda.momentum=1.5 must be in [0, 1)"),
    ("boda.momentum", 1.0, "config.boda.momentum=1.0 must be in [0, 1)"),  # 1 never updates the statistics
    ("seed", -1, "config.seed=-1 must be in [0, 2147483648)"),
    ("seed", 2**32, "config.seed=4294967296 must be in [0, 2147483648)"),  # jax.random.key would wrap it to 0
    ("boda.metric", "cosine", "config.boda.metric='cosine' is not one of ['euclidean', 'mahalanobis']"),
    ("boda.shrinkage", "1.5", "config.boda.shrinkage='1.5' is outside [0, 1]"),
    ("boda.shrinkage", "lw", "config.boda.shrinkage='lw' is not 'auto', 'ledoit_wolf' or a number"),
    ("decoupled.steps", 0, "config.decoupled.steps=0 must be >= 1"),
    ("algorithm", "bodaa", "config.algorithm='bodaa' is not one of"),
])
def test_bad_value_names_the_field(field, value, fragment):
  config = boda_decoupled.get_config("tiny")
  section, _, name = field.rpartition(".")
  (config[section] if section else config)[name] = value
  _raises(config, fragment)


def test_missing_weights_file_is_named(tmp_path):
  config = erm.get_config("tiny")
  config.init.checkpoint = str(tmp_path / "resnet50_imagenet.npz")
  error = _raises(config, f"config.init.checkpoint={config.init.checkpoint!r} does not exist",
                  error=FileNotFoundError)
  assert isinstance(error, ValueError)
  (tmp_path / "resnet50_imagenet.npz").write_bytes(b"x")
  cv.validate_config(config)


def test_missing_or_unfinished_stage1_workdir_is_named(tmp_path):
  config = boda_decoupled.get_config("tiny")
  config.init.stage1_workdir = str(tmp_path / "stage1")
  _raises(config, f"config.init.stage1_workdir={config.init.stage1_workdir!r} does not exist",
          error=FileNotFoundError)
  (tmp_path / "stage1").mkdir()
  _raises(config, "holds no best/ model", error=FileNotFoundError)
  (tmp_path / "stage1" / "best").mkdir()
  _raises(config, "holds no config.json")
  checkpoint.save_config(str(tmp_path / "stage1"), config)
  cv.validate_config(config)
  config = erm.get_config("tiny")
  config.init.stage1_workdir = str(tmp_path / "stage1")
  _raises(config, "config.init.stage1_workdir is set but config.algorithm='erm' has no stage 2")


@pytest.mark.parametrize("field,value,named", [
    ("data.fold", 1, "data.fold"), ("seed", 1, "seed"), ("data.target", "", "data.target"),
    ("data.sources", ("synthetic_wbc/acevedo20_like", "synthetic_wbc/matek19_like"), "data.sources"),
    ("model.depth", 18, "model.depth"),
    ("data.domain_options.acevedo20.drop_odd_sized", True, "data.domain_options")])
def test_stage1_workdir_must_share_the_data_split_and_encoder(tmp_path, field, value, named):
  # Stage 2 re-splits the data by its own config: another fold, seed (which draws the folds) or domain set would
  # validate and test on images the stage-1 encoder trained on.
  stage1 = boda_decoupled.get_config("tiny")
  (tmp_path / "best").mkdir()
  checkpoint.save_config(str(tmp_path), stage1)
  config = protocol.apply_overrides(stage1, [f"{field}={value}"])
  config.init.stage1_workdir = str(tmp_path)
  _raises(config, f"config.{named}=", "differs from the stage-1 run's")
  config = boda_decoupled.get_config("tiny")
  config.init.stage1_workdir = str(tmp_path)
  config.decoupled.steps, config.model.dropout = 7, 0.1  # stage 2's own settings may differ
  cv.validate_config(config)


def test_boda_must_switch_on_before_the_run_ends():
  config = boda.get_config("quick")
  config.train.steps = 50
  _raises(config, "config.boda.start_step=60 >= config.train.steps=50: the BoDA term would never switch on")
  config.boda.weight = 0.0  # no BoDA term: nothing to switch on
  cv.validate_config(config)


def test_trainer_keeps_its_names():
  assert trainer.validate_config is cv.validate_config and trainer.boda_shrinkage("0.2") == 0.2


# ------------------------------------------------------------------------------------ class count vs data


@dataclasses.dataclass
class _Domain:
  name: str
  labels: np.ndarray
  directory: str


@dataclasses.dataclass
class _Data:
  sources: list
  target: object


def _domain(tmp_path, name, labels, class_names=CLASS_NAMES):
  directory = tmp_path / name.replace("/", "_")
  directory.mkdir()
  (directory / "build_report.json").write_text(json.dumps({"counts": {c: 0 for c in class_names}}))
  return _Domain(name, np.asarray(labels, np.int64), str(directory))


def test_class_count_that_does_not_match_the_dataset(tmp_path):
  config = boda.get_config("tiny")
  a, b = config.data.sources
  good = _domain(tmp_path, a, [0, 5, NUM_CLASSES - 1])
  extra = CLASS_NAMES + ("plasma_cell", "hairy_cell")
  built_with_15 = _domain(tmp_path, b, [0, 14], class_names=extra)
  with pytest.raises(cv.ConfigError) as info:
    cv.validate_data(config, _Data([good, built_with_15], None))
  message = str(info.value)
  assert f"config.data.sources[1]={b!r}" in message and "built with 15 classes" in message
  assert f"the model predicts {NUM_CLASSES}" in message and built_with_15.directory in message
  target = _domain(tmp_path, config.data.target, [0, NUM_CLASSES])  # label 13: a 14th class
  with pytest.raises(cv.ConfigError, match=re.escape(f"config.data.target={config.data.target!r}")) as info:
    cv.validate_data(config, _Data([good], target))
  assert f"at least {NUM_CLASSES + 1} classes, but the model predicts {NUM_CLASSES}" in str(info.value)
  cv.validate_data(config, _Data([good], None))


def test_trainer_checks_config_then_data_before_building_anything(monkeypatch, tmp_path):
  config = boda.get_config("tiny")
  config.data.data_dir = str(tmp_path / "data")

  def no_data(_):
    raise AssertionError("data was read before the config was validated")

  monkeypatch.setattr(trainer, "load_experiment_data", no_data)
  config.optim.lrr = 1.0
  with pytest.raises(cv.ConfigError, match=re.escape("did you mean config.optim.lr?")):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  del config.optim["lrr"]

  domains = [_domain(tmp_path, name, [0, NUM_CLASSES + 2]) for name in config.data.sources]
  monkeypatch.setattr(trainer, "load_experiment_data", lambda _: _Data(domains, None))

  def no_stage(*args, **kwargs):
    raise AssertionError("the stage was built before the data was checked")

  monkeypatch.setattr(trainer, "run_stage", no_stage)
  with pytest.raises(cv.ConfigError, match=re.escape("config.data.sources[0]")):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))


# ------------------------------------------------------------------------------------------ command line


def test_command_line_override_of_an_unknown_field_is_an_error(tmp_path):
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "erm.py"), flag_values=fv,
                                  lock_config=True)
  with pytest.raises(Exception, match="lrr"):
    fv(["prog", "--config.optim.lrr=1e-4"])


def test_launcher_rejects_a_config_file_with_a_misspelt_field_before_reading_data(tmp_path):
  config_file = tmp_path / "my_boda.py"
  data_dir, workdir = tmp_path / "data", tmp_path / "run"
  config_file.write_text(textwrap.dedent(f"""
      from configs import boda

      def get_config(preset=None):
        c = boda.get_config(preset)
        c.data.data_dir = {str(data_dir)!r}
        c.boda.wieght = 0.3
        return c
      """))
  proc = subprocess.run([sys.executable, "launch/train.py", f"--config={config_file}:tiny", f"--workdir={workdir}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode != 0
  assert "config.boda.wieght is not a known field; did you mean config.boda.weight?" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not data_dir.exists() and not workdir.exists()
