"""The composed train step: every algorithm runs, stage 2 freezes the encoder, sharding changes nothing."""

import functools
import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.child_env import cpu_env
from tests.train.close_trees import assert_adam_trees_close
from tests.train.step_fixture import run_steps, tiny_batch, tiny_config, tiny_counts
from wbcdg_jax import sharding
from wbcdg_jax.stage import build_stage

ALGORITHM_CONFIGS = {
    "erm": set(),
    "coral": {"coral"},
    "mmd": {"mmd"},
    "dann": {"dann", "dann_lambda"},
    "cdann": {"dann", "dann_lambda"},
    "boda": {"coral", "boda"},
    "boda_mahalanobis": {"coral", "boda"},
    "boda_decoupled": {"coral", "boda"},
}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("module", sorted(ALGORITHM_CONFIGS))
def test_every_config_runs_two_steps(module):
  stage, state, history = run_steps(module, num_steps=2)
  expected = {"ce", "total", "accuracy", "grad_norm", "finite"} | ALGORITHM_CONFIGS[module]
  assert set(history[0]) == expected
  for m in history:
    assert all(np.isfinite(v) for v in m.values()) and m["finite"] == 1.0
  assert int(state.step) == 2 and int(state.skipped) == 0
  if "boda" in expected:
    assert history[0]["boda"] > 0  # active from step 0 with the seeded centroids
  weights = {"coral": stage.spec.coral_weight, "mmd": stage.spec.mmd_weight, "boda": stage.spec.boda_weight,
             "dann": stage.spec.dann_weight}
  total = history[0]["ce"] + sum(w * history[0].get(k, 0.0) for k, w in weights.items())
  np.testing.assert_allclose(history[0]["total"], total, rtol=1e-5)


def test_params_change_and_steps_are_deterministic():
  _, state_a, hist_a = run_steps("boda", num_steps=2)
  _, state_b, hist_b = run_steps("boda", num_steps=2)
  assert hist_a[1]["total"] == hist_b[1]["total"]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state_a.params), jax.device_get(state_b.params))
  config = tiny_config("boda")
  fresh = build_stage(config, mesh=sharding.make_mesh(), counts=tiny_counts()).state
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state_a.params, fresh.params)
  assert max(jax.tree.leaves(moved)) > 0


def test_decoupled_stage2_trains_only_a_fresh_head():
  config = tiny_config("boda_decoupled")
  mesh = sharding.make_mesh()
  counts = tiny_counts()
  stage1 = build_stage(config, mesh=mesh, counts=counts)
  variables = jax.device_get({"params": stage1.state.params, "batch_stats": stage1.state.batch_stats})
  stage2 = build_stage(config, mesh=mesh, counts=counts, stage=2, variables=variables)
  assert stage2.spec.head_only and not stage2.spec.boda_weight and not stage2.spec.coral_weight
  state = stage2.state
  for step in range(2):
    state, metrics = stage2.train_step(state, sharding.shard_batch(tiny_batch(config, step), mesh))
    assert set(jax.device_get(metrics)) == {"ce", "total", "accuracy", "grad_norm", "finite"}
  after = jax.device_get(state.params)
  jax.tree.map(np.testing.assert_array_equal, after["encoder"], variables["params"]["encoder"])
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), after["head"], variables["params"]["head"])
  assert all(jax.tree.leaves(changed))


def test_nonfinite_update_is_dropped_and_counted():
  config = tiny_config("erm")
  mesh = sharding.make_mesh()
  stage = build_stage(config, mesh=mesh, counts=tiny_counts())
  params = jax.device_get(stage.state.params)
  params["head"]["out"]["bias"] = np.full_like(params["head"]["out"]["bias"], np.nan)
  state = stage.state.replace(params=sharding.replicate(params, mesh))
  before = jax.device_get(state.params)
  state, metrics = stage.train_step(state, sharding.shard_batch(tiny_batch(config), mesh))
  assert float(metrics["finite"]) == 0.0
  assert int(state.skipped) == 1 and int(state.first_bad_step) == 0 and int(state.step) == 1
  after = jax.device_get(state.params)
  np.testing.assert_array_equal(after["encoder"]["conv1"]["kernel"], before["encoder"]["conv1"]["kernel"])


@functools.cache
def _run_sharded(module: str, devices: int, o_major: bool = False) -> dict:
  env = cpu_env(devices, PYTHONPATH=ROOT)
  with tempfile.TemporaryDirectory() as tmp:
    params_file = os.path.join(tmp, "params.npz")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "train", "sharded_step_script.py"), module,
                          params_file] + (["o_major"] if o_major else []), env=env, capture_output=True, text=True,
                         timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    with np.load(params_file) as f:
      result["params"] = [f[k] for k in f.files]
  return result


