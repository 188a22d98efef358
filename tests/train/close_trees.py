"""Comparing parameters of two runs that differ only in the order of float32 sums (devices, processes)."""

import jax
import numpy as np


def assert_adam_trees_close(a, b, what: str, *, atol: float, steps: int, lr: float, stray_fraction: float = 1e-5):
  """`b`'s leaves equal `a`'s to `atol` (+ 1e-4 relative), except for a stray few elements of the whole tree.

  Adam's step g / (sqrt(v) + eps) turns float32 noise in a gradient near zero into up to a whole step of
  difference (lr per step, either sign), so up to `stray_fraction` of all elements may differ by up to the runs'
  total movement, 2 * steps * lr. Runs whose gradients really differ move most elements differently.
  """
  paths_a = jax.tree_util.tree_leaves_with_path(a)
  leaves_b = jax.tree.leaves(b)
  assert len(paths_a) == len(leaves_b), what
  strays, size, worst = 0, 0, []
  for (path, x), y in zip(paths_a, leaves_b):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    name = f"{what}{jax.tree_util.keystr(path)}"
    assert x.shape == y.shape, name
    diff = np.abs(x - y)
    assert diff.max(initial=0.0) <= 2 * steps * lr, f"{name}: max difference {diff.max()}"
    count = int((diff > atol + 1e-4 * np.abs(x)).sum())
    strays, size = strays + count, size + x.size
    if count:
      worst.append((count, name))
  assert strays <= stray_fraction * size, (
      f"{what}: {strays} of {size} elements differ by more than {atol}; most in {sorted(worst)[-3:]}")
