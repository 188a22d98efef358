"""An in-memory domain for pipeline and trainer tests (no files)."""

import numpy as np


class MemoryDomain:
  """The DomainData fields the pipeline and the trainer read: .name, .image_size S, .labels int64 [N], .paths [N],
  .source (a list of {'image': uint8 [S, S, 3], 'label': int}), drawn from `seed`."""

  def __init__(self, name: str, n: int, seed: int, *, image_size: int = 8, num_classes: int = 3):
    rng = np.random.default_rng(seed)
    self.name = name
    self.image_size = image_size
    self.labels = rng.integers(0, num_classes, n).astype(np.int64)
    self.paths = np.asarray([f"{name}/{i}" for i in range(n)])
    self.source = [{"image": rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8), "label": label}
                   for label in self.labels]
