"""Tests for data_pipelines/registry.py: idempotent build, open_domain errors, option paths, pickling."""

import dataclasses
import os
import pickle
import shutil
import tempfile

import numpy as np
import pytest
import tifffile

from data_pipelines import base_builder
from data_pipelines import registry

OPTIONS = dict(image_size=8, fov_um=2.0)


def _write_matek(root, n_per_class=3):
  for c, code in enumerate(("BAS", "NGS", "LYT")):
    folder = root / "AML-Cytomorphology_LMU" / code
    folder.mkdir(parents=True)
    for i in range(n_per_class):
      image = np.random.default_rng([c, i]).integers(0, 256, (40, 40, 3), np.uint8)
      tifffile.imwrite(folder / f"{code}_{i:04d}.tiff", image, photometric="rgb")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  manual = tmp_path_factory.mktemp("manual")
  _write_matek(manual)
  data_dir = tmp_path_factory.mktemp("data")
  path = registry.build("matek19", data_dir=data_dir, manual_dir=manual, verbose=False, **OPTIONS)
  return data_dir, manual, path


def test_layout(built):
  data_dir, _, path = built
  assert path == os.path.join(str(data_dir), "matek19", "s8-fov2", "1.1.0")
  files = set(os.listdir(path))
  assert {"dataset_info.json", "features.json", "build_report.json", "index.npz",
          "matek19-train.array_record-00000-of-00001"} <= files
  assert not any("incomplete" in f for f in os.listdir(os.path.dirname(path)))


def test_build_is_idempotent(built, capsys):
  data_dir, manual, path = built
  record_file = os.path.join(path, "matek19-train.array_record-00000-of-00001")
  before = os.stat(record_file).st_mtime_ns
  assert registry.build("matek19", data_dir=data_dir, manual_dir=manual, **OPTIONS) == path
  assert registry.build("matek19", data_dir=data_dir, **OPTIONS) == path  # manual_dir not needed any more.
  assert os.stat(record_file).st_mtime_ns == before
  assert "already built" in capsys.readouterr().out


def test_open_domain_fields(built):
  data_dir, _, path = built
  domain = registry.open_domain("matek19", data_dir=data_dir, **OPTIONS)
  assert domain.name == "matek19" and domain.image_size == 8 and domain.directory == path and len(domain) == 9
  assert sorted(domain.labels.tolist()) == [0, 0, 0, 8, 8, 8, 10, 10, 10]
  assert domain.groups.dtype.kind == "U" and domain.paths.dtype.kind == "U"
  assert [domain.source[i]["label"] for i in range(9)] == domain.labels.tolist()
  with pytest.raises(dataclasses.FrozenInstanceError):
    domain.name = "x"


def test_source_is_picklable(built):
  data_dir, _, _ = built
  domain = registry.open_domain("matek19", data_dir=data_dir, **OPTIONS)
  clone = pickle.loads(pickle.dumps(domain.source))
  assert len(clone) == len(domain.source)
  for i in (0, 4, 8):
    np.testing.assert_array_equal(clone[i]["image"], domain.source[i]["image"])
    assert clone[i]["path"] == domain.source[i]["path"]


def test_index_is_rewritten_if_missing(built):
  data_dir, _, path = built
  before = base_builder.load_index(path)
  os.remove(os.path.join(path, base_builder.INDEX_FILENAME))
  domain = registry.open_domain("matek19", data_dir=data_dir, **OPTIONS)
  after = base_builder.load_index(path)
  assert set(after) == set(base_builder.INDEX_KEYS)
  for key in base_builder.INDEX_KEYS:
    np.testing.assert_array_equal(before[key], after[key])
  np.testing.assert_array_equal(domain.labels, before["label"])


def test_missing_domain_names_path_and_command(built):
  data_dir, _, _ = built
  with pytest.raises(FileNotFoundError) as info:
    registry.open_domain("matek19", data_dir=data_dir, image_size=16, fov_um=2.0)
  message = str(info.value)
  assert os.path.join("matek19", "s16-fov2", "1.1.0") in message
  assert "python launch/build_data.py --dataset=matek19" in message and "--image_size=16" in message
  assert "--manual_dir" in message


def test_build_if_missing_only_for_synthetic(tmp_path):
  with pytest.raises(ValueError, match="only for generated"):
    registry.open_domain("acevedo20", data_dir=tmp_path, build_if_missing=True)


def test_real_build_needs_manual_dir(tmp_path):
  with pytest.raises(ValueError, match="needs manual_dir"):
    registry.build("int20", data_dir=tmp_path)


def test_options_select_distinct_directories(tmp_path):
  paths = {
      registry.make_builder("matek19", data_dir=tmp_path).data_path,
      registry.make_builder("matek19", data_dir=tmp_path, image_size=224).data_path,
      registry.make_builder("matek19", data_dir=tmp_path, fov_um=30).data_path,
      registry.make_builder("acevedo20", data_dir=tmp_path, drop_odd_sized=True).data_path,
      registry.make_builder("acevedo20", data_dir=tmp_path).data_path,
  }
  assert len(paths) == 5
  # Options that do not change the data do not change the directory.
  assert registry.make_builder("matek19", data_dir=tmp_path, strict=True, num_workers=1).data_path == \
      registry.make_builder("matek19", data_dir=tmp_path).data_path
  assert str(registry.make_builder("matek19", data_dir=tmp_path).data_path).endswith(
      os.path.join("matek19", "s256-fov25", "1.1.0"))


