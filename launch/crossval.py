r"""k-fold cross-validation of one configured algorithm (and, optionally, leave-one-domain-out).

  python launch/crossval.py --config=configs/boda.py:quick --workdir=runs/cv_boda
  python launch/crossval.py --config=configs/erm.py:quick --workdir=runs/cv_erm --folds=0,1
  python launch/crossval.py --config=configs/boda.py:quick --workdir=runs/lodo_boda --leave_one_domain_out

Fold k trains in <workdir>/fold_<k> (with config.data.fold=k); in leave-one-domain-out mode every domain of
sources + target is the unseen domain in turn: <workdir>/target_<domain>/fold_<k>. Finished folds (metrics.json
present) are skipped and interrupted ones resume from their checkpoints, so re-running the command continues
where it stopped. The aggregate (mean +- std over folds of F1-micro/F1-macro on source validation and target)
goes to <workdir>/crossval.json (or leave_one_domain_out.json).
"""

import json

import _paths  # noqa: F401  (repository root on sys.path)
from absl import app, flags, logging
from ml_collections import config_flags

from wbcdg_jax import protocol

_CONFIG = config_flags.DEFINE_config_file("config", "configs/boda.py:quick", "Config file[:preset].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (default: runs/cv_<algorithm>).")
_CACHE = flags.DEFINE_string("compilation_cache_dir", None, "JAX compilation cache shared by the runs (default: "
                             "$JAX_COMPILATION_CACHE_DIR if set, else <workdir>/jax_cache; '' turns it off).")
_FOLDS = flags.DEFINE_list("folds", None, "Folds to run (default: all of config.data.num_folds).")
_LODO = flags.DEFINE_bool("leave_one_domain_out", False, "Each domain of sources + target is the target in turn.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # keep the console for progress bars and results
  config = _CONFIG.value
  workdir = _WORKDIR.value or f"runs/cv_{config.algorithm}"
  folds = [int(k) for k in _FOLDS.value] if _FOLDS.value else None
  protocol.enable_compilation_cache(workdir, _CACHE.value)
  if _LODO.value:
    summary = protocol.run_leave_one_domain_out(config, workdir, folds=folds)
    for domain, s in summary["per_target"].items():
      print(f"== target {domain}\n{protocol.format_aggregate(s['aggregate'])}")
    print(f"== mean over held-out domains\n{protocol.format_aggregate(summary['mean_over_targets'])}")
  else:
    summary = protocol.run_crossval(config, workdir, folds=folds)
    print(protocol.format_aggregate(summary["aggregate"]))
  print(json.dumps({"workdir": workdir}))


if __name__ == "__main__":
  app.run(main)
