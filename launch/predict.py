r"""Classifies new white-blood-cell images with a trained run and prints the differential count.

  python launch/predict.py --checkpoint runs/boda_fold0 --images 'slides/patient7/**/*.tif' --px_per_um 11.52
  python launch/predict.py --checkpoint runs/boda_fold0 --images slides/patient7 --px_per_um 10 \
      --out patient7.csv --batch_size 64 --review_threshold 0.5

--images is a folder (searched recursively for .tif .tiff .jpg .jpeg .png .bmp) or a quoted glob. Every image is
centre-cropped to the run's field of view (fov_um from its config) at --px_per_um and resized like the training
data. The CSV has one row per file: file, predicted_class, probability, top3 ('class:prob;...'), review
('yes' when probability < --review_threshold) and error (why an unreadable file was skipped; also on stderr).
"""

import sys

import _paths  # noqa: F401  (repository root on sys.path)
from absl import app, flags, logging

from wbcdg_jax import checkpoint, predict

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "work directory of a training run")
_IMAGES = flags.DEFINE_string("images", None, "folder (recursive) or glob of images")
_PX_PER_UM = flags.DEFINE_float("px_per_um", None, "resolution of the images, pixels per um")
_OUT = flags.DEFINE_string("out", "predictions.csv", "CSV to write")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "images per accelerator call")
_REVIEW_THRESHOLD = flags.DEFINE_float("review_threshold", 0.5, "flag cells whose top probability is below this")
flags.mark_flags_as_required(["checkpoint", "images", "px_per_um"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint open at INFO
  try:
    bundle = checkpoint.load_for_inference(_CHECKPOINT.value)
    predict.run(bundle, _IMAGES.value, px_per_um=_PX_PER_UM.value, out=_OUT.value, batch_size=_BATCH_SIZE.value,
                review_threshold=_REVIEW_THRESHOLD.value)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")  # exit status 1, the message on stderr


if __name__ == "__main__":
  app.run(main)
