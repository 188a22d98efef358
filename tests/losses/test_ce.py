"""Tests of wbcdg_jax/losses/ce.py against a float64 NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wbcdg_jax.losses.ce import cross_entropy


def ce_rows(logits, labels):
  x = np.asarray(logits, np.float64)
  m = x.max(1, keepdims=True)
  lse = m[:, 0] + np.log(np.exp(x - m).sum(1))
  return lse - x[np.arange(len(x)), labels]


def ce_reference(logits, labels, mask=None, domains=None):
  rows = ce_rows(logits, labels)
  keep = np.ones(len(rows), bool) if mask is None else np.asarray(mask)
  if domains is None:
    return rows[keep].mean() if keep.any() else 0.0
  means = [rows[keep & (domains == k)].mean() for k in np.unique(domains[keep])]
  return float(np.mean(means)) if means else 0.0


def make(seed, batch=17, classes=5, domains=3):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(batch, classes)) * 4).astype(np.float32)
  labels = rng.integers(0, classes, batch).astype(np.int32)
  dom = rng.integers(0, domains, batch).astype(np.int32)
  mask = rng.random(batch) > 0.3
  return logits, labels, dom, mask


def test_plain_and_masked_mean():
  logits, labels, _, mask = make(0)
  np.testing.assert_allclose(cross_entropy(logits, labels), ce_reference(logits, labels), rtol=1e-6)
  np.testing.assert_allclose(cross_entropy(logits, labels, mask), ce_reference(logits, labels, mask), rtol=1e-6)


def test_per_domain_mean_skips_absent_domains():
  logits, labels, dom, mask = make(1)
  dom = np.where(dom == 2, 3, dom)  # domain 2 absent, K = 4
  out = cross_entropy(logits, labels, mask, domains=dom, num_domains=4)
  np.testing.assert_allclose(out, ce_reference(logits, labels, mask, dom), rtol=1e-6)
  # Unequal domain sizes make it differ from the plain batch mean.
  assert abs(float(out) - ce_reference(logits, labels, mask)) > 1e-4


def test_equal_domain_batches_equal_batch_mean():
  logits, labels, _, _ = make(2, batch=12)
  dom = np.repeat(np.arange(3), 4)
  np.testing.assert_allclose(cross_entropy(logits, labels, domains=dom, num_domains=3),
                             cross_entropy(logits, labels), rtol=1e-6)


def test_all_masked_is_zero_and_garbage_rows_do_not_leak():
  logits, labels, dom, mask = make(3)
  assert float(cross_entropy(logits, labels, np.zeros(len(labels), bool))) == 0.0
  assert float(cross_entropy(logits, labels, np.zeros(len(labels), bool), domains=dom, num_domains=3)) == 0.0
  bad = logits.copy()
  bad[~mask] = np.nan
  bad_labels = np.where(mask, labels, -1)
  loss, g = jax.value_and_grad(cross_entropy)(bad, bad_labels, mask, dom, 3)
  np.testing.assert_allclose(loss, ce_reference(logits, labels, mask, dom), rtol=1e-6)
  assert np.all(np.asarray(g)[~mask] == 0.0) and np.all(np.isfinite(np.asarray(g)[mask]))


def test_gradient_matches_softmax_minus_onehot():
  logits, labels, _, mask = make(4)
  g = jax.grad(cross_entropy)(logits, labels, mask)
  x = np.asarray(logits, np.float64)
  p = np.exp(x - x.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  ref = (p - np.eye(x.shape[1])[labels]) * mask[:, None] / mask.sum()
  np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-7)


def test_jit_and_vmap():
  logits, labels, dom, mask = make(5, batch=18)
  f = jax.jit(cross_entropy, static_argnames="num_domains")
  np.testing.assert_allclose(f(logits, labels, mask, dom, num_domains=3),
                             ce_reference(logits, labels, mask, dom), rtol=1e-6)
  out = jax.vmap(lambda a, b, c, e: cross_entropy(a, b, c, e, 3))(
      logits.reshape(3, 6, -1), labels.reshape(3, 6), mask.reshape(3, 6), dom.reshape(3, 6))
  ref = [ce_reference(logits[i * 6:(i + 1) * 6], labels[i * 6:(i + 1) * 6], mask[i * 6:(i + 1) * 6],
                      dom[i * 6:(i + 1) * 6]) for i in range(3)]
  np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_bfloat16_and_argument_errors():
  logits, labels, _, _ = make(6)
  out = cross_entropy(jnp.asarray(logits, jnp.bfloat16), labels)
  assert out.dtype == jnp.float32
  with pytest.raises(ValueError, match="num_domains"):
    cross_entropy(logits, labels, domains=np.zeros(len(labels), np.int32))
  with pytest.raises(ValueError, match="domains"):
    cross_entropy(logits, labels, num_domains=3)
  with pytest.raises(ValueError, match="mask"):
    cross_entropy(logits, labels, mask=np.ones(3, bool))