# 2 devices with BoDA once deadlocked on XLA:CPU (collectives inside a lax.cond branch); the timeout catches that.
# o_major: the 4-device run keeps its kernels output-channel-major (train.o_major_kernels), a device layout that
# must change no value; the 1-device reference keeps the default layout.
@pytest.mark.parametrize("module, devices, o_major", [("boda", 2, False), ("boda", 4, False), ("dann", 4, True)],
                         ids=["boda-2", "boda-4", "dann-4-o_major"])
def test_sharded_step_matches_1_device(module, devices, o_major):
  one, four = _run_sharded(module, 1), _run_sharded(module, devices, o_major)
  assert one["devices"] == 1 and four["devices"] == devices
  assert four["kernels"] > 0 and one["o_major_kernels"] == 0
  assert four["o_major_kernels"] == (four["kernels"] if o_major else 0)
  np.testing.assert_allclose(four["losses"], one["losses"], rtol=2e-5)
  for a, b in zip(one["parts"], four["parts"]):
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)
  # Parameter by parameter (the signed sum cancels, which made it a poor checksum): the runs differ only in the
  # order of float32 sums, and the tiny preset's Adam moves each parameter by up to lr = 1e-3 per step. With the
  # frozen batch norm folded into the convolutions, BoDA on 4 devices moved up to 0.03% of a deep kernel's
  # elements (those with gradients near zero) by about one step differently, while losses and gradient norms
  # agreed to 1e-7; a wrong all-reduce moves most elements differently and changes the second loss.
  assert_adam_trees_close(one["params"], four["params"], f"{module} on {devices} devices", atol=2e-5, steps=2,
                          lr=1e-3, stray_fraction=1e-3)
  np.testing.assert_allclose(four["param_abs_sum"], one["param_abs_sum"], rtol=1e-5)


def test_gradient_whose_square_overflows_is_dropped():
  # Hidden activations of 1e20 give the output layer finite gradients of about 1e20, whose squares overflow
  # float32: Adam's second moment would become inf and freeze those weights for good (their steps become 0, so
  # the parameters stay finite). The guard checks the gradient norm, which overflows with the squares.
  config = tiny_config("erm")
  mesh = sharding.make_mesh()
  stage = build_stage(config, mesh=mesh, counts=tiny_counts())
  params = jax.device_get(stage.state.params)
  params["head"]["hidden"]["bias"] = np.full_like(params["head"]["hidden"]["bias"], 1e20)
  state = stage.state.replace(params=sharding.replicate(params, mesh))
  state, metrics = stage.train_step(state, sharding.shard_batch(tiny_batch(config), mesh))
  grad_is_finite = np.isfinite(float(metrics["total"]))
  assert grad_is_finite and not np.isfinite(float(metrics["grad_norm"]))
  assert float(metrics["finite"]) == 0.0 and int(state.skipped) == 1
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.opt_state)))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), params)


def test_update_that_overflows_the_parameters_is_dropped():
  # A finite loss and gradient, but a learning rate so large that Adam's step (about lr per weight) overflows
  # float32: the guard checks the parameters it would keep, not only the loss and gradient.
  config = tiny_config("erm")
  config.optim.lr = 1e39
  config.train.check_updated_params = True
  mesh = sharding.make_mesh()
  stage = build_stage(config, mesh=mesh, counts=tiny_counts())
  before = jax.device_get(stage.state.params)
  state, metrics = stage.train_step(stage.state, sharding.shard_batch(tiny_batch(config), mesh))
  assert np.isfinite(float(metrics["total"])) and float(metrics["finite"]) == 0.0
  assert int(state.skipped) == 1 and int(state.first_bad_step) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), before)


def _stage_with(module: str, mesh, settings: dict):
  """tiny_config(module) with settings ({'train.donate_state': False, ...}) applied, and its built stage."""
  config = tiny_config(module)
  for path, value in settings.items():
    section, field = path.split(".")
    config[section][field] = value
  return config, build_stage(config, mesh=mesh, counts=tiny_counts())


@pytest.mark.parametrize("module", ["erm", "dann"])
def test_unchecked_parameters_give_the_same_step(module):
  # train.check_updated_params=False only drops the check of the new parameters: a normal step writes the same
  # state bit for bit (discriminator included).
  mesh = sharding.make_mesh()
  results = {}
  for check in (True, False):
    config, stage = _stage_with(module, mesh, {"train.check_updated_params": check})
    state, metrics = stage.train_step(stage.state, sharding.shard_batch(tiny_batch(config), mesh))
    results[check] = (jax.device_get(state), float(metrics["finite"]))
  (checked, finite_checked), (unchecked, finite_unchecked) = results[True], results[False]
  assert finite_checked == finite_unchecked == 1.0
  for name in ("params", "opt_state", "disc_params", "disc_opt_state"):
    jax.tree.map(np.testing.assert_array_equal, getattr(unchecked, name), getattr(checked, name))


