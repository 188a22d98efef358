"""Masked softmax cross-entropy, optionally averaged per domain (REFERENCE.md section 1, "Cross-entropy").

Pure functions of JAX arrays: they work under `jax.jit`, `jax.grad` and `jax.vmap`, and keep every shape static
(masked rows are weighted by zero, never removed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def loss_dtype(*arrays: jax.Array) -> jnp.dtype:
  """Float dtype the losses compute in: at least float32 (bfloat16 features are promoted), float64 if given."""
  dtype = jnp.float32
  for a in arrays:
    if a is not None and jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating):
      dtype = jnp.promote_types(dtype, jnp.asarray(a).dtype)
  return dtype


def row_weights(mask: jax.Array | None, batch: int, dtype=jnp.float32) -> jax.Array:
  """0/1 float weights [B] from a bool mask [B] (None means every row counts)."""
  if mask is None:
    return jnp.ones((batch,), dtype)
  mask = jnp.asarray(mask)
  if mask.shape != (batch,):
    raise ValueError(f"mask must have shape ({batch},) to match the batch, got {mask.shape}")
  return mask.astype(dtype)


def per_sample_cross_entropy(logits: jax.Array, labels: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Softmax cross-entropy of each row.

  Args:
    logits: float [B, C] unnormalized class scores.
    labels: int [B] class indices in [0, C). Out-of-range labels (e.g. -1 on padding rows) are clipped for the
      gather, so callers must mask such rows.
    valid: optional bool [B]; logits of other rows are replaced by 0 first, so garbage (NaN/inf) on padding rows
      reaches neither the value nor the gradient.

  Returns:
    float [B] (at least float32): logsumexp(logits_i) - logits_i[y_i], in nats.
  """
  logits = jnp.asarray(logits).astype(loss_dtype(logits))
  if logits.ndim != 2:
    raise ValueError(f"logits must have shape [B, C], got {logits.shape}")
  if valid is not None:
    logits = jnp.where(valid[:, None], logits, 0.0)
  labels = jnp.clip(jnp.asarray(labels).astype(jnp.int32), 0, logits.shape[1] - 1)
  picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  return jax.nn.logsumexp(logits, axis=1) - picked


def weighted_domain_mean(values: jax.Array, weights: jax.Array, domains: jax.Array | None,
                         num_domains: int | None) -> jax.Array:
  """Weighted mean of per-row `values` [B], or the mean over present domains of each domain's weighted mean.

  Args:
    values: float [B] per-row values.
    weights: float [B] non-negative row weights (0 drops a row).
    domains: int [B] domain index of each row, or None for a plain weighted mean.
    num_domains: static number of domains K (required with `domains`).

  Returns:
    Scalar. 0 when no row has weight (never NaN). A domain with zero total weight in the batch is skipped.
  """
  # Zero the value itself, not only its weight: 0 * inf on a garbage padding row would be NaN.
  values = jnp.where(weights > 0, values, 0.0)
  if domains is None:
    if num_domains is not None:
      raise ValueError("num_domains was given without domains; pass both or neither")
    total = jnp.sum(weights)
    return jnp.sum(weights * values) / jnp.maximum(total, jnp.finfo(values.dtype).tiny)
  if num_domains is None:
    raise ValueError("domains was given without num_domains; num_domains (K) must be a static int")
  onehot = jax.nn.one_hot(domains, num_domains, dtype=values.dtype) * weights[:, None]  # [B, K]
  per_domain_weight = jnp.sum(onehot, axis=0)
  per_domain_sum = jnp.sum(onehot * values[:, None], axis=0)
  present = per_domain_weight > 0
  per_domain_mean = per_domain_sum / jnp.where(present, per_domain_weight, 1.0)
  num_present = jnp.sum(present)
  return jnp.sum(jnp.where(present, per_domain_mean, 0.0)) / jnp.maximum(num_present, 1).astype(values.dtype)


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None,
                  domains: jax.Array | None = None, num_domains: int | None = None) -> jax.Array:
  """Masked mean softmax cross-entropy.

  Without `domains`, the mean over unmasked rows. With `domains` and `num_domains`, the mean over the domains
  present in the batch (at least one unmasked row) of each domain's mean cross-entropy; with equal per-domain
  batches this equals the batch mean.

  Args:
    logits: float [B, C] class scores.
    labels: int [B] class indices in [0, C).
    mask: bool [B] or None; False rows (padding) contribute nothing.
    domains: int [B] domain index in [0, K) or None.
    num_domains: static int K, required with `domains`.

  Returns:
    float scalar (nats), at least float32. 0 when every row is masked.
  """
  logits = jnp.asarray(logits)
  weights = row_weights(mask, logits.shape[0], loss_dtype(logits))
  ce = per_sample_cross_entropy(logits, labels, weights > 0)
  return weighted_domain_mean(ce, weights, domains, num_domains)
