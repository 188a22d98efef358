r"""Classifies new white-blood-cell images with a trained run and prints the differential count.

  python launch/predict.py --checkpoint runs/boda_fold0 --images 'slides/patient7/**/*.tif' --px_per_um 11.52
  python launch/predict.py --checkpoint runs/boda_fold0 --images slides/patient7 --px_per_um 10 \
      --out patient7.csv --batch_size 64 --review_threshold 0.5

--images is a folder (searched recursively for .tif .tiff .jpg .jpeg .png .bmp) or a quoted glob. Every image is
centre-cropped to the run's field of view (fov_um from its config) at --px_per_um and resized like the training
data. The CSV has one row per file: file, predicted_class, probability, top3 ('class:prob;...'), review
('yes' when probability < --review_threshold) and error (why an unreadable file was skipped; also on stderr).
"""

import argparse
import sys

import _paths  # noqa: F401  (repository root on sys.path)

from wbcdg_jax import checkpoint, predict


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="work directory of a training run")
  parser.add_argument("--images", required=True, help="folder (recursive) or glob of images")
  parser.add_argument("--px_per_um", type=float, required=True, help="resolution of the images, pixels per um")
  parser.add_argument("--out", default="predictions.csv", help="CSV to write")
  parser.add_argument("--batch_size", type=int, default=64, help="images per accelerator call")
  parser.add_argument("--review_threshold", type=float, default=0.5,
                      help="flag cells whose top probability is below this")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    bundle = checkpoint.load_for_inference(args.checkpoint)
    predict.run(bundle, args.images, px_per_um=args.px_per_um, out=args.out, batch_size=args.batch_size,
                review_threshold=args.review_threshold)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
