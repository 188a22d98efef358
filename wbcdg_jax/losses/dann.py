"""Domain-adversarial pieces: gradient reversal, Ganin's schedule, the DomainBed discriminator, its losses.

REFERENCE.md section 1, "DANN". The encoder is trained against the discriminator either through
`gradient_reversal` (Ganin et al. 2016) or by DomainBed-style alternating updates; both use the discriminator and
`domain_adversarial_loss` below. CDANN adds a class embedding to z and class-balanced sample weights.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from wbcdg_jax.losses.ce import loss_dtype, per_sample_cross_entropy, row_weights, weighted_domain_mean


@jax.custom_vjp
def gradient_reversal(x, lambda_):
  """Identity forward; the backward pass multiplies the cotangent by -lambda_.

  Args:
    x: array (or pytree of arrays).
    lambda_: scalar (Python float or traced array, e.g. `ganin_lambda(progress)`); it receives a zero cotangent.

  Returns:
    x unchanged.
  """
  del lambda_
  return x


def _gradient_reversal_fwd(x, lambda_):
  return x, lambda_


def _gradient_reversal_bwd(lambda_, g):
  reversed_g = jax.tree.map(lambda t: (-lambda_ * t).astype(t.dtype), g)
  return reversed_g, jnp.zeros_like(lambda_)


gradient_reversal.defvjp(_gradient_reversal_fwd, _gradient_reversal_bwd)


def ganin_lambda(progress: jax.Array | float) -> jax.Array:
  """Ganin's schedule lambda_p = 2 / (1 + exp(-10 p)) - 1.

  Args:
    progress: training progress p (step / total steps), clipped to [0, 1].

  Returns:
    float scalar (or array of p's shape) rising from 0 at p = 0 to about 1 at p = 1.
  """
  p = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
  return 2.0 / (1.0 + jnp.exp(-10.0 * p)) - 1.0


class DomainDiscriminator(nn.Module):
  """DomainBed MLP domain classifier on features (optionally class-conditioned, for CDANN).

  Layout as DomainBed's `networks.MLP`: `depth` Dense layers in all; each of the first depth - 1 is
  Dense(width) -> Dropout -> ReLU, the last is Dense(num_domains) giving logits. DomainBed's defaults are
  width 256, depth 3, dropout 0. Flax default initializers (LeCun normal kernels, zero biases).

  Attributes:
    num_domains: K outputs.
    width: hidden width.
    depth: number of Dense layers (>= 1).
    dropout: dropout rate after each hidden Dense (needs a 'dropout' rng when train and rate > 0).
    num_classes: if set (CDANN), a learned class embedding (num_classes x D, unit normal init as PyTorch's
      nn.Embedding) is added to z before the MLP, and `labels` are required.
  """
  num_domains: int
  width: int = 256
  depth: int = 3
  dropout: float = 0.0
  num_classes: int | None = None

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None = None, *, train: bool) -> jax.Array:
    """Domain logits.

    Args:
      z: float [B, D] features.
      labels: int [B] classes (required iff num_classes is set).
      train: enables dropout.

    Returns:
      float [B, K] logits.
    """
    if self.depth < 1:
      raise ValueError(f"DomainDiscriminator.depth must be >= 1, got {self.depth}")
    x = z
    if self.num_classes is not None:
      if labels is None:
        raise ValueError("DomainDiscriminator: num_classes is set (CDANN), so labels [B] are required")
      embed = nn.Embed(self.num_classes, z.shape[-1], embedding_init=nn.initializers.normal(1.0),
                       name="class_embedding")
      x = x + embed(labels).astype(x.dtype)
    elif labels is not None:
      raise ValueError("DomainDiscriminator: labels were given but num_classes is None (plain DANN)")
    for i in range(self.depth - 1):
      x = nn.Dense(self.width, name=f"hidden_{i}")(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = nn.relu(x)
    return nn.Dense(self.num_domains, name="output")(x)


def domain_adversarial_loss(disc_logits: jax.Array, domains: jax.Array, mask: jax.Array | None = None,
                            class_weights: jax.Array | None = None) -> jax.Array:
  """Discriminator cross-entropy on the domain labels (weighted mean over rows).

  Args:
    disc_logits: float [B, K] discriminator logits.
    domains: int [B] domain labels.
    mask: bool [B] or None.
    class_weights: float [B] non-negative per-row weights (e.g. `cdann_class_weights`) or None (uniform).

  Returns:
    Scalar sum_i w_i ce_i / sum_i w_i over unmasked rows (nats); 0 if no row has weight. Normalizing by the
    weight sum makes the scale independent of how the weights were normalized.
  """
  disc_logits = jnp.asarray(disc_logits)
  batch = disc_logits.shape[0]
  weights = row_weights(mask, batch, loss_dtype(disc_logits))
  if class_weights is not None:
    class_weights = jnp.asarray(class_weights)
    if class_weights.shape != (batch,):
      raise ValueError(f"domain_adversarial_loss: class_weights must have shape ({batch},), got "
                       f"{class_weights.shape}")
    weights = weights * class_weights.astype(weights.dtype)
  ce = per_sample_cross_entropy(disc_logits, domains, weights > 0)
  return weighted_domain_mean(ce, weights, None, None)


def cdann_class_weights(labels: jax.Array, domains: jax.Array, counts: jax.Array | None = None,
                        mask: jax.Array | None = None, *, num_classes: int | None = None,
                        per_domain: bool = False) -> jax.Array:
  """Class-balanced per-row weights for the CDANN discriminator loss: w_i proportional to 1 / freq(y_i).

  DomainBed's CDANN weights row i by 1 / (batch count of y_i * number of classes) and sums. Here the frequency
  is, by choice:
    counts=None: the batch frequency of y_i among unmasked rows (DomainBed; needs num_classes);
    counts=N [K, C], per_domain=False (default with counts): the expected class frequency of a domain-balanced
      batch, f_c = mean over domains with images of N[d, c] / N[d] -- DomainBed's quantity without batch noise;
    counts=N, per_domain=True: the within-domain frequency N[d_i, y_i] / N[d_i], which balances the classes
      inside every domain so class priors that differ between domains cannot reveal the domain.
  The weights are normalized to sum to 1 over unmasked rows (each present class then carries equal total weight
  in the batch-frequency mode; equal to DomainBed's when every class 0..max label is in the batch).

  Args:
    labels: int [B] classes.
    domains: int [B] domains (used with per_domain=True).
    counts: float [K, C] training-image counts N, or None.
    mask: bool [B] or None; masked rows get weight 0.
    num_classes: static C, required when counts is None.
    per_domain: see above.

  Returns:
    float32 [B] non-negative weights summing to 1 over unmasked rows (all 0 if every row is masked).
  """
  labels = jnp.asarray(labels).astype(jnp.int32)
  valid = row_weights(mask, labels.shape[0], jnp.float32)
  if counts is None:
    if num_classes is None:
      raise ValueError("cdann_class_weights: pass counts [K, C] or the static num_classes for batch frequencies")
    batch_counts = jnp.sum(jax.nn.one_hot(labels, num_classes) * valid[:, None], axis=0)
    freq = batch_counts[jnp.clip(labels, 0, num_classes - 1)]
  else:
    counts = jnp.asarray(counts, jnp.float32)
    if counts.ndim != 2:
      raise ValueError(f"cdann_class_weights: counts must have shape [K, C], got {counts.shape}")
    k, c = counts.shape
    per_dom_total = jnp.sum(counts, axis=1, keepdims=True)
    within = counts / jnp.maximum(per_dom_total, 1.0)  # [K, C] N[d, c] / N[d]
    y = jnp.clip(labels, 0, c - 1)
    if per_domain:
      freq = within[jnp.clip(jnp.asarray(domains).astype(jnp.int32), 0, k - 1), y]
    else:
      has_images = (per_dom_total[:, 0] > 0).astype(jnp.float32)
      class_freq = jnp.sum(within * has_images[:, None], axis=0) / jnp.maximum(jnp.sum(has_images), 1.0)
      freq = class_freq[y]
  ok = (valid > 0) & (freq > 0)
  raw = jnp.where(ok, 1.0 / jnp.where(ok, freq, 1.0), 0.0)
  return raw / jnp.maximum(jnp.sum(raw), jnp.finfo(jnp.float32).tiny)
