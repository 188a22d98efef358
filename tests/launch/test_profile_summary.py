"""launch/profile_summary.py: a real jax.profiler trace of a jitted convolution, summarised by HLO op."""

import gzip
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from wbcdg_jax import xla_options
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
  single = profile_summary.summarize(trace.read_bytes(), by="instruction")
  assert single.busy_ns == pytest.approx(summary.busy_ns) and len(single.total_ns) >= len(summary.total_ns)


def test_events_group_by_hlo_op_without_the_numeric_suffix():
  Event = _Event  # pylint: disable=invalid-name
  group = profile_summary._group  # pylint: disable=protected-access
  assert group(Event("fusion.12")) == "fusion"
  assert group(Event("loop_add_fusion.3.1")) == "loop_add_fusion"
  assert group(Event("sm90_xmma_kernel", [("hlo_op", "convolution.7")])) == "convolution"
  assert group(Event("loop_add_fusion.3.1"), by_instruction=True) == "loop_add_fusion.3.1"


def test_parts_of_op_names():
  part = profile_summary.part_of
  assert part("jit(train_step)/jvp(model)/Classifier/encoder/layer1_0/conv1/conv_general_dilated") == "model forward"
  assert part("jit(train_step)/transpose(jvp(model))/Classifier/encoder/add") == "model backward"
  assert part("jit(train_step)/transpose(jvp(losses))/boda/dot_general") == "losses backward"
  assert part("jit(train_step)/augment/jit(augment_batch)/vmap()/gather") == "augment"
  assert part("pjit(step)/optimizer/mul") == "optimizer"
  assert part("jit(train_step)/mul") == profile_summary.UNSCOPED
  assert part("jit(train_step)/jvp()/add") == profile_summary.UNSCOPED
  assert part("reduce_sum") == profile_summary.UNSCOPED


_HLO = """HloModule jit_step

%fused_computation.7 (param_0: f32[4]) -> f32[4] {
  %param_0 = f32[4]{0} parameter(0)
  ROOT %add.1 = f32[4]{0} add(%param_0, %param_0), metadata={op_name="jit(step)/optimizer/add"}
}

ENTRY %main.3 (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0), metadata={op_name="x"}
  %loop_add_fusion.7 = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused_computation.7
  %copy.2 = f32[4]{0} copy(%loop_add_fusion.7)
  %copy.3 = f32[4]{0} copy(%x)
  %negate.1 = f32[4]{0} negate(%x), metadata={op_name="jit(step)/jvp(model)/neg"}
  %negate.2 = f32[4]{0} negate(%copy.3), metadata={op_name="jit(step)/transpose(jvp(model))/neg"}
  %convolution.9 = f32[4]{0} multiply(%negate.1, %negate.2)
  ROOT %cudnn-conv.1 = f32[4]{0} custom-call(%copy.2), custom_call_target="conv", metadata={op_name="jit(step)/jvp(model)/conv"}
}
"""


class _Event:
  def __init__(self, name, stats=(), duration_ns=1000):
    self.name, self.stats, self.duration_ns = name, stats, duration_ns


def test_op_names_fall_back_to_the_fused_root_and_know_kernel_names():
  names = profile_summary.op_names(_HLO)
  assert names["cudnn-conv.1"] == "jit(step)/jvp(model)/conv"
  # The fusion has no metadata of its own: its fused root's stands in, also under its kernel name.
  assert names["loop_add_fusion.7"] == names["loop_add_fusion_7"] == "jit(step)/optimizer/add"
  # No metadata: an operand's stands in, a backward one where there is one; a parameter's names no scope.
  assert names["copy.2"] == "jit(step)/optimizer/add"
  assert names["convolution.9"] == "jit(step)/transpose(jvp(model))/neg"
  assert names["copy.3"] == ""
  assert "add.1" not in names or names["add.1"] == "jit(step)/optimizer/add"
  # A kernel inside a command buffer is traced back by its own name; other kernels by their hlo_op.
  instruction = profile_summary._instruction  # pylint: disable=protected-access
  assert instruction(_Event("loop_add_fusion_7", [("hlo_op", "command_buffer_3")])) == "loop_add_fusion_7"
  assert instruction(_Event("sm90_xmma_fprop", [("hlo_op", "cudnn-conv.1")])) == "cudnn-conv.1"
  assert instruction(_Event("fusion.3")) == "fusion.3"


