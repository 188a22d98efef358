"""BoDA statistics: per (domain, class) pair centroids, optional shrunk precisions, and their EMA refresh.

Units: features z are in the model's feature units; means are in feature units; covariances/variances in squared
feature units; precisions in inverse squared feature units (so a Mahalanobis distance is dimensionless).

Workflow of a refresh (REFERENCE.md section 1): run the model in eval mode without gradient over every training
domain's training split, sum `pair_moments` of all batches (`add_moments`, float32 accumulation), then
`update_boda_stats(stats, moments, momentum=m)`: mu <- (1 - m) * mu_new + m * mu_old, with m = 0 at the first
refresh. `BodaStats.counts` are the FIXED training-image counts N[d, c] used by the loss's balancing term and to
mark missing pairs (N = 0); they are set once at init and never replaced by the moment counts.

Moments are raw (uncentered) sums, so covariances come from E[zz^T] - mu mu^T; in float32 this loses a few
digits when the spread is small next to the mean, which the shrinkage and ridge below make harmless.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST
_COVARIANCES = ("none", "diag", "full")
DEFAULT_SHRINKAGE = 0.1  # default fixed shrinkage of 'diag' statistics ('full' defaults to Ledoit-Wolf)


@flax.struct.dataclass
class BodaStats:
  """BoDA pair statistics (a pytree; all leaves are arrays).

  Attributes:
    means: float32 [K, C, D] pair centroids (feature units); zeros before the first refresh.
    counts: float32 [K, C] fixed training-image counts N[d, c] (0 = missing pair). Not moment counts.
    precision: None (Euclidean BoDA), float32 [K, C, D] diagonal inverse variances, or [K, C, D, D] inverse
      covariances. Identity (ones) before the first refresh, so an early use degrades to Euclidean.
    initialized: bool scalar array, True once a refresh has happened (then momentum applies).
  """
  means: jax.Array
  counts: jax.Array
  precision: Optional[jax.Array]
  initialized: jax.Array

  @property
  def covariance(self) -> str:
    """'none', 'diag' or 'full', from the precision's shape."""
    if self.precision is None:
      return "none"
    return "diag" if self.precision.ndim == 3 else "full"


def _check_covariance(covariance: str, where: str) -> None:
  if covariance not in _COVARIANCES:
    raise ValueError(f"{where}: covariance must be one of {_COVARIANCES}, got {covariance!r}")


def init_boda_stats(num_domains: int, num_classes: int, dim: int, counts: Any, covariance: str = "none",
                    dtype=jnp.float32) -> BodaStats:
  """Empty statistics: zero means, identity precision, initialized False.

  Args:
    num_domains: K training domains.
    num_classes: C classes.
    dim: feature dimension D.
    counts: [K, C] training-image counts N[d, c] (array-like, 0 = missing pair).
    covariance: 'none' (Euclidean), 'diag' or 'full' (Mahalanobis precision storage; full takes K*C*D*D floats,
      about 650 MB for K*C = 39, D = 2048).
    dtype: float dtype of the arrays.

  Returns:
    BodaStats.
  """
  _check_covariance(covariance, "init_boda_stats")
  counts = jnp.asarray(counts, dtype)
  if counts.shape != (num_domains, num_classes):
    raise ValueError(f"init_boda_stats: counts must have shape ({num_domains}, {num_classes}), got {counts.shape}")
  if covariance == "none":
    precision = None
  elif covariance == "diag":
    precision = jnp.ones((num_domains, num_classes, dim), dtype)
  else:
    precision = jnp.broadcast_to(jnp.eye(dim, dtype=dtype), (num_domains, num_classes, dim, dim))
  return BodaStats(means=jnp.zeros((num_domains, num_classes, dim), dtype), counts=counts,
                   precision=precision, initialized=jnp.asarray(False))


