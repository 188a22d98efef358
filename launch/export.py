r"""Exports a trained run's selected model as serialized StableHLO for inference without this repository.

  python launch/export.py --checkpoint runs/boda_fold0 --out exported/boda_fold0

The folder gets classifier.stablehlo (uint8 [b, S, S, 3] -> probabilities [b, C], preprocessing inside) and
classifier.json (class names, S, fov_um, ...). Load it with `wbcdg_jax.export.load_exported`, which needs only
jax and numpy.
"""

import sys

import _paths  # noqa: F401  (repository root on sys.path)
from absl import app, flags, logging

from wbcdg_jax import checkpoint, export, predict

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "work directory of a training run")
_OUT = flags.DEFINE_string("out", None, "output folder")
_PLATFORMS = flags.DEFINE_string("platforms", ",".join(export.DEFAULT_PLATFORMS),
                                 "comma-separated backends to lower for (cpu, cuda, rocm, tpu)")
flags.mark_flags_as_required(["checkpoint", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint open at INFO
  try:
    bundle = checkpoint.load_for_inference(_CHECKPOINT.value)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")  # exit status 1, the message on stderr
  path = export.export_classifier(bundle, _OUT.value, platforms=tuple(p for p in _PLATFORMS.value.split(",") if p))
  size = predict.input_size(bundle)
  print(f"wrote {path}: {len(bundle.class_names)} classes; input uint8 [b, {size}, {size}, 3] = the centre "
        f"{bundle.fov_um:g} um of each image resized to {size} px")


if __name__ == "__main__":
  app.run(main)