def test_convolution_activations_count_the_fused_relus():
  conv = ('  %cudnn-conv-bias-activation.{i} = (bf16[8,56,56,64]{{3,2,1,0}}, u8[0]{{0}}) custom-call(%a, %b, %c), '
          'custom_call_target="__cudnn$convBiasActivationForward", backend_config={{"operation_queue_id":"0",'
          '"cudnn_conv_backend_config":{{"activation_mode":"{mode}","conv_result_scale":1}}}}')
  hlo = "\n".join(conv.format(i=i, mode=mode) for i, mode in enumerate(["kRelu", "kNone", "kRelu"]))
  assert profile_summary.convolution_activations(hlo) == {"kRelu": 2, "kNone": 1}
  assert profile_summary.convolution_activations(_HLO) == {}  # no cuDNN backend config (e.g. a CPU HLO)


def test_parts_of_events_in_and_out_of_the_hlo(monkeypatch):
  """summarize(by='part') on made-up kernel events: a command buffer's kernels (a Triton one with its '_impl'
  suffix) are traced back to their fusion's scope; one the HLO does not hold, and one without metadata, are
  labelled so."""
  events = [_Event("loop_add_fusion_7", [("hlo_op", "command_buffer_3")], 3000),
            _Event("loop_add_fusion_7_impl", [("hlo_op", "command_buffer_3")], 1000),
            _Event("sm90_xmma_fprop", [("hlo_op", "cudnn-conv.1")], 4000),
            _Event("copy.3", [("hlo_op", "copy.3")], 500),
            _Event("other_kernel", [("hlo_op", "command_buffer_9")], 500)]

  class Line:
    name, events = "Stream #13(Compute)", None

  class Plane:
    name, lines = "/device:GPU:0", None

  line, plane = Line(), Plane()
  line.events, plane.lines = events, [line]

  class FakeProfile:
    planes = [plane]

  monkeypatch.setattr("jax.profiler.ProfileData.from_serialized_xspace", lambda data: FakeProfile())
  summary = profile_summary.summarize(b"trace", by="part", hlo_text=_HLO)
  assert summary.source == "device kernels"
  assert summary.total_ns == {"optimizer": 4000, "model forward": 4000,
                              f"{profile_summary.NO_METADATA} copy": 500,
                              f"{profile_summary.NOT_IN_HLO} other_kernel": 500}


def test_summary_by_part_of_a_traced_gradient_step(tmp_path):
  """A real trace of a step with named scopes: the model's forward and backward and the optimizer are told apart,
  and by part the time adds up to the same busy time as by op."""

  def loss(w, x):
    with jax.named_scope("model"):
      y = jnp.tanh(x @ w)
    with jax.named_scope("losses"):
      return jnp.mean(y ** 2)

  @jax.jit
  def step(w, x):
    g = jax.grad(loss)(w, x)
    with jax.named_scope("optimizer"):
      return w - 0.1 * jnp.sign(g) * jnp.sqrt(jnp.abs(g) + 1.0)

  w, x = jnp.ones((256, 256)) / 256, jnp.ones((512, 256))
  compiled = step.lower(w, x).compile()
  jax.block_until_ready(compiled(w, x))
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(3):
      w = jax.block_until_ready(compiled(w, x))
  data = next(tmp_path.rglob("*.xplane.pb")).read_bytes()
  by_part = profile_summary.summarize(data, by="part", hlo_text=compiled.as_text())
  by_op = profile_summary.summarize(data)
  assert by_part.busy_ns == pytest.approx(by_op.busy_ns)
  assert {"model forward", "model backward", "optimizer"} <= set(by_part.total_ns), by_part.table()
  assert by_part.table().splitlines()[1].startswith("| part |")
  with pytest.raises(ValueError, match="needs the traced step's optimized HLO"):
    profile_summary.summarize(data, by="part")
  with pytest.raises(ValueError, match="grouping 'kernel' is not one of"):
    profile_summary.summarize(data, by="kernel")


class _Timed:
  """A made-up host event: name, start and duration (ns), flow statistics."""

  def __init__(self, name, start_ns, duration_ns=0, **stats):
    self.name, self.start_ns, self.duration_ns, self.stats = name, start_ns, duration_ns, list(stats.items())


def _pool_tasks(*spans):
  return [e for a, b in spans for e in (_Timed("ThreadpoolListener::StartRegion", a),
                                        _Timed("ThreadpoolListener::StopRegion", b))]


