"""Model structure: torchvision parameter counts, padding, batch-norm modes, dtypes, heads."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wbcdg_jax.models import Classifier, ResNetEncoder, feature_dim
from wbcdg_jax.models import resnet
from wbcdg_jax.models.resnet import conv2d


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("depth,expected", [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032)])
def test_parameter_counts_match_torchvision(depth, expected):
  # torchvision's counts with the 1000-class linear head.
  model = Classifier(num_classes=1000, depth=depth, head="linear")
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  assert _count(variables["params"]) == expected


@pytest.mark.parametrize("size", [32, 33, 64])
def test_output_shapes_and_symmetric_padding(size):
  model = ResNetEncoder(depth=10, fold_frozen_bn=False)  # unfolded: conv1's output is captured on its own
  x = jnp.zeros((2, size, size, 3))
  variables = model.init(jax.random.key(0), x)
  z = model.apply(variables, x)
  assert z.shape == (2, feature_dim(10)) and z.dtype == jnp.float32
  # Explicit symmetric padding: the first conv of a 32 px input maps to 16 px (torchvision floor arithmetic).
  _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  conv1 = state["intermediates"]["conv1"]["__call__"][0]
  assert conv1.shape[1] == (size + 2 * 3 - 7) // 2 + 1


def test_symmetric_padding_is_translation_consistent():
  """With explicit (1, 1) padding, a centred impulse gives a centred response; 'SAME' would shift it."""
  model = ResNetEncoder(depth=10, fold_frozen_bn=False)
  x = jnp.zeros((1, 32, 32, 3)).at[0, 15:17, 15:17, :].set(1.0)
  variables = model.init(jax.random.key(1), x)
  _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  y = np.abs(np.asarray(state["intermediates"]["conv1"]["__call__"][0][0])).sum(-1)  # 16x16 map
  flipped = np.asarray(model.apply(variables, x[:, ::-1, ::-1], capture_intermediates=True,
                                   mutable=["intermediates"])[1]["intermediates"]["conv1"]["__call__"][0][0])
  assert y.shape == (16, 16) and np.isfinite(flipped).all()
  # The stride-2 grid samples rows 0, 2, ..., so the response peak lies on the impulse position / 2.
  r, c = np.unravel_index(np.argmax(y), y.shape)
  assert abs(r - 7.5) <= 1 and abs(c - 7.5) <= 1


def test_frozen_batchnorm_ignores_batch_statistics():
  model = Classifier(num_classes=13, depth=10, bn_mode="frozen", head="linear")
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = model.init(jax.random.key(1), x)
  z_train, _ = model.apply(variables, x, train=True)
  z_eval, _ = model.apply(variables, x, train=False)
  np.testing.assert_allclose(z_train, z_eval, rtol=1e-6)
  # Per-example independence: a sample's features do not depend on the rest of the batch.
  z_single, _ = model.apply(variables, x[:1], train=True)
  np.testing.assert_allclose(z_single, z_train[:1], rtol=1e-5, atol=1e-6)
  # Scale and bias are trainable parameters; running statistics are not.
  assert "scale" in variables["params"]["encoder"]["bn1"] and "mean" in variables["batch_stats"]["encoder"]["bn1"]


def _perturbed_statistics(variables, seed=0):
  """The variables with random batch-norm scale, bias, mean and var (the initial ones make norm the identity)."""
  rng = np.random.default_rng(seed)

  def perturb(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), jnp.float32)
    if name in ("bias", "mean"):
      return jnp.asarray(rng.normal(0.0, 0.5, leaf.shape), jnp.float32)
    return leaf

  return jax.tree_util.tree_map_with_path(perturb, variables)


def _assert_close_to_scale(actual, desired, tol):
  """|actual - desired| <= tol * max|desired| everywhere (float32 sums in another order differ that much)."""
  actual, desired = np.asarray(actual), np.asarray(desired)
  assert actual.shape == desired.shape
  scale = float(np.abs(desired).max())
  assert scale > 0 and float(np.abs(actual - desired).max()) <= tol * scale


@pytest.mark.parametrize("depth", [10, 50])
def test_folded_frozen_batchnorm_is_the_same_function(depth):
  """conv(x, W * m) + t equals BN(conv(x, W)): same variables (names, shapes, initial values), outputs, gradients."""
  folded = Classifier(num_classes=13, depth=depth, head="linear", fold_frozen_bn=True)
  plain = Classifier(num_classes=13, depth=depth, head="linear", fold_frozen_bn=False)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  # Compiled, not op by op: a ResNet-50 gradient runs in 15 s instead of 38 s on 2 CPU cores. Both inits in one
  # program (XLA shares what the two compute alike: ResNet-50's take 14 s to compile instead of 20).
  init_folded, init_plain = jax.jit(lambda key: (folded.init(key, x), plain.init(key, x)))(jax.random.key(1))
  assert jax.tree.structure(init_folded) == jax.tree.structure(init_plain)
  jax.tree.map(np.testing.assert_array_equal, init_folded, init_plain)
  variables = _perturbed_statistics(init_plain)

  def loss(params, batch_stats, model):
    z, logits = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True)
    return jnp.sum(logits**2) + jnp.sum(z), z

  value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=2)
  (l_folded, z_folded), g_folded = value_and_grad(variables["params"], variables["batch_stats"], folded)
  (l_plain, z_plain), g_plain = value_and_grad(variables["params"], variables["batch_stats"], plain)
  _assert_close_to_scale(z_folded, z_plain, 1e-5)
  _assert_close_to_scale(l_folded, l_plain, 1e-5)
  flat_f, flat_p = jax.tree.leaves(g_folded), jax.tree.leaves(g_plain)
  assert len(flat_f) == len(flat_p)
  for a, b in zip(flat_f, flat_p):
    _assert_close_to_scale(a, b, 1e-4)
  # The statistics matter (so the comparison above is not between two identity maps).
  (_, z_init), _ = value_and_grad(init_folded["params"], init_folded["batch_stats"], folded)  # compiled above
  assert not np.allclose(z_init, z_folded, atol=1e-3)


def _reductions(jaxpr):
  """(input dtype, input shape) of every reduce_sum in a jaxpr, nested ones included."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "reduce_sum":
      out.append((eqn.invars[0].aval.dtype, eqn.invars[0].aval.shape))
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", None)
      if inner is not None:
        out += _reductions(getattr(inner, "jaxpr", inner))
  return out


