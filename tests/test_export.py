"""wbcdg_jax/export.py: the serialized StableHLO classifier reproduces the in-repo model and needs no training code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.test_predict import assert_help, make_workdir, run_launcher
from tests.tiny_model import tiny_bundle
from wbcdg_jax import checkpoint, export, predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bundle():
  # stored 48 px crops resized to a 32 px network input inside the exported function, as in training's eval.
  return tiny_bundle(image_size=32, stored_size=48, fov_um=25.0)


@pytest.fixture(scope="module")
def exported_dir(bundle, tmp_path_factory):
  return export.export_classifier(bundle, str(tmp_path_factory.mktemp("export") / "clf"))


def test_exported_matches_original_for_two_batch_sizes(bundle, exported_dir):
  loaded = export.load_exported(exported_dir)
  original = predict.make_classifier_fn(bundle)
  images = np.random.default_rng(0).integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
  for n in (1, 5):
    got, want = loaded(images[:n]), original(images[:n])
    assert got.shape == (n, 13) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
  assert np.abs(loaded(images)[0] - loaded(images[:1])[0]).max() < 1e-5


def test_metadata_and_input_checks(bundle, exported_dir):
  with open(os.path.join(exported_dir, export.META_FILE)) as f:
    meta = json.load(f)
  assert meta["class_names"] == list(bundle.class_names)
  assert (meta["input_size"], meta["image_size"], meta["fov_um"]) == (48, 32, 25.0)
  assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225]
  loaded = export.load_exported(exported_dir)
  assert loaded.class_names == bundle.class_names and loaded.input_size == 48
  with pytest.raises(ValueError, match=r"uint8 images \[B, 48, 48, 3\]"):
    loaded(np.zeros((2, 32, 32, 3), np.uint8))
  with pytest.raises(ValueError, match="float32"):
    loaded(np.zeros((2, 48, 48, 3), np.float32))
  with pytest.raises(FileNotFoundError, match="classifier.stablehlo"):
    export.load_exported(os.path.dirname(exported_dir))


def test_load_exported_needs_no_training_code(exported_dir):
  script = textwrap.dedent(f"""
      import sys
      import numpy as np
      from wbcdg_jax.export import load_exported
      clf = load_exported({exported_dir!r})
      p = clf(np.full((3, clf.input_size, clf.input_size, 3), 128, np.uint8))
      assert p.shape == (3, len(clf.class_names)), p.shape
      heavy = [m for m in sys.modules if m.split('.')[0] in ('flax', 'optax', 'orbax', 'data_pipelines', 'dm_pix')
               or m in ('wbcdg_jax.models', 'wbcdg_jax.train_step', 'wbcdg_jax.augment')]
      assert not heavy, heavy
      print('ok')
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("ok")


def test_export_launcher(tmp_path):
  """launch/export.py in a child process exports the work directory's selected model, not some other one."""
  workdir = make_workdir(str(tmp_path / "run"))
  out = str(tmp_path / "exp")
  proc = run_launcher("export", "--checkpoint", workdir, "--out", out, "--platforms", "cpu")
  assert proc.returncode == 0, proc.stderr[-3000:]
  bundle = checkpoint.load_for_inference(workdir)
  size = predict.input_size(bundle)
  assert f"uint8 [b, {size}, {size}, 3]" in proc.stdout
  loaded = export.load_exported(out)
  images = np.random.default_rng(1).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
  np.testing.assert_allclose(loaded(images), predict.make_classifier_fn(bundle)(images), atol=1e-5)
  proc = run_launcher("export", f"--checkpoint={tmp_path / 'nope'}", f"--out={tmp_path / 'exp2'}")
  assert proc.returncode == 1 and "error:" in proc.stderr and "nope" in proc.stderr
  assert not os.path.exists(tmp_path / "exp2")
  assert_help("export", "checkpoint", "out", "platforms")
