"""DomainBed CORAL penalty with static shapes (REFERENCE.md section 1, "CORAL").

For every pair of domains a < b: mean((mean_a - mean_b)^2) + mean((Cov_a - Cov_b)^2), with the unbiased
(n - 1) batch covariances, averaged over the pairs. Rows are assigned to domains by one-hot weights instead of
boolean indexing, so the batch shape stays static; domains with fewer than 2 (unmasked) rows have no unbiased
covariance and are skipped, as are the pairs they belong to.
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


def domain_means_and_covariances(z: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-domain mean and unbiased covariance from one-hot row weights.

  Args:
    z: float [B, D] features.
    weights: float 0/1 [K, B] domain membership weights (from `domain_weights`).

  Returns:
    (count [K], mean [K, D], cov [K, D, D]); cov divides by max(count - 1, 1) and is meaningless for count < 2.
  """
  count = jnp.sum(weights, axis=1)
  mean = jnp.matmul(weights, z, precision=_HIGHEST) / jnp.maximum(count, 1.0)[:, None]
  centered = (z[None, :, :] - mean[:, None, :]) * weights[:, :, None]  # [K, B, D]; other rows are zeroed
  scatter = jnp.einsum("kbd,kbe->kde", centered, centered, precision=_HIGHEST)
  cov = scatter / jnp.maximum(count - 1.0, 1.0)[:, None, None]
  return count, mean, cov


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
  count, mean, cov = domain_means_and_covariances(z, weights)

  def per_pair(a, b):
    return jnp.mean((mean[a] - mean[b])**2) + jnp.mean((cov[a] - cov[b])**2)

  return pair_average(per_pair, count >= 2, num_domains).astype(z.dtype)
