"""files: result files are replaced whole or left as they were."""

import json
import os

import numpy as np
import pytest

from wbcdg_jax import files, protocol


def test_atomic_open_replaces_on_success(tmp_path):
  path = tmp_path / "metrics.json"
  path.write_text("old")
  with files.atomic_open(path) as f:
    f.write("new")
    assert path.read_text() == "old"  # nothing visible until the block ends
  assert path.read_text() == "new"
  assert os.listdir(tmp_path) == ["metrics.json"]


def test_atomic_open_keeps_old_file_when_the_write_fails(tmp_path):
  path = tmp_path / "target_predictions.npz"
  with files.atomic_open(path, "wb") as f:
    np.savez(f, labels=np.arange(3))
  with pytest.raises(KeyboardInterrupt):  # a kill between two writes
    with files.atomic_open(path, "wb") as f:
      f.write(b"PK\x03\x04 half a zip")
      raise KeyboardInterrupt
  np.testing.assert_array_equal(np.load(path)["labels"], np.arange(3))
  assert os.listdir(tmp_path) == ["target_predictions.npz"]  # the temporary file is gone


def test_atomic_open_refuses_other_modes(tmp_path):
  with pytest.raises(ValueError, match="'a'"):
    with files.atomic_open(tmp_path / "log.jsonl", "a"):
      pass


def test_write_json_creates_the_folder(tmp_path):
  path = tmp_path / "a" / "b" / "crossval.json"
  files.write_json(path, {"f1": 0.5})
  assert json.loads(path.read_text()) == {"f1": 0.5}


def test_load_metrics_names_a_cut_file(tmp_path):
  (tmp_path / protocol.METRICS_FILE).write_text('{"val": {"f1_macro": 0.4')
  with pytest.raises(ValueError, match="metrics.json is not valid JSON.*delete it"):
    protocol.load_metrics(str(tmp_path))
