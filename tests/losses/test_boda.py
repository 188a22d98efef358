"""Tests of wbcdg_jax/losses/boda.py against a loop-based float64 NumPy reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax.test_util import check_grads

from wbcdg_jax.losses.boda import boda_loss, masked_logsumexp

K, C, D, B = 3, 4, 6, 20
# Most tests call a jitted loss: one compilation is much faster on CPU than op-by-op eager dispatch.
# test_jit_matches_eager and the error tests use boda_loss eagerly.
boda = jax.jit(boda_loss, static_argnames=("metric", "return_parts"))


def boda_reference(z, y, d, mu, n, *, nu=0.5, temperature=1.0, prec=None, mask=None, eps=1e-12):
  """Straightforward float64 BoDA: loops over rows and pairs. Returns (loss, num_pos, mean positive distance)."""
  z, mu, n = (np.asarray(a, np.float64) for a in (z, mu, n))
  total, num_pos, pos_dist = 0.0, 0, 0.0
  for i in range(len(z)):
    if mask is not None and not mask[i]:
      continue
    n_own = n[d[i], y[i]]
    if n_own == 0:
      continue
    logits, dists = {}, {}
    for k in range(n.shape[0]):
      for c in range(n.shape[1]):
        if n[k, c] == 0 or (k == d[i] and c == y[i]):
          continue
        diff = z[i] - mu[k, c]
        if prec is None:
          sq = diff @ diff
        elif prec.ndim == 3:
          sq = np.sum(diff**2 * prec[k, c])
        else:
          sq = diff @ np.asarray(prec[k, c], np.float64) @ diff
        dists[k, c] = np.sqrt(max(sq, eps))
        logits[k, c] = -dists[k, c] / n_own * (n[k, c] / n_own)**nu / temperature
    vals = np.array(list(logits.values()))
    lse = vals.max() + np.log(np.sum(np.exp(vals - vals.max())))
    for (k, c), v in logits.items():
      if c == y[i] and k != d[i]:
        total += v - lse
        num_pos += 1
        pos_dist += dists[k, c]
  if num_pos == 0:
    return 0.0, 0, 0.0
  return -total / num_pos, num_pos, pos_dist / num_pos


def make_problem(seed, counts_scale=20):
  rng = np.random.default_rng(seed)
  counts = rng.integers(1, counts_scale, size=(K, C)).astype(np.float32)
  counts[0, 1] = 0  # missing pair
  counts[2, 0] = 0  # missing pair
  counts[1:, 3] = 0  # class 3 only in domain 0: no positives for its rows
  d = np.repeat(np.arange(K), B // K + 1)[:B]
  y = rng.integers(0, C, size=B)
  y = np.where(counts[d, y] > 0, y, 2)  # own pairs exist (class 2 is present everywhere)
  y[:2] = 3  # two rows of the one-domain class
  y[2] = 0  # row of domain 0 with class 0: positive in domain 1 only (2 is missing)
  mu = rng.normal(size=(K, C, D)).astype(np.float32)
  z = (mu[d, y] + 0.7 * rng.normal(size=(B, D))).astype(np.float32)
  mask = rng.random(B) > 0.2
  return z, y.astype(np.int32), d.astype(np.int32), mu, counts, mask


def random_spd(rng, n_mats, dim):
  a = rng.normal(size=(n_mats, dim, dim))
  return (np.einsum("mij,mkj->mik", a, a) / dim + 0.5 * np.eye(dim)).astype(np.float32)


@pytest.mark.parametrize("nu,temperature", [(0.5, 1.0), (0.0, 1.0), (1.0, 0.3), (0.3, 3.0)])
@pytest.mark.parametrize("use_mask", [False, True])
def test_euclidean_matches_reference(nu, temperature, use_mask):
  z, y, d, mu, n, mask = make_problem(0, counts_scale=6)
  mask = mask if use_mask else None
  loss, parts = boda(z, y, d, mu, n, nu=nu, temperature=temperature, mask=mask, return_parts=True)
  ref, num_pos, pos_dist = boda_reference(z, y, d, mu, n, nu=nu, temperature=temperature, mask=mask)
  assert num_pos > 0
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  assert float(parts["num_positives"]) == num_pos
  np.testing.assert_allclose(parts["mean_positive_distance"], pos_dist, rtol=1e-5)
  np.testing.assert_allclose(parts["mean_positive_log_prob"], -ref, rtol=1e-5)


@pytest.mark.parametrize("seed", [1, 2])
def test_large_counts_match_reference(seed):
  z, y, d, mu, n, _ = make_problem(seed, counts_scale=5000)
  np.testing.assert_allclose(boda(z, y, d, mu, n), boda_reference(z, y, d, mu, n)[0], rtol=1e-5)


@pytest.mark.parametrize("form", ["diag", "full"])
@pytest.mark.parametrize("nu,temperature", [(0.5, 1.0), (0.8, 0.5)])
def test_mahalanobis_matches_reference(form, nu, temperature):
  z, y, d, mu, n, mask = make_problem(3, counts_scale=6)
  rng = np.random.default_rng(4)
  if form == "diag":
    prec = rng.uniform(0.2, 3.0, size=(K, C, D)).astype(np.float32)
  else:
    prec = random_spd(rng, K * C, D).reshape(K, C, D, D)
  loss = boda(z, y, d, mu, n, nu=nu, temperature=temperature, metric="mahalanobis", precision=prec,
                   mask=mask)
  ref = boda_reference(z, y, d, mu, n, nu=nu, temperature=temperature, prec=prec, mask=mask)[0]
  np.testing.assert_allclose(loss, ref, rtol=1e-5)


def test_identity_precision_equals_euclidean():
  z, y, d, mu, n, _ = make_problem(5)
  eucl = boda(z, y, d, mu, n)
  diag = boda(z, y, d, mu, n, metric="mahalanobis", precision=np.ones((K, C, D), np.float32))
  full = boda(z, y, d, mu, n, metric="mahalanobis", precision=np.broadcast_to(np.eye(D), (K, C, D, D)))
  np.testing.assert_allclose(diag, eucl, rtol=1e-6)
  np.testing.assert_allclose(full, eucl, rtol=1e-6)


def test_precision_is_ignored_for_euclidean():
  z, y, d, mu, n, _ = make_problem(5)
  junk = np.full((K, C, D), np.nan, np.float32)
  assert float(boda(z, y, d, mu, n, precision=junk)) == float(boda(z, y, d, mu, n))


def test_no_positives_gives_exact_zero_and_zero_gradient():
  z, y, d, mu, n, _ = make_problem(6)
  # Every row belongs to class 3, which only domain 0 has.
  y = np.full(B, 3, np.int32)
  d = np.zeros(B, np.int32)
  loss, parts = boda(z, y, d, mu, n, return_parts=True)
  assert float(loss) == 0.0 and float(parts["num_positives"]) == 0.0
  g = jax.grad(boda)(z, y, d, mu, n)
  assert np.all(np.asarray(g) == 0.0)
  # Fully masked batch, and a single-domain problem, are exact zeros too.
  z2, y2, d2, mu2, n2, _ = make_problem(7)
  assert float(boda(z2, y2, d2, mu2, n2, mask=np.zeros(B, bool))) == 0.0
  assert float(boda(z2, y2, np.zeros(B, np.int32), mu2[:1], np.ones((1, C), np.float32))) == 0.0


def test_one_domain_class_rows_do_not_contribute():
  z, y, d, mu, n, mask = make_problem(8)
  only_there = y == 3
  assert only_there.any()
  full = boda(z, y, d, mu, n, mask=mask)
  without = boda(z, y, d, mu, n, mask=mask & ~only_there)
  np.testing.assert_allclose(full, without, rtol=1e-6)
  # Their z still enters other rows' denominators only through centroids, never through z: zero gradient.
  g = jax.grad(boda)(z, y, d, mu, n, mask=mask)
  assert np.all(np.asarray(g)[only_there] == 0.0)


def test_rows_of_missing_own_pair_are_masked_without_nan():
  z, y, d, mu, n, _ = make_problem(9)
  y_bad = y.copy()
  y_bad[5] = 1
  d_bad = d.copy()
  d_bad[5] = 0  # pair (0, 1) has N = 0
  assert n[0, 1] == 0
  mask = np.ones(B, bool)
  mask[5] = False
  loss = boda(z, y_bad, d_bad, mu, n)
  np.testing.assert_allclose(loss, boda(z, y_bad, d_bad, mu, n, mask=mask), rtol=1e-6)
  g = jax.grad(boda)(z, y_bad, d_bad, mu, n)
  assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[5] == 0.0)


def test_garbage_in_missing_pairs_and_masked_rows_does_not_leak():
  z, y, d, mu, n, mask = make_problem(10)
  ref = boda(z, y, d, mu, n, mask=mask)
  mu_nan = mu.copy()
  mu_nan[n == 0] = np.nan
  z_inf = z.copy()
  z_inf[~mask] = np.inf
  prec = np.ones((K, C, D), np.float32)
  prec[n == 0] = np.inf
  for kwargs in ({}, {"metric": "mahalanobis", "precision": prec}):
    loss, g = jax.value_and_grad(boda)(z_inf, y, d, mu_nan, n, mask=mask, **kwargs)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("metric", ["euclidean", "diag", "full"])
def test_finite_gradient_at_zero_distance(metric):
  z, y, d, mu, n, _ = make_problem(11)
  z[0] = mu[1, 2]  # exactly on a centroid (row 0 is domain 0, so (1, 2) is another pair)
  z[1] = mu[d[1], y[1]]  # exactly on its own centroid (excluded pair, but still computed)
  kwargs = {}
  if metric == "diag":
    kwargs = {"metric": "mahalanobis", "precision": np.full((K, C, D), 2.0, np.float32)}
  elif metric == "full":
    kwargs = {"metric": "mahalanobis", "precision": random_spd(np.random.default_rng(0), K * C, D).reshape(K, C, D, D)}
  g = jax.grad(boda)(z, y, d, mu, n, **kwargs)
  assert np.all(np.isfinite(g))


def test_no_gradient_into_statistics():
  z, y, d, mu, n, _ = make_problem(12)
  prec = np.full((K, C, D), 1.5, np.float32)
  g_mu, g_n, g_p = jax.grad(boda, argnums=(3, 4))(z, y, d, mu, n) + (
      jax.grad(lambda p: boda(z, y, d, mu, n, metric="mahalanobis", precision=p))(prec),)
  assert not np.any(g_mu) and not np.any(g_n) and not np.any(g_p)


@pytest.mark.parametrize("metric", ["euclidean", "full"])
def test_gradient_matches_finite_differences_in_float64(metric):
  z, y, d, mu, n, mask = make_problem(13, counts_scale=4)
  kwargs = {"mask": mask, "nu": 0.7, "temperature": 0.5}
  if metric == "full":
    kwargs.update(metric="mahalanobis", precision=random_spd(np.random.default_rng(1), K * C, D).reshape(K, C, D, D))
  with jax.enable_x64(True):
    f = lambda zz: boda(zz, y, d, mu, n, **kwargs)
    check_grads(f, (np.asarray(z, np.float64),), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_jit_matches_eager():
  z, y, d, mu, n, mask = make_problem(14)
  prec = random_spd(np.random.default_rng(2), K * C, D).reshape(K, C, D, D)
  f = functools.partial(boda_loss, metric="mahalanobis", nu=0.3, temperature=2.0)
  eager = f(z, y, d, mu, n, precision=prec, mask=mask)
  jitted = jax.jit(f)(z, y, d, mu, n, precision=prec, mask=mask)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)
  # Traced hyperparameters work as well.
  g = jax.jit(lambda nu, t: boda_loss(z, y, d, mu, n, nu=nu, temperature=t))(0.3, 2.0)
  np.testing.assert_allclose(g, boda_loss(z, y, d, mu, n, nu=0.3, temperature=2.0), rtol=1e-6)


def test_vmap_over_batches_matches_loop():
  problems = [make_problem(s) for s in (15, 16, 17)]
  zs, ys, ds = (np.stack([p[i] for p in problems]) for i in range(3))
  masks = np.stack([p[5] for p in problems])
  _, _, _, mu, n, _ = problems[0]
  out = jax.vmap(lambda z, y, d, m: boda(z, y, d, mu, n, mask=m))(zs, ys, ds, masks)
  loop = [boda(zs[i], ys[i], ds[i], mu, n, mask=masks[i]) for i in range(3)]
  np.testing.assert_allclose(out, loop, rtol=1e-6)
  grads = jax.vmap(jax.grad(lambda z, y, d: boda(z, y, d, mu, n)))(zs, ys, ds)
  assert grads.shape == zs.shape and np.all(np.isfinite(grads))


def test_bfloat16_features_are_promoted():
  z, y, d, mu, n, _ = make_problem(18)
  loss = boda(jnp.asarray(z, jnp.bfloat16), y, d, mu, n)
  assert loss.dtype == jnp.float32
  ref = boda_reference(np.asarray(jnp.asarray(z, jnp.bfloat16).astype(jnp.float32)), y, d, mu, n)[0]
  np.testing.assert_allclose(loss, ref, rtol=1e-5)


def test_shape_errors_name_the_argument():
  z, y, d, mu, n, _ = make_problem(19)
  with pytest.raises(ValueError, match="counts"):
    boda_loss(z, y, d, mu, n[:, :2])
  with pytest.raises(ValueError, match="precision"):
    boda_loss(z, y, d, mu, n, metric="mahalanobis")
  with pytest.raises(ValueError, match="precision"):
    boda_loss(z, y, d, mu, n, metric="mahalanobis", precision=np.ones((K, C, D + 1), np.float32))
  with pytest.raises(ValueError, match="metric"):
    boda_loss(z, y, d, mu, n, metric="cosine")
  with pytest.raises(ValueError, match="labels"):
    boda_loss(z, y[:-1], d, mu, n)


def test_masked_logsumexp_matches_numpy_and_handles_empty_rows():
  rng = np.random.default_rng(20)
  x = rng.normal(size=(4, 7)).astype(np.float32) * 30
  where = rng.random((4, 7)) > 0.4
  where[3] = False
  out = masked_logsumexp(x, where, axis=1)
  for r in range(3):
    v = x[r][where[r]].astype(np.float64)
    np.testing.assert_allclose(out[r], v.max() + np.log(np.exp(v - v.max()).sum()), rtol=1e-6)
  assert float(out[3]) == 0.0
  g = jax.grad(lambda a: masked_logsumexp(a, where, axis=1).sum())(x)
  assert np.all(np.isfinite(g)) and not np.any(np.asarray(g)[~where])
