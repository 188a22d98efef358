"""The train state: one small pytree holding everything a step reads and writes.

No hidden globals: the step counter (which also seeds every random draw), the classifier's parameters and frozen
or running batch statistics, the optimizer state, the BoDA statistics and the DANN discriminator with its own
optimizer all live here, so one orbax save captures a run exactly.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wbcdg_jax import losses
from wbcdg_jax.algorithms import LossSpec


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates applied so far
  params: Any  # {'encoder': ..., 'head': ...}
  batch_stats: Any  # running statistics of the encoder's batch norms (fixed when bn_mode='frozen')
  opt_state: Any
  boda: Any = None  # losses.BodaStats or None
  disc_params: Any = None  # DANN/CDANN discriminator parameters or None
  disc_opt_state: Any = None
  pair_counts: Any = None  # float32 [K, C]: training images per (source domain, class); 0 = missing pair
  skipped: Any = None  # int32 scalar: updates skipped because the loss or gradient was not finite
  first_bad_step: Any = None  # int32 scalar: the first such step, -1 if none


def make_optimizer(name: str, lr: float, weight_decay: float = 0.0, grad_clip: float = 0.0,
                   trainable: Any = None, flatten: bool = False) -> optax.GradientTransformation:
  """Adam or AdamW (no schedule, DomainBed style), optional global-norm clipping.

  Args:
    trainable: optional pytree of bools shaped like the params; False leaves are frozen (their updates are zero
      and they hold no optimizer moments).
    flatten: update one float32 vector of all (trainable) parameters (optax.flatten): the same arithmetic, in a
      few large kernels; the moments are then stored as that vector.
  """
  if name == "adam":
    tx = optax.adam(lr) if not weight_decay else optax.chain(optax.add_decayed_weights(weight_decay),
                                                              optax.adam(lr))
  elif name == "adamw":
    tx = optax.adamw(lr, weight_decay=weight_decay)
  else:
    raise ValueError(f"config.optim.name={name!r} is not 'adam' or 'adamw'")
  if grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
  if flatten:
    tx = optax.flatten(tx)
  if trainable is not None:
    labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable)
    tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
  return tx


def create_train_state(*, params: Any, batch_stats: Any, tx: optax.GradientTransformation,
                       pair_counts: Any, boda: Any = None, disc_params: Any = None,
                       disc_tx: optax.GradientTransformation | None = None) -> TrainState:
  """Assembles a fresh state at step 0."""
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      boda=boda,
      disc_params=disc_params,
      disc_opt_state=None if disc_params is None else disc_tx.init(disc_params),
      pair_counts=jnp.asarray(pair_counts, jnp.float32),
      skipped=jnp.zeros((), jnp.int32),
      first_bad_step=jnp.full((), -1, jnp.int32),
  )


def init_discriminator(spec: LossSpec, *, key: jax.Array, feature_dim: int, width: int, depth: int,
                       dropout: float) -> tuple[nn.Module | None, Any]:
  """The DANN/CDANN domain discriminator and its parameters, or (None, None) when the algorithm has none."""
  if not spec.dann_weight:
    return None, None
  disc = losses.DomainDiscriminator(num_domains=spec.num_domains, width=width, depth=depth, dropout=dropout,
                                    num_classes=spec.num_classes if spec.dann_conditional else None)
  z = jnp.zeros((1, feature_dim), jnp.float32)
  labels = jnp.zeros((1,), jnp.int32) if spec.dann_conditional else None
  params = disc.init({"params": key}, z, labels, train=False)["params"]
  return disc, params


def count_pairs(labels_per_domain: list[np.ndarray], num_classes: int) -> np.ndarray:
  """N[d, c]: training images of class c in source domain d, float32 [K, C] (0 marks a missing pair)."""
  return np.stack([np.bincount(np.asarray(l, np.int64), minlength=num_classes)[:num_classes]
                   for l in labels_per_domain]).astype(np.float32)
