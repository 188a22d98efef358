r"""Trains one configured algorithm and writes checkpoints, log.jsonl and metrics.json to the work directory.

  python launch/train.py --config=configs/boda.py:quick
  python launch/train.py --config=configs/erm.py --config.optim.lr=1e-4 --workdir=runs/erm_fold0

Re-running the same command resumes from the latest checkpoint in the work directory.
"""

import json
import _paths  # noqa: F401  (repository root on sys.path)
from absl import app, flags, logging
from ml_collections import config_flags

from wbcdg_jax import trainer

_CONFIG = config_flags.DEFINE_config_file("config", "configs/boda.py:quick", "Config file[:preset].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (default: config.workdir).")


def main(argv):
  del argv
  # orbax and TFDS log every save and open at INFO; keep the console for the progress bar and results.
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  workdir = _WORKDIR.value or config.workdir
  result = trainer.train_and_evaluate(config, workdir)
  summary = {k: {m: round(result[k][m], 4) for m in ("f1_macro", "f1_micro", "accuracy")}
             for k in ("val", "target") if k in result}
  print(json.dumps({"workdir": workdir, "selected_step": result["selected_step"], **summary,
                    "train_seconds": round(result["train_seconds"], 1)}, indent=1))


if __name__ == "__main__":
  app.run(main)
