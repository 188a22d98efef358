"""Per-compilation XLA options: on a CPU the step's convolutions are XLA's own, not YNNPACK's."""

import jax
import jax.numpy as jnp
import pytest
from absl import logging

from tests.train.step_fixture import tiny_batch, tiny_config, tiny_counts
from wbcdg_jax import sharding, xla_options
from wbcdg_jax.bench import hlo_traffic
from wbcdg_jax.stage import build_stage


def test_options_by_platform(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  cpu = xla_options.compiler_options("cpu")
  kinds = cpu[xla_options.YNN_OPTION].split(",")
  assert "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION" not in kinds
  assert set(kinds) == {"LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "LIBRARY_FUSION_TYPE_REDUCE"}
  assert xla_options.compiler_options("gpu") is None and xla_options.compiler_options("tpu") is None
  assert xla_options.compiler_options("cpu", cpu_ynn_convolutions=True) is None
  # The user's own choice in XLA_FLAGS wins.
  monkeypatch.setenv("XLA_FLAGS", f"--{xla_options.YNN_OPTION}=-reduce")
  assert xla_options.compiler_options("cpu") is None


def test_option_this_xla_rejects_falls_back_to_defaults(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setattr(xla_options, "YNN_WITHOUT_CONVOLUTIONS", "LIBRARY_FUSION_TYPE_NOT_ONE")
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
  assert xla_options.compiler_options("cpu") is None
  assert len(warnings) == 1 and "LIBRARY_FUSION_TYPE_NOT_ONE" in warnings[0] and "not accepted" in warnings[0]


def _ynn_convolutions(hlo: str) -> int:
  """How many convolutions of an optimized HLO module XLA:CPU gave YNNPACK (inside its `ynn_fusion`s)."""
  computations, _ = hlo_traffic._computations(hlo)  # pylint: disable=protected-access
  called = {i.calls for body in computations.values() for i in body
            if i.op == "fusion" and i.name.startswith("ynn_fusion")}
  return sum(i.op == "convolution" for name in called for i in computations.get(name, []))


def _conv_weight_gradient(compiler_options):
  x = jax.ShapeDtypeStruct((4, 16, 16, 32), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  grad = jax.grad(lambda x, w: conv(x, w).sum(), argnums=(0, 1))
  return jax.jit(grad, compiler_options=compiler_options).lower(x, w).compile().as_text()


def test_option_keeps_convolutions_from_ynnpack(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  if not _ynn_convolutions(_conv_weight_gradient(None)):
    pytest.skip(f"jax {jax.__version__}'s XLA:CPU gives no convolution to YNNPACK: nothing to switch off")
  hlo = _conv_weight_gradient(xla_options.compiler_options("cpu"))
  assert _ynn_convolutions(hlo) == 0 and " convolution(" in hlo


def test_cpu_train_step_and_eval_compile_with_the_options(monkeypatch):
  # The step's own jits pass the options: no convolution of the compiled ERM step or eval forward is YNNPACK's
  # (19 of the step's are by XLA's default).
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  mesh = sharding.make_mesh()
  assert xla_options.platform_of(mesh) == "cpu"
  config = tiny_config("erm")
  stage = build_stage(config, mesh=mesh, counts=tiny_counts())
  batch = sharding.shard_batch(tiny_batch(config), mesh)
  step_hlo = stage.train_step.lower(stage.state, batch).compile().as_text()
  eval_hlo = stage.eval_fn.lower(stage.state.params, stage.state.batch_stats, batch["image"]).compile().as_text()
  assert " convolution(" in step_hlo and " convolution(" in eval_hlo
  assert _ynn_convolutions(step_hlo) == 0 and _ynn_convolutions(eval_hlo) == 0


def test_gpu_command_buffer_types(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert xla_options.compiler_options("gpu", gpu_command_buffers="xla") is None
  types = xla_options.compiler_options("gpu", gpu_command_buffers="all")[xla_options.COMMAND_BUFFER_OPTION]
  assert {"CONVOLUTION", "CUBLASLT", "FUSION"} <= set(types.split(","))  # this XLA accepted them (_accepted)
  assert xla_options.compiler_options("tpu", gpu_command_buffers="all") is None
  assert xla_options.YNN_OPTION in xla_options.compiler_options("cpu", gpu_command_buffers="all")
  with pytest.raises(ValueError, match=r"config.train.gpu_command_buffers='some'"):
    xla_options.compiler_options("gpu", gpu_command_buffers="some")
  monkeypatch.setenv("XLA_FLAGS", f"--{xla_options.COMMAND_BUFFER_OPTION}=FUSION")  # the user's own choice wins
  assert xla_options.compiler_options("gpu", gpu_command_buffers="all") is None
