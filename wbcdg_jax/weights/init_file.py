"""The file that starts a run from converted weights (`--config.init.checkpoint=PATH`), and its loader.

Format: one `.npz` (no pickled objects) whose entries are '/'-joined paths under three roots,

* `params/<encoder path>`      e.g. `params/layer1_0/conv1/kernel` (float32),
* `batch_stats/<encoder path>` e.g. `batch_stats/bn1/mean` (float32),
* `head/out/kernel`, `head/out/bias` only when the source's classifier was kept (ImageNet logits; ignored by
  `load_encoder_init`),

plus `__meta__`, a JSON string with the format version, the ResNet depth and where the weights came from.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Mapping

import numpy as np

from wbcdg_jax.weights import tree as tree_lib

FORMAT = "wbcdg_jax.encoder_init"
VERSION = 1


def save_encoder_init(path: str | os.PathLike, params: Mapping[str, Any], batch_stats: Mapping[str, Any], *,
                      depth: int, head: Mapping[str, Any] | None = None, source: str = "") -> str:
  """Writes converted encoder variables (and optionally the source's head) to an `.npz` file.

  Args:
    path: output file; '.npz' is appended if missing. Parent folders are created.
    params, batch_stats: the encoder's variables (nested dicts of arrays, Flax ResNetEncoder layout).
    depth: ResNet depth they belong to (stored and checked on load).
    head: optional {'out': {'kernel': [D, C], 'bias': [C]}}.
    source: free text recorded in the metadata (e.g. the input file name and format).

  Returns:
    The path written.
  """
  path = os.fspath(path)
  if not path.endswith(".npz"):
    path += ".npz"
  arrays = {f"params/{k}": np.asarray(v, np.float32) for k, v in tree_lib.flatten(params).items()}
  arrays |= {f"batch_stats/{k}": np.asarray(v, np.float32) for k, v in tree_lib.flatten(batch_stats).items()}
  if head is not None:
    arrays |= {f"head/{k}": np.asarray(v, np.float32) for k, v in tree_lib.flatten(head).items()}
  meta = {"format": FORMAT, "version": VERSION, "depth": int(depth), "source": source}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(path, __meta__=np.asarray(json.dumps(meta)), **arrays)
  return path


def read_init_file(path: str | os.PathLike) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
  """Reads an init file without validation: (metadata dict, {'params'|'batch_stats'|'head': flat arrays})."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"init checkpoint {path!r} does not exist (write one with launch/convert_weights.py)")
  parts: dict[str, dict[str, np.ndarray]] = {"params": {}, "batch_stats": {}, "head": {}}
  with np.load(path, allow_pickle=False) as data:
    if "__meta__" not in data.files:
      raise ValueError(f"{path!r} is not an encoder init file: no __meta__ entry (write one with "
                       "launch/convert_weights.py)")
    meta = json.loads(str(data["__meta__"]))
    for key in data.files:
      if key == "__meta__":
        continue
      root, _, rest = key.partition("/")
      if root not in parts or not rest:
        raise ValueError(f"{path!r}: unexpected entry {key!r} (entries start with params/, batch_stats/ or head/)")
      parts[root][rest] = data[key]
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path!r}: __meta__.format is {meta.get('format')!r}, expected {FORMAT!r}")
  return meta, parts


def load_encoder_init(path: str | os.PathLike, *, depth: int) -> tuple[dict, dict]:
  """Loads converted weights for the encoder of a ResNet-`depth` Classifier.

  Args:
    path: an `.npz` written by `save_encoder_init` / launch/convert_weights.py.
    depth: the depth of the model being trained (config.model.depth).

  Returns:
    (encoder params, encoder batch_stats): nested dicts of float32 numpy arrays with exactly the structure and
    shapes that `ResNetEncoder(depth).init` creates; put them under `params['encoder']` and
    `batch_stats['encoder']`. A head stored in the file is ignored.

  Raises:
    ValueError naming the file and every missing, unexpected or wrongly shaped entry, or a depth mismatch.
  """
  meta, parts = read_init_file(path)
  if int(meta.get("depth", -1)) != int(depth):
    raise ValueError(f"{os.fspath(path)!r} holds ResNet-{meta.get('depth')} weights but config.model.depth={depth}")
  expected_params, expected_stats = tree_lib.encoder_shapes(depth)
  problems = tree_lib.check_against(parts["params"], expected_params, what="params")
  problems += tree_lib.check_against(parts["batch_stats"], expected_stats, what="batch_stats")
  if problems:
    raise ValueError(f"{os.fspath(path)!r} does not fit a ResNet-{depth} encoder ({len(problems)} problems):\n  "
                     + "\n  ".join(problems))
  as_f32 = lambda flat: tree_lib.unflatten({k: np.asarray(v, np.float32) for k, v in flat.items()})
  return as_f32(parts["params"]), as_f32(parts["batch_stats"])


RANDOM_INIT_WARNING = (
    "config.init.checkpoint is empty: the encoder starts from RANDOM weights, not ImageNet. Results will be far "
    "below the paper's, which fine-tunes ImageNet weights. Convert a torchvision/Keras ResNet file with "
    "`python launch/convert_weights.py --input FILE --depth D --output init.npz` and pass "
    "--config.init.checkpoint=init.npz (fine for smoke tests and the synthetic 'quick'/'tiny' presets).")


def warn_random_init() -> str:
  """Warns (Python `warnings`, printed to stderr) that training starts from random weights; returns the text."""
  warnings.warn(RANDOM_INIT_WARNING, RuntimeWarning, stacklevel=2)
  return RANDOM_INIT_WARNING
