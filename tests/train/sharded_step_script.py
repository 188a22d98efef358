"""Run in a subprocess with N fake CPU devices: prints losses and parameter checksums of 2 train steps as JSON, and
saves the parameters to the .npz path given as the second argument. A third argument 'o_major' keeps the kernels
output-channel-major (train.o_major_kernels)."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tests.train.step_fixture import run_steps  # noqa: E402


def main():
  module = sys.argv[1]
  _, state, history = run_steps(module, num_steps=2, o_major_kernels=sys.argv[3:] == ["o_major"])
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(state.params))]
  kernels = [x for x in jax.tree.leaves(state.params) if x.ndim == 4]
  np.savez(sys.argv[2], *leaves)
  print(json.dumps({
      "devices": jax.device_count(),
      "losses": [float(m["total"]) for m in history],
      "parts": [{k: float(v) for k, v in m.items()} for m in history],
      "param_sum": float(sum(np.sum(x) for x in leaves)),
      "param_abs_sum": float(sum(np.sum(np.abs(x)) for x in leaves)),
      # convolution kernels, and those kept output-channel-major in device memory after the steps
      "kernels": len(kernels),
      "o_major_kernels": sum(x.format.layout.major_to_minor == (3, 0, 1, 2) for x in kernels),
  }))


if __name__ == "__main__":
  main()
