r"""Random hyperparameter search (DomainBed style): draws x seeds x folds, then the best draw per algorithm.

  python launch/sweep.py --algorithms=erm,boda --preset=quick --num_draws=20 --seeds=0,1,2 --workdir=runs/sweep
  python launch/sweep.py --algorithms=boda --preset=paper --dry_run        # only writes commands.txt

Writes <workdir>/commands.txt (one `python launch/train.py ...` per run, e.g. for a cluster job array; run them
from the repository root), trains them here one after another unless --dry_run (finished runs, with metrics.json,
are skipped; interrupted ones resume), and aggregates whatever has finished: <workdir>/sweep.json and, for each
algorithm's draw with the best mean source-validation F1-macro (training-domain validation), the tables and
figures of launch/compare.py in <workdir>/tables. Re-run with --aggregate_only after a cluster ran commands.txt.
The draws are a pure function of --sweep_seed (see wbcdg_jax/sweep.py for the ranges).
"""

import os

import _paths  # noqa: F401  (repository root on sys.path)
from absl import app, flags, logging

from wbcdg_jax import sweep

_ALGORITHMS = flags.DEFINE_list("algorithms", ["erm", "coral", "dann", "boda"], "configs/<name>.py to sweep.")
_PRESET = flags.DEFINE_string("preset", "quick", "Config preset: paper, quick or tiny.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/sweep", "Root of the runs, commands.txt and tables.")
_NUM_DRAWS = flags.DEFINE_integer("num_draws", 20, "Random hyperparameter draws per algorithm.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Trial seeds (config.seed; also seeds the fold split).")
_FOLDS = flags.DEFINE_list("folds", None, "Folds (default: all of config.data.num_folds).")
_SWEEP_SEED = flags.DEFINE_integer("sweep_seed", 0, "Seed of the hyperparameter draws.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "section.field=value added to every run.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Only write commands.txt.")
_AGGREGATE_ONLY = flags.DEFINE_bool("aggregate_only", False, "Train nothing; aggregate the finished runs.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  runs = sweep.plan(_ALGORITHMS.value, preset=_PRESET.value, num_draws=_NUM_DRAWS.value,
                    seeds=[int(s) for s in _SEEDS.value],
                    folds=[int(k) for k in _FOLDS.value] if _FOLDS.value else None,
                    workdir=_WORKDIR.value, sweep_seed=_SWEEP_SEED.value, extra=_OVERRIDE.value)
  path = os.path.join(_WORKDIR.value, "commands.txt")
  sweep.write_commands(runs, path)
  print(f"{len(runs)} runs -> {path}")
  if _DRY_RUN.value:
    return
  if not _AGGREGATE_ONLY.value:
    trained = sweep.run_local(runs)
    print(f"trained {trained}, skipped {len(runs) - trained} finished runs")
  summary = sweep.write_summary(runs, _WORKDIR.value)
  print(f"{summary['finished']}/{summary['num_runs']} runs finished")
  for alg, b in summary["best"].items():
    print(f"{alg}: best draw {b['draw']} (mean source-val F1-macro {b['score']:.4f}) {b['hparams']}")


if __name__ == "__main__":
  app.run(main)
