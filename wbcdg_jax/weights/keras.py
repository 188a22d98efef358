"""Keras `ResNet50/101/152` (keras.applications) `.h5` weights -> Flax ResNetEncoder variables.

What differs between the Keras network and this project's torchvision-style model, and what is done about it:

1. Stride placement (NOT equivalent). Keras ResNet50 is ResNet v1: in the first block of stages 3-5 the stride 2
   sits on the first 1x1 conv (`convS_block1_1_conv`). torchvision and this model are v1.5: the stride sits on
   the 3x3 conv. The same weights therefore compute a different function here (the 1x1 conv sees every pixel and
   the 3x3 conv sees a subsampled grid instead of the other way round). The converter refuses unless
   `allow_v1_stride=True`, which loads them anyway as a fine-tuning starting point - a common practice, but the
   features are not Keras's features. Exact loading would need a stride-placement option in the model.
2. Conv biases (exact). Keras convs carry a bias; each is followed by batch norm, so the bias is folded into that
   norm's moving mean (mean - bias). Eval-mode outputs are unchanged; in train mode the batch mean absorbs it.
3. Batch-norm epsilon (exact in eval mode). Keras uses 1.001e-5, this model 1e-5: the difference is added to the
   moving variance (in float32 it vanishes for variances above about 0.1, where 1e-8 is below the resolution,
   i.e. the output changes by less than float32 rounding). In train mode (batch statistics) the epsilon differs
   by 1e-8, a relative change of about 5e-9 / var in the output.
4. Input convention (exact except a 3 px border). Keras ResNet50 expects 'caffe' inputs: BGR, 0..255, minus the
   BGR mean (103.939, 116.779, 123.68). This project feeds RGB (x / 255 - mean) / std with the ImageNet mean/std.
   The channel reversal and the scale 255 * std are folded into `conv1`'s kernel exactly; the remaining constant
   offset (255 * mean - caffe mean, at most 0.5 grey levels) is folded into `bn1`'s moving mean, which is exact
   except where `conv1` overlaps its zero padding (Keras pads zeros in caffe space, this model in normalised
   space), where the pre-norm activations differ by the kernel times that sub-0.5-level offset.
5. The `predictions` Dense layer (if present) becomes the linear head as is (its kernel is already [D, C]).

Files are read with h5py (imported here only) in the legacy HDF5 layout `[model_weights/]<layer>/<layer>/<name>:0`
with `layer_names` / `weight_names` attributes: the keras.applications download
(`resnet50_weights_tf_dim_ordering_tf_kernels[_notop].h5`) and `model.save('x.h5')` files. Keras 3
`.weights.h5` files address layers by class and position (`layers/conv2d_7/vars/0`), not by name, and are refused
with an explanation rather than matched by guesswork.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

import numpy as np

from wbcdg_jax.augment import IMAGENET_MEAN, IMAGENET_STD  # the normalisation the training pipeline applies
from wbcdg_jax.weights import tree as tree_lib

KERAS_BN_EPSILON = 1.001e-5
FLAX_BN_EPSILON = 1e-5
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_CONV_FIELDS = ("kernel", "bias")
_BN_FIELDS = ("gamma", "beta", "moving_mean", "moving_variance")
_LAYER = re.compile(r"^(?:conv1_(conv|bn)|conv(\d)_block(\d+)_(\d)_(conv|bn)|(predictions))$")


def read_keras_h5(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """Reads the weights of a legacy-format Keras `.h5` file: {layer name: {'kernel'|'bias'|'gamma'|...: array}}.

  Reads both weights-only files (the keras.applications downloads) and whole-model files (`model_weights/`).
  Layers without weights are omitted.

  Raises:
    FileNotFoundError naming the path; ImportError if h5py is missing; ValueError for a Keras 3 `.weights.h5`
    (layers addressed by class and position, not name) or when no weights are found.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Keras weights file {path!r} does not exist")
  try:
    import h5py
  except ImportError as e:
    raise ImportError(f"reading the Keras file {path!r} needs h5py (pip install h5py)") from e
  layers: dict[str, dict[str, np.ndarray]] = {}
  with h5py.File(path, "r") as f:
    root = f["model_weights"] if "model_weights" in f else f
    if "layers" in root and "layer_names" not in root.attrs:
      raise ValueError(
          f"{path!r} is a Keras 3 '.weights.h5' file, which stores layers by class and position (layers/conv2d_7) "
          "rather than by name, so its layers cannot be matched to ResNet blocks reliably. Use the legacy .h5 "
          "that keras.applications downloads (~/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels*.h5) "
          "or a model saved with model.save('model.h5') (legacy HDF5 format).")
    names = [n.decode() if isinstance(n, bytes) else n for n in root.attrs.get("layer_names", list(root.keys()))]
    for name in names:
      group = root[name]
      weight_names = group.attrs.get("weight_names", None)
      if weight_names is None:
        weight_names = []
        group.visit(lambda k, g=group, out=weight_names: out.append(k) if isinstance(g[k], h5py.Dataset) else None)
      for wname in weight_names:
        wname = wname.decode() if isinstance(wname, bytes) else wname
        field = wname.rsplit("/", 1)[-1].split(":", 1)[0]  # 'conv1_conv/kernel:0' (Keras 2) or '.../kernel'
        layers.setdefault(name, {})[field] = np.asarray(group[wname])
  if not layers:
    raise ValueError(f"{path!r} holds no layer weights in a Keras layout")
  return layers


