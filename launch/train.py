r"""Trains one configured algorithm and writes checkpoints, log.jsonl and metrics.json to the work directory.

  python launch/train.py --config=configs/boda.py:quick
  python launch/train.py --config=configs/erm.py --config.optim.lr=1e-4 --workdir=runs/erm_fold0

Re-running the same command resumes from the latest checkpoint in the work directory, loading the compiled
train step from <workdir>/jax_cache (a ResNet-50 step at total batch 64 takes about 2 minutes to compile on an
H100; --compilation_cache_dir or JAX_COMPILATION_CACHE_DIR points several runs at one cache, '' turns it off).

Several processes (hosts) train one model when every one runs the same command plus, either,
  --distributed                                    (TPU pods, SLURM, Open MPI: JAX detects the cluster), or
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I   (I = 0..N-1; HOST runs process 0).
"""

import json
import sys

import _paths  # noqa: F401  (repository root on sys.path)
from absl import app, flags, logging
import jax
from ml_collections import config_flags

from wbcdg_jax import config_validation, multihost, protocol, trainer

_CONFIG = config_flags.DEFINE_config_file("config", "configs/boda.py:quick", "Config file[:preset].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (default: config.workdir).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Start JAX's distributed runtime, detecting the cluster "
                                 "(TPU pod, SLURM, Open MPI); implied by --coordinator_address.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
_CACHE = flags.DEFINE_string("compilation_cache_dir", None, "JAX compilation cache (default: "
                             "$JAX_COMPILATION_CACHE_DIR if set, else <workdir>/jax_cache; '' = off).")


def main(argv):
  del argv
  # orbax and TFDS log every save and open at INFO; keep the console for the progress bar and results.
  logging.set_verbosity(logging.WARNING)
  if _DISTRIBUTED.value or _COORDINATOR.value is not None:
    multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  workdir = _WORKDIR.value or config.workdir
  protocol.enable_compilation_cache(workdir, _CACHE.value)
  try:
    # The trainer validates the config before it reads data, writes or compiles anything.
    result = trainer.train_and_evaluate(config, workdir)
  except config_validation.ConfigError as e:
    sys.exit(f"invalid --config ({config_flags.get_config_filename(flags.FLAGS['config'])}): {e}")
  if jax.process_index() != 0:
    return  # process 0 reports for all
  summary = {k: {m: round(result[k][m], 4) for m in ("f1_macro", "f1_micro", "accuracy")}
             for k in ("val", "target") if k in result}
  print(json.dumps({"workdir": workdir, "selected_step": result["selected_step"], **summary,
                    "train_seconds": round(result["train_seconds"], 1)}, indent=1))


if __name__ == "__main__":
  app.run(main)