def test_name_and_option_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'matek'"):
    registry.make_builder("matek", data_dir=tmp_path)
  with pytest.raises(ValueError, match="no '/<variant>'"):
    registry.make_builder("matek19/x", data_dir=tmp_path)
  with pytest.raises(TypeError, match=r"unknown option\(s\) \['scale'\]"):
    registry.make_builder("matek19", data_dir=tmp_path, scale=0.1)
  with pytest.raises(ValueError, match="image_size"):
    registry.make_builder("matek19", data_dir=tmp_path, image_size=0)
  with pytest.raises(ValueError, match="fov_um"):
    registry.make_builder("matek19", data_dir=tmp_path, fov_um=-1)


def test_available():
  names = registry.available()
  for name in ("matek19", "acevedo20", "int20", "mll23", "labelled_folders/<lab>",
               "synthetic_wbc/matek19_like", "synthetic_wbc/acevedo20_like", "synthetic_wbc/int20_like"):
    assert name in names


def test_unbuilt_builders_leave_nothing_in_the_temp_folder(tmp_path, monkeypatch):
  # TFDS's lookup of published info (gs://tfds-data, switched off) would leave an empty tmp*tfds folder each time.
  temp = tmp_path / "temp"
  temp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(temp))
  for name in ("matek19", "acevedo20", "synthetic_wbc/matek19_like"):
    registry.make_builder(name, data_dir=tmp_path / "data")
  assert os.listdir(temp) == []


def _records(path: str) -> list[bytes]:
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel

  out = []
  for f in base_builder.record_files(path):
    reader = array_record_module.ArrayRecordReader(f)
    out += reader.read_all()
    reader.close()
  return out


def test_records_are_stored_uncompressed_unless_asked(built, tmp_path):
  # TFDS's writer compresses every record with zstd; reading them back cost the input pipeline ~5x more host time
  # per 256 px image than uncompressed records, for files only ~1.4x smaller. New builds store them uncompressed.
  data_dir, manual, path = built
  assert [base_builder.record_compression(f) for f in base_builder.record_files(path)] == ["none"]
  zstd = registry.build("matek19", data_dir=tmp_path, manual_dir=manual, verbose=False, record_compression="zstd",
                        **OPTIONS)
  assert os.path.relpath(zstd, tmp_path) == os.path.relpath(path, data_dir)  # not part of the directory name
  assert [base_builder.record_compression(f) for f in base_builder.record_files(zstd)] == ["zstd"]
  assert _records(zstd) == _records(path)
  with pytest.raises(ValueError, match="record_compression must be one of.*'gzip'"):
    registry.make_builder("matek19", data_dir=tmp_path, record_compression="gzip", **OPTIONS)


def test_rewrite_records_keeps_every_record(built, tmp_path, capsys):
  data_dir, _, path = built
  expected = _records(path)
  images = [registry.open_domain("matek19", data_dir=data_dir, **OPTIONS).source[i]["image"] for i in range(9)]
  copy = tmp_path / "data"
  shutil.copytree(data_dir, copy)
  copied = os.path.join(copy, os.path.relpath(path, data_dir))
  assert [os.path.basename(f) for f in base_builder.rewrite_records(copied, "zstd", chunk=4)] == [
      "matek19-train.array_record-00000-of-00001"]
  assert base_builder.rewrite_records(copied, "zstd") == []  # already so: nothing is touched
  assert _records(copied) == expected and not any(f.endswith(".rewrite") for f in os.listdir(copied))
  # build_data.py --record_compression=none on a built dataset: its files are rewritten, the dataset opens the same.
  assert registry.build("matek19", data_dir=copy, record_compression="none", verbose=False, **OPTIONS) == copied
  assert "rewrote 1 record file(s)" in capsys.readouterr().out
  assert [base_builder.record_compression(f) for f in base_builder.record_files(copied)] == ["none"]
  domain = registry.open_domain("matek19", data_dir=copy, **OPTIONS)
  for i, image in enumerate(images):
    np.testing.assert_array_equal(domain.source[i]["image"], image)
  with pytest.raises(ValueError, match="record_compression must be one of"):
    base_builder.rewrite_records(copied, "lz4")


def test_a_failed_rewrite_leaves_the_shard_as_it_was(built, tmp_path, monkeypatch):
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel

  data_dir, _, path = built
  copied = str(tmp_path / "copy")
  shutil.copytree(path, copied)
  expected = _records(copied)
  real_writer = array_record_module.ArrayRecordWriter

  class FullDisk:
    """A writer that fails after 3 records, as on a full disk."""

    def __init__(self, file, options):
      self.writer, self.count = real_writer(file, options), 0

    def write(self, record):
      if self.count == 3:
        raise OSError("No space left on device")
      self.writer.write(record)
      self.count += 1

    def close(self):
      self.writer.close()

  monkeypatch.setattr(array_record_module, "ArrayRecordWriter", FullDisk)
  with pytest.raises(OSError, match="No space left"):
    base_builder.rewrite_records(copied, "zstd")
  assert sorted(os.listdir(copied)) == sorted(os.listdir(path))  # no partial .rewrite file left
  assert _records(copied) == expected
  assert [base_builder.record_compression(f) for f in base_builder.record_files(copied)] == ["none"]