def _input_fold(kernel: np.ndarray, mean: Sequence[float], std: Sequence[float],
                caffe_mean_bgr: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  """Rewrites Keras's conv1 kernel [7, 7, 3 (BGR), O] for normalised RGB inputs.

  Keras input x_k[bgr] = 255 * x01[rgb] - caffe_mean; ours x_n = (x01 - mean) / std, so
  x_k[2 - c] = a[c] * x_n[c] + b[c] with a = 255 * std, b = 255 * mean - caffe_mean (RGB order).

  Returns:
    (kernel for x_n [7, 7, 3 (RGB), O], constant added to every interior output [O]).
  """
  a = 255.0 * np.asarray(std, np.float64)
  b = 255.0 * np.asarray(mean, np.float64) - np.asarray(caffe_mean_bgr, np.float64)[::-1]
  rgb_kernel = kernel[:, :, ::-1, :].astype(np.float64)
  offset = np.einsum("hwco,c->o", rgb_kernel, b)
  return (rgb_kernel * a[None, None, :, None]).astype(np.float32), offset


def keras_resnet_to_flax(layers: Mapping[str, Mapping[str, np.ndarray]], *, depth: int,
                         allow_v1_stride: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD,
                         caffe_mean_bgr: Sequence[float] = CAFFE_MEAN_BGR) -> tuple[dict, dict, dict | None]:
  """Converts Keras ResNet50/101/152 (v1) layer weights into this project's v1.5 encoder variables.

  Args:
    layers: {Keras layer name: {field: array}} as returned by `read_keras_h5`.
    depth: depth of the Flax model (50, 101 or 152; Keras has no basic-block ResNets).
    allow_v1_stride: accept loading v1 weights into the v1.5 model (see the module docstring, item 1).
    mean, std: the RGB normalisation this project applies to x / 255 (ImageNet's by default).
    caffe_mean_bgr: the BGR mean Keras subtracts from 0..255 inputs.

  Returns:
    (encoder params, encoder batch_stats, head or None) as nested float32 numpy dicts, like
    `torchvision_to_flax`.

  Raises:
    ValueError: if `allow_v1_stride` is False (naming the difference), or listing every unknown layer, missing
    variable and shape mismatch.
  """
  if not allow_v1_stride:
    raise ValueError(
        "Keras ResNet50/101/152 weights are ResNet v1 (stride 2 on the first 1x1 conv of stages 3-5) but this model "
        "is torchvision's v1.5 (stride 2 on the 3x3 conv): loaded here they compute a different function from the "
        "Keras network. Pass allow_v1_stride=True (launch/convert_weights.py --allow_keras_v1) to use them anyway "
        "as a fine-tuning starting point, or prefer torchvision weights, which load exactly.")
  params: dict[str, np.ndarray] = {}
  stats: dict[str, np.ndarray] = {}
  head: dict[str, np.ndarray] = {}
  origin: dict[str, str] = {}
  problems = []
  for name, weights in layers.items():
    match = _LAYER.match(name)
    if match is None:
      problems.append(f"unknown layer {name!r}: not part of a Keras ResNet (v1)")
      continue
    stem_kind, stage, block, index, kind, predictions = match.groups()
    if predictions:
      head["out/kernel"], head["out/bias"] = weights.get("kernel"), weights.get("bias")
      continue
    if stem_kind:
      module, kind = ("conv1" if stem_kind == "conv" else "bn1"), stem_kind
    else:
      base = f"layer{int(stage) - 1}_{int(block) - 1}"
      module = f"{base}/downsample_{kind}" if index == "0" else f"{base}/{kind}{index}"
    required = _CONV_FIELDS if kind == "conv" else _BN_FIELDS
    absent = [f for f in required if f not in weights]
    if absent:
      problems.append(f"layer {name!r} lacks {absent} (has {sorted(weights)})")
      continue
    if kind == "conv":
      params[f"{module}/kernel"] = np.asarray(weights["kernel"], np.float32)
      stats[f"{module}/conv_bias"] = np.asarray(weights["bias"], np.float32)  # folded below
    else:
      params[f"{module}/scale"] = np.asarray(weights["gamma"], np.float32)
      params[f"{module}/bias"] = np.asarray(weights["beta"], np.float32)
      stats[f"{module}/mean"] = np.asarray(weights["moving_mean"], np.float32)
      stats[f"{module}/var"] = (np.asarray(weights["moving_variance"], np.float64)
                                + (KERAS_BN_EPSILON - FLAX_BN_EPSILON)).astype(np.float32)
    origin[f"{module}/kernel" if kind == "conv" else f"{module}/scale"] = name
  if "conv1/kernel" in params and params["conv1/kernel"].shape[2:3] == (3,):
    params["conv1/kernel"], offset = _input_fold(params["conv1/kernel"], mean, std, caffe_mean_bgr)
    stats["conv1/conv_bias"] = (stats["conv1/conv_bias"] + offset).astype(np.float32)
  for key in [k for k in stats if k.endswith("/conv_bias")]:
    module = key[: -len("/conv_bias")]
    parent, _, last = module.rpartition("/")
    norm = (parent + "/" if parent else "") + last.replace("conv", "bn")  # conv1->bn1, downsample_conv->_bn
    bias = stats.pop(key)
    if f"{norm}/mean" not in stats:
      continue  # reported as a missing batch_stats entry below
    if stats[f"{norm}/mean"].shape != bias.shape:
      problems.append(f"shape mismatch: conv bias of {module} {bias.shape} vs {norm} mean "
                      f"{stats[f'{norm}/mean'].shape}")
      continue
    stats[f"{norm}/mean"] = (stats[f"{norm}/mean"] - bias).astype(np.float32)
  expected_params, expected_stats = tree_lib.encoder_shapes(depth)
  problems += tree_lib.check_against(params, expected_params, what="params", source_names=origin)
  problems += tree_lib.check_against(stats, expected_stats, what="batch_stats")
  if head and (head["out/kernel"] is None or head["out/bias"] is None):
    problems.append("layer 'predictions' lacks kernel or bias")
  if problems:
    raise ValueError(f"cannot convert the Keras weights into a ResNet-{depth} encoder ({len(problems)} problems):\n  "
                     + "\n  ".join(problems))
  head_tree = tree_lib.unflatten({k: np.asarray(v, np.float32) for k, v in head.items()}) if head else None
  return tree_lib.unflatten(params), tree_lib.unflatten(stats), head_tree