@pytest.mark.parametrize("size", [64, 96])  # 64: layer4's 3x3 convolutions take the patches path (2x2 maps)
def test_bfloat16_bias_gradients_are_summed_in_float32(size):
  # The folded batch norm's shift gradient sums the output gradient over batch and pixels (10^5-10^6 terms a
  # channel at 224 px): in bfloat16 those sums would round to 8 bits as they add up (XLA:GPU accumulates in the
  # operand's type). None of the gradient's reductions over activations may take a bfloat16 operand.
  model = Classifier(num_classes=13, depth=10, head="linear", dtype=jnp.bfloat16)
  x = jnp.zeros((2, size, size, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)

  def loss(params, rest):
    return jnp.sum(model.apply({**rest, "params": params}, x)[1].astype(jnp.float32))

  rest = {k: v for k, v in variables.items() if k != "params"}
  sums = _reductions(jax.make_jaxpr(jax.grad(loss))(variables["params"], rest).jaxpr)
  over_activations = [(dtype, shape) for dtype, shape in sums if len(shape) == 4 and shape[0] == 2]
  assert len(over_activations) >= 12, sums  # one per convolution's shift, at least
  assert all(dtype == jnp.float32 for dtype, _ in over_activations), over_activations


@pytest.mark.parametrize("size,kernel,strides,padding", [
    (2, 3, 1, 1), (4, 3, 2, 1), (3, 3, 2, 1), (1, 3, 1, 1), (5, 3, 2, 1), (2, 7, 2, 3), (8, 3, 1, 1), (4, 1, 2, 0)])
def test_conv2d_matches_lax_convolution(size, kernel, strides, padding):
  """Small maps (output smaller than the window) take the patches matmul; values and gradients are the conv's,
  with and without a per-channel multiplier (applied to the kernel on one path, to the output on the other)."""
  x = jax.random.normal(jax.random.key(0), (3, size, size + 1, 5))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 5, 4))
  m = jax.random.uniform(jax.random.key(3), (4,), minval=0.5, maxval=2.0)

  def reference(x, w, m=None):
    pads = ((padding, padding), (padding, padding))
    out = jax.lax.conv_general_dilated(x, w, (strides, strides), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out if m is None else out * m

  @jax.jit  # one compile instead of one per op
  def both(x, w, m):
    out = conv2d(x, w, strides, padding)
    probe = jax.random.normal(jax.random.key(2), out.shape)
    grads = jax.grad(lambda x, w, m: jnp.sum(conv2d(x, w, strides, padding, m) * probe), argnums=(0, 1, 2))
    expected = jax.grad(lambda x, w, m: jnp.sum(reference(x, w, m) * probe), argnums=(0, 1, 2))
    return ((out, conv2d(x, w, strides, padding, m), *grads(x, w, m)),
            (reference(x, w), reference(x, w, m), *expected(x, w, m)))

  (out, out_m, *grads), (ref, ref_m, *expected) = both(x, w, m)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out_m, ref_m, rtol=1e-5, atol=1e-5)
  for g, e in zip(grads, expected):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size,kernel,padding", [(16, 7, 3), (13, 7, 3), (9, 3, 1), (10, 4, 1), (9, 2, 0), (5, 7, 3)])
