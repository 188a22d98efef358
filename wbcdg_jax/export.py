"""Exporting a trained classifier as serialized StableHLO (`jax.export`) that runs without the training code.

`export_classifier(bundle, path)` writes a folder with

* `classifier.stablehlo`: the eval-mode function `uint8 images [b, S, S, 3] -> probabilities float32 [b, C]`,
  batch-polymorphic in b, with the weights embedded and the whole preprocessing inside (resize from S to the
  network's image size when they differ, ImageNet normalisation, softmax) - exactly training's evaluation path;
* `classifier.json`: class names (column order of the output), S (`input_size`), the network's `image_size`,
  `fov_um`, the normalisation mean/std (for reference; already applied inside), and the platforms it was
  lowered for.

S is the run's stored crop size: prepare an image like the training data, i.e. centre-crop the `fov_um` x `fov_um`
micrometre field of view and resize it to S x S (data_pipelines.imaging.crop_to_fov does both).

`load_exported(path)` needs only jax and numpy.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Sequence

import jax
import numpy as np

from wbcdg_jax import files, xla_options  # jax and absl only (files: the standard library)

FORMAT = "wbcdg_jax.exported_classifier"
VERSION = 1
MODULE_FILE = "classifier.stablehlo"
META_FILE = "classifier.json"
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


def export_classifier(bundle: Any, path: str | os.PathLike, *,
                      platforms: Sequence[str] = DEFAULT_PLATFORMS) -> str:
  """Serializes a trained classifier for inference without this package.

  Args:
    bundle: an InferenceBundle (model, variables, class_names, image_size, fov_um[, stored_size]).
    path: output folder (created; existing export files in it are overwritten).
    platforms: backends to lower for ('cpu', 'cuda', 'rocm', 'tpu'); the file runs only on these.

  Returns:
    The folder written.
  """
  import functools  # pylint: disable=import-outside-toplevel

  from wbcdg_jax import augment, predict  # local: load_exported must not need the training code

  size = predict.input_size(bundle)
  variables = {"params": bundle.variables["params"], "batch_stats": bundle.variables.get("batch_stats", {})}
  fn = functools.partial(predict.classify_batch, bundle.model, variables, image_size=int(bundle.image_size))
  (batch,) = jax.export.symbolic_shape("b")
  spec = jax.ShapeDtypeStruct((batch, size, size, 3), np.uint8)
  exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(spec)
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, MODULE_FILE), "wb") as f:
    f.write(exported.serialize())
  meta = {
      "format": FORMAT, "version": VERSION, "class_names": list(bundle.class_names), "input_size": size,
      "image_size": int(bundle.image_size), "fov_um": float(bundle.fov_um),
      "mean": list(augment.IMAGENET_MEAN), "std": list(augment.IMAGENET_STD),
      "input": f"uint8 RGB [batch, {size}, {size}, 3]: the centre {bundle.fov_um:g} um field of view resized to "
               f"{size} px; normalisation is applied inside",
      "output": f"float32 [batch, {len(bundle.class_names)}] softmax probabilities in class_names order",
      "platforms": list(platforms), "jax_version": jax.__version__,
  }
  files.write_json(os.path.join(path, META_FILE), meta, indent=1)
  return path


@dataclasses.dataclass(frozen=True)
class ExportedClassifier:
  """A loaded export: call it on uint8 [B, input_size, input_size, 3] to get probabilities float32 [B, C]."""

  exported: Any  # jax.export.Exported
  class_names: tuple[str, ...]
  input_size: int
  image_size: int
  fov_um: float
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def __call__(self, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    want = (self.input_size, self.input_size, 3)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != want:
      raise ValueError(f"expected uint8 images [B, {want[0]}, {want[1]}, 3] (centre {self.fov_um:g} um crops), "
                       f"got {images.dtype} {images.shape}")
    return np.asarray(self._compiled(images))

  @functools.cached_property
  def _compiled(self):
    # Compiled here, for this machine, with the project's options (on CPUs: XLA's own convolutions).
    return jax.jit(self.exported.call, compiler_options=xla_options.compiler_options(jax.devices()[0].platform))


def load_exported(path: str | os.PathLike) -> ExportedClassifier:
  """Loads a folder written by `export_classifier`; needs only jax and numpy.

  Raises:
    FileNotFoundError naming the missing file; ValueError if the metadata is not of this format.
  """
  path = os.fspath(path)
  files = [os.path.join(path, name) for name in (MODULE_FILE, META_FILE)]
  for name in files:
    if not os.path.isfile(name):
      raise FileNotFoundError(f"{name} does not exist: {path!r} is not an exported classifier "
                              "(write one with launch/export.py)")
  with open(files[1]) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise ValueError(f"{files[1]}: format is {meta.get('format')!r}, expected {FORMAT!r}")
  with open(files[0], "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return ExportedClassifier(exported, tuple(meta["class_names"]), int(meta["input_size"]), int(meta["image_size"]),
                            float(meta["fov_um"]), tuple(meta["mean"]), tuple(meta["std"]))
