"""Tests of wbcdg_jax/losses/boda_stats.py against float64 NumPy and sklearn.covariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf

from wbcdg_jax.losses.boda_stats import (BodaStats, add_moments, counts_from_labels, init_boda_stats,
                                         ledoit_wolf_shrinkage, pair_mean_and_covariance, pair_moments,
                                         shrunk_covariance, shrunk_precision, update_boda_stats)

K, C, D = 2, 3, 5
# Jitted aliases: one compilation is much faster on CPU than op-by-op eager dispatch. The error tests and
# test_jit_grad_vmap call the functions eagerly.
moments = jax.jit(pair_moments, static_argnames=("num_domains", "num_classes", "covariance"))
precision = jax.jit(shrunk_precision, static_argnames=("shrinkage", "eps", "min_count"))
update = jax.jit(update_boda_stats, static_argnames=("shrinkage", "eps", "min_count"))


def make_batch(seed, batch=60):
  rng = np.random.default_rng(seed)
  d = rng.integers(0, K, batch).astype(np.int32)
  y = rng.integers(0, C, batch).astype(np.int32)
  y[(d == 1) & (y == 2)] = 0  # pair (1, 2) never appears
  y[0], d[0] = 1, 0  # pair (0, 1) has a single row (unless random rows add more; see below)
  y[1:][(d[1:] == 0) & (y[1:] == 1)] = 0
  centers = rng.normal(size=(K, C, D)) * 3
  z = (centers[d, y] + rng.normal(size=(batch, D)) * rng.uniform(0.5, 2.0, size=D)).astype(np.float32)
  mask = rng.random(batch) > 0.15
  mask[0] = True
  return z, y, d, mask


def rows_of(z, y, d, mask, k, c):
  return np.asarray(z, np.float64)[(d == k) & (y == c) & mask]


def test_pair_moments_match_numpy():
  z, y, d, mask = make_batch(0)
  for cov in ("none", "diag", "full"):
    m = moments(z, y, d, mask, num_domains=K, num_classes=C, covariance=cov)
    expected_keys = {"none": {"count", "sum"}, "diag": {"count", "sum", "sumsq"},
                     "full": {"count", "sum", "outer", "norm4", "norm2_z"}}[cov]
    assert set(m) == expected_keys
    for k in range(K):
      for c in range(C):
        x = rows_of(z, y, d, mask, k, c)
        assert float(m["count"][k, c]) == len(x)
        np.testing.assert_allclose(m["sum"][k, c], x.sum(0), rtol=1e-5, atol=1e-5)
        if cov == "diag":
          np.testing.assert_allclose(m["sumsq"][k, c], (x**2).sum(0), rtol=1e-5, atol=1e-5)
        if cov == "full":
          np.testing.assert_allclose(m["outer"][k, c], x.T @ x, rtol=1e-5, atol=1e-4)
          n2 = (x**2).sum(1)
          np.testing.assert_allclose(m["norm4"][k, c], (n2**2).sum(), rtol=1e-5, atol=1e-3)
          np.testing.assert_allclose(m["norm2_z"][k, c], (n2[:, None] * x).sum(0), rtol=1e-5, atol=1e-3)


def test_moments_of_two_halves_add_up_to_one_pass():
  z, y, d, mask = make_batch(1, batch=64)
  for cov in ("diag", "full"):
    kw = dict(num_domains=K, num_classes=C, covariance=cov)
    whole = moments(z, y, d, mask, **kw)
    halves = add_moments(moments(z[:32], y[:32], d[:32], mask[:32], **kw),
                         moments(z[32:], y[32:], d[32:], mask[32:], **kw))
    for key in whole:
      np.testing.assert_allclose(halves[key], whole[key], rtol=1e-5, atol=1e-4)
  with pytest.raises(ValueError, match="keys"):
    add_moments(moments(z, y, d, **dict(num_domains=K, num_classes=C, covariance="diag")),
                moments(z, y, d, **dict(num_domains=K, num_classes=C, covariance="full")))


def test_mean_and_covariance_match_numpy():
  z, y, d, mask = make_batch(2)
  m_full = moments(z, y, d, mask, num_domains=K, num_classes=C, covariance="full")
  m_diag = moments(z, y, d, mask, num_domains=K, num_classes=C, covariance="diag")
  mean, cov = pair_mean_and_covariance(m_full)
  mean_d, var = pair_mean_and_covariance(m_diag)
  for k in range(K):
    for c in range(C):
      x = rows_of(z, y, d, mask, k, c)
      if len(x) == 0:
        assert not np.any(mean[k, c]) and not np.any(cov[k, c])
        continue
      np.testing.assert_allclose(mean[k, c], x.mean(0), rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(mean_d[k, c], x.mean(0), rtol=1e-5, atol=1e-5)
      ref = np.cov(x, rowvar=False, bias=True).reshape(D, D) if len(x) > 1 else np.zeros((D, D))
      np.testing.assert_allclose(cov[k, c], ref, rtol=1e-4, atol=1e-4)
      np.testing.assert_allclose(var[k, c], np.diag(ref), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("a", [0.0, 0.1, 0.7, 1.0])
def test_fixed_shrinkage_matches_formula(a):
  z, y, d, mask = make_batch(3)
  for kind in ("diag", "full"):
    m = moments(z, y, d, mask, num_domains=K, num_classes=C, covariance=kind)
    shrunk = shrunk_covariance(m, shrinkage=a)
    for k in range(K):
      for c in range(C):
        x = rows_of(z, y, d, mask, k, c)
        s = np.cov(x, rowvar=False, bias=True).reshape(D, D) if len(x) > 1 else np.zeros((D, D))
        if kind == "full":
          ref = (1 - a) * s + a * np.trace(s) / D * np.eye(D)
        else:
          v = np.diag(s)
          ref = (1 - a) * v + a * v.mean()
        np.testing.assert_allclose(shrunk[k, c], ref, rtol=1e-4, atol=1e-4)


def test_ledoit_wolf_matches_sklearn():
  z, y, d, mask = make_batch(4, batch=200)
  checked, two = 0, False
  # Append two fresh rows of the otherwise missing pair (1, 2): the n = 2 case.
  x2 = z[:2] + 1.0
  z, y, d, mask = (np.concatenate([a, b]) for a, b in ((z, x2), (y, [2, 2]), (d, [1, 1]), (mask, [True, True])))
  assert not np.any((y[:-2] == 2) & (d[:-2] == 1))  # pair (1, 2) now has exactly 2 rows
  m = moments(z, y, d, mask, num_domains=K, num_classes=C, covariance="full")
  shrink = ledoit_wolf_shrinkage(m)
  shrunk = shrunk_covariance(m, shrinkage="ledoit_wolf")
  default = shrunk_covariance(m)  # 'ledoit_wolf' is the default for full moments
  for k in range(K):
    for c in range(C):
      x = rows_of(z, y, d, mask, k, c)
      if len(x) < 2:
        assert float(shrink[k, c]) == 0.0
        continue
      if len(x) == 2:  # LW degenerates to 0 (as sklearn); shrunk_covariance then uses full shrinkage
        s = np.cov(x, rowvar=False, bias=True)
        np.testing.assert_allclose(shrunk[k, c], np.trace(s) / D * np.eye(D), rtol=1e-4, atol=1e-5)
        two = True
        continue
      ref_cov, ref_a = ledoit_wolf(x)
      np.testing.assert_allclose(shrink[k, c], ref_a, rtol=2e-3, atol=1e-5)
      np.testing.assert_allclose(shrunk[k, c], ref_cov, rtol=1e-4, atol=1e-4)
      np.testing.assert_allclose(default[k, c], shrunk[k, c], rtol=0, atol=0)
      checked += 1
  assert checked >= 4 and two


def test_ledoit_wolf_matches_sklearn_in_float64_when_few_samples():
  # n < D: the regime of small pairs; LW shrinks a lot.
  rng = np.random.default_rng(5)
  dim = 12
  x = rng.normal(size=(7, dim)) @ rng.normal(size=(dim, dim)) + 5.0
  with jax.enable_x64(True):
    m = moments(x[None].reshape(7, dim), np.zeros(7, np.int32), np.zeros(7, np.int32), num_domains=1,
                     num_classes=1, covariance="full")
    m = {k: v.astype(jnp.float64) for k, v in m.items()}
    ref_cov, ref_a = ledoit_wolf(x)
    np.testing.assert_allclose(ledoit_wolf_shrinkage(m)[0, 0], ref_a, rtol=1e-9)
    np.testing.assert_allclose(shrunk_covariance(m, shrinkage="ledoit_wolf")[0, 0], ref_cov, rtol=1e-9, atol=1e-10)


def test_shrinkage_argument_errors():
  z, y, d, mask = make_batch(6)
  kw = dict(num_domains=K, num_classes=C)
  with pytest.raises(ValueError, match="ledoit_wolf"):
    shrunk_covariance(pair_moments(z, y, d, mask, covariance="diag", **kw), shrinkage="ledoit_wolf")
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    shrunk_covariance(pair_moments(z, y, d, mask, covariance="diag", **kw), shrinkage=1.5)
  with pytest.raises(ValueError, match="second moments"):
    shrunk_covariance(pair_moments(z, y, d, mask, covariance="none", **kw))
  with pytest.raises(ValueError, match="covariance"):
    pair_moments(z, y, d, mask, covariance="spherical", **kw)


def test_shrunk_precision_matches_numpy_inverse():
  z, y, d, mask = make_batch(7)
  eps = 1e-3
  for kind in ("diag", "full"):
    m = moments(z, y, d, mask, num_domains=K, num_classes=C, covariance=kind)
    prec = precision(m, shrinkage=0.2, eps=eps)
    for k in range(K):
      for c in range(C):
        x = rows_of(z, y, d, mask, k, c)
        if len(x) < 2:  # missing (1, 2) and the single-row pair (0, 1) fall back to the identity
          ref = np.eye(D) if kind == "full" else np.ones(D)
          np.testing.assert_allclose(prec[k, c], ref, rtol=0, atol=0)
          continue
        s = np.cov(x, rowvar=False, bias=True)
        if kind == "full":
          shr = 0.8 * s + 0.2 * np.trace(s) / D * np.eye(D)
          ref = np.linalg.inv(shr + (eps * np.trace(shr) / D + 1e-12) * np.eye(D))
        else:
          v = 0.8 * np.diag(s) + 0.2 * np.diag(s).mean()
          ref = 1.0 / (v + eps * v.mean() + 1e-12)
        np.testing.assert_allclose(prec[k, c], ref, rtol=1e-4, atol=1e-5)
  assert np.sum(m["count"] < 2) == 2  # both fallbacks were exercised


def test_full_precision_is_finite_for_rank_deficient_pairs():
  # 3 samples in 16 dimensions: S is singular; shrinkage + ridge keep the inverse finite and SPD.
  rng = np.random.default_rng(8)
  x = rng.normal(size=(3, 16)).astype(np.float32)
  m = moments(x, np.zeros(3, np.int32), np.zeros(3, np.int32), num_domains=1, num_classes=1,
                   covariance="full")
  for a in (None, 0.05):
    p = np.asarray(precision(m, shrinkage=a))[0, 0]
    assert np.all(np.isfinite(p)) and np.allclose(p, p.T) and np.linalg.eigvalsh(p).min() > 0


def test_init_boda_stats():
  counts = np.arange(K * C, dtype=np.float32).reshape(K, C)
  for kind, shape in (("none", None), ("diag", (K, C, D)), ("full", (K, C, D, D))):
    s = init_boda_stats(K, C, D, counts, covariance=kind)
    assert isinstance(s, BodaStats) and s.covariance == kind
    assert s.means.shape == (K, C, D) and not np.any(s.means) and not bool(s.initialized)
    np.testing.assert_array_equal(s.counts, counts)
    if shape is None:
      assert s.precision is None
    else:
      assert s.precision.shape == shape
  np.testing.assert_array_equal(init_boda_stats(K, C, D, counts, "full").precision[1, 2], np.eye(D))
  with pytest.raises(ValueError, match="counts"):
    init_boda_stats(K, C, D, counts[:, :2])


def test_update_uses_zero_momentum_first_then_ema():
  counts = np.full((K, C), 10.0, np.float32)
  stats = init_boda_stats(K, C, D, counts, covariance="diag")
  stats = stats.replace(means=jnp.full((K, C, D), 100.0))  # junk that m = 0 must ignore
  z1, y1, d1, mask1 = make_batch(9)
  m1 = moments(z1, y1, d1, mask1, num_domains=K, num_classes=C, covariance="diag")
  first = update(stats, m1, momentum=0.3)
  mean1, _ = pair_mean_and_covariance(m1)
  seen1 = np.asarray(m1["count"]) > 0
  assert bool(first.initialized)
  np.testing.assert_array_equal(np.asarray(first.means)[seen1], np.asarray(mean1)[seen1])
  np.testing.assert_array_equal(np.asarray(first.means)[~seen1], 100.0)  # unseen pair keeps its old value
  np.testing.assert_array_equal(first.counts, counts)  # fixed training counts, not moment counts
  prec1 = precision(m1)
  np.testing.assert_allclose(np.asarray(first.precision)[seen1], np.asarray(prec1)[seen1], rtol=1e-6)

  z2, y2, d2, mask2 = make_batch(10)
  m2 = moments(z2, y2, d2, mask2, num_domains=K, num_classes=C, covariance="diag")
  second = update(first, m2, momentum=0.3)
  mean2, _ = pair_mean_and_covariance(m2)
  seen2 = np.asarray(m2["count"]) > 0
  exp_means = np.where(seen2[..., None], 0.7 * np.asarray(mean2) + 0.3 * np.asarray(first.means), first.means)
  np.testing.assert_allclose(second.means, exp_means, rtol=1e-6, atol=1e-6)
  exp_prec = np.where(seen2[..., None], 0.7 * np.asarray(precision(m2)) + 0.3 * np.asarray(first.precision),
                      first.precision)
  np.testing.assert_allclose(second.precision, exp_prec, rtol=1e-5)


def test_update_full_and_kind_mismatch():
  counts = np.full((K, C), 3.0, np.float32)
  z, y, d, mask = make_batch(11)
  m_full = moments(z, y, d, mask, num_domains=K, num_classes=C, covariance="full")
  s = update(init_boda_stats(K, C, D, counts, "full"), m_full, momentum=0.2, shrinkage=0.3)
  seen = np.asarray(m_full["count"]) >= 2
  np.testing.assert_allclose(np.asarray(s.precision)[seen], np.asarray(precision(m_full, shrinkage=0.3))[seen],
                             rtol=1e-6)
  # 'none' stats accept any moments; a 'full' stats rejects diag moments.
  update(init_boda_stats(K, C, D, counts), m_full, momentum=0.2)
  m_diag = moments(z, y, d, mask, num_domains=K, num_classes=C, covariance="diag")
  with pytest.raises(ValueError, match="full"):
    update(init_boda_stats(K, C, D, counts, "full"), m_diag, momentum=0.2)


def test_jit_grad_vmap():
  counts = np.full((K, C), 3.0, np.float32)
  z, y, d, mask = make_batch(12, batch=48)
  kw = dict(num_domains=K, num_classes=C, covariance="full")

  @jax.jit
  def refresh(stats, z, y, d, mask, momentum):
    return update_boda_stats(stats, pair_moments(z, y, d, mask, **kw), momentum=momentum)

  stats = init_boda_stats(K, C, D, counts, "full")
  jitted = refresh(stats, z, y, d, mask, 0.25)
  eager = update_boda_stats(stats, pair_moments(z, y, d, mask, **kw), momentum=0.25)
  np.testing.assert_allclose(jitted.means, eager.means, rtol=1e-6)
  # A float32 matrix inverse: jit and eager may sum in other orders (per CPU: 1.4e-6 apart on an AVX2 EPYC), so
  # small entries are compared against the matrix's O(1) scale.
  np.testing.assert_allclose(jitted.precision, eager.precision, rtol=1e-4, atol=1e-5)
  # vmap over 3 chunks + sum == one pass.
  chunks = jax.vmap(lambda a, b, c, e: pair_moments(a, b, c, e, **kw))(
      z.reshape(3, 16, D), y.reshape(3, 16), d.reshape(3, 16), mask.reshape(3, 16))
  whole = pair_moments(z, y, d, mask, **kw)
  for key in whole:
    np.testing.assert_allclose(jnp.sum(chunks[key], axis=0), whole[key], rtol=1e-5, atol=1e-4)
  # Gradients through the statistics are finite (e.g. a feature-level regularizer on the pair means).
  g = jax.jit(jax.grad(lambda zz: jnp.sum(shrunk_precision(pair_moments(zz, y, d, mask, **kw), shrinkage=0.5))))(z)
  assert g.shape == z.shape and np.all(np.isfinite(g))


def test_counts_from_labels():
  n = counts_from_labels([0, 2, 2, 1], [0, 1, 1, 0], 2, 3)
  np.testing.assert_array_equal(n, [[1, 1, 0], [0, 0, 2]])