def test_intervals_minus_cuts_out_every_covered_stretch():
  minus = profile_summary._intervals_minus  # pylint: disable=protected-access
  assert minus([(0, 10), (20, 30)], [(2, 4), (3, 5), (8, 22), (29, 40)]) == [(0, 2), (5, 8), (22, 29)]
  assert minus([(0, 10)], []) == [(0, 10)] and minus([(0, 10)], [(-5, 15)]) == []
  assert minus([(0, 10), (12, 14)], [(10, 12)]) == [(0, 10), (12, 14)]


def test_cpu_async_work_is_the_pool_time_outside_events_while_in_flight():
  """Two pool threads busy 0-10 ms: an asynchronous convolution in flight 0-10 ms, a matrix product 6-10 ms, a
  synchronous fusion on thread A 2-4 ms; then both threads work untraced 12-13 ms with nothing in flight."""
  ms = 1_000_000
  conv = _Timed("convolution.1", 0, ms // 10, _p=1)  # its hand-over, on thread A
  dot = _Timed("dot.2", 6 * ms, 0, _p=2)
  fusion = _Timed("add_fusion", 2 * ms, 2 * ms, _p=3)
  thread_a = _pool_tasks((0, 10 * ms), (12 * ms, 13 * ms)) + [
      conv, fusion, _Timed("end: add_fusion", 4 * ms, 10, _c=3), _Timed("end: convolution.1", 10 * ms, 10, _c=1)]
  thread_b = _pool_tasks((0, 10 * ms), (12 * ms, 13 * ms)) + [dot, _Timed("end: dot.2", 10 * ms, 10, _c=2)]
  client = [_Timed("ThunkExecutor::Execute (wait for completion)", 0, 13 * ms)]
  work, unattributed = profile_summary.cpu_async_work(
      [("tf_XLAEigen/1", thread_a), ("tf_XLAEigen/2", thread_b), ("tf_XLAPjRtCpuClient/3", client)])
  # 0-6 ms: the convolution alone (2 threads x 6 ms, less the hand-over and the fusion); 6-10 ms: shared.
  assert work[id(conv)] == pytest.approx((12 - 0.1 - 2) * ms + 8 * ms / 2)
  assert work[id(dot)] == pytest.approx(8 * ms / 2)
  assert id(fusion) not in work  # synchronous: its event covers it
  assert unattributed == pytest.approx(2 * ms)


def test_cpu_summary_counts_an_asynchronous_convolution(tmp_path):
  """XLA:CPU may run a convolution asynchronously (Eigen on its pool), its event covering only the hand-over
  (0.4 of 24 ms here): the summary still gives it most of the traced calls' time, whichever way it ran."""
  cpu = jax.devices("cpu")[0]  # XLA:CPU's behaviour, wherever the test runs
  x, w = jax.device_put(jnp.ones((32, 32, 32, 64)), cpu), jax.device_put(jnp.ones((3, 3, 64, 64)), cpu)
  f = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) * 2.0,
              compiler_options=xla_options.compiler_options("cpu"))
  jax.block_until_ready(f(x, w))
  with jax.profiler.trace(str(tmp_path)):
    t0 = time.perf_counter()
    for _ in range(3):
      jax.block_until_ready(f(x, w))
    wall_ns = (time.perf_counter() - t0) * 1e9
  summary = profile_summary.summarize(next(tmp_path.rglob("*.xplane.pb")).read_bytes())
  busiest, ns = summary.total_ns.most_common(1)[0]
  assert "conv" in busiest or "ynn" in busiest, summary.table()
  assert ns > 0.5 * wall_ns, (summary.table(), wall_ns / 1e6)
  assert summary.busy_ns == pytest.approx(sum(summary.total_ns.values()))


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
  proc = subprocess.run([sys.executable, launcher, f"--trace={trace}", "--by=part"], env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode != 0 and "--by=part needs --hlo" in proc.stderr
  hlo = tmp_path / "step.hlo.txt.gz"
  hlo.write_bytes(gzip.compress(_HLO.encode()))
  proc = subprocess.run([sys.executable, launcher, f"--trace={trace}", "--by=part", f"--hlo={hlo}"], env=env,
                        capture_output=True, text=True, timeout=120)
  # The trace is of another function than this HLO: its ops are listed as not in the HLO, by op kind.
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "| part | ms | share | events |" in proc.stdout and "(not in the HLO)" in proc.stdout
