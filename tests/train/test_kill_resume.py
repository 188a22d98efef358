"""Preemption: a training run SIGKILLed at an arbitrary step, and again in the middle of a checkpoint write, then
restarted with the same command, ends bit-identical to an uninterrupted run (parameters, optimizer and BoDA
state, log and metrics). Real subprocesses, real kills."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.child_env import cpu_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 16
SAVE_KILL_STEP = 12  # killed inside this step's checkpoint write
TIMEOUT = 300


def _command(data_dir: str, workdir: str) -> list[str]:
  return [os.path.join(ROOT, "launch", "train.py"), "--config=" + os.path.join(ROOT, "configs", "boda.py") + ":tiny",
          f"--config.data.data_dir={data_dir}", f"--config.train.steps={STEPS}", "--config.train.checkpoint_every=4",
          "--config.train.eval_every=4", "--config.train.log_every=1", "--config.boda.start_step=4",
          "--config.boda.feat_update_freq=3", f"--workdir={workdir}"]


def _env() -> dict:
  return cpu_env()  # one CPU device in every run


def _run(args: list[str]) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable] + args, env=_env(), cwd=ROOT, capture_output=True, text=True,
                        timeout=TIMEOUT)


def _logged_steps(workdir: str) -> list[int]:
  path = os.path.join(workdir, "log.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l)["step"] for l in f if l.endswith("\n") and '"step"' in l and '"eval"' not in l]


def _kill_when_logged(args: list[str], workdir: str, min_step: int) -> int:
  """Starts a run and SIGKILLs it from outside as soon as its log shows step `min_step`; returns the last step
  logged before the kill."""
  proc = subprocess.Popen([sys.executable] + args, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + TIMEOUT
  try:
    while time.monotonic() < deadline and proc.poll() is None:
      steps = _logged_steps(workdir)
      if steps and steps[-1] >= min_step:
        proc.send_signal(signal.SIGKILL)
        break
      time.sleep(0.005)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == -signal.SIGKILL, f"run was not killed (rc {proc.returncode}): {proc.stderr.read()[-3000:]}"
  return _logged_steps(workdir)[-1]


def _final_state(workdir: str) -> dict:
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  try:
    assert mngr.latest_step() == STEPS
    return mngr.restore(STEPS, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  finally:
    mngr.close()


def _metrics(workdir: str) -> dict:
  with open(os.path.join(workdir, "metrics.json")) as f:
    m = json.load(f)
  m.pop("train_seconds")
  return m


def _log_rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "log.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  for r in rows:
    r.pop("images_per_s", None)
  return rows


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def test_killed_and_resumed_run_equals_uninterrupted_run(data_dir, tmp_path):
  reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
  out = _run(_command(data_dir, reference))  # also builds the tiny synthetic data
  assert out.returncode == 0, out.stderr[-3000:]

  # 1. Killed from outside at whatever step it has reached once step 5 is logged (a checkpoint exists at 4).
  killed_at = _kill_when_logged(_command(data_dir, resumed), resumed, min_step=5)
  assert 5 <= killed_at < SAVE_KILL_STEP, f"kill landed at step {killed_at}, outside the window this test needs"
  assert not os.path.exists(os.path.join(resumed, "metrics.json"))

  # 2. Restarted, then killed inside the checkpoint write of step 12: that checkpoint is never committed.
  out = _run([os.path.join(ROOT, "tests", "train", "kill_in_save_script.py"), str(SAVE_KILL_STEP)]
             + _command(data_dir, resumed)[1:])
  assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
  names = os.listdir(os.path.join(resumed, "checkpoints"))
  assert str(SAVE_KILL_STEP) not in names, names  # not committed...
  assert any(n.startswith(f"{SAVE_KILL_STEP}.") for n in names), names  # ...though partly written
  assert "8" in names  # the previous checkpoint is intact

  # 3. Restarted with the same command: resumes from step 8 and finishes.
  out = _run(_command(data_dir, resumed))
  assert out.returncode == 0, out.stderr[-3000:]

  a, b = _final_state(reference), _final_state(resumed)
  leaves_a, leaves_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
  assert _metrics(resumed) == _metrics(reference)
  assert _log_rows(resumed) == _log_rows(reference)  # one row per step, no duplicates from the killed runs
