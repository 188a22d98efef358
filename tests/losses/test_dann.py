"""Tests of wbcdg_jax/losses/dann.py: gradient reversal, Ganin's schedule, the discriminator and its losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wbcdg_jax.losses.dann import (DomainDiscriminator, cdann_class_weights, domain_adversarial_loss, ganin_lambda,
                                   gradient_reversal)


# Jitted alias: one compilation is much faster on CPU than op-by-op eager dispatch.
dal = jax.jit(domain_adversarial_loss)


def _head(x):
  return jnp.sum(jnp.sin(x) * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape))


@pytest.mark.parametrize("lam", [0.0, 0.37, 1.0, 25.0])
def test_gradient_reversal_gradient_is_exactly_minus_lambda_times_identity(lam):
  x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  g_id = jax.grad(_head)(x)
  g_rev = jax.grad(lambda a: _head(gradient_reversal(a, lam)))(x)
  np.testing.assert_array_equal(g_rev, -np.float32(lam) * np.asarray(g_id))
  np.testing.assert_array_equal(gradient_reversal(x, lam), x)  # identity forward


def test_gradient_reversal_traced_lambda_jit_vmap():
  x = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
  lam = ganin_lambda(0.3)

  @jax.jit
  def grads(a, l):
    return jax.grad(lambda b, m: _head(gradient_reversal(b, m)), argnums=(0, 1))(a, l)

  g_x, g_l = grads(x, lam)
  np.testing.assert_array_equal(g_x, -lam * jax.grad(_head)(x))
  assert float(g_l) == 0.0
  # vmap over rows with a per-row lambda.
  lams = jnp.linspace(0.0, 2.0, 5)
  per_row = jax.vmap(jax.grad(lambda r, l: jnp.sum(gradient_reversal(r, l)**2)))(x, lams)
  np.testing.assert_allclose(per_row, -lams[:, None] * 2 * x, rtol=1e-6)
  # bfloat16 cotangents keep their dtype.
  gb = jax.grad(lambda a: jnp.sum(gradient_reversal(a, 0.5).astype(jnp.float32)))(jnp.ones(3, jnp.bfloat16))
  assert gb.dtype == jnp.bfloat16 and np.all(np.asarray(gb, np.float32) == -0.5)


def test_ganin_lambda():
  p = np.array([-0.5, 0.0, 0.1, 0.5, 1.0, 2.0])
  ref = 2.0 / (1.0 + np.exp(-10 * np.clip(p, 0, 1))) - 1.0
  np.testing.assert_allclose(ganin_lambda(p), ref, rtol=1e-6, atol=1e-7)
  assert float(ganin_lambda(0.0)) == 0.0
  np.testing.assert_allclose(jax.jit(ganin_lambda)(0.5), ref[3], rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(ganin_lambda)(jnp.asarray(p)), ref, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(jax.grad(ganin_lambda)(0.2), 20 * np.exp(-2) / (1 + np.exp(-2))**2, rtol=1e-5)


def _mlp_reference(params, z, labels=None):
  x = np.asarray(z, np.float64)
  if labels is not None:
    x = x + np.asarray(params["class_embedding"]["embedding"], np.float64)[labels]
  names = sorted(k for k in params if k.startswith("hidden_")) + ["output"]
  for i, name in enumerate(names):
    x = x @ np.asarray(params[name]["kernel"], np.float64) + np.asarray(params[name]["bias"], np.float64)
    if name != "output":
      x = np.maximum(x, 0)
  return x


def test_discriminator_matches_domainbed_mlp():
  z = np.random.default_rng(2).normal(size=(6, 8)).astype(np.float32)
  disc = DomainDiscriminator(num_domains=3)
  params = jax.jit(disc.init, static_argnames="train")(jax.random.key(0), z, train=False)["params"]
  shapes = jax.tree.map(lambda a: a.shape, params)
  assert shapes == {"hidden_0": {"kernel": (8, 256), "bias": (256,)},
                    "hidden_1": {"kernel": (256, 256), "bias": (256,)},
                    "output": {"kernel": (256, 3), "bias": (3,)}}
  out = disc.apply({"params": params}, z, train=True)  # dropout 0: train == eval
  np.testing.assert_allclose(out, _mlp_reference(params, z), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out, disc.apply({"params": params}, z, train=False))
  with pytest.raises(ValueError, match="num_classes"):
    disc.apply({"params": params}, z, np.zeros(6, np.int32), train=False)


def test_conditional_discriminator_and_dropout():
  rng = np.random.default_rng(3)
  z = rng.normal(size=(6, 8)).astype(np.float32)
  labels = rng.integers(0, 4, 6).astype(np.int32)
  disc = DomainDiscriminator(num_domains=2, width=16, depth=2, dropout=0.5, num_classes=4)
  params = jax.jit(disc.init, static_argnames="train")(jax.random.key(0), z, labels, train=False)["params"]
  assert params["class_embedding"]["embedding"].shape == (4, 8) and "hidden_1" not in params
  out = disc.apply({"params": params}, z, labels, train=False)
  np.testing.assert_allclose(out, _mlp_reference(params, z, labels), rtol=1e-5, atol=1e-5)
  dropped = disc.apply({"params": params}, z, labels, train=True, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(dropped, out)
  with pytest.raises(ValueError, match="labels"):
    disc.apply({"params": params}, z, train=False)
  # Gradient reversal composes with the discriminator: the encoder sees minus the discriminator's gradient.
  loss = lambda x, lam: domain_adversarial_loss(
      disc.apply({"params": params}, gradient_reversal(x, lam), labels, train=False), labels % 2)
  grad = jax.jit(jax.grad(loss))
  # (lambda = -1 makes the reversal the identity's gradient.)
  np.testing.assert_allclose(grad(z, 0.5), -0.5 * np.asarray(grad(z, -1.0)), rtol=1e-6)


def _ce_rows(logits, targets):
  x = np.asarray(logits, np.float64)
  m = x.max(1, keepdims=True)
  return m[:, 0] + np.log(np.exp(x - m).sum(1)) - x[np.arange(len(x)), targets]


def test_domain_adversarial_loss_matches_numpy():
  rng = np.random.default_rng(4)
  logits = (rng.normal(size=(10, 3)) * 3).astype(np.float32)
  dom = rng.integers(0, 3, 10).astype(np.int32)
  mask = rng.random(10) > 0.3
  w = rng.uniform(0.1, 2.0, 10).astype(np.float32)
  rows = _ce_rows(logits, dom)
  np.testing.assert_allclose(domain_adversarial_loss(logits, dom), rows.mean(), rtol=1e-6)
  np.testing.assert_allclose(dal(logits, dom, mask, w),
                             np.sum((w * rows)[mask]) / np.sum(w[mask]), rtol=1e-6)
  assert float(dal(logits, dom, np.zeros(10, bool))) == 0.0
  f = jax.jit(domain_adversarial_loss)
  np.testing.assert_allclose(f(logits, dom, mask, w), np.sum((w * rows)[mask]) / np.sum(w[mask]), rtol=1e-6)
  g = jax.jit(jax.grad(domain_adversarial_loss))(logits, dom, mask, w)
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  ref_g = (p - np.eye(3)[dom]) * (w * mask)[:, None] / np.sum(w[mask])
  np.testing.assert_allclose(g, ref_g, rtol=1e-5, atol=1e-7)
  out = jax.vmap(domain_adversarial_loss)(logits.reshape(2, 5, 3), dom.reshape(2, 5), mask.reshape(2, 5),
                                          w.reshape(2, 5))
  np.testing.assert_allclose(out, [dal(logits[i * 5:i * 5 + 5], dom[i * 5:i * 5 + 5], mask[i * 5:i * 5 + 5],
                                       w[i * 5:i * 5 + 5]) for i in range(2)], rtol=1e-6)
  with pytest.raises(ValueError, match="class_weights"):
    domain_adversarial_loss(logits, dom, class_weights=w[:3])


def test_cdann_weights_batch_frequency_matches_domainbed():
  labels = np.array([0, 1, 1, 2, 2, 2, 0, 1], np.int32)
  dom = np.array([0, 0, 0, 0, 1, 1, 1, 1], np.int32)
  w = cdann_class_weights(labels, dom, num_classes=3)
  counts = np.bincount(labels, minlength=3)
  domainbed = 1.0 / (counts[labels] * 3)  # DomainBed: 1 / (y_counts[y] * y_counts.shape[0]), summed
  np.testing.assert_allclose(w, domainbed, rtol=1e-6)
  np.testing.assert_allclose(jnp.sum(w), 1.0, rtol=1e-6)
  mask = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
  wm = np.asarray(cdann_class_weights(labels, dom, mask=mask, num_classes=3))
  n_m = np.bincount(labels[mask], minlength=3)
  ref = np.where(mask, 1.0 / np.maximum(n_m[labels], 1), 0.0)
  np.testing.assert_allclose(wm, ref / ref.sum(), rtol=1e-6)
  with pytest.raises(ValueError, match="num_classes"):
    cdann_class_weights(labels, dom)


def test_cdann_weights_from_training_counts():
  counts = np.array([[10.0, 30.0, 60.0, 0.0], [50.0, 0.0, 25.0, 25.0]], np.float32)
  labels = np.array([0, 1, 2, 0, 2, 3, 2], np.int32)
  dom = np.array([0, 0, 0, 1, 1, 1, 1], np.int32)
  within = counts / counts.sum(1, keepdims=True)
  f = within.mean(0)  # expected class frequency of a domain-balanced batch
  ref = 1.0 / f[labels]
  np.testing.assert_allclose(cdann_class_weights(labels, dom, counts), ref / ref.sum(), rtol=1e-6)
  ref_pd = 1.0 / within[dom, labels]
  np.testing.assert_allclose(cdann_class_weights(labels, dom, counts, per_domain=True), ref_pd / ref_pd.sum(),
                             rtol=1e-6)
  jitted = jax.jit(cdann_class_weights, static_argnames=("num_classes", "per_domain"))(labels, dom, counts)
  np.testing.assert_allclose(jitted, ref / ref.sum(), rtol=1e-6)
  vm = jax.vmap(lambda y, d: cdann_class_weights(y, d, counts))(np.stack([labels, labels]), np.stack([dom, dom]))
  np.testing.assert_allclose(vm[1], ref / ref.sum(), rtol=1e-6)