def pair_moments(z: jax.Array, labels: jax.Array, domains: jax.Array, mask: jax.Array | None = None, *,
                 num_domains: int, num_classes: int, covariance: str = "none") -> dict[str, jax.Array]:
  """Additive per-pair moments of a batch (sum the dicts of many batches with `add_moments`).

  Args:
    z: float [B, D] features (computed in float32).
    labels: int [B] classes in [0, C).
    domains: int [B] domains in [0, K).
    mask: bool [B] or None; False rows are left out.
    num_domains: static K.
    num_classes: static C.
    covariance: 'none', 'diag' or 'full' (static): which second moments to include.

  Returns:
    dict of float32 arrays:
      count [K, C]: number of rows of each pair;
      sum [K, C, D]: sum of z;
      sumsq [K, C, D] ('diag'): sum of z**2;
      outer [K, C, D, D] ('full'): sum of z z^T;
      norm4 [K, C] and norm2_z [K, C, D] ('full'): sum of |z|^4 and of |z|^2 z, which the data-driven
        Ledoit-Wolf shrinkage needs (they give sum |z - mu|^4 without a second pass).
  """
  _check_covariance(covariance, "pair_moments")
  z = jnp.asarray(z).astype(jnp.promote_types(jnp.float32, jnp.asarray(z).dtype))
  batch, dim = z.shape
  weights = jnp.ones((batch,), z.dtype) if mask is None else jnp.asarray(mask).astype(z.dtype)
  pair = jnp.asarray(domains).astype(jnp.int32) * num_classes + jnp.asarray(labels).astype(jnp.int32)
  onehot = jax.nn.one_hot(pair, num_domains * num_classes, dtype=z.dtype) * weights[:, None]  # [B, M]
  shape = (num_domains, num_classes)
  out = {
      "count": jnp.sum(onehot, axis=0).reshape(shape),
      "sum": jnp.einsum("bm,bd->md", onehot, z, precision=_HIGHEST).reshape(shape + (dim,)),
  }
  if covariance == "diag":
    out["sumsq"] = jnp.einsum("bm,bd->md", onehot, z * z, precision=_HIGHEST).reshape(shape + (dim,))
  elif covariance == "full":
    # One [D, B] x [B, D] product per pair; rows of other pairs are weighted by 0.
    out["outer"] = jnp.einsum("bm,bd,be->mde", onehot, z, z, precision=_HIGHEST).reshape(shape + (dim, dim))
    norm2 = jnp.sum(z * z, axis=1)
    out["norm4"] = jnp.einsum("bm,b->m", onehot, norm2 * norm2, precision=_HIGHEST).reshape(shape)
    out["norm2_z"] = jnp.einsum("bm,bd->md", onehot, norm2[:, None] * z, precision=_HIGHEST).reshape(shape + (dim,))
  return out


