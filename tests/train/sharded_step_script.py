"""Run in a subprocess with N fake CPU devices: prints losses and parameter checksums of 2 train steps as JSON, and
saves the parameters to the .npz path given as the second argument."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tests.train.step_fixture import run_steps  # noqa: E402


def main():
  module = sys.argv[1]
  _, state, history = run_steps(module, num_steps=2)
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(state.params))]
  np.savez(sys.argv[2], *leaves)
  print(json.dumps({
      "devices": jax.device_count(),
      "losses": [float(m["total"]) for m in history],
      "parts": [{k: float(v) for k, v in m.items()} for m in history],
      "param_sum": float(sum(np.sum(x) for x in leaves)),
      "param_abs_sum": float(sum(np.sum(np.abs(x)) for x in leaves)),
  }))


if __name__ == "__main__":
  main()
