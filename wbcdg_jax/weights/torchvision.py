"""torchvision ResNet state_dict -> Flax ResNetEncoder variables (REFERENCE.md section 2).

Mapping (torchvision name -> Flax path in the `encoder` tree):

* `conv1.weight` [O, I, H, W] -> params `conv1/kernel` [H, W, I, O];
* `bn1.weight` / `.bias` -> params `bn1/scale` / `bn1/bias`; `.running_mean` / `.running_var` -> batch_stats
  `bn1/mean` / `bn1/var`; `.num_batches_tracked` is dropped (Flax keeps no counter);
* `layer{S}.{B}.conv{K}` / `.bn{K}` -> `layer{S}_{B}/conv{K}` / `bn{K}`;
* `layer{S}.{B}.downsample.0` / `.1` -> `layer{S}_{B}/downsample_conv` / `downsample_bn`;
* `fc.weight` [C, D] / `fc.bias` [C] -> the linear head `out/kernel` [D, C] / `out/bias` [C].

Both frameworks use batch-norm epsilon 1e-5 and the same symmetric padding, so eval-mode outputs agree to float
rounding. One convention differs in training-mode batch norm: PyTorch updates `running_var` with the unbiased
batch variance (n / (n - 1) times the biased one, n = batch * height * width), Flax with the biased one; the
normalised outputs themselves are identical.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from wbcdg_jax.weights import tree as tree_lib

_BN_FIELDS = {"weight": ("params", "scale"), "bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
              "running_var": ("batch_stats", "var")}
_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(conv\d+|bn\d+|downsample\.0|downsample\.1)\.(\w+)$")
_STEM = re.compile(r"^(conv1|bn1)\.(\w+)$")
_DOWNSAMPLE = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}


def _map_key(key: str) -> tuple[str, str, str] | None:
  """torchvision key -> (collection, flax module path, kind) with kind in conv/bn/fc/drop; None if unknown."""
  if key in ("fc.weight", "fc.bias"):
    return "head", "out/" + ("kernel" if key.endswith("weight") else "bias"), "fc"
  match = _STEM.match(key)
  if match:
    module, field = match.groups()
  else:
    match = _BLOCK.match(key)
    if not match:
      return None
    stage, block, module, field = match.groups()
    module = f"layer{stage}_{block}/{_DOWNSAMPLE.get(module, module)}"
  if "conv" in module.rsplit("/", 1)[-1]:
    return ("params", f"{module}/kernel", "conv") if field == "weight" else None
  if field == "num_batches_tracked":
    return "drop", module, "drop"
  if field not in _BN_FIELDS:
    return None
  collection, name = _BN_FIELDS[field]
  return collection, f"{module}/{name}", "bn"


def torchvision_to_flax(state_dict: Mapping[str, Any], *, depth: int,
                        strip_prefix: str = "module.") -> tuple[dict, dict, dict | None]:
  """Converts a torchvision ResNet state_dict into Flax ResNetEncoder variables.

  Args:
    state_dict: torchvision key -> array (numpy, or anything `np.asarray` accepts such as CPU torch tensors).
      Conv weights are [O, I, kH, kW]; `fc.weight` is [C, D].
    depth: the ResNet depth of the Flax model the result must fit (18, 34, 50, 101, 152; 10 for tests).
    strip_prefix: a prefix removed from every key that carries it (DataParallel checkpoints add 'module.').

  Returns:
    (encoder params, encoder batch_stats, head) as nested dicts of float32 numpy arrays; head is
    {'out': {'kernel': [D, C], 'bias': [C]}} (the params of a linear `Head`) or None if there is no `fc`.

  Raises:
    ValueError: listing every unknown key, every model variable without a source key, and every shape mismatch.
  """
  flat: dict[str, dict[str, np.ndarray]] = {"params": {}, "batch_stats": {}, "head": {}}
  origin: dict[str, dict[str, str]] = {"params": {}, "batch_stats": {}, "head": {}}
  problems = []
  for key, value in state_dict.items():
    name = key[len(strip_prefix):] if strip_prefix and key.startswith(strip_prefix) else key
    mapped = _map_key(name)
    if mapped is None:
      problems.append(f"unknown key {key!r}: not part of a torchvision ResNet")
      continue
    collection, path, kind = mapped
    if kind == "drop":
      continue
    array = np.asarray(value, dtype=np.float32)
    if kind == "conv":
      if array.ndim != 4:
        problems.append(f"shape mismatch {key!r}: a conv weight must be 4-D [O, I, H, W], got {array.shape}")
        continue
      array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif kind == "fc" and path.endswith("kernel"):
      if array.ndim != 2:
        problems.append(f"shape mismatch {key!r}: fc.weight must be 2-D [C, D], got {array.shape}")
        continue
      array = array.T
    flat[collection][path] = np.ascontiguousarray(array)
    origin[collection][path] = key
  expected_params, expected_stats = tree_lib.encoder_shapes(depth)
  problems += tree_lib.check_against(flat["params"], expected_params, what="params",
                                     source_names=origin["params"])
  problems += tree_lib.check_against(flat["batch_stats"], expected_stats, what="batch_stats",
                                     source_names=origin["batch_stats"])
  head = flat["head"]
  if head and set(head) != {"out/kernel", "out/bias"}:
    problems.append(f"incomplete fc layer: found only {sorted(origin['head'].values())}")
  elif head and head["out/kernel"].shape[1] != head["out/bias"].shape[0]:
    problems.append(f"shape mismatch fc: weight {head['out/kernel'].T.shape} vs bias {head['out/bias'].shape}")
  if problems:
    raise ValueError(f"cannot convert the state_dict into a ResNet-{depth} encoder ({len(problems)} problems):\n  "
                     + "\n  ".join(problems))
  return (tree_lib.unflatten(flat["params"]), tree_lib.unflatten(flat["batch_stats"]),
          tree_lib.unflatten(head) if head else None)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a torchvision checkpoint into key -> float numpy array.

  Formats, chosen by extension: `.safetensors` (read with `safetensors.numpy`, no PyTorch needed), `.npz`
  (already-numpy state_dict), anything else (`.pth`, `.pt`, `.bin`) with `torch.load(weights_only=True)`, which
  needs PyTorch installed (imported here only). A checkpoint dict holding the weights under 'state_dict' or
  'model' is unwrapped.

  Raises:
    FileNotFoundError naming the path; ImportError saying which package a format needs; ValueError when the file
    holds no state_dict.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file {path!r} does not exist")
  lower = path.lower()
  if lower.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file
    except ImportError as e:
      raise ImportError(f"reading {path!r} needs the 'safetensors' package (pip install safetensors)") from e
    return dict(load_file(path))
  if lower.endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"reading the PyTorch checkpoint {path!r} needs PyTorch (pip install torch); or convert it "
                      "to .safetensors elsewhere first") from e
  obj = torch.load(path, map_location="cpu", weights_only=True)
  for wrapper in ("state_dict", "model"):
    if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
      obj = obj[wrapper]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state_dict (a mapping of names to tensors)")
  return {k: v.detach().cpu().float().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in obj.items()}