def test_conv2d_space_to_depth_is_the_stride_2_convolution(size, kernel, padding):
  """Odd and even sides and kernels, a window that overhangs the image, trailing rows no window reads."""
  x = jax.random.normal(jax.random.key(0), (2, size, size + 3, 3))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 3, 6))
  m = jax.random.uniform(jax.random.key(3), (6,), minval=0.5, maxval=2.0)
  @functools.partial(jax.jit, static_argnums=0)  # one compile per path instead of one per op
  def value_and_grads(space_to_depth, x, w, m):
    out = conv2d(x, w, 2, padding, m, space_to_depth=space_to_depth)
    probe = jax.random.normal(jax.random.key(2), out.shape)
    fn = lambda x, w, m: jnp.sum(conv2d(x, w, 2, padding, m, space_to_depth=space_to_depth) * probe)
    return out, jax.grad(fn, argnums=(0, 1, 2))(x, w, m)

  (out_s2d, grads_s2d), (out, grads) = value_and_grads(True, x, w, m), value_and_grads(False, x, w, m)
  np.testing.assert_allclose(out_s2d, out, rtol=1e-5, atol=1e-5)
  for g, e in zip(grads_s2d, grads):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_stem_space_to_depth_is_the_same_model():
  x = jax.random.normal(jax.random.key(0), (2, 35, 32, 3))
  default = Classifier(num_classes=13, depth=10, stem_space_to_depth=False)  # the plain stride-2 convolution
  blocks = Classifier(num_classes=13, depth=10, stem_space_to_depth=True)
  assert Classifier(num_classes=13).stem_space_to_depth  # the default (faster on an H100)
  variables = _perturbed_statistics(jax.jit(default.init)(jax.random.key(1), x))
  shapes = jax.eval_shape(blocks.init, jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, variables)

  def loss(v, model):
    z, logits = model.apply(v, x)
    return jnp.sum(jnp.sin(z)) + jnp.sum(logits)

  apply = jax.jit(lambda v, model: model.apply(v, x)[0], static_argnums=1)  # compiled: faster than op by op
  grad = jax.jit(jax.grad(loss), static_argnums=1)
  np.testing.assert_allclose(apply(variables, blocks), apply(variables, default), rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
               grad(variables, blocks)["params"], grad(variables, default)["params"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_relu_grad_from_output_is_relu(dtype):
  x = jnp.asarray([-2.0, -0.0, 0.0, 1e-3, 3.0, jnp.nan, -jnp.inf, jnp.inf], dtype)
  relu = resnet.relu_grad_from_output
  np.testing.assert_array_equal(np.asarray(relu(x), np.float32), np.asarray(jax.nn.relu(x), np.float32))
  t = jnp.arange(1, 9, dtype=dtype)
  grad = jax.grad(lambda u: jnp.sum(relu(u) * t))(x)
  expected = jax.grad(lambda u: jnp.sum(jax.nn.relu(u) * t))(x)  # 0 at 0 and at NaN, like jax.nn.relu
  np.testing.assert_array_equal(np.asarray(grad, np.float32), np.asarray(expected, np.float32))
  assert grad.dtype == dtype
  # Forward mode and vmap work too (custom_jvp, not custom_vjp).
  _, tangent = jax.jvp(relu, (x,), (t,))
  np.testing.assert_array_equal(np.asarray(tangent, np.float32), np.asarray(expected, np.float32))
  per_row = jax.vmap(jax.grad(lambda u: relu(u) * 2.0))(x[:5].astype(jnp.float32))
  np.testing.assert_array_equal(per_row, [0.0, 0.0, 0.0, 2.0, 2.0])


def _relu_mask_operands(relu):
  """What the compiled gradient of a ReLU layer compares against zero: the operand of every `compare`."""
  def loss(w, x):
    return jnp.sum(relu(x @ w + 1.0) ** 2)

  hlo = jax.jit(jax.grad(loss)).lower(jnp.ones((4, 8)), jnp.ones((2, 4))).compile().as_text()
  return [line.split(" compare(")[1].split(",")[0] for line in hlo.splitlines() if " compare(" in line]


def test_relu_grad_from_output_keeps_its_mask_on_the_output():
  # XLA's simplifier rewrites max(x, 0) > 0 into x > 0, which puts the pre-activation back into the backward
  # pass (and the ReLU out of the cuDNN convolution on a GPU); the bit-level test must survive compilation.
  operands = _relu_mask_operands(resnet.relu_grad_from_output)
  assert operands and all("bitcast" in operand for operand in operands), operands
  # The float comparison (jax.nn.relu's, or a naive y > 0) is simplified to read the pre-activation.
  assert not any("bitcast" in operand for operand in _relu_mask_operands(jax.nn.relu))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN fusion: GPU only")
def test_relu_fuses_into_the_cudnn_convolution_on_a_gpu():
  # What the bit-level mask is for: in a training step every ReLU after a convolution runs inside it.
  model = Classifier(num_classes=13, depth=10, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  variables = model.init(jax.random.key(1), x)
  grad = jax.jit(jax.grad(lambda v: jnp.sum(model.apply(v, x)[1])))
  hlo = grad.lower(variables).compile().as_text()
  assert hlo.count('"activation_mode":"kRelu"') >= 9, "ReLUs not fused into cuDNN convolutions"  # stem + 8 blocks


@functools.partial(jax.jit, static_argnums=(0, 3))
def _compiled_grad(model, variables, x, loss):
  """(gradient of loss(model.apply(variables, x))[0] with respect to variables, loss's aux), as one compiled
  program: op by op, a ResNet-10 gradient takes 30-40 s on 2 CPU cores. loss maps the output to (scalar, aux)."""
  return jax.grad(lambda v: loss(model.apply(v, x)), has_aux=True)(variables)


def test_relu_grad_from_output_is_the_same_model():
  x = jax.random.normal(jax.random.key(0), (2, 33, 32, 3))
  default = Classifier(num_classes=13, depth=10)
  assert default.relu_grad_from_output
  plain = Classifier(num_classes=13, depth=10, relu_grad_from_output=False)  # jax.nn.relu
  variables = _perturbed_statistics(jax.jit(default.init)(jax.random.key(1), x))

  # The two programs differ only in the ReLUs' backward (op by op this test took 40 s on 2 CPU cores).
  def loss(out):
    z, logits = out
    return jnp.sum(jnp.sin(z)) + jnp.sum(logits), z

  g_default, z_default = _compiled_grad(default, variables, x, loss)
  g_plain, z_plain = _compiled_grad(plain, variables, x, loss)
  np.testing.assert_array_equal(z_default, z_plain)
  jax.tree.map(np.testing.assert_array_equal, g_default["params"], g_plain["params"])


@pytest.mark.parametrize("impl", ["taps", "index"])
def test_max_pool_sends_no_gradient_from_a_nan_window(impl):
  x = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 6, 1).at[0, 0, 0, 0].set(jnp.nan)
  y, vjp = jax.vjp(lambda u: resnet._max_pool_3x3_s2(u, impl), x)
  dx = vjp(jnp.ones_like(y))[0]
  assert np.isnan(y[0, 0, 0, 0]) and np.isfinite(np.asarray(dx)).all()
  assert float(dx[0, 0, 0, 0]) == 0.0  # the NaN window's output sends its gradient nowhere
  np.testing.assert_array_equal(dx[1], jax.vjp(lambda u: resnet._max_pool_3x3_s2(u, "window"), x)[1](
      jnp.ones_like(y))[0][1])


@pytest.mark.parametrize("impl", ["taps", "slices", "index"])
def test_max_pool_implementations_are_the_same_function(impl):
  x = jax.random.normal(jax.random.key(0), (2, 33, 32, 3))  # odd and even sides
  window = ResNetEncoder(depth=10, max_pool="window")
  other = ResNetEncoder(depth=10, max_pool=impl)
  variables = _perturbed_statistics(jax.jit(window.init)(jax.random.key(1), x))
  def loss(z):
    return jnp.sum(jnp.sin(z)), z

  g_window, z_window = _compiled_grad(window, variables, x, loss)  # op by op, the 'taps' case took 31 s
  g_other, z_other = _compiled_grad(other, variables, x, loss)
  np.testing.assert_allclose(z_other, z_window, rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_other["params"],
               g_window["params"])


@pytest.mark.parametrize("impl", ["taps", "index"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(2, 9, 9, 3), (3, 8, 11, 2), (1, 2, 1, 1)])
def test_max_pool_gradient_is_select_and_scatter(shape, dtype, impl):
  # Ties on purpose (rounded values, zeros as after a ReLU): the gradient must go to the first maximum of each
  # window, as select-and-scatter sends it, not be split, and overlapping windows must add up.
  x = jnp.round(2 * jnp.maximum(jax.random.normal(jax.random.key(0), shape), 0)).astype(dtype)
  g = jax.random.normal(jax.random.key(1), (shape[0], (shape[1] + 1) // 2, (shape[2] + 1) // 2, shape[3]), dtype)

  @functools.partial(jax.jit, static_argnums=0)
  def pool_and_grad(impl, v, g):
    y, vjp = jax.vjp(lambda u: resnet._max_pool_3x3_s2(u, impl), v)
    return y, vjp(g)[0]

  y_window, dx_window = pool_and_grad("window", x, g)
  y_impl, dx_impl = pool_and_grad(impl, x, g)
  assert y_impl.shape == g.shape and y_impl.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y_impl, np.float32), np.asarray(y_window, np.float32))
  assert dx_impl.dtype == dtype
  tol = 1e-6 if dtype == jnp.float32 else 2e-2  # overlapping windows add in another order
  np.testing.assert_allclose(np.asarray(dx_impl, np.float32), np.asarray(dx_window, np.float32), rtol=tol, atol=tol)
  # Each output's gradient lands once: the sums agree whatever the ties.
  np.testing.assert_allclose(float(jnp.sum(dx_impl.astype(jnp.float32))), float(jnp.sum(g.astype(jnp.float32))),
                             rtol=tol, atol=10 * tol)


def test_train_mode_batchnorm_updates_running_statistics():
  model = Classifier(num_classes=13, depth=10, bn_mode="train", head="linear")
  x = 3.0 + jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = model.init(jax.random.key(1), x)
  _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  before = variables["batch_stats"]["encoder"]["bn1"]["mean"]
  after = updates["batch_stats"]["encoder"]["bn1"]["mean"]
  assert not np.allclose(before, after)
  z_single, _ = model.apply(variables, x[:1], train=True, mutable=["batch_stats"])[0]
  z_batch, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
  assert not np.allclose(z_single, z_batch[:1], atol=1e-4)  # batch statistics couple the examples


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  model = Classifier(num_classes=13, depth=10, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  z, logits = model.apply(variables, x)
  assert z.dtype == jnp.float32 and logits.dtype == jnp.float32
  z32, _ = Classifier(num_classes=13, depth=10).apply(variables, x)
  np.testing.assert_allclose(z, z32, rtol=0.1, atol=0.05)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_heads_and_dropout(head):
  model = Classifier(num_classes=13, depth=10, head=head, mlp_width=8, dropout=0.5)
  x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
  variables = model.init(jax.random.key(1), x)
  assert ("hidden" in variables["params"]["head"]) == (head == "mlp")
  _, eval_logits = model.apply(variables, x)
  _, eval_again = model.apply(variables, x)
  np.testing.assert_array_equal(eval_logits, eval_again)
  _, drop_a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  _, drop_b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
  assert eval_logits.shape == (3, 13) and not np.allclose(drop_a, drop_b)


def test_bad_settings_name_the_field():
  x = jnp.zeros((1, 32, 32, 3))
  with pytest.raises(ValueError, match="model.depth=11"):
    ResNetEncoder(depth=11).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="model.bn_mode"):
    ResNetEncoder(depth=10, bn_mode="bogus").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="model.max_pool='avg'"):
    ResNetEncoder(depth=10, max_pool="avg").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="model.head"):
    Classifier(num_classes=2, depth=10, head="conv").init(jax.random.key(0), x)
