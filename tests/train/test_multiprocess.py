"""Two JAX processes (one CPU device each, gloo collectives) train with `launch/train.py` as on two hosts, and
reach what one process reaches with the same global batch: the same per-step losses, final state (parameters,
optimizer moments, BoDA statistics), selected model and scores.

Each process reads only its rows of every global batch, the step all-reduces across processes, evaluation and the
BoDA refresh gather every process's outputs, and process 0 alone builds the synthetic data while the other waits.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.child_env import cpu_env
from tests.train.close_trees import assert_adam_trees_close
from wbcdg_jax import multihost

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 240  # a process stuck in a collective fails the test instead of blocking CI
# Adam moves a parameter by up to lr = 1e-3 per step, so 2e-4 is a fraction of one step; the two runs differ
# only in the order of float32 sums (one device vs an all-reduce over two), observed <= 3e-5 almost everywhere.
ATOL = 2e-4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _train_command(workdir, data_dir, *extra):
  return [sys.executable, os.path.join(ROOT, "launch", "train.py"), "--config=configs/boda.py:tiny",
          f"--config.data.data_dir={data_dir}", f"--workdir={workdir}", *extra]


def _run_all(commands, log_dir):
  """Starts every command at once; returns their exit codes (killing all if one outlives TIMEOUT_S)."""
  env = cpu_env(PYTHONPATH=ROOT)  # one CPU device per process: two devices in a run can only mean two processes
  procs, logs = [], []
  for i, cmd in enumerate(commands):
    logs.append(open(os.path.join(log_dir, f"proc{i}.log"), "w+"))
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
  try:
    for p in procs:
      p.wait(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
  tails = []
  for p, log in zip(procs, logs):
    p.wait()
    log.seek(0)
    tails.append(log.read()[-3000:])
    log.close()
  return [p.returncode for p in procs], tails


def _restore_on_cpu(path):
  """An orbax StandardSave item, saved on any devices and processes, as numpy arrays."""
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  device = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
  return jax.device_get(ckptr.restore(path, target))


def _latest(directory):
  return os.path.join(directory, str(max(int(s) for s in os.listdir(directory) if s.isdigit())))


def _outputs(workdir):
  with open(os.path.join(workdir, "metrics.json")) as f:
    result = json.load(f)
  with open(os.path.join(workdir, "log.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  state = _restore_on_cpu(os.path.join(_latest(os.path.join(workdir, "checkpoints")), "state"))
  best = _restore_on_cpu(os.path.join(_latest(os.path.join(workdir, "best")), "model"))
  return result, rows, state, best


def _assert_trees_close(a, b, what):
  # A few elements (2 of 1.2 million seen) may differ by up to the 4 steps' movement: see close_trees.
  assert_adam_trees_close(a, b, what, atol=ATOL, steps=4, lr=1e-3)


# The o_major_kernels variant is `slow` (-m slow): CI covers its layout over several devices in
# test_train_step.py::test_sharded_step_matches_1_device[dann-4-o_major] and its checkpoints in one process
# (test_train_step.py, test_trainer.py), and three more processes cost 1.5 minutes of 2 CPU cores.
@pytest.mark.parametrize("o_major_kernels", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["default", "o_major_kernels"])
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, o_major_kernels):
  # o_major_kernels: the state's convolution kernels placed in a non-default device layout over both processes.
  address = f"localhost:{_free_port()}"
  multi, single = str(tmp_path / "two_processes"), str(tmp_path / "one_process")
  layout = f"--config.train.o_major_kernels={str(o_major_kernels).lower()}"
  commands = [_train_command(multi, tmp_path / "data_two", f"--coordinator_address={address}", "--num_processes=2",
                             f"--process_id={i}", layout) for i in range(2)]
  commands.append(_train_command(single, tmp_path / "data_one", layout))  # the reference, run alongside
  codes, tails = _run_all(commands, str(tmp_path))
  for i, (code, tail) in enumerate(zip(codes, tails)):
    assert code == 0, f"process {i} exited with {code}:\n{tail}"

  (res2, rows2, state2, best2), (res1, rows1, state1, best1) = _outputs(multi), _outputs(single)
  assert (res2["processes"], res2["devices"]) == (2, 2) and (res1["processes"], res1["devices"]) == (1, 1)
  # Each process saved its own data-iterator position next to the shared state.
  data_iter = os.path.join(_latest(os.path.join(multi, "checkpoints")), "data_iter")
  assert sorted(f for f in os.listdir(data_iter) if f.startswith("process_")) == ["process_0-of-2.json",
                                                                                 "process_1-of-2.json"]

  steps1 = [r for r in rows1 if "step" in r]
  steps2 = [r for r in rows2 if "step" in r]
  assert [r["step"] for r in steps2] == [r["step"] for r in steps1] == [1, 2, 3, 4]
  assert any(r["boda"] > 0 for r in steps1)  # the refreshed BoDA statistics entered the loss
  for key in ("total", "ce", "coral", "boda", "accuracy"):
    np.testing.assert_allclose([r[key] for r in steps2], [r[key] for r in steps1], rtol=1e-5, atol=1e-6,
                               err_msg=key)
  assert [r["eval"] for r in rows2 if "eval" in r] == [r["eval"] for r in rows1 if "eval" in r]

  _assert_trees_close(state1, state2, "final state")
  _assert_trees_close(best1, best2, "selected model")
  assert res2["selected_step"] == res1["selected_step"]
  for split in ("val", "target"):
    assert res2[split]["n"] == res1[split]["n"] > 0  # every evaluation image scored once, by one process
    assert res2[split]["confusion"] == res1[split]["confusion"], split
    np.testing.assert_allclose(res2[split]["f1_macro"], res1[split]["f1_macro"], atol=1e-9)


def test_initialize_wants_all_or_none_of_the_process_arguments():
  with pytest.raises(ValueError, match="together"):
    multihost.initialize("localhost:1234", 2, None)
  with pytest.raises(ValueError, match="process_id=2"):
    multihost.initialize("localhost:1234", 2, 2)
