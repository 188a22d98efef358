"""The kernels-and-traffic reading of an optimized HLO (wbcdg_jax/bench/hlo_traffic.py) and launch/step_hlo.py."""

import json
import os
import subprocess
import sys

import pytest

from wbcdg_jax.bench import hlo_traffic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A hand-written module in the format of XLA:GPU's optimized HLO: a fusion that reads a slice of its input, one
# that concatenates two inputs and keeps a slice of the result (as optax.flatten's update), a copy, a cuDNN
# convolution (a tuple result) and instructions that launch no kernel.
_HLO = """HloModule jit_step, entry_computation_layout={(f32[8]{0}, f32[4,4]{1,0})->f32[4]{0}}

%fused_slice (param_0.1: f32[8]) -> f32[4] {
  %param_0.1 = f32[8]{0} parameter(0)
  %slice.3 = f32[4]{0} slice(%param_0.1), slice={[2:6]}
  ROOT %add.2 = f32[4]{0} add(%slice.3, %slice.3), metadata={op_name="jit(step)/optimizer/add"}
}

%fused_split (param_0.2: f32[4], param_1.2: f32[6]) -> f32[6] {
  %param_0.2 = f32[4]{0} parameter(0)
  %param_1.2 = f32[6]{0} parameter(1)
  %convert.1 = f32[6]{0} convert(%param_1.2)
  %concatenate.1 = f32[10]{0} concatenate(%param_0.2, %convert.1), dimensions={0}
  %multiply.1 = f32[10]{0} multiply(%concatenate.1, %concatenate.1)
  ROOT %slice.4 = f32[6]{0} slice(%multiply.1), slice={[4:10]}, metadata={op_name="jit(step)/keep_or_drop/sl"}
}

ENTRY %main (p0: f32[8], p1: f32[4,4]) -> f32[4] {
  %p0 = f32[8]{0} parameter(0)
  %p1 = f32[4,4]{1,0} parameter(1)
  %loop_add_fusion = f32[4]{0} fusion(%p0), kind=kLoop, calls=%fused_slice
  %copy.1 = f32[4,4]{1,0} copy(%p1)
  %bitcast.1 = f32[16]{0} bitcast(%copy.1)
  %a = f32[4]{0} slice(%p0), slice={[0:4]}, metadata={op_name="jit(step)/augment/slice"}
  %b = f32[6]{0} slice(%p0), slice={[2:8]}, metadata={op_name="jit(step)/augment/slice"}
  %loop_slice_fusion = f32[6]{0} fusion(%a, %b), kind=kLoop, calls=%fused_split
  %cudnn-conv-bias-activation.7 = (bf16[2,4,4,8]{3,2,1,0}, u8[0]{0}) custom-call(%p1, %p1, /*index=2*/%p0), \
custom_call_target="__cudnn$convBiasActivationForward", metadata={op_name="jit(step)/jvp(model)/conv"}, \
backend_config={"cudnn_conv_backend_config":{"activation_mode":"kRelu","conv_result_scale":1}}
  ROOT %t = (f32[4]{0}, f32[16]{0}) tuple(%loop_add_fusion, %bitcast.1)
}
""".replace("\\\n", "")


def test_kernels_count_what_each_one_reads_and_writes():
  found = {k.name: k for k in hlo_traffic.kernels(_HLO)}
  assert sorted(found) == ["a", "b", "copy.1", "cudnn-conv-bias-activation.7", "loop_add_fusion",
                           "loop_slice_fusion"]  # parameters, the bitcast and the tuple launch nothing
  # Writes 4 floats, reads the 4 of p0 under its slice (not all 8).
  assert found["loop_add_fusion"].bytes == 16 + 16
  assert found["loop_add_fusion"].part == "optimizer"  # the fused root's op_name stands in for the fusion's
  # Reads only the 6 concatenated elements that the slice keeps, all from its second input.
  assert found["loop_slice_fusion"].bytes == 24 + 0 + 24
  assert found["loop_slice_fusion"].part == "keep_or_drop"
  assert found["copy.1"].bytes == 64 + 64
  # A tuple result (the comment inside the operand list is ignored) and whole operands.
  assert found["cudnn-conv-bias-activation.7"].bytes == 2 * 4 * 4 * 8 * 2 + 64 + 64 + 32
  assert found["cudnn-conv-bias-activation.7"].part == "model forward"
  assert found["a"].part == "augment" and found["a"].bytes == 16 + 32


def test_summary_by_part_copies_and_fused_activations():
  summary = hlo_traffic.summarize(_HLO)
  assert summary["kernels"] == 6
  assert summary["bytes"] == sum(k.bytes for k in hlo_traffic.kernels(_HLO))
  assert summary["copies"] == 1 and summary["copy_bytes"] == 128
  assert summary["convolution_activations"] == {"kRelu": 1}
  assert list(summary["by_part"])[0] == "model forward"  # most bytes first
  assert summary["by_part"]["augment"] == {"bytes": 48 + 56, "kernels": 2}  # unfused slices: whole operands
  assert hlo_traffic.type_bytes("(bf16[2,3]{1,0}, pred[4]{0}, u8[0]{0})") == 12 + 4
  with pytest.raises(ValueError, match="no ENTRY computation"):
    hlo_traffic.summarize("HloModule m\n")


def test_step_hlo_launcher_on_this_machine(tmp_path):
  """launch/step_hlo.py end to end for the local CPU (the H100 target needs JAX's CUDA plugin): the default step
  and a variant, their traffic by part, and the HLO written."""
  out = tmp_path / "hlo.json"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "step_hlo.py"), "--target=local",
                         "--preset=smoke", "--algorithm=erm", "--batch=4", "--variants=,max_pool=taps",
                         f"--hlo_dir={tmp_path}", f"--json={out}", "--top=3"],
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=600,
                        cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| default | " in proc.stdout and "| max_pool=taps | " in proc.stdout
  assert "default: the 3 kernels that move the most" in proc.stdout
  assert (tmp_path / "erm_4_max_pool=taps.hlo.txt").read_text().startswith("HloModule")
  summaries = json.loads(out.read_text())["summaries"]
  assert set(summaries) == {"default", "max_pool=taps"}
  parts = summaries["default"]["by_part"]
  assert {"model forward", "model backward", "augment"} <= set(parts)
  assert all(p["bytes"] >= 0 for p in parts.values()) and summaries["default"]["bytes"] > 0


def test_step_hlo_names_a_bad_variant():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "step_hlo.py"), "--target=local",
                         "--preset=smoke", "--variants=max_pol=index"], env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert proc.returncode != 0 and "model.max_pol is not a scalar field" in proc.stderr
