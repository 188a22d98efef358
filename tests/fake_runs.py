"""A stand-in for trainer.train_and_evaluate that writes a finished run's files in milliseconds.

It writes what the real trainer writes and the protocol reads: config.json, metrics.json (scored with
wbcdg_jax.metrics from predictions) and target_predictions.npz, with predictions drawn from the run's config so
different hyperparameters give different scores.
"""

import json
import os
import zlib

import numpy as np

from wbcdg_jax import checkpoint, metrics
from wbcdg_jax.classes import CLASS_NAMES, NUM_CLASSES


def _predictions(rng, n, absent=(), accuracy=0.6):
  labels = rng.choice([c for c in range(NUM_CLASSES) if c not in absent], size=n)
  pred = np.where(rng.random(n) < accuracy, labels, rng.integers(0, NUM_CLASSES, n))
  logits = rng.normal(size=(n, NUM_CLASSES)).astype(np.float32)
  logits[np.arange(n), pred] += 20.0  # argmax == pred
  return labels.astype(np.int64), logits


class FakeTrainer:
  """Callable (config, workdir) -> result dict; records every call in `.calls`."""

  def __init__(self, absent_in_target=(5,)):
    self.calls = []
    self.absent = tuple(absent_in_target)

  def __call__(self, config, workdir):
    self.calls.append((config, workdir))
    os.makedirs(workdir, exist_ok=True)
    checkpoint.save_config(workdir, config)
    seed = zlib.crc32(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    rng = np.random.default_rng(seed)
    acc = float(rng.uniform(0.3, 0.9))
    y, logits = _predictions(rng, 60, accuracy=acc)
    result = {"val": metrics.classification_report(y, logits.argmax(-1), CLASS_NAMES), "selected_step": 2,
              "algorithm": config.algorithm, "fold": int(config.data.fold), "seed": int(config.seed),
              "sources": list(config.data.sources), "target_domain": config.data.target}
    if config.data.target:
      y, logits = _predictions(rng, 50, absent=self.absent, accuracy=acc)
      pred_dir = os.path.join(workdir, "stage2") if "decoupled" in config.algorithm else workdir
      os.makedirs(pred_dir, exist_ok=True)
      np.savez(os.path.join(pred_dir, "target_predictions.npz"), labels=y, logits=logits,
               indices=np.arange(len(y)), paths=np.asarray([f"img{i}" for i in range(len(y))]))
      result["target"] = metrics.classification_report(y, logits.argmax(-1), CLASS_NAMES)
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump(result, f)
    return result
