"""Runs launch/build_data.py as a user would (subprocess) on a tiny Matek tree."""

import os
import subprocess
import sys

import numpy as np
import tifffile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "build_data.py"), *args],
                        capture_output=True, text=True, timeout=120, check=False)


def test_build_data_prints_report_and_reuses(tmp_path):
  for code in ("MYO", "PMB"):
    folder = tmp_path / "dl" / "AML-Cytomorphology_LMU" / code
    folder.mkdir(parents=True)
    tifffile.imwrite(folder / f"{code}_0001.tiff", np.full((40, 40, 3), len(code) + ord(code[0]), np.uint8),
                     photometric="rgb")
  args = ["--dataset=matek19", f"--manual_dir={tmp_path / 'dl'}", f"--data_dir={tmp_path / 'data'}",
          "--image_size=8", "--fov_um=2"]
  first = _run(*args)
  assert first.returncode == 0, first.stderr
  assert "matek19 [s8-fov2]: 1 examples" in first.stdout
  assert "label excluded from the common classes: 1 (PMB: 1)" in first.stdout
  assert os.path.isfile(tmp_path / "data" / "matek19" / "s8-fov2" / "1.1.0" / "index.npz")
  second = _run(*args)
  assert second.returncode == 0 and "matek19 [s8-fov2]: 1 examples" in second.stdout


def test_build_data_rejects_options_of_other_builders(tmp_path):
  result = _run("--dataset=matek19", f"--data_dir={tmp_path}", "--scale=0.1")
  assert result.returncode != 0 and "unknown option(s) ['scale']" in result.stderr
