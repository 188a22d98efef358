"""Pure-PyTorch ResNets used only as test references (torchvision is not installed).

`TorchvisionResNet` (wbcdg_jax/bench/torch_resnet.py, shared with the benchmark) mirrors torchvision.models.resnet
module for module (so its state_dict keys and shapes are torchvision's: conv1, bn1, layer1.0.conv1, ...,
layerS.0.downsample.0/.1, fc). `KerasResNetV1` reproduces keras.applications ResNet50 semantics (v1 stride on
the first 1x1 conv, biased convs, BN eps 1.001e-5, caffe inputs, zero padding) with Keras layer names, and can
move the stride to the 3x3 conv to isolate that difference.
Import only after `pytest.importorskip('torch')`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from wbcdg_jax.bench.torch_resnet import TorchvisionResNet  # noqa: F401  (re-exported for the tests)


def randomize_(model: nn.Module, images: torch.Tensor, seed: int = 0) -> None:
  """Gives every BN non-trivial but well-scaled statistics and affine parameters.

  Running statistics are first set to the real activation statistics of `images` (cumulative average, one pass),
  then perturbed, so eval-mode activations stay O(1) through a deep network while no statistic is 0/1.
  """
  gen = torch.Generator().manual_seed(seed)
  bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  with torch.no_grad():
    for bn in bns:
      bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=gen))
      bn.bias.copy_(0.2 * torch.randn(bn.bias.shape, generator=gen))
      bn.momentum = None  # cumulative average: one pass sets running stats to this batch's statistics
      bn.reset_running_stats()
    model.train()
    model(images)
    for bn in bns:
      bn.momentum = 0.1
      bn.running_mean.add_(0.1 * torch.randn(bn.running_mean.shape, generator=gen))
      bn.running_var.mul_(0.8 + 0.4 * torch.rand(bn.running_var.shape, generator=gen))
      bn.num_batches_tracked.fill_(7)
    if hasattr(model, "fc"):
      model.fc.weight.mul_(0.3)
  model.eval()


def state_dict_numpy(model: nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


class _KerasConvBN(nn.Module):
  def __init__(self, cin, cout, k, stride, pad):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, k, stride, pad, bias=True)
    self.bn = nn.BatchNorm2d(cout, eps=1.001e-5)

  def forward(self, x):
    return self.bn(self.conv(x))


class _KerasBlock1(nn.Module):
  """keras.applications.resnet.block1; stride on '1x1' (Keras) or '3x3' (to compare with v1.5)."""

  def __init__(self, cin, filters, stride, conv_shortcut, stride_on):
    super().__init__()
    s1, s3 = (stride, 1) if stride_on == "1x1" else (1, stride)
    self.c0 = _KerasConvBN(cin, 4 * filters, 1, stride, 0) if conv_shortcut else None
    self.c1 = _KerasConvBN(cin, filters, 1, s1, 0)
    self.c2 = _KerasConvBN(filters, filters, 3, s3, 1)
    self.c3 = _KerasConvBN(filters, 4 * filters, 1, 1, 0)

  def forward(self, x):
    shortcut = x if self.c0 is None else self.c0(x)
    y = torch.relu(self.c1(x))
    y = torch.relu(self.c2(y))
    return torch.relu(shortcut + self.c3(y))


class KerasResNetV1(nn.Module):
  """Keras ResNet50 (v1) semantics; `layer_weights()` gives {keras layer name: {field: array}}."""

  def __init__(self, stride_on: str = "1x1"):
    super().__init__()
    self.conv1 = _KerasConvBN(3, 64, 7, 2, 3)
    self.names = {"conv1": self.conv1}
    blocks, cin = [], 64
    for stage, (filters, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=2):
      for b in range(1, n + 1):
        stride = 2 if (b == 1 and stage > 2) else 1
        block = _KerasBlock1(cin, filters, stride, conv_shortcut=(b == 1), stride_on=stride_on)
        cin = 4 * filters
        blocks.append(block)
        for k in range(4):
          unit = getattr(block, f"c{k}")
          if unit is not None:
            self.names[f"conv{stage}_block{b}_{k}"] = unit
    self.blocks = nn.Sequential(*blocks)
    self.predictions = nn.Linear(2048, 1000)

  def load_from(self, other: "KerasResNetV1") -> None:
    self.load_state_dict(other.state_dict())

  def forward(self, x_caffe):
    x = torch.relu(self.conv1(x_caffe))
    x = nn.functional.max_pool2d(nn.functional.pad(x, (1, 1, 1, 1)), 3, 2)  # Keras zero-pads before pooling
    x = self.blocks(x)
    return self.predictions(x.mean(dim=(2, 3)))

  def layer_weights(self) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for prefix, unit in self.names.items():
      out[f"{prefix}_conv"] = {"kernel": unit.conv.weight.detach().numpy().transpose(2, 3, 1, 0).copy(),
                               "bias": unit.conv.bias.detach().numpy().copy()}
      out[f"{prefix}_bn"] = {"gamma": unit.bn.weight.detach().numpy().copy(),
                             "beta": unit.bn.bias.detach().numpy().copy(),
                             "moving_mean": unit.bn.running_mean.numpy().copy(),
                             "moving_variance": unit.bn.running_var.numpy().copy()}
    out["predictions"] = {"kernel": self.predictions.weight.detach().numpy().T.copy(),
                          "bias": self.predictions.bias.detach().numpy().copy()}
    return out