def add_moments(a: dict[str, jax.Array], b: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Sum of two moment dicts from `pair_moments` (same keys)."""
  if set(a) != set(b):
    raise ValueError(f"add_moments: moment keys differ: {sorted(a)} vs {sorted(b)}")
  return {k: a[k] + b[k] for k in a}


def _moment_covariance(moments: dict[str, jax.Array]) -> str:
  if "outer" in moments:
    return "full"
  return "diag" if "sumsq" in moments else "none"


def pair_mean_and_covariance(moments: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array | None]:
  """Per-pair mean and maximum-likelihood (divide by n) covariance from accumulated moments.

  Args:
    moments: dict from `pair_moments` (summed over batches).

  Returns:
    (mean [K, C, D], cov) with cov None ('none' moments), variances [K, C, D] ('diag') or covariances
    [K, C, D, D] ('full'). Pairs with count 0 get mean 0 and covariance 0.
  """
  count = moments["count"]
  n = jnp.maximum(count, 1.0)[..., None]
  mean = jnp.where(count[..., None] > 0, moments["sum"] / n, 0.0)
  kind = _moment_covariance(moments)
  if kind == "none":
    return mean, None
  if kind == "diag":
    return mean, jnp.maximum(moments["sumsq"] / n - mean * mean, 0.0)
  cov = moments["outer"] / n[..., None] - mean[..., :, None] * mean[..., None, :]
  return mean, 0.5 * (cov + jnp.swapaxes(cov, -1, -2))


def ledoit_wolf_shrinkage(moments: dict[str, jax.Array]) -> jax.Array:
  """Data-driven Ledoit-Wolf shrinkage intensity of every pair (as sklearn.covariance.ledoit_wolf_shrinkage).

  With S the ML covariance of a pair's n samples, p = D, mu = tr(S) / p and x_k the centered samples:
    beta  = (sum_k |x_k|^4 / n - |S|_F^2) / (p n),  delta = |S - mu I|_F^2 / p,
    shrinkage = min(beta, delta) / delta  (0 when that is 0).
  sum_k |x_k|^4 is rebuilt from the raw moments (norm4, norm2_z, outer, sum).

  Args:
    moments: 'full' moments from `pair_moments` (summed over batches).

  Returns:
    float [K, C] shrinkage in [0, 1]; 0 for pairs with fewer than 2 samples or S = mu I.
  """
  if _moment_covariance(moments) != "full":
    raise ValueError("ledoit_wolf_shrinkage needs covariance='full' moments (keys outer, norm4, norm2_z)")
  count = moments["count"]
  n = jnp.maximum(count, 1.0)
  mean, cov = pair_mean_and_covariance(moments)
  p = cov.shape[-1]
  c = jnp.sum(mean * mean, axis=-1)  # |mu|^2
  # sum_k |z_k - mu|^4 = S4 - 4 mu.V + 4 mu^T O mu + 2 c tr(O) - 3 n c^2 (expand (|z|^2 - 2 z.mu + c)^2).
  mu_o_mu = jnp.einsum("...d,...de,...e->...", mean, moments["outer"], mean, precision=_HIGHEST)
  tr_o = jnp.trace(moments["outer"], axis1=-2, axis2=-1)
  norm4_centered = (moments["norm4"] - 4.0 * jnp.sum(mean * moments["norm2_z"], axis=-1) + 4.0 * mu_o_mu
                    + 2.0 * c * tr_o - 3.0 * n * c * c)
  tr_s = jnp.trace(cov, axis1=-2, axis2=-1)
  avg = tr_s / p
  frob2 = jnp.sum(cov * cov, axis=(-2, -1))
  beta = (norm4_centered / n - frob2) / (p * n)
  delta = (frob2 - 2.0 * avg * tr_s + p * avg * avg) / p
  beta = jnp.minimum(beta, delta)
  ok = (count >= 2) & (delta > 0) & (beta > 0)
  return jnp.where(ok, beta / jnp.where(ok, delta, 1.0), 0.0)


def shrunk_covariance(moments: dict[str, jax.Array], *, shrinkage: float | str | None = None) -> jax.Array:
  """Shrunk per-pair covariance (1 - a) S + a * (tr(S) / D) * I, toward the scaled identity.

  Args:
    moments: 'diag' or 'full' moments from `pair_moments` (summed over batches).
    shrinkage: a in [0, 1] (float or traced scalar), or 'ledoit_wolf' for the data-driven per-pair intensity
      ('full' only; pairs of <= 2 samples, where that estimate degenerates to 0, get a = 1). None means
      'ledoit_wolf' for 'full' moments (pair sizes range from tens to thousands against D = 2048, so one fixed
      value cannot suit all) and DEFAULT_SHRINKAGE (0.1) for 'diag'.

  Returns:
    float [K, C, D] shrunk variances ('diag': the diagonal version, each variance pulled toward the pair's mean
    variance) or [K, C, D, D] shrunk covariances ('full'), squared feature units.
  """
  kind = _moment_covariance(moments)
  if kind == "none":
    raise ValueError("shrunk_covariance needs 'diag' or 'full' moments, got moments without second moments")
  _, cov = pair_mean_and_covariance(moments)
  if shrinkage is None:
    shrinkage = "ledoit_wolf" if kind == "full" else DEFAULT_SHRINKAGE
  if isinstance(shrinkage, str):
    if shrinkage != "ledoit_wolf":
      raise ValueError(f"shrunk_covariance: shrinkage must be a float in [0, 1] or 'ledoit_wolf', got {shrinkage!r}")
    if kind != "full":
      raise ValueError("shrunk_covariance: shrinkage='ledoit_wolf' needs covariance='full' moments")
    # With n = 2 centered samples x_1 = -x_2, so x_k x_k^T = S and the Ledoit-Wolf estimate is 0 by
    # construction (sklearn agrees), leaving a rank-1 covariance; full shrinkage is the sensible limit there.
    a = jnp.where(moments["count"] <= 2, 1.0, ledoit_wolf_shrinkage(moments))
  else:
    if not isinstance(shrinkage, jax.Array) and not 0.0 <= float(shrinkage) <= 1.0:
      raise ValueError(f"shrunk_covariance: shrinkage must lie in [0, 1], got {shrinkage}")
    a = jnp.broadcast_to(jnp.asarray(shrinkage, cov.dtype), moments["count"].shape)
  if kind == "diag":
    avg = jnp.mean(cov, axis=-1, keepdims=True)
    return (1.0 - a[..., None]) * cov + a[..., None] * avg
  dim = cov.shape[-1]
  avg = jnp.trace(cov, axis1=-2, axis2=-1) / dim
  eye = jnp.eye(dim, dtype=cov.dtype)
  return (1.0 - a[..., None, None]) * cov + (a * avg)[..., None, None] * eye


def shrunk_precision(moments: dict[str, jax.Array], *, shrinkage: float | str | None = None, eps: float = 1e-4,
                     min_count: int = 2) -> jax.Array:
  """Inverse of the shrunk per-pair covariance, with a small relative ridge.

  precision = inv(shrunk + (eps * tr(S) / D + 1e-12) I); the full inverse goes through a Cholesky factor L
  (inv = L^-T L^-1) and is symmetrized, the diagonal one is 1 / (var + ridge).

  Args:
    moments: 'diag' or 'full' moments (summed over batches).
    shrinkage: see `shrunk_covariance`.
    eps: ridge relative to the pair's mean variance tr(S) / D (keeps float32 Cholesky stable when a is ~0).
    min_count: pairs with fewer samples (including missing pairs) get the identity precision (Euclidean), as
      their covariance is undefined.

  Returns:
    float [K, C, D] ('diag') or [K, C, D, D] ('full') precision (inverse squared feature units).
  """
  cov = shrunk_covariance(moments, shrinkage=shrinkage)
  enough = moments["count"] >= min_count
  if cov.ndim == 3:
    ridge = eps * jnp.mean(cov, axis=-1, keepdims=True) + 1e-12
    return jnp.where(enough[..., None], 1.0 / (cov + ridge), 1.0)
  dim = cov.shape[-1]
  eye = jnp.eye(dim, dtype=cov.dtype)
  ridge = eps * jnp.trace(cov, axis1=-2, axis2=-1) / dim + 1e-12
  # Give unusable pairs an identity matrix before factorizing so Cholesky never sees a singular matrix.
  cov = jnp.where(enough[..., None, None], cov + ridge[..., None, None] * eye, eye)
  chol = jax.lax.linalg.cholesky(cov, symmetrize_input=True)
  inv_chol = jax.lax.linalg.triangular_solve(chol, jnp.broadcast_to(eye, cov.shape), left_side=True, lower=True)
  prec = jnp.einsum("...ki,...kj->...ij", inv_chol, inv_chol, precision=_HIGHEST)
  prec = 0.5 * (prec + jnp.swapaxes(prec, -1, -2))
  return jnp.where(enough[..., None, None], prec, eye)


def update_boda_stats(stats: BodaStats, moments: dict[str, jax.Array], *, momentum: float,
                      shrinkage: float | str | None = None, eps: float = 1e-4, min_count: int = 2) -> BodaStats:
  """EMA refresh of the BoDA statistics from moments accumulated over a full pass.

  x <- (1 - m) * x_new + m * x_old for the means and (when stored) the precisions, with m = momentum once
  `stats.initialized`, and m = 0 at the first refresh. Pairs with zero count in `moments` keep their old values
  (missing pairs are masked by `stats.counts` = N anyway). `stats.counts` is left unchanged: it holds the fixed
  training counts N, not the moment counts. The precision is averaged (not the covariance) so the stored matrix
  stays symmetric positive definite as a convex combination of such matrices.

  Args:
    stats: current BodaStats.
    moments: summed `pair_moments` whose covariance kind matches stats ('full' / 'diag' moments also serve a
      'none' stats; a 'diag' or 'full' stats needs the matching second moments).
    momentum: m in [0, 1) (float or traced scalar).
    shrinkage, eps, min_count: passed to `shrunk_precision`.

  Returns:
    New BodaStats with initialized True.
  """
  kind = stats.covariance
  have = _moment_covariance(moments)
  if kind != "none" and have != kind:
    raise ValueError(f"update_boda_stats: stats hold a {kind!r} precision but the moments are {have!r}; "
                     f"accumulate pair_moments(..., covariance={kind!r})")
  m = jnp.where(stats.initialized, jnp.asarray(momentum, stats.means.dtype), 0.0)
  seen = moments["count"] > 0
  new_mean, _ = pair_mean_and_covariance(moments)
  means = jnp.where(seen[..., None], (1.0 - m) * new_mean.astype(stats.means.dtype) + m * stats.means, stats.means)
  precision = stats.precision
  if kind != "none":
    new_prec = shrunk_precision(moments, shrinkage=shrinkage, eps=eps, min_count=min_count).astype(precision.dtype)
    shape = seen.shape + (1,) * (precision.ndim - 2)
    precision = jnp.where(seen.reshape(shape), (1.0 - m) * new_prec + m * precision, precision)
  return stats.replace(means=means, precision=precision, initialized=jnp.asarray(True))


def counts_from_labels(labels: Any, domains: Any, num_domains: int, num_classes: int) -> np.ndarray:
  """Host helper: training counts N [K, C] (float32 NumPy) from the labels and domains of the training splits."""
  counts = np.zeros((num_domains, num_classes), np.float32)
  np.add.at(counts, (np.asarray(domains, np.int64), np.asarray(labels, np.int64)), 1.0)
  return counts
