"""A lab's own labelled_folders dataset named in a training config: opened by name and stored size alone.

The lab's tree is tiny (40 x 40 px PNGs in class folders) and stored at the tiny preset's 32 px and 25 um; with
px_per_um 1 or 2 the 25 um field of view is 25 or 50 source pixels, both plausible for 40 px images.
"""

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from configs import erm
from data_pipelines import registry
from data_pipelines import report as report_lib
from wbcdg_jax import config_validation
from wbcdg_jax import experiment
from wbcdg_jax.classes import class_index

NAME = "labelled_folders/mylab"
SIZES = dict(image_size=32, fov_um=25.0)  # configs/erm.py:tiny's stored_size and fov_um.
FOLDERS = {"Neutrophil": 4, "Lymph": 2, "Artefact": 1}  # Artefact is mapped to "drop".
EXPECTED = {f"Neutrophil/img{j}.png": class_index("neutrophil_segmented") for j in range(4)}
EXPECTED.update({f"Lymph/img{j}.png": class_index("lymphocyte_typical") for j in range(2)})


def _write_lab(root):
  """Class folders of random PNGs and the lab's mapping table; returns (manual_dir, table path)."""
  manual = root / "lab"
  for i, (folder, n) in enumerate(FOLDERS.items()):
    (manual / folder).mkdir(parents=True)
    for j in range(n):
      image = np.random.default_rng([i, j]).integers(0, 256, (40, 40, 3), np.uint8)
      buf = io.BytesIO()
      Image.fromarray(image).save(buf, format="PNG")
      (manual / folder / f"img{j}.png").write_bytes(buf.getvalue())
  table = root / "map.csv"
  table.write_text("key,class\nNeutrophil,neutrophil_segmented\nLymph,lymphocyte_typical\nArtefact,drop\n")
  return manual, table


def _build(data_dir, manual, table, px_per_um):
  return registry.build(NAME, data_dir=data_dir, manual_dir=manual, verbose=False, mapping=str(table),
                        px_per_um=px_per_um, **SIZES)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
  """(data_dir with one built variant at px_per_um 1, its directory, manual_dir, table)."""
  root = tmp_path_factory.mktemp("lab")
  manual, table = _write_lab(root)
  data_dir = root / "data"
  return data_dir, _build(data_dir, manual, table, 1.0), manual, table


def test_opens_by_name_with_only_the_stored_size(lab):
  data_dir, path, _, _ = lab
  domain = registry.open_domain(NAME, data_dir=data_dir, **SIZES)  # No mapping, no px_per_um.
  assert domain.directory == path and domain.name == NAME and domain.image_size == 32
  assert dict(zip(domain.paths.tolist(), domain.labels.tolist())) == EXPECTED
  assert [int(domain.source[i]["label"]) for i in range(len(domain))] == domain.labels.tolist()
  # px_per_um / label_source, when given, must fit the stored variant.
  assert registry.open_domain(NAME, data_dir=data_dir, px_per_um=1.0, label_source="folder", **SIZES).directory \
      == path
  with pytest.raises(FileNotFoundError, match="px_per_um=3.0"):
    registry.open_domain(NAME, data_dir=data_dir, px_per_um=3.0, **SIZES)


def test_two_variants_are_listed_and_one_can_be_picked(lab, tmp_path):
  data_dir, path, manual, table = lab
  shutil.copytree(data_dir, tmp_path / "data")
  first = os.path.join(str(tmp_path / "data"), os.path.relpath(path, data_dir))
  second = _build(tmp_path / "data", manual, table, 2.0)
  names = [os.path.basename(os.path.dirname(p)) for p in (first, second)]
  assert names[0].startswith("mylab-px1-folder-map") and names[1].startswith("mylab-px2-folder-map")
  with pytest.raises(ValueError) as info:
    registry.open_domain(NAME, data_dir=tmp_path / "data", **SIZES)
  message = str(info.value)
  assert "2 built variants" in message and names[0] in message and names[1] in message
  assert "config.data.stored_variants" in message and "px_per_um=2" in message
  # Picking: by its directory name (entries of other labs are ignored), or by px_per_um.
  picked = registry.open_domain(NAME, data_dir=tmp_path / "data", stored_variants=("otherlab-x", names[1]), **SIZES)
  assert picked.directory == second and dict(zip(picked.paths.tolist(), picked.labels.tolist())) == EXPECTED
  assert registry.open_domain(NAME, data_dir=tmp_path / "data", px_per_um=1.0, **SIZES).directory == first
  # The same pick from a training config.
  config = erm.get_config("tiny")
  config.data.data_dir = str(tmp_path / "data")
  config.data.stored_variants = (names[0],)
  assert experiment.open_domain(config, NAME).directory == first
  config_validation.validate_config(config)  # The new field is in the schema.


def test_not_built_names_the_folder_and_the_build_command(lab, tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    registry.open_domain(NAME, data_dir=tmp_path, **SIZES)
  message = str(info.value)
  assert os.path.join(str(tmp_path), "labelled_folders") in message
  assert (f"python launch/build_data.py --dataset={NAME} --data_dir={tmp_path} --manual_dir=" in message
          and "--mapping=<table .csv/.json> --px_per_um=<pixels per um> --image_size=32 --fov_um=25" in message)
  # Built, but for another stored size: the variant there is named.
  data_dir, path, _, _ = lab
  with pytest.raises(FileNotFoundError, match=r"s16-fov25.*other variants there: mylab-px1-folder-map\w{8}-s32-fov25"):
    registry.open_domain(NAME, data_dir=data_dir, image_size=16, fov_um=25.0)
  assert os.path.isdir(path)


def test_edited_build_report_is_refused(lab, tmp_path):
  data_dir, path, _, _ = lab
  shutil.copytree(data_dir, tmp_path / "data")
  copy = os.path.join(str(tmp_path / "data"), os.path.relpath(path, data_dir))
  report_path = os.path.join(copy, report_lib.REPORT_FILENAME)
  with open(report_path, encoding="utf-8") as f:
    report = json.load(f)
  report["options"]["px_per_um"] = 7.0  # No longer the directory's px1.
  with open(report_path, "w", encoding="utf-8") as f:
    json.dump(report, f)
  with pytest.raises(ValueError, match="do not name the directory"):
    registry.open_domain(NAME, data_dir=tmp_path / "data", **SIZES)


def test_tiny_config_with_the_lab_as_target(lab, tmp_path):
  data_dir, path, _, _ = lab
  shutil.copytree(data_dir, tmp_path / "data")
  config = erm.get_config("tiny")
  config.data.data_dir = str(tmp_path / "data")  # The synthetic sources are built here at the tiny scale.
  config.data.target = NAME
  config_validation.validate_config(config)
  data = experiment.load_experiment_data(config)
  assert [d.name for d in data.sources] == list(config.data.sources)
  assert data.target.name == NAME and len(data.target) == len(EXPECTED)
  assert data.target.directory == os.path.join(str(tmp_path / "data"), os.path.relpath(path, data_dir))
  assert dict(zip(data.target.paths.tolist(), data.target.labels.tolist())) == EXPECTED
  assert 0 < len(data.target_idx) < len(EXPECTED) and set(data.target_idx.tolist()) <= set(range(len(EXPECTED)))
  config_validation.validate_data(config, data)
