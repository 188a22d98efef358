"""config.data.domain_options: further builder options per domain, e.g. training on Acevedo's drop_odd_sized variant.

The Acevedo tree is tiny: three JPEGs with the real folder and file names, two of the regular 360 x 363 px and one
odd-sized 366 x 369 px, stored at 16 px (the 25 um field of view is their centre 250 px at 10 px/um).
"""

import io
import os

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from PIL import Image

from configs import erm
from data_pipelines import registry
from wbcdg_jax import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
A = "PBC_dataset_normal_DIB"
S = 16
REGULAR = (f"{A}/basophil/BA_1.jpg", f"{A}/neutrophil/SNE_2.jpg")
ODD = f"{A}/basophil/BA_3.jpg"


def _config(**data):
  config = erm.get_config("tiny")
  for key, value in data.items():
    config.data[key] = value
  return config


def _jpeg(path, seed, width, height):
  path.parent.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)).save(buf, "JPEG")
  path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def acevedo_dropodd(tmp_path_factory):
  """data_dir where only acevedo20's drop_odd_sized variant is built (stored size S, 25 um)."""
  manual = tmp_path_factory.mktemp("acevedo_manual")
  for seed, rel in enumerate(REGULAR):
    _jpeg(manual / rel, seed, 360, 363)
  _jpeg(manual / ODD, 9, 366, 369)
  data_dir = tmp_path_factory.mktemp("acevedo_data")
  registry.build("acevedo20", data_dir=data_dir, manual_dir=manual, verbose=False, image_size=S,
                 drop_odd_sized=True)
  return data_dir


def test_a_config_opens_the_dropodd_variant(acevedo_dropodd):
  config = _config(data_dir=str(acevedo_dropodd), stored_size=S, sources=("acevedo20",), target="")
  with pytest.raises(FileNotFoundError, match=r"acevedo20.s16-fov25.1\.1\.0"):  # The default: odd sizes kept.
    experiment.open_domain(config, "acevedo20")
  config.data.domain_options.acevedo20.drop_odd_sized = True
  domain = experiment.open_domain(config, "acevedo20")
  assert domain.directory.endswith(os.path.join("acevedo20", "s16-fov25-dropodd", "1.1.0"))
  assert sorted(domain.paths.tolist()) == sorted(REGULAR)
  assert experiment.load_experiment_data(config).sources[0].directory == domain.directory


def test_command_line_sets_drop_odd_sized():
  argv = ["prog", f"--config={os.path.join(ROOT, 'configs', 'erm.py')}",
          "--config.data.domain_options.acevedo20.drop_odd_sized=True"]
  fv = flags.FlagValues()
  # sys_argv: config_flags defines the --config.x override flags from the arguments it is shown (as launch/train.py).
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  options = experiment.builder_options(fv.config, "acevedo20")
  assert options == {"image_size": 256, "fov_um": 25.0, "drop_odd_sized": True}
  assert str(registry.make_builder("acevedo20", data_dir="d", **options).data_path).endswith(
      os.path.join("acevedo20", "s256-fov25-dropodd", "1.1.0"))
  assert experiment.domain_options_problems(fv.config) == []


def test_builder_and_full_name_entries_merge_and_old_configs_load():
  config = _config()
  config.data.domain_options["synthetic_wbc"] = {"seed": 3, "record_compression": "zstd"}
  config.data.domain_options["synthetic_wbc/matek19_like"] = {"seed": 5}
  assert experiment.domain_options_problems(config) == []
  scale = config.data.synthetic_scale
  base = {"image_size": 32, "fov_um": 25.0, "scale": scale}
  assert experiment.builder_options(config, "synthetic_wbc/matek19_like") == dict(
      base, seed=5, record_compression="zstd")  # The full name's seed wins over the builder's.
  assert experiment.builder_options(config, "synthetic_wbc/int20_like") == dict(
      base, seed=3, record_compression="zstd")
  assert experiment.builder_options(config, "matek19") == {"image_size": 32, "fov_um": 25.0}
  with config.unlocked():
    del config.data["domain_options"]  # A config saved before the field.
  assert experiment.domain_options_problems(config) == []
  assert experiment.builder_options(config, "acevedo20") == {"image_size": 32, "fov_um": 25.0}


@pytest.mark.parametrize("key, options, expected", [
    ("acevedo20", {"drop_odd": True},
     "config.data.domain_options.acevedo20.drop_odd is not an option of acevedo20 (Acevedo20Config); valid options: "
     "strict, num_workers, record_compression, drop_odd_sized"),
    ("acevedo20", {"image_size": 64}, "config.data.domain_options.acevedo20.image_size: image_size is set for every "
     "domain by config.data.stored_size"),
    ("matek19", {"fov_um": 30.0}, "config.data.domain_options.matek19.fov_um: fov_um is set for every domain by "
     "config.data.fov_um"),
    ("synthetic_wbc/matek19_like", {"scale": 0.1}, "config.data.domain_options.synthetic_wbc/matek19_like.scale: "
     "scale is set for every domain by config.data.synthetic_scale"),
    ("synthetic_wbc", {"domain": "int20_like"}, "config.data.domain_options.synthetic_wbc.domain: domain comes from "
     "the registry name synthetic_wbc/<domain>"),
    ("matek19", {"scale": 0.1}, "config.data.domain_options.matek19.scale is not an option of matek19"),
    ("acevedo20", {"drop_odd_sized": "yes"},
     "config.data.domain_options.acevedo20.drop_odd_sized should be bool, got str 'yes'"),
    ("acevedo20", 3, "config.data.domain_options.acevedo20 should be a mapping of builder option -> value"),
    ("acevedo", {"drop_odd_sized": True}, "config.data.domain_options.acevedo: 'acevedo' is no dataset"),
    ("acevedo20/x", {}, "config.data.domain_options.acevedo20/x: acevedo20 has no '/<variant>' part"),
])
def test_problems_name_the_field(key, options, expected):
  config = _config()
  if key in config.data.domain_options:
    with config.unlocked():
      del config.data.domain_options[key]  # So that a non-mapping may replace acevedo20's entry.
  config.data.domain_options[key] = options
  problems = experiment.domain_options_problems(config)
  assert len(problems) == 1 and problems[0].startswith(expected), problems
  if key.partition("/")[0] in registry.BUILDERS and not key.endswith("/x"):  # A domain this entry applies to.
    name = "synthetic_wbc/matek19_like" if key.startswith("synthetic_wbc") else key
    with pytest.raises(ValueError, match="invalid config.data.domain_options"):
      experiment.builder_options(config, name)


def test_default_config_has_no_problems():
  assert experiment.domain_options_problems(erm.get_config()) == []
  assert experiment.builder_options(erm.get_config(), "acevedo20")["drop_odd_sized"] is False