def test_unchecked_parameter_overflow_is_caught_by_the_next_loss():
  # Without the check an update that overflows the parameters is applied; the next step's loss is non-finite,
  # so that step is dropped and counted.
  mesh = sharding.make_mesh()
  config = tiny_config("erm")
  config.optim.lr = 1e39  # inf in float32: every Adam step is inf or nan
  config.train.check_updated_params = False
  stage = build_stage(config, mesh=mesh, counts=tiny_counts())
  batch = sharding.shard_batch(tiny_batch(config), mesh)
  state, metrics = stage.train_step(stage.state, batch)
  assert float(metrics["finite"]) == 1.0 and int(state.skipped) == 0
  assert not all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))
  state, metrics = stage.train_step(state, batch)
  assert not np.isfinite(float(metrics["total"])) and float(metrics["finite"]) == 0.0
  assert int(state.skipped) == 1 and int(state.first_bad_step) == 1


def test_donated_and_kept_state_give_the_same_step():
  # train.donate_state only decides whether the step updates the state in place (deleting the caller's copy) or
  # writes a new one: the new state is the same bit for bit.
  mesh = sharding.make_mesh()
  results = {}
  for donate in (True, False):
    config, stage = _stage_with("dann", mesh, {"train.donate_state": donate})
    old = stage.state
    state, metrics = stage.train_step(old, sharding.shard_batch(tiny_batch(config), mesh))
    assert float(metrics["finite"]) == 1.0
    deleted = [leaf.is_deleted() for leaf in jax.tree.leaves((old.params, old.opt_state))]
    assert all(deleted) if donate else not any(deleted)
    results[donate] = jax.device_get(state)
  for name in ("params", "opt_state", "disc_params", "disc_opt_state"):
    jax.tree.map(np.testing.assert_array_equal, getattr(results[False], name), getattr(results[True], name))


@pytest.mark.parametrize("module", ["dann", "boda_decoupled"])
def test_flattened_optimizer_gives_the_same_steps(module):
  # optim.flatten runs the same Adam arithmetic on one vector of the parameters: the parameters after two steps
  # agree (to rounding; XLA may fuse the vector and per-array forms differently), clipping and decay included,
  # and in stage 2 the frozen encoder stays frozen.
  mesh = sharding.make_mesh()
  results = {}
  for flatten in (False, True):
    config, stage = _stage_with(module, mesh, {"optim.flatten": flatten, "optim.name": "adamw",
                                               "optim.weight_decay": 1e-2, "optim.grad_clip": 0.5})
    if module == "boda_decoupled":
      variables = jax.device_get({"params": stage.state.params, "batch_stats": stage.state.batch_stats})
      stage = build_stage(config, mesh=mesh, counts=tiny_counts(), stage=2, variables=variables)
    state = stage.state
    for step in range(2):
      state, metrics = stage.train_step(state, sharding.shard_batch(tiny_batch(config, step), mesh))
      assert float(metrics["finite"]) == 1.0
    results[flatten] = jax.device_get(state)
  mu_leaves = [x for x in jax.tree.leaves(results[True].opt_state) if np.ndim(x) == 1 and np.size(x) > 1]
  n_trainable = sum(np.size(x) for x in jax.tree.leaves(
      results[False].params["head"] if module == "boda_decoupled" else results[False].params))
  assert any(np.size(x) == n_trainable for x in mu_leaves)  # the moments are one vector
  # Adam turns rounding noise in a gradient near zero into up to a whole step of difference: a stray few may.
  assert_adam_trees_close(results[False].params, results[True].params, "flattened optimizer", atol=1e-6,
                          steps=2, lr=float(config.optim.lr if module == "dann" else config.decoupled.lr))
  if module == "boda_decoupled":
    jax.tree.map(np.testing.assert_array_equal, results[True].params["encoder"], variables["params"]["encoder"])


