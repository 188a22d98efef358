"""Tests of wbcdg_jax/losses/coral.py against DomainBed's formula in float64 NumPy (np.cov, unbiased)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from wbcdg_jax.losses.coral import coral_penalty

# Jitted: one compilation is much faster on CPU than op-by-op eager dispatch (test_matches_reference stays eager).
coral = jax.jit(coral_penalty, static_argnames="num_domains")


def coral_reference(z, domains, num_domains, mask=None, xp=np):
  """The formula with [D, D] covariances in float64; xp=jnp (under jax.enable_x64) to differentiate it."""
  z = xp.asarray(z, xp.float64)
  keep = np.ones(len(z), bool) if mask is None else np.asarray(mask)
  groups = [z[np.flatnonzero(keep & (domains == k))] for k in range(num_domains)]
  total, pairs = 0.0, 0
  for a in range(num_domains):
    for b in range(a + 1, num_domains):
      x, y = groups[a], groups[b]
      if len(x) < 2 or len(y) < 2:
        continue
      mean_diff = xp.mean((x.mean(0) - y.mean(0))**2)
      cov_diff = xp.mean((xp.cov(x, rowvar=False) - xp.cov(y, rowvar=False))**2)
      total += mean_diff + cov_diff
      pairs += 1
  return total / pairs if pairs else 0.0


def make(seed, batch=30, dim=6, num_domains=3):
  rng = np.random.default_rng(seed)
  dom = rng.integers(0, num_domains, batch).astype(np.int32)
  z = (rng.normal(size=(batch, dim)) * (1 + dom[:, None]) + dom[:, None]).astype(np.float32)
  mask = rng.random(batch) > 0.2
  return z, dom, mask


@pytest.mark.parametrize("use_mask", [False, True])
def test_matches_reference(use_mask):
  z, dom, mask = make(0)
  mask = mask if use_mask else None
  np.testing.assert_allclose(coral_penalty(z, dom, num_domains=3, mask=mask), coral_reference(z, dom, 3, mask),
                             rtol=1e-5)


def test_two_domains_is_the_domainbed_pair_value():
  z, dom, _ = make(1, num_domains=2)
  np.testing.assert_allclose(coral(z, dom, num_domains=2), coral_reference(z, dom, 2), rtol=1e-5)


def test_small_and_absent_domains_are_skipped():
  z, dom, mask = make(2, batch=20, num_domains=4)
  dom[dom == 3] = 0
  dom[5] = 3  # domain 3 has one row: skipped, no NaN
  assert np.sum(dom == 3) == 1
  out = coral(z, dom, num_domains=5)  # domain 4 absent
  np.testing.assert_allclose(out, coral_reference(z, dom, 5), rtol=1e-5)
  g = jax.grad(lambda x: coral(x, dom, num_domains=5))(z)
  assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[5] == 0.0)
  # A single usable domain, or none, gives exactly 0.
  assert float(coral(z, np.zeros(20, np.int32), num_domains=3)) == 0.0
  assert float(coral(z, dom, num_domains=3, mask=np.zeros(20, bool))) == 0.0


def test_wide_features_match_float64_value_and_gradient():
  # D >> B, as for ResNet-50 features (2048 wide, 32 rows a domain): the [B, B] Gram form against the covariance
  # formula in float64, value and gradient, on non-negative features with a shared offset (post-ReLU pooling).
  rng = np.random.default_rng(7)
  dom = np.repeat(np.arange(3), 8).astype(np.int32)
  z = (np.maximum(rng.normal(1.0, 1.0, size=(24, 300)), 0.0) * (1 + 0.1 * dom[:, None])).astype(np.float32)
  mask = np.ones(24, bool)
  mask[[3, 20]] = False
  value, grad = jax.value_and_grad(lambda x: coral(x, dom, num_domains=3, mask=mask))(z)
  np.testing.assert_allclose(value, coral_reference(z, dom, 3, mask), rtol=1e-5)

  with jax.enable_x64(True):
    expected = jax.grad(lambda x: coral_reference(x, dom, 3, mask, xp=jnp))(np.asarray(z, np.float64))
  np.testing.assert_allclose(grad, expected, rtol=2e-4, atol=1e-7 * np.abs(expected).max())
  assert not np.any(np.asarray(grad)[~mask])


def test_identical_domains_give_zero():
  z, _, _ = make(3, batch=10)
  zz = np.concatenate([z, z])
  dom = np.repeat(np.arange(2), 10)
  assert abs(float(coral(zz, dom, num_domains=2))) < 1e-6


def test_gradient_matches_finite_differences_in_float64():
  z, dom, mask = make(4, batch=16, dim=4)
  with jax.enable_x64(True):
    check_grads(lambda x: coral(x, dom, num_domains=3, mask=mask), (np.asarray(z, np.float64),), order=1,
                modes=["rev"], atol=1e-6, rtol=1e-6)


def test_jit_and_vmap():
  z, dom, mask = make(5, batch=30)
  f = jax.jit(coral_penalty, static_argnames="num_domains")
  np.testing.assert_allclose(f(z, dom, num_domains=3, mask=mask), coral_reference(z, dom, 3, mask), rtol=1e-5)
  out = jax.vmap(lambda a, b, c: coral_penalty(a, b, num_domains=3, mask=c))(
      z.reshape(2, 15, -1), dom.reshape(2, 15), mask.reshape(2, 15))
  ref = [coral_reference(z[i * 15:(i + 1) * 15], dom[i * 15:(i + 1) * 15], 3, mask[i * 15:(i + 1) * 15])
         for i in range(2)]
  np.testing.assert_allclose(out, ref, rtol=1e-5)
  assert coral_penalty(jnp.asarray(z, jnp.bfloat16), dom, num_domains=3).dtype == jnp.float32


def test_garbage_in_masked_rows_does_not_leak():
  z, dom, mask = make(6)
  bad = z.copy()
  bad[~mask] = np.nan
  loss, g = jax.value_and_grad(lambda x: coral(x, dom, num_domains=3, mask=mask))(bad)
  np.testing.assert_allclose(loss, coral_reference(z, dom, 3, mask), rtol=1e-5)
  assert np.all(np.isfinite(g)) and not np.any(np.asarray(g)[~mask])
