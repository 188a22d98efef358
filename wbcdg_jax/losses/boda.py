"""BoDA: balanced domain-class distribution alignment loss (REFERENCE.md section 1, "BoDA").

For a batch of features z_i with class y_i and domain d_i, and the centroids mu_m of every present (domain,
class) pair m (N[m] > 0 training images):

  logit[m, i]    = -dist(z_i, mu_m) / N[d_i, y_i] * (N[m] / N[d_i, y_i]) ** nu / temperature
  log_prob[m, i] = logit[m, i] - logsumexp_{m' present, m' != (d_i, y_i)} logit[m', i]
  L_BoDA         = -mean of log_prob over the positive (m, i): c_m == y_i, d_m != d_i, m present

dist is sqrt(max(squared distance, eps)) with the Euclidean or a Mahalanobis squared distance. The centroids,
counts and precisions are statistics (they carry no gradient); only z is differentiated. Missing pairs
(N = 0) are masked out, so every shape stays static [B, K*C].
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from wbcdg_jax.losses.ce import loss_dtype, row_weights

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_shapes(z, labels, domains, centroids, counts, precision, metric):
  if z.ndim != 2:
    raise ValueError(f"boda_loss: z must have shape [B, D], got {z.shape}")
  batch, dim = z.shape
  if centroids.ndim != 3 or centroids.shape[2] != dim:
    raise ValueError(f"boda_loss: centroids must have shape [K, C, D={dim}], got {centroids.shape}")
  if counts.shape != centroids.shape[:2]:
    raise ValueError(f"boda_loss: counts must have shape {centroids.shape[:2]} (= centroids' [K, C]), "
                     f"got {counts.shape}")
  for name, arr in (("labels", labels), ("domains", domains)):
    if arr.shape != (batch,):
      raise ValueError(f"boda_loss: {name} must have shape ({batch},), got {arr.shape}")
  if metric not in ("euclidean", "mahalanobis"):
    raise ValueError(f"boda_loss: metric must be 'euclidean' or 'mahalanobis', got {metric!r}")
  if metric == "mahalanobis":
    k, c = counts.shape
    if precision is None:
      raise ValueError("boda_loss: metric='mahalanobis' needs precision ([K, C, D] diagonal or [K, C, D, D] full)")
    if precision.shape not in ((k, c, dim), (k, c, dim, dim)):
      raise ValueError(f"boda_loss: precision must have shape {(k, c, dim)} (diagonal inverse variances) or "
                       f"{(k, c, dim, dim)} (full inverse covariance), got {precision.shape}")


def pair_squared_distances(z: jax.Array, centroids: jax.Array, precision: jax.Array | None = None) -> jax.Array:
  """Squared distance of every row to every pair centroid.

  The difference z_i - mu_m is formed explicitly rather than expanding |z|^2 - 2 z.mu + |mu|^2: this costs the
  same batched matmul for the full Mahalanobis form (B*M*D*D multiply-adds, a [B, D] x [D, D] product per pair)
  but has no cancellation near zero distance, and HIGHEST precision keeps GPUs from using TF32 (10-bit mantissa).

  Args:
    z: float [B, D] features.
    centroids: float [M, D] pair centroids (flattened pairs).
    precision: None (Euclidean), float [M, D] diagonal inverse variances, or float [M, D, D] inverse covariances
      (symmetric positive semi-definite).

  Returns:
    float [B, M] squared distances (squared feature units for Euclidean; dimensionless for Mahalanobis),
    clamped at 0.
  """
  diff = z[:, None, :] - centroids[None, :, :]  # [B, M, D]
  if precision is None:
    sq = jnp.sum(diff * diff, axis=-1)
  elif precision.ndim == 2:
    sq = jnp.sum(diff * diff * precision[None], axis=-1)
  else:
    sq = jnp.einsum("bmd,mde,bme->bm", diff, precision, diff, precision=_HIGHEST)
  # Rounding can push a PSD quadratic form slightly below 0.
  return jnp.maximum(sq, 0.0)


def masked_logsumexp(x: jax.Array, where: jax.Array, axis: int = -1) -> jax.Array:
  """log(sum(exp(x)) over entries where `where` is True), stable and NaN-free in value and gradient.

  Args:
    x: float array.
    where: bool array broadcastable to x; only True entries enter the sum.
    axis: reduced axis.

  Returns:
    x reduced over `axis`. A row with no True entry gives 0 (not -inf) with zero gradient; callers mask it out.
  """
  x_masked = jnp.where(where, x, -jnp.inf)
  shift = jnp.max(x_masked, axis=axis, keepdims=True)
  # The shift cancels mathematically; stop_gradient avoids differentiating through the max.
  shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(shift), shift, 0.0))
  summed = jnp.sum(jnp.where(where, jnp.exp(jnp.where(where, x - shift, 0.0)), 0.0), axis=axis, keepdims=True)
  any_true = jnp.any(where, axis=axis, keepdims=True)
  out = jnp.log(jnp.where(any_true, summed, 1.0)) + shift
  return jnp.squeeze(jnp.where(any_true, out, 0.0), axis=axis)


def boda_loss(z: jax.Array, labels: jax.Array, domains: jax.Array, centroids: jax.Array, counts: jax.Array, *,
              nu: float = 0.5, temperature: float = 1.0, metric: str = "euclidean",
              precision: jax.Array | None = None, mask: jax.Array | None = None, eps: float = 1e-12,
              return_parts: bool = False) -> jax.Array | tuple[jax.Array, dict[str, Any]]:
  """BoDA loss of a batch against the (domain, class) pair centroids.

  Args:
    z: float [B, D] features (bfloat16 is promoted to float32).
    labels: int [B] class y_i in [0, C).
    domains: int [B] training-domain index d_i in [0, K).
    centroids: float [K, C, D] pair centroids mu (feature units). No gradient flows into them.
    counts: float [K, C] training-image counts N[d, c] of every pair (the fixed training counts, not a batch or
      moment count); 0 marks a missing pair, which is masked out everywhere. No gradient.
    nu: balancing exponent on N[m] / N[d_i, y_i] (static or traced float).
    temperature: calibration divisor of the logits (> 0).
    metric: 'euclidean' or 'mahalanobis' (static).
    precision: for 'mahalanobis', float [K, C, D] diagonal inverse variances or [K, C, D, D] full inverse
      covariances of each pair; ignored for 'euclidean'. No gradient.
    mask: bool [B] or None; False rows contribute nothing. Rows whose own pair has N = 0 (should not happen) are
      masked out as well.
    eps: floor on the squared distance before the square root (squared feature units), so the gradient is finite
      at zero distance.
    return_parts: also return a dict of logging scalars (no gradient):
      num_positives (count of positive (m, i)), num_rows (rows used), mean_positive_distance (mean dist over
      positives), mean_distance (mean dist over all present pairs of used rows), mean_positive_log_prob.

  Returns:
    Scalar loss (nats, at least float32); exactly 0 when the batch has no positive (m, i). With return_parts,
    (loss, parts).
  """
  z = jnp.asarray(z)
  dtype = loss_dtype(z, centroids)
  z = z.astype(dtype)
  labels = jnp.asarray(labels).astype(jnp.int32)
  domains = jnp.asarray(domains).astype(jnp.int32)
  centroids = jax.lax.stop_gradient(jnp.asarray(centroids).astype(dtype))
  counts = jax.lax.stop_gradient(jnp.asarray(counts).astype(dtype))
  if metric == "mahalanobis" and precision is not None:
    precision = jax.lax.stop_gradient(jnp.asarray(precision).astype(dtype))
  _check_shapes(z, labels, domains, centroids, counts, precision, metric)
  num_domains, num_classes, dim = centroids.shape
  num_pairs = num_domains * num_classes
  batch = z.shape[0]

  # Flatten pairs m = d * C + c.
  n_pair = counts.reshape(num_pairs)
  present = n_pair > 0  # [M]
  pair_domain = jnp.arange(num_pairs) // num_classes
  pair_class = jnp.arange(num_pairs) % num_classes
  # Missing pairs may hold garbage (zeros, NaN from a 0/0 mean); replace by zeros so that no NaN can reach the
  # value or the gradient through a masked branch.
  mu = jnp.where(present[:, None], centroids.reshape(num_pairs, dim), 0.0)
  prec = None
  if metric == "mahalanobis":
    prec = precision.reshape((num_pairs,) + precision.shape[2:])
    prec = jnp.where(present.reshape((num_pairs,) + (1,) * (prec.ndim - 1)), prec, 0.0)

  own = jnp.clip(domains, 0, num_domains - 1) * num_classes + jnp.clip(labels, 0, num_classes - 1)  # [B]
  n_own = n_pair[own]
  valid = (row_weights(mask, batch, dtype) > 0) & (n_own > 0)  # [B]
  n_own = jnp.where(valid, n_own, 1.0)
  z = jnp.where(valid[:, None], z, 0.0)

  dist = jnp.sqrt(jnp.maximum(pair_squared_distances(z, mu, prec), eps))  # [B, M]
  balance = (n_pair[None, :] / n_own[:, None]) ** nu  # [B, M]
  logits = -dist / n_own[:, None] * balance / temperature

  not_own = jnp.arange(num_pairs)[None, :] != own[:, None]
  candidates = present[None, :] & not_own & valid[:, None]  # denominator terms, positives included
  positives = candidates & (pair_class[None, :] == labels[:, None]) & (pair_domain[None, :] != domains[:, None])
  log_norm = masked_logsumexp(logits, candidates, axis=1)  # [B]
  log_prob = jnp.where(positives, logits - log_norm[:, None], 0.0)

  num_pos = jnp.sum(positives).astype(dtype)
  loss = jnp.where(num_pos > 0, -jnp.sum(log_prob) / jnp.maximum(num_pos, 1.0), 0.0)
  if not return_parts:
    return loss
  used = valid[:, None] & present[None, :]
  parts = jax.lax.stop_gradient({
      "num_positives": num_pos,
      "num_rows": jnp.sum(valid).astype(dtype),
      "mean_positive_distance": jnp.sum(jnp.where(positives, dist, 0.0)) / jnp.maximum(num_pos, 1.0),
      "mean_distance": jnp.sum(jnp.where(used, dist, 0.0)) / jnp.maximum(jnp.sum(used), 1).astype(dtype),
      "mean_positive_log_prob": jnp.sum(log_prob) / jnp.maximum(num_pos, 1.0),
  })
  return loss, parts
