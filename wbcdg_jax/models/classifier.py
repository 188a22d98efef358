"""The classifier used by every algorithm: a ResNet encoder giving features z and a head giving logits.

Parameters live under two top-level names, `encoder` and `head`, so the decoupled stage ("Ours+") can freeze the
first and re-initialise the second by name, and converted ImageNet weights can be dropped into `encoder` alone.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from wbcdg_jax.models.resnet import ResNetEncoder

HEAD_KINDS = ("linear", "mlp")


class Head(nn.Module):
  """Feature dropout followed by a linear layer or a one-hidden-layer MLP; computes in float32.

  Attributes:
    num_classes: number of output logits C.
    kind: 'linear' or 'mlp'.
    mlp_width: hidden width of the MLP head.
    dropout: dropout rate applied to the features before the head (0 disables it).
  """

  num_classes: int
  kind: str = "mlp"
  mlp_width: int = 512
  dropout: float = 0.0

  @nn.compact
  def __call__(self, z, *, train: bool = False):
    """Maps features z [B, D] to logits [B, C] (float32)."""
    if self.kind not in HEAD_KINDS:
      raise ValueError(f"model.head={self.kind!r} is not one of {HEAD_KINDS}")
    x = nn.Dropout(self.dropout, deterministic=not train)(z)
    if self.kind == "mlp":
      x = nn.relu(nn.Dense(self.mlp_width, name="hidden")(x))
    return nn.Dense(self.num_classes, name="out")(x)


# Classifier fields that choose how the same function is computed (speed only, same variables and outputs).
IMPLEMENTATION_FIELDS = ("fold_frozen_bn", "max_pool", "stem_space_to_depth", "relu_grad_from_output")


class Classifier(nn.Module):
  """ResNet encoder + head. `apply(variables, images, train=...) -> (z [B, D] float32, logits [B, C] float32)`.

  In training with dropout > 0 pass `rngs={'dropout': key}`; with bn_mode='train' pass `mutable=['batch_stats']`.
  """

  num_classes: int
  depth: int = 50
  bn_mode: str = "frozen"
  dtype: Any = jnp.float32
  head: str = "mlp"
  mlp_width: int = 512
  dropout: float = 0.0
  fold_frozen_bn: bool = True
  max_pool: str = "taps"
  stem_space_to_depth: bool = True
  relu_grad_from_output: bool = True

  def setup(self):
    self.encoder = ResNetEncoder(depth=self.depth, bn_mode=self.bn_mode, dtype=self.dtype,
                                 fold_frozen_bn=self.fold_frozen_bn, max_pool=self.max_pool,
                                 stem_space_to_depth=self.stem_space_to_depth,
                                 relu_grad_from_output=self.relu_grad_from_output)
    self.classifier_head = Head(self.num_classes, kind=self.head, mlp_width=self.mlp_width, dropout=self.dropout,
                                name="head")

  def __call__(self, images, *, train: bool = False):
    z = self.encoder(images, train=train)
    return z, self.classifier_head(z, train=train)

  def features(self, images):
    """Eval-mode features z [B, D]; used by the BoDA statistics pass."""
    return self.encoder(images, train=False)

  def logits_from_features(self, z, *, train: bool = False):
    """Head alone: logits [B, C] from features [B, D] (decoupled stage 2 on cached features)."""
    return self.classifier_head(z, train=train)
