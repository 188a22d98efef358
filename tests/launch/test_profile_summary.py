"""launch/profile_summary.py: a real jax.profiler trace of a jitted convolution, summarised by HLO op."""

import gzip
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from wbcdg_jax.bench import profile_summary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
  out = tmp_path_factory.mktemp("profile")

  @jax.jit
  def f(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.tanh(y).sum()

  x, w = jnp.ones((4, 64, 64, 16)), jnp.ones((3, 3, 16, 32))
  jax.block_until_ready(f(x, w))
  with jax.profiler.trace(str(out)):
    for _ in range(3):
      jax.block_until_ready(f(x, w))
  return next(out.rglob("*.xplane.pb"))


def test_summary_groups_ops_and_shares(trace):
  summary = profile_summary.summarize(trace.read_bytes())
  assert summary.source == "CPU XLA ops"
  # XLA's op names differ between versions (the CPU backend fuses this convolution into one library call); every
  # group is an op, none is the runtime's own bookkeeping, and the busiest ran in each of the 3 traced calls.
  assert summary.total_ns and not any(name.startswith(("ThunkExecutor", "end: ")) for name in summary.total_ns)
  busiest, _ = summary.total_ns.most_common(1)[0]
  assert summary.count[busiest] >= 3
  assert summary.busy_ns == pytest.approx(sum(summary.total_ns.values())) and summary.busy_ns > 0
  table = summary.table(top=3)
  assert table.splitlines()[0].startswith("CPU XLA ops:") and len(table.splitlines()) <= 3 + 3
  # gzipped traces (as the device script brings them back) read the same.
  again = profile_summary.summarize(gzip.compress(trace.read_bytes()))
  assert again.total_ns == summary.total_ns
  # One row per instruction: the same time, split at least as finely.
  single = profile_summary.summarize(trace.read_bytes(), by_instruction=True)
  assert single.busy_ns == pytest.approx(summary.busy_ns) and len(single.total_ns) >= len(summary.total_ns)


def test_events_group_by_hlo_op_without_the_numeric_suffix():
  class Event:
    def __init__(self, name, stats=()):
      self.name, self.stats = name, stats

  group = profile_summary._group  # pylint: disable=protected-access
  assert group(Event("fusion.12")) == "fusion"
  assert group(Event("loop_add_fusion.3.1")) == "loop_add_fusion"
  assert group(Event("sm90_xmma_kernel", [("hlo_op", "convolution.7")])) == "convolution"
  assert group(Event("loop_add_fusion.3.1"), by_instruction=True) == "loop_add_fusion.3.1"


def test_launcher_prints_the_table_and_names_a_bad_file(trace, tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  launcher = os.path.join(ROOT, "launch", "profile_summary.py")
  proc = subprocess.run([sys.executable, launcher, f"--trace={trace}", "--top=2"], env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "| op | ms | share | events |" in proc.stdout
  bad = tmp_path / "not_a_trace.xplane.pb"
  bad.write_bytes(b"")
  proc = subprocess.run([sys.executable, launcher, f"--trace={bad}"], env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode != 0 and str(bad) in proc.stderr
