"""Tests of wbcdg_jax/losses/mmd.py against DomainBed's Gaussian MMD in float64 NumPy (loops)."""

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from wbcdg_jax.losses.mmd import DOMAINBED_GAMMAS, mmd_penalty

# Jitted: one compilation is much faster on CPU than op-by-op eager dispatch (test_matches_reference stays eager).
mmd = jax.jit(mmd_penalty, static_argnames=("num_domains", "gammas"))


def kernel_mean(x, y, gammas):
  d2 = ((x[:, None, :] - y[None, :, :])**2).sum(-1)
  return sum(np.exp(-g * d2) for g in gammas).mean()


def mmd_reference(z, domains, num_domains, mask=None, gammas=DOMAINBED_GAMMAS):
  z = np.asarray(z, np.float64)
  keep = np.ones(len(z), bool) if mask is None else np.asarray(mask)
  groups = [z[keep & (domains == k)] for k in range(num_domains)]
  total, pairs = 0.0, 0
  for a in range(num_domains):
    for b in range(a + 1, num_domains):
      x, y = groups[a], groups[b]
      if len(x) == 0 or len(y) == 0:
        continue
      total += kernel_mean(x, x, gammas) + kernel_mean(y, y, gammas) - 2 * kernel_mean(x, y, gammas)
      pairs += 1
  return total / pairs if pairs else 0.0


def make(seed, batch=24, dim=3, num_domains=3, scale=0.3):
  rng = np.random.default_rng(seed)
  dom = rng.integers(0, num_domains, batch).astype(np.int32)
  # Small distances so that several bandwidths (up to gamma = 100) contribute.
  z = (rng.normal(size=(batch, dim)) * scale + 0.2 * dom[:, None]).astype(np.float32)
  mask = rng.random(batch) > 0.2
  return z, dom, mask


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("scale", [0.05, 0.3, 3.0])
def test_matches_reference(use_mask, scale):
  z, dom, mask = make(0, scale=scale)
  mask = mask if use_mask else None
  np.testing.assert_allclose(mmd_penalty(z, dom, num_domains=3, mask=mask), mmd_reference(z, dom, 3, mask),
                             rtol=1e-5, atol=1e-6)


def test_custom_gammas_and_absent_domains():
  z, dom, mask = make(1, num_domains=2)
  dom[3] = 3  # domain 3 has one row (enough for MMD); domain 2 absent
  gammas = (0.5, 2.0)
  np.testing.assert_allclose(mmd(z, dom, num_domains=4, mask=None, gammas=gammas),
                             mmd_reference(z, dom, 4, None, gammas), rtol=1e-5)
  assert float(mmd(z, np.zeros(24, np.int32), num_domains=2)) == 0.0
  assert float(mmd(z, dom, num_domains=4, mask=np.zeros(24, bool))) == 0.0


def test_gradient_is_finite_with_duplicates_and_matches_finite_differences():
  z, dom, mask = make(2, batch=12)
  z[1] = z[0]  # duplicate rows (zero distance off the diagonal)
  g = jax.grad(lambda x: mmd(x, dom, num_domains=3))(z)
  assert np.all(np.isfinite(g))
  with jax.enable_x64(True):
    zz = np.asarray(make(3, batch=12)[0], np.float64)
    check_grads(lambda x: mmd(x, dom, num_domains=3, mask=mask, gammas=(0.1, 1.0, 10.0)), (zz,), order=1,
                modes=["rev"], atol=1e-6, rtol=1e-6)


def test_jit_and_vmap():
  z, dom, mask = make(4)
  f = jax.jit(mmd_penalty, static_argnames=("num_domains", "gammas"))
  np.testing.assert_allclose(f(z, dom, num_domains=3, mask=mask), mmd_reference(z, dom, 3, mask), rtol=1e-5)
  out = jax.vmap(lambda a, b, c: mmd_penalty(a, b, num_domains=3, mask=c))(
      z.reshape(2, 12, -1), dom.reshape(2, 12), mask.reshape(2, 12))
  ref = [mmd_reference(z[i * 12:(i + 1) * 12], dom[i * 12:(i + 1) * 12], 3, mask[i * 12:(i + 1) * 12])
         for i in range(2)]
  np.testing.assert_allclose(out, ref, rtol=1e-5)


def test_garbage_in_masked_rows_does_not_leak():
  z, dom, mask = make(5)
  bad = z.copy()
  bad[~mask] = np.inf
  loss, g = jax.value_and_grad(lambda x: mmd(x, dom, num_domains=3, mask=mask))(bad)
  np.testing.assert_allclose(loss, mmd_reference(z, dom, 3, mask), rtol=1e-5)
  assert np.all(np.isfinite(g)) and not np.any(np.asarray(g)[~mask])
