"""Class folders that are symbolic links (a lab's data assembled from folders kept elsewhere) are read, and links
that lead back to a folder above them are skipped instead of looping.

The lab's tree is tiny: 40 x 40 px PNGs, stored at 16 px with a 2 um field of view at 13.8 px/um (28 px).
"""

import io
import os

import numpy as np
import pytest
from PIL import Image

from data_pipelines import registry
from data_pipelines import report as report_lib
from wbcdg_jax.classes import class_index

NAME = "labelled_folders/linked"
OPTIONS = dict(mapping={"Neutrophil": "neutrophil_segmented", "Lymph": "lymphocyte_typical"}, px_per_um=13.8,
               image_size=16, fov_um=2.0)

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="needs POSIX symbolic links")


def _png(path, seed):
  path.parent.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), np.uint8)).save(buf, "PNG")
  path.write_bytes(buf.getvalue())


def test_symlinked_class_folder_is_read_and_loops_are_skipped(tmp_path):
  manual, elsewhere = tmp_path / "lab", tmp_path / "elsewhere" / "lymphocytes"
  _png(manual / "Neutrophil" / "img0.png", 0)
  _png(elsewhere / "img0.png", 1)
  _png(elsewhere / "img1.png", 2)
  os.symlink(elsewhere, manual / "Lymph", target_is_directory=True)  # The class folder is a link.
  os.symlink(manual, manual / "Neutrophil" / "up", target_is_directory=True)  # Back to the root: a loop.
  os.symlink(".", elsewhere / "self", target_is_directory=True)  # To itself: a loop inside the linked folder.
  path = registry.build(NAME, data_dir=tmp_path / "d", manual_dir=manual, verbose=False, **OPTIONS)
  domain = registry.open_domain(NAME, data_dir=tmp_path / "d", **OPTIONS)
  assert dict(zip(domain.paths.tolist(), domain.labels.tolist())) == {
      "Neutrophil/img0.png": class_index("neutrophil_segmented"),
      "Lymph/img0.png": class_index("lymphocyte_typical"), "Lymph/img1.png": class_index("lymphocyte_typical")}
  report = report_lib.BuildReport.load(path)
  assert report.empty_folders == [] and report.dropped == []