def test_global_norm_is_optax_global_norm():
  import optax  # pylint: disable=import-outside-toplevel

  from wbcdg_jax.train_step import global_norm  # pylint: disable=import-outside-toplevel

  keys = jax.random.split(jax.random.key(0), 6)
  tree = {"conv": [jax.random.normal(keys[0], (3, 3, 4, 8)), jax.random.normal(keys[1], (3, 3, 4, 8))],
          "bias": [jax.random.normal(keys[2], (8,)), jax.random.normal(keys[3], (5,))],
          "half": jax.random.normal(keys[4], (3, 3, 4, 8), jnp.bfloat16),  # same shape, other dtype
          "scalar": jnp.float32(-2.5), "empty": jnp.zeros((0, 4))}
  exact = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))
  np.testing.assert_allclose(jax.jit(global_norm)(tree), exact, rtol=1e-6)  # squares in float32, even bf16 ones
  np.testing.assert_allclose(global_norm(tree), optax.global_norm(tree), rtol=1e-3)  # optax squares bf16 in bf16
  tree.pop("half")
  np.testing.assert_allclose(global_norm(tree), optax.global_norm(tree), rtol=1e-6)
  assert global_norm({}) == 0.0 and global_norm({}).dtype == jnp.float32
  assert not np.isfinite(global_norm({"a": jnp.array([1.0, jnp.inf]), "b": jnp.ones(2)}))
  big = {"a": jnp.full((2,), 3e38, jnp.float32)}  # its square overflows: not finite, as optax's
  assert not np.isfinite(global_norm(big)) and not np.isfinite(optax.global_norm(big))


def _layouts(tree) -> dict:
  """The device layout (major-to-minor order) of every array of `tree`, by path."""
  return {jax.tree_util.keystr(path): leaf.format.layout.major_to_minor
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_o_major_kernels_keep_their_layout_and_give_the_same_steps():
  # train.o_major_kernels stores the convolution kernels and their Adam moments output-channel-major in device
  # memory (only the layout: shapes and values are those of the default), and the step keeps them so.
  mesh = sharding.make_mesh()
  results = {}
  for o_major in (False, True):
    config, stage = _stage_with("dann", mesh, {"train.o_major_kernels": str(o_major).lower()})
    layouts = _layouts((stage.state.params, stage.state.opt_state, stage.state.disc_params))
    o_major_paths = {p for p, order in layouts.items() if order == (3, 0, 1, 2)}
    if o_major:
      assert o_major_paths and all(p.endswith("['kernel']") for p in o_major_paths)
      assert any("mu" in p for p in o_major_paths) and any("nu" in p for p in o_major_paths)
      # Every 4-D kernel, and nothing else (the head's and the discriminator's dense kernels stay row-major).
      assert o_major_paths == {jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(
          (stage.state.params, stage.state.opt_state, stage.state.disc_params))
          if np.ndim(x) == 4}
    else:
      assert not o_major_paths
    state = stage.state
    for step in range(2):
      state, metrics = stage.train_step(state, sharding.shard_batch(tiny_batch(config, step), mesh))
      assert float(metrics["finite"]) == 1.0
    assert _layouts((state.params, state.opt_state, state.disc_params)) == layouts
    results[o_major] = (config, stage, jax.device_get(state))
  (_, _, default), (config, stage, o_major) = results[False], results[True]
  assert_adam_trees_close(default.params, o_major.params, "o-major kernels", atol=1e-6, steps=2,
                          lr=float(config.optim.lr))
  # The step refuses a state placed in the default layout (committed), and takes it through stage.state_sharding.
  host = jax.device_get(stage.state)
  batch = sharding.shard_batch(tiny_batch(config, 0), mesh)
  with pytest.raises(ValueError, match="layout"):
    stage.train_step(sharding.replicate(host, mesh), batch)
  state, _ = stage.train_step(jax.device_put(sharding.replicate(host, mesh), stage.state_sharding), batch)
  again, _ = stage.train_step(jax.device_put(host, stage.state_sharding), batch)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), jax.device_get(again.params))


def test_o_major_state_checkpoints_round_trip(tmp_path):
  from wbcdg_jax import checkpoint  # pylint: disable=import-outside-toplevel

  mesh = sharding.make_mesh()
  config, stage = _stage_with("erm", mesh, {"train.o_major_kernels": "true"})
  state, _ = stage.train_step(stage.state, sharding.shard_batch(tiny_batch(config), mesh))
  expected = jax.device_get(state)
  ckpts = checkpoint.StateCheckpoints(str(tmp_path / "ckpt"))
  ckpts.save(1, state, None)
  ckpts.wait()
  restored = ckpts.restore(1, state, None)
  ckpts.close()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), expected)
  # The restored state trains on in the step's layouts, as the trainer places it.
  new, metrics = stage.train_step(jax.device_put(restored, stage.state_sharding),
                                  sharding.shard_batch(tiny_batch(config, 1), mesh))
  assert float(metrics["finite"]) == 1.0
  assert _layouts(new.params) == _layouts(state.params)
