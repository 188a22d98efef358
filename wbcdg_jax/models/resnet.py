"""torchvision-compatible ResNet (v1.5) encoders in Flax Linen.

The layout mirrors torchvision's `resnet18/34/50/101/152` module for module, so that a converted ImageNet
state_dict gives the same outputs (REFERENCE.md section 2):

* stem: `conv1` 7x7 stride 2 pad 3 -> `bn1` -> ReLU -> max pool 3x3 stride 2 pad 1;
* stages `layer1` .. `layer4` of basic (18/34) or bottleneck (50+) blocks; v1.5 puts the stride on the 3x3 conv;
* the first block of a stage that changes shape has a projection shortcut `downsample_conv`/`downsample_bn`.

Padding is always explicit and symmetric: Flax's 'SAME' pads (0, 1) for stride 2 on even sizes, which shifts every
feature map by a pixel relative to PyTorch and breaks converted weights.

Batch norm has two modes. 'frozen' (the method's setting, DomainBed style) always normalises with the stored
running statistics, which never change, while scale and bias stay trainable. 'train' uses batch statistics in
training and updates the running averages (the `batch_stats` collection must then be mutable).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

# Blocks per stage for each supported depth, and whether the depth uses bottleneck blocks.
STAGE_SIZES: dict[int, tuple[Sequence[int], bool]] = {
    10: ((1, 1, 1, 1), False),  # not a torchvision model: a tiny encoder for CPU smoke runs and tests
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
BN_MODES = ("frozen", "train")

# torchvision initialises convolutions with kaiming_normal_(mode='fan_out', nonlinearity='relu').
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def feature_dim(depth: int, width: int = 64) -> int:
  """Width of the pooled features z for a ResNet of `depth` (2048 for ResNet-50, 512 for ResNet-18)."""
  _, bottleneck = STAGE_SIZES[depth]
  return width * 8 * (4 if bottleneck else 1)


class _Block(nn.Module):
  """One residual block; `bottleneck` selects the 1x1-3x3-1x1 (x4) form, otherwise 3x3-3x3."""

  features: int
  strides: int
  bottleneck: bool
  norm: Any
  conv: Any

  @nn.compact
  def __call__(self, x):
    out_features = self.features * (4 if self.bottleneck else 1)
    if self.bottleneck:
      y = nn.relu(self.norm(name="bn1")(self.conv(self.features, (1, 1), name="conv1")(x)))
      y = self.conv(self.features, (3, 3), strides=self.strides, padding=((1, 1), (1, 1)), name="conv2")(y)
      y = nn.relu(self.norm(name="bn2")(y))
      y = self.norm(name="bn3")(self.conv(out_features, (1, 1), name="conv3")(y))
    else:
      y = self.conv(self.features, (3, 3), strides=self.strides, padding=((1, 1), (1, 1)), name="conv1")(x)
      y = nn.relu(self.norm(name="bn1")(y))
      y = self.conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
      y = self.norm(name="bn2")(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != out_features:
      shortcut = self.conv(out_features, (1, 1), strides=self.strides, name="downsample_conv")(x)
      shortcut = self.norm(name="downsample_bn")(shortcut)
    return nn.relu(y + shortcut)


class ResNetEncoder(nn.Module):
  """ResNet trunk with global average pooling.

  Attributes:
    depth: 10, 18, 34, 50, 101 or 152.
    bn_mode: 'frozen' (running statistics fixed, scale/bias trained) or 'train'.
    dtype: compute dtype (e.g. jnp.bfloat16); parameters are always float32.
    width: channels of the first stage (64 in torchvision).
  """

  depth: int = 50
  bn_mode: str = "frozen"
  dtype: Any = jnp.float32
  width: int = 64

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    """Maps normalised images [B, H, W, 3] (any float dtype) to pooled features z [B, D] in float32."""
    if self.depth not in STAGE_SIZES:
      raise ValueError(f"model.depth={self.depth} is not supported; choose one of {sorted(STAGE_SIZES)}")
    if self.bn_mode not in BN_MODES:
      raise ValueError(f"model.bn_mode={self.bn_mode!r} is not one of {BN_MODES}")
    stage_sizes, bottleneck = STAGE_SIZES[self.depth]
    use_running_average = self.bn_mode == "frozen" or not train
    # torchvision: eps 1e-5, momentum 0.1 on the new value == Flax momentum 0.9 on the old value.
    norm = functools.partial(nn.BatchNorm, use_running_average=use_running_average, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=_conv_init, padding=((0, 0), (0, 0)))
    x = jnp.asarray(images, self.dtype)
    x = conv(self.width, (7, 7), strides=2, padding=((3, 3), (3, 3)), name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(stage_sizes):
      for block in range(num_blocks):
        x = _Block(self.width * 2**stage, strides=2 if stage > 0 and block == 0 else 1, bottleneck=bottleneck,
                   norm=norm, conv=conv, name=f"layer{stage + 1}_{block}")(x)
    # Pool in float32: the mean over H*W positions loses precision in bfloat16.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
