"""A tiny trained-looking InferenceBundle for the predict/export tests, built without compiling `init`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from wbcdg_jax.checkpoint import InferenceBundle
from wbcdg_jax.classes import CLASS_NAMES
from wbcdg_jax.models import Classifier


def random_variables(model, image_size: int, seed: int = 0) -> dict:
  """Random variables with `model.init`'s structure (shapes via eval_shape; no compile): He-scaled kernels,
  random affine BN parameters and running statistics, so outputs differ between images."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))).astype(np.float32)
    if "scale" in name:
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if "var" in name:
      return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
    return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

  return {k: jax.tree_util.tree_map_with_path(fill, v) for k, v in shapes.items()}


def tiny_bundle(*, image_size: int = 32, stored_size: int = 32, fov_um: float = 25.0) -> InferenceBundle:
  """ResNet-10 + MLP head over the 13 common classes."""
  model = Classifier(num_classes=len(CLASS_NAMES), depth=10, head="mlp", mlp_width=16)
  return InferenceBundle(model=model, variables=random_variables(model, image_size), class_names=CLASS_NAMES,
                         image_size=image_size, fov_um=fov_um, stored_size=stored_size)
