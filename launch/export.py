r"""Exports a trained run's selected model as serialized StableHLO for inference without this repository.

  python launch/export.py --checkpoint runs/boda_fold0 --out exported/boda_fold0

The folder gets classifier.stablehlo (uint8 [b, S, S, 3] -> probabilities [b, C], preprocessing inside) and
classifier.json (class names, S, fov_um, ...). Load it with `wbcdg_jax.export.load_exported`, which needs only
jax and numpy.
"""

import argparse
import sys

import _paths  # noqa: F401  (repository root on sys.path)

from wbcdg_jax import checkpoint, export, predict


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="work directory of a training run")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--platforms", default=",".join(export.DEFAULT_PLATFORMS),
                      help="comma-separated backends to lower for (cpu, cuda, rocm, tpu)")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    bundle = checkpoint.load_for_inference(args.checkpoint)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  path = export.export_classifier(bundle, args.out, platforms=tuple(p for p in args.platforms.split(",") if p))
  size = predict.input_size(bundle)
  print(f"wrote {path}: {len(bundle.class_names)} classes; input uint8 [b, {size}, {size}, 3] = the centre "
        f"{bundle.fov_um:g} um of each image resized to {size} px")
  return 0


if __name__ == "__main__":
  sys.exit(main())
