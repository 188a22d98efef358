"""DomainBed CORAL penalty with static shapes (REFERENCE.md section 1, "CORAL").

For every pair of domains a < b: mean((mean_a - mean_b)^2) + mean((Cov_a - Cov_b)^2), with the unbiased
(n - 1) batch covariances, averaged over the pairs. Rows are assigned to domains by one-hot weights instead of
boolean indexing, so the batch shape stays static; domains with fewer than 2 (unmasked) rows have no unbiased
covariance and are skipped, as are the pairs they belong to.

The covariance term never forms a [D, D] covariance. With x_i a row centred on its own domain's mean and
Cov_a = sum_{i in a} x_i x_i^T / (n_a - 1), the Frobenius products are
<Cov_a, Cov_b> = sum_{i in a, j in b} (x_i . x_j)^2 / ((n_a - 1)(n_b - 1)), so one [B, B] Gram matrix of the
centred rows gives |Cov_a - Cov_b|^2 = <Cov_a, Cov_a> + <Cov_b, Cov_b> - 2 <Cov_a, Cov_b> for every pair:
B^2 D multiply-adds instead of K D^2 B, and kilobytes instead of K [D, D] float32 matrices (for D = 2048,
16 MiB each, written and read again by the backward pass). The subtraction loses about float32's relative
precision of |Cov_a|^2 (not of the difference); batch covariances of different rows (of rank n - 1 << D) are
far apart, so this stays well inside the loss's noise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wbcdg_jax.losses.ce import loss_dtype, row_weights

_HIGHEST = jax.lax.Precision.HIGHEST


def domain_weights(domains: jax.Array, mask: jax.Array | None, num_domains: int, dtype=jnp.float32) -> jax.Array:
  """0/1 float weights [K, B]: row i belongs to domain k and is unmasked."""
  domains = jnp.asarray(domains)
  weights = row_weights(mask, domains.shape[0], dtype)
  return jax.nn.one_hot(domains, num_domains, dtype=dtype).T * weights[None, :]


def domain_means_and_gram(z: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-domain means and the Gram matrix of the rows centred on their own domain's mean.

  Args:
    z: float [B, D] features; rows of no domain must be 0 (finite).
    weights: float 0/1 [K, B] domain membership weights (from `domain_weights`), at most one 1 a row.

  Returns:
    (count [K], mean [K, D], gram [B, B]) with gram[i, j] = x_i . x_j, x_i = z_i - mean[domain of i] (0 for a
    row of no domain).
  """
  count = jnp.sum(weights, axis=1)
  mean = jnp.matmul(weights, z, precision=_HIGHEST) / jnp.maximum(count, 1.0)[:, None]
  # weights[:, i] is one-hot (or all 0): this picks row i's own domain mean exactly, as a sum over the few domains
  # that fuses into the subtraction (a matmul would be kernels of its own, forward and backward).
  centered = z - jnp.sum(weights[:, :, None] * mean[:, None, :], axis=0)
  gram = jnp.matmul(centered, centered.T, precision=_HIGHEST)
  return count, mean, gram


def covariance_products(weights: jax.Array, count: jax.Array, gram: jax.Array) -> jax.Array:
  """Frobenius products <Cov_a, Cov_b> of the unbiased domain covariances, from the centred rows' Gram matrix.

  Args:
    weights: float 0/1 [K, B] domain membership.
    count: float [K] rows per domain.
    gram: float [B, B] from `domain_means_and_gram`.

  Returns:
    float [K, K] (squared feature units squared); covariances divide by max(count - 1, 1), so entries of a
    domain with count < 2 are meaningless.
  """
  scaled = weights / jnp.maximum(count - 1.0, 1.0)[:, None]  # [K, B]
  return block_sums(scaled, gram * gram)


def block_sums(weights: jax.Array, matrix: jax.Array) -> jax.Array:
  """sum_ij weights[a, i] weights[b, j] matrix[i, j] for every pair of domains (a, b).

  One fused reduction over the [K, K, B, B] products (K is a handful of domains) rather than two small matmuls,
  which would be kernels of their own forward and backward.

  Args:
    weights: float [K, B] row weights per domain.
    matrix: float [B, B].

  Returns:
    float [K, K].
  """
  return jnp.sum(weights[:, None, :, None] * weights[None, :, None, :] * matrix[None, None], axis=(2, 3))


def pair_average(per_pair, valid_domain: jax.Array, num_domains: int) -> jax.Array:
  """Mean of per_pair(a, b) over domain pairs a < b where both domains are valid; 0 if there is none.

  Args:
    per_pair: callable (a, b) -> scalar, a and b static ints.
    valid_domain: bool [K].
    num_domains: static K.
  """
  total = 0.0
  num = 0.0
  for a in range(num_domains):
    for b in range(a + 1, num_domains):
      ok = valid_domain[a] & valid_domain[b]
      total = total + jnp.where(ok, per_pair(a, b), 0.0)
      num = num + ok.astype(jnp.float32)
  return total / jnp.maximum(num, 1.0)


def coral_penalty(z: jax.Array, domains: jax.Array, *, num_domains: int, mask: jax.Array | None = None) -> jax.Array:
  """DomainBed CORAL penalty averaged over domain pairs.

  Args:
    z: float [B, D] features (bfloat16 is promoted to float32).
    domains: int [B] domain index in [0, K).
    num_domains: static K.
    mask: bool [B] or None; False rows are left out.

  Returns:
    Scalar (squared feature units for the mean term, their square for the covariance term). 0 when fewer than
    two domains have at least 2 rows.
  """
  z = jnp.asarray(z)
  z = z.astype(loss_dtype(z))
  if z.ndim != 2:
    raise ValueError(f"coral_penalty: z must have shape [B, D], got {z.shape}")
  weights = domain_weights(domains, mask, num_domains, z.dtype)
  # Zero unused rows: NaN/inf padding would survive a multiplication by a 0 weight.
  z = jnp.where(jnp.any(weights > 0, axis=0)[:, None], z, 0.0)
  count, mean, gram = domain_means_and_gram(z, weights)
  products = covariance_products(weights, count, gram)
  dim = z.shape[1]

  def per_pair(a, b):
    cov_term = (products[a, a] + products[b, b] - 2.0 * products[a, b]) / (dim * dim)
    # |Cov_a - Cov_b|^2 >= 0; rounding of the expansion can leave it a hair below.
    return jnp.mean((mean[a] - mean[b])**2) + jnp.maximum(cov_term, 0.0)

  return pair_average(per_pair, count >= 2, num_domains).astype(z.dtype)
