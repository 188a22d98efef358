"""DomainBed Gaussian-kernel MMD penalty with static shapes (REFERENCE.md section 1, "MMD").

For every pair of domains a < b: mean K(a, a) + mean K(b, b) - 2 mean K(a, b), where
K(x, y) = sum_g exp(-g |x - y|^2) over the gammas and the means include the diagonal (as DomainBed); averaged
over the pairs. One [B, B] kernel matrix serves every pair; domain membership enters as one-hot weights, so
shapes stay static. A domain with no (unmasked) row is skipped with its pairs; a single row suffices for MMD.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from wbcdg_jax.losses.ce import loss_dtype
from wbcdg_jax.losses.coral import block_sums, domain_weights, pair_average

_HIGHEST = jax.lax.Precision.HIGHEST
DOMAINBED_GAMMAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def gaussian_kernel_matrix(z: jax.Array, gammas: Sequence[float] = DOMAINBED_GAMMAS) -> jax.Array:
  """Multi-bandwidth Gaussian kernel of every row pair.

  Squared distances use |x|^2 + |y|^2 - 2 x.y (as DomainBed) at HIGHEST matmul precision, clamped at 0, with the
  diagonal set exactly to 0 (the expansion leaves rounding noise there, which gamma = 1000 would magnify).

  Args:
    z: float [B, D].
    gammas: kernel bandwidths (inverse squared feature units).

  Returns:
    float [B, B] sum_g exp(-g * d2).
  """
  norm2 = jnp.sum(z * z, axis=1)
  d2 = norm2[:, None] + norm2[None, :] - 2.0 * jnp.matmul(z, z.T, precision=_HIGHEST)
  d2 = jnp.where(jnp.eye(z.shape[0], dtype=bool), 0.0, jnp.maximum(d2, 0.0))
  return sum(jnp.exp(-g * d2) for g in gammas)


def mmd_penalty(z: jax.Array, domains: jax.Array, *, num_domains: int, mask: jax.Array | None = None,
                gammas: Sequence[float] = DOMAINBED_GAMMAS) -> jax.Array:
  """DomainBed Gaussian MMD penalty averaged over domain pairs.

  Args:
    z: float [B, D] features (bfloat16 is promoted to float32).
    domains: int [B] domain index in [0, K).
    num_domains: static K.
    mask: bool [B] or None; False rows are left out.
    gammas: static tuple of kernel bandwidths.

  Returns:
    Scalar (dimensionless). 0 when fewer than two domains have a row.
  """
  z = jnp.asarray(z)
  z = z.astype(loss_dtype(z))
  if z.ndim != 2:
    raise ValueError(f"mmd_penalty: z must have shape [B, D], got {z.shape}")
  gammas = tuple(gammas)
  if not gammas:
    raise ValueError("mmd_penalty: gammas must name at least one bandwidth")
  weights = domain_weights(domains, mask, num_domains, z.dtype)  # [K, B]
  count = jnp.sum(weights, axis=1)
  # Zero unused rows: NaN/inf padding would survive a multiplication by a 0 weight.
  z = jnp.where(jnp.any(weights > 0, axis=0)[:, None], z, 0.0)
  kernel = gaussian_kernel_matrix(z, gammas)
  # block[a, b] = mean of the kernel over rows of domain a x rows of domain b.
  block = block_sums(weights, kernel) / jnp.maximum(count[:, None] * count[None, :], 1.0)

  def per_pair(a, b):
    return block[a, a] + block[b, b] - 2.0 * block[a, b]

  return pair_average(per_pair, count >= 1, num_domains).astype(z.dtype)
