"""Model structure: torchvision parameter counts, padding, batch-norm modes, dtypes, heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wbcdg_jax.models import Classifier, ResNetEncoder, feature_dim


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
  model = ResNetEncoder(depth=10)
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
  model = ResNetEncoder(depth=10)
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
  with pytest.raises(ValueError, match="model.head"):
    Classifier(num_classes=2, depth=10, head="conv").init(jax.random.key(0), x)
