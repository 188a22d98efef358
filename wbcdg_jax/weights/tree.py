"""Helpers shared by the weight converters: flattened parameter paths and validation against the model.

A parameter tree is a nested dict of arrays; its flattened form maps '/'-joined paths ('layer1_0/conv1/kernel')
to arrays. Validation compares a converted tree with the shapes that the Flax ResNetEncoder itself creates, and
collects every problem before raising, so one run of the converter names all bad keys at once.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np

Tree = dict[str, Any]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}. Leaves are anything that is not a Mapping."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      flat.update(flatten(value, path))
    else:
      flat[path] = value
  return flat


def unflatten(flat: Mapping[str, Any]) -> Tree:
  """{'a/b/c': leaf} -> nested dict (the inverse of `flatten`)."""
  tree: Tree = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


@functools.lru_cache(maxsize=None)
def encoder_shapes(depth: int) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
  """Flattened shapes of the Flax ResNetEncoder's own variables: (params, batch_stats), without computing them.

  Uses `jax.eval_shape`, so it costs a trace, not an initialisation. Shapes do not depend on the image size.
  """
  import jax
  import jax.numpy as jnp

  from wbcdg_jax.models.resnet import ResNetEncoder

  model = ResNetEncoder(depth=depth)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32)))
  params = {k: tuple(v.shape) for k, v in flatten(variables["params"]).items()}
  stats = {k: tuple(v.shape) for k, v in flatten(variables["batch_stats"]).items()}
  return params, stats


def check_against(flat: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], *, what: str,
                  source_names: Mapping[str, str] | None = None) -> list[str]:
  """Lists every missing, unexpected and wrongly shaped entry of `flat` compared with `expected`.

  Args:
    flat: converted arrays by flattened Flax path.
    expected: the model's shapes by flattened Flax path.
    what: collection name used in the messages ('params' or 'batch_stats').
    source_names: optional Flax path -> source key (e.g. the torchvision name) to name in messages.

  Returns:
    Human-readable problem lines (empty when everything matches).
  """
  source_names = source_names or {}
  name = lambda path: f"{what}/{path}" + (f" (from {source_names[path]!r})" if path in source_names else "")
  problems = [f"missing {what}/{p} (shape {expected[p]})" for p in sorted(set(expected) - set(flat))]
  problems += [f"unexpected {name(p)}: the model has no such variable" for p in sorted(set(flat) - set(expected))]
  for path in sorted(set(flat) & set(expected)):
    if tuple(np.shape(flat[path])) != tuple(expected[path]):
      problems.append(f"shape mismatch {name(path)}: got {tuple(np.shape(flat[path]))}, model expects "
                      f"{tuple(expected[path])}")
  return problems
