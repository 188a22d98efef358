r"""Cross-validates several algorithms and writes the comparison tables and figures.

  python launch/compare.py --algorithms=erm,coral,dann,boda --preset=quick --workdir=runs/compare
  python launch/compare.py --algorithms=erm,boda --preset=tiny --folds=0,1 --override=data.data_dir=/tmp/data

Each algorithm's folds train in <workdir>/<algorithm>/fold_<k> from configs/<algorithm>.py:<preset> (finished
folds are collected, interrupted ones resume). Then <workdir> receives table1_source_val.md/.csv,
table2_unseen_domain.md/.csv, per_class_unseen.csv, confusion_<alg>.png, confusion_<a>_vs_<b>.png,
class_distribution.png and results.json (see wbcdg_jax/report.py).
"""

import os

import _paths  # noqa: F401  (repository root on sys.path)
from absl import app, flags, logging

from wbcdg_jax import protocol, report

_ALGORITHMS = flags.DEFINE_list("algorithms", ["erm", "coral", "dann", "boda"], "configs/<name>.py to compare.")
_PRESET = flags.DEFINE_string("preset", "quick", "Config preset: paper, quick or tiny.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "Root of the runs and of the tables.")
_CACHE = flags.DEFINE_string("compilation_cache_dir", None, "JAX compilation cache shared by the runs (default: "
                             "$JAX_COMPILATION_CACHE_DIR if set, else <workdir>/jax_cache; '' turns it off).")
_FOLDS = flags.DEFINE_list("folds", None, "Folds to run (default: all of config.data.num_folds).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "section.field=value applied to every algorithm's config.")
_PAIR = flags.DEFINE_list("pair", None, "Two algorithms for the side-by-side confusion (default first,last).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  folds = [int(k) for k in _FOLDS.value] if _FOLDS.value else None
  protocol.enable_compilation_cache(_WORKDIR.value, _CACHE.value)
  if _PAIR.value is not None and len(_PAIR.value) != 2:
    raise app.UsageError(f"--pair needs two algorithms, got {_PAIR.value}")
  runs = protocol.run_comparison(_ALGORITHMS.value, _PRESET.value, _WORKDIR.value, folds=folds,
                                 overrides=_OVERRIDE.value)
  report.write_comparison(runs, _WORKDIR.value, pair=_PAIR.value)
  for name in ("table1_source_val.md", "table2_unseen_domain.md"):
    with open(os.path.join(_WORKDIR.value, name)) as f:
      print(f.read())


if __name__ == "__main__":
  app.run(main)
