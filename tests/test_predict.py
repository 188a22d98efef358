"""wbcdg_jax/predict.py and launch/predict.py: folder/glob discovery, cropping, batching, CSV and summary."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tifffile
from PIL import Image

from data_pipelines import imaging
from tests.tiny_model import tiny_bundle
from wbcdg_jax import predict

PX_PER_UM = 1.6  # 25 um field of view -> 40 px crops, resized to 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rgb(rng, h, w):
  return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
  """Readable images of every format and size, two broken ones, and files that are not images."""
  root = tmp_path_factory.mktemp("cells")
  rng = np.random.default_rng(0)
  (root / "a" / "sub").mkdir(parents=True)
  (root / "b").mkdir()
  tifffile.imwrite(root / "a" / "c1.tif", _rgb(rng, 45, 50))
  Image.fromarray(_rgb(rng, 40, 40)).save(root / "a" / "sub" / "c2.JPG", quality=95)
  Image.fromarray(np.concatenate([_rgb(rng, 60, 30), np.full((60, 30, 1), 200, np.uint8)], -1)).save(
      root / "b" / "c3.png")
  Image.fromarray(_rgb(rng, 33, 70)).save(root / "b" / "c4.bmp")
  Image.fromarray(_rgb(rng, 50, 50)[..., 0]).save(root / "c5_gray.png")
  jpeg = io.BytesIO()
  Image.fromarray(_rgb(rng, 40, 40)).save(jpeg, format="JPEG")
  (root / "b" / "truncated.jpg").write_bytes(jpeg.getvalue()[:200])
  (root / "fake.tiff").write_bytes(b"definitely not an image")
  (root / "notes.txt").write_text("not an image")
  (root / "a" / ".DS_Store").write_bytes(b"\0\1")
  return root


@pytest.fixture(scope="module")
def bundle():
  return tiny_bundle()


@pytest.fixture(scope="module")
def classifier_fn(bundle):
  return predict.make_classifier_fn(bundle)


READABLE = ["a/c1.tif", "a/sub/c2.JPG", "b/c3.png", "b/c4.bmp", "c5_gray.png"]
BROKEN = ["b/truncated.jpg", "fake.tiff"]


def test_find_images_folder_and_glob(image_dir):
  found = [os.path.relpath(p, image_dir) for p in predict.find_images(str(image_dir))]
  assert found == sorted(READABLE + BROKEN)
  pattern = str(image_dir / "**" / "*.png")
  assert [os.path.relpath(p, image_dir) for p in predict.find_images(pattern)] == ["b/c3.png", "c5_gray.png"]
  with pytest.raises(FileNotFoundError, match="nothing_here"):
    predict.find_images(str(image_dir / "nothing_here" / "*.tif"))


def _reference_probabilities(bundle, paths):
  """Independent of predict/augment: imaging crop + NumPy normalisation + the model's own apply."""
  crops = np.stack([imaging.crop_to_fov(imaging.read_image(p), px_per_um=PX_PER_UM, fov_um=bundle.fov_um,
                                        size=bundle.image_size) for p in paths])
  x = (crops / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  _, logits = jax.jit(bundle.model.apply)(bundle.variables, x.astype(np.float32))
  logits = np.asarray(logits, np.float64)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_predict_files_batches_errors_and_reference(image_dir, bundle, classifier_fn):
  files = predict.find_images(str(image_dir))
  errors = io.StringIO()
  preds = predict.predict_files(bundle, files, px_per_um=PX_PER_UM, batch_size=3, classifier_fn=classifier_fn,
                                errors_to=errors)
  assert [p.file for p in preds] == files  # every file accounted for, in order
  by_name = {os.path.relpath(p.file, image_dir): p for p in preds}
  for name in BROKEN:
    assert by_name[name].probabilities is None and by_name[name].error
    assert name.split("/")[-1] in errors.getvalue()
  assert "not an image" in by_name["fake.tiff"].error
  want = _reference_probabilities(bundle, [str(image_dir / n) for n in READABLE])
  got = np.stack([by_name[n].probabilities for n in READABLE])
  np.testing.assert_allclose(got, want, atol=2e-5)
  # Padding and batch composition do not change any result.
  again = predict.predict_files(bundle, files, px_per_um=PX_PER_UM, batch_size=7, classifier_fn=None,
                                errors_to=io.StringIO())
  for p, q in zip(preds, again):
    if p.probabilities is not None:
      np.testing.assert_allclose(p.probabilities, q.probabilities, atol=1e-6)


def _fake(probs, file="x"):
  return predict.Prediction(file, probabilities=np.asarray(probs, np.float32))


def test_csv_count_and_summary(tmp_path):
  names = ("a", "b", "c", "d")
  preds = [_fake([0.7, 0.2, 0.1, 0.0], "f1"), _fake([0.1, 0.45, 0.05, 0.4], "f2"), _fake([0.0, 0.1, 0.3, 0.6], "f3"),
           _fake([0.9, 0.05, 0.05, 0.0], "f4"), predict.Prediction("bad.tif", error="corrupt tiff")]
  out = str(tmp_path / "sub" / "p.csv")
  predict.write_csv(preds, out, names, review_threshold=0.5)
  with open(out, newline="") as f:
    rows = list(csv.DictReader(f))
  assert tuple(rows[0]) == predict.CSV_COLUMNS
  assert [r["predicted_class"] for r in rows] == ["a", "b", "d", "a", ""]
  assert rows[1]["probability"] == "0.4500" and rows[1]["top3"] == "b:0.4500;d:0.4000;a:0.1000"
  assert [r["review"] for r in rows] == ["no", "yes", "no", "no", ""]
  assert rows[4]["error"] == "corrupt tiff" and rows[4]["file"] == "bad.tif"
  assert predict.differential_count(preds, names) == [("a", 2, 50.0), ("b", 1, 25.0), ("c", 0, 0.0), ("d", 1, 25.0)]
  text = predict.summary(preds, names, review_threshold=0.5, csv_path=out)
  assert "Differential count of 4 cells" in text
  assert "Flagged for review: 1 of 4 cells with top probability < 0.5" in text
  assert "Unreadable files skipped: 1" in text
  assert "  a      2    50.0%" in text


def run_launcher(name: str, *args: str) -> subprocess.CompletedProcess:
  """Runs launch/<name>.py as a child process on the CPU: its absl flags are process-wide, and predict and export
  both define --checkpoint/--out, so the launchers cannot share the pytest process."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, os.path.join("launch", f"{name}.py"), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def assert_help(name: str, *flag_names: str) -> None:
  """--help prints the module docstring and the launcher's own flags (absl exits 1 after help)."""
  proc = run_launcher(name, "--help")
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert f"python launch/{name}.py" in proc.stdout
  for flag in flag_names:
    assert f"--{flag}:" in proc.stdout or f"--[no]{flag}:" in proc.stdout, flag


def make_workdir(path: str) -> str:
  """A real work directory of the tiny preset: config.json and an orbax best/ model with random variables."""
  from configs import base
  from tests.tiny_model import random_variables
  from wbcdg_jax import checkpoint
  from wbcdg_jax.models import Classifier

  config = base.apply_preset(base.get_config(), "tiny")
  checkpoint.save_config(path, config)
  model = checkpoint.model_from_config(config, Classifier)
  best = checkpoint.BestModel(os.path.join(path, "best"))
  best.offer(2, random_variables(model, config.model.image_size, seed=1), {"val_f1_macro": 0.5})
  best.close()
  return path


def test_launcher_end_to_end_from_a_work_directory(tmp_path, image_dir):
  """A real work directory through checkpoint.load_for_inference, in a child process like a user's command."""
  workdir = make_workdir(str(tmp_path / "run"))
  out = str(tmp_path / "pred.csv")
  proc = run_launcher("predict", "--checkpoint", workdir, "--images", str(image_dir), "--px_per_um", str(PX_PER_UM),
                      "--out", out, "--batch_size", "4", "--review_threshold", "0.3")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"Differential count of {len(READABLE)} cells" in proc.stdout
  assert "top probability < 0.3" in proc.stdout  # --review_threshold reached the summary (default 0.5)
  assert "truncated.jpg" in proc.stderr and "fake.tiff" in proc.stderr
  with open(out, newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(READABLE) + len(BROKEN)
  # and the CSV: 'yes' exactly where the top probability is below 0.3.
  assert all(r["review"] == ("yes" if float(r["probability"]) < 0.3 else "no") for r in rows if r["probability"])
  proc = run_launcher("predict", f"--checkpoint={tmp_path / 'nope'}", f"--images={image_dir}", "--px_per_um=2")
  assert proc.returncode == 1
  assert "error:" in proc.stderr and "nope" in proc.stderr
  proc = run_launcher("predict", "--images", str(image_dir), "--px_per_um", "2")
  assert proc.returncode != 0 and "--checkpoint" in proc.stderr  # required flag
  assert_help("predict", "checkpoint", "images", "px_per_um", "out", "batch_size", "review_threshold")
