"""The PyTorch reference train step: the same ResNet, head, loss and optimizer as the JAX ERM step.

Run as a child process by the benchmark (`python -m wbcdg_jax.bench.torch_reference '<json spec>'`, one JSON line
`{"row": ...}` per batch as soon as it is measured, so that a child stopped by its time limit keeps its rows), so
that PyTorch's CUDA libraries and memory pool never meet JAX's in one process, and a crash inside
torch.compile costs one section, not the run. It imports no JAX.

The step: random images already on the device (float, ImageNet-normalised scale, no augmentation), forward,
softmax cross-entropy, backward, Adam. Batch norm frozen as in the JAX step (BN modules in eval mode: running
statistics fixed; their scale and bias still train). On CUDA: channels_last and bf16 autocast when the spec's
dtype is bfloat16, fused Adam. A `compile` variant wraps the model in torch.compile (static shapes) in its
`mode`: 'default', or 'reduce-overhead', which replays the forward and backward as CUDA graphs, so that the step
does not wait on the host's kernel launches (at total batch 64 on a slow host, PyTorch's are the bottleneck).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from typing import Any


def _model(depth: int, num_classes: int, head: str, mlp_width: int):
  """(model, implementation name): torchvision's resnet{depth} when importable, else the module-for-module mirror."""
  from torch import nn

  try:
    import torchvision
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    impl = f"torchvision {torchvision.__version__} resnet{depth}"
  except (ImportError, AttributeError):
    from wbcdg_jax.bench.torch_resnet import TorchvisionResNet
    model = TorchvisionResNet(depth)
    impl = f"wbcdg_jax.bench.torch_resnet depth {depth} (torchvision not importable)"
  dim = model.fc.in_features
  # The JAX Classifier's head: Dense(mlp_width) -> ReLU -> Dense(C), or one Dense.
  model.fc = (nn.Sequential(nn.Linear(dim, mlp_width), nn.ReLU(), nn.Linear(mlp_width, num_classes))
              if head == "mlp" else nn.Linear(dim, num_classes))
  return model, impl


def _freeze_batch_norm(model) -> None:
  """Running statistics fixed (eval mode), scale and bias trained: the JAX bn_mode='frozen'."""
  from torch import nn

  model.train()
  for m in model.modules():
    if isinstance(m, nn.modules.batchnorm._BatchNorm):  # pylint: disable=protected-access
      m.eval()
      for p in m.parameters():
        p.requires_grad_(True)


def time_step(*, depth: int, image_size: int, batch: int, dtype: str, compile_mode: str | None, warmup: int,
              steps: int, repeats: int, num_classes: int = 13, head: str = "mlp", mlp_width: int = 512,
              lr: float = 5e-5, device: str = "auto", seed: int = 0) -> dict[str, Any]:
  """Times the PyTorch train step.

  Args:
    compile_mode: None (eager) or a torch.compile mode ('default', 'reduce-overhead', ...).

  Returns:
    dict: images_per_s, step_ms (median over `repeats` windows of `steps` steps), first_call_s (first step, which
    includes torch.compile's work), compile_s (first_call_s minus one step), loss, device, impl, and settings.
  """
  import torch
  import torch.nn.functional as F

  torch.manual_seed(seed)
  if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
  cuda = device == "cuda"
  model, impl = _model(depth, num_classes, head, mlp_width)
  _freeze_batch_norm(model)
  model = model.to(device)
  images = torch.randn(batch, 3, image_size, image_size, device=device)
  if cuda:
    model = model.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
  labels = torch.randint(0, num_classes, (batch,), device=device)
  opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, fused=cuda)
  net = model if compile_mode is None else torch.compile(model, mode=compile_mode, dynamic=False)
  autocast = dtype == "bfloat16"
  # These modes replay CUDA graphs, which reuse their output buffers: each iteration is marked as a new one.
  graphs = compile_mode in ("reduce-overhead", "max-autotune")

  def step():
    if graphs:
      torch.compiler.cudagraph_mark_step_begin()
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
      loss = F.cross_entropy(net(images), labels)
    loss.backward()
    opt.step()
    return loss

  def sync():
    if cuda:
      torch.cuda.synchronize()

  sync()
  t0 = time.perf_counter()
  loss = step()
  sync()
  first = time.perf_counter() - t0
  for _ in range(warmup):
    loss = step()
  sync()
  windows = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(steps):
      loss = step()
    sync()
    windows.append((time.perf_counter() - t0) / steps)
  step_s = statistics.median(windows)
  return {"images_per_s": batch / step_s, "step_ms": 1e3 * step_s, "first_call_s": first,
          "compile_s": max(first - step_s, 0.0), "loss": float(loss.detach().float().cpu()),
          "device": torch.cuda.get_device_name() if cuda else "cpu", "impl": impl, "torch": torch.__version__,
          "channels_last": cuda, "autocast_bf16": autocast, "batch": batch}


def run(spec: dict[str, Any]):
  """One variant (spec['variant'] names it; spec['mode'] is None for eager, else the torch.compile mode) over
  spec['batches']; yields a row per batch (a failure is a row)."""
  for batch in spec["batches"]:
    try:
      row = time_step(depth=spec["depth"], image_size=spec["image_size"], batch=batch, dtype=spec["dtype"],
                      compile_mode=spec["mode"], warmup=spec["warmup"], steps=spec["steps"],
                      repeats=spec["repeats"], num_classes=spec["num_classes"], head=spec["head"],
                      mlp_width=spec["mlp_width"], lr=spec["lr"], device=spec.get("device", "auto"))
      row.update(variant=spec["variant"], status="ok")
    except Exception as e:  # pylint: disable=broad-except  # e.g. torch.compile failing: report and go on
      row = {"variant": spec["variant"], "batch": batch, "status": "skipped",
             "reason": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-4000:]}
    yield row


if __name__ == "__main__":
  for measured in run(json.loads(sys.argv[1])):
    print(json.dumps({"row": measured}), flush=True)
