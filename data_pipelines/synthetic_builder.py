"""`synthetic_wbc/<domain>`: generated smear-like single-cell images as a TFDS dataset (no download).

Wraps `data_pipelines.synthetic_wbc.generator`:
  generate_domain(domain, *, scale, seed) -> Iterator[SyntheticCell(id, image uint8 [H, W, 3], label
  (common class name), px_per_um)].
The generated images go through the same crop/resize/record code as real data (`base_builder`), so a
synthetic domain is stored exactly like a real one: path = cell id, original_label = label, group = sha1 of
the generated pixels (shape-prefixed).

Options: scale (default 0.02, fraction of the real domain's class counts the generator produces), seed
(default 0), plus image_size, fov_um, num_workers. Config name, hence directory:
`<domain>-scale<scale>-seed<seed>-s<S>-fov<fov>`.
Bump `SyntheticWbc.VERSION` whenever the generator's output changes, or delete the old directory: TFDS
reuses a prepared directory whose name and version match.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
from typing import Any

import numpy as np

from data_pipelines import base_builder
from wbcdg_jax.classes import CLASS_NAMES

GENERATOR_MODULE = "data_pipelines.synthetic_wbc.generator"


def generator_module():
  """The synthetic generator module (imported lazily: it is optional for real-data builds)."""
  return importlib.import_module(GENERATOR_MODULE)


def domains() -> tuple[str, ...]:
  """Names of the synthetic domains the generator offers."""
  return tuple(generator_module().DOMAINS)


@dataclasses.dataclass(eq=False)
class SyntheticConfig(base_builder.WbcConfig):
  """Adds the generator's domain, scale and seed."""

  domain: str = ""
  scale: float = 0.02
  seed: int = 0

  @classmethod
  def from_options(cls, variant: str | None = None, **options: Any) -> SyntheticConfig:
    """Like `WbcConfig.from_options`; variant is the domain ("matek19_like", ...)."""
    if not variant:
      raise ValueError(f"synthetic_wbc needs a domain: 'synthetic_wbc/<domain>', one of {domains()}")
    return cls._create(dict(options, domain=variant))

  def validate(self) -> None:
    super().validate()
    if self.domain not in domains():
      raise ValueError(f"unknown synthetic domain {self.domain!r}; available: {domains()}")
    if not float(self.scale) > 0:
      raise ValueError(f"scale must be > 0, got {self.scale!r}")
    if int(self.seed) != self.seed or self.seed < 0:
      raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
    self.scale, self.seed = float(self.scale), int(self.seed)

  def name_parts(self) -> list[str]:
    return [self.domain, f"scale{base_builder._num(self.scale)}",  # pylint: disable=protected-access
            f"seed{self.seed}"] + super().name_parts()


def _check_image(cell: Any) -> np.ndarray:
  image = np.asarray(cell.image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"synthetic cell {cell.id!r}: expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
  if cell.label not in CLASS_NAMES:
    raise ValueError(f"synthetic cell {cell.id!r}: label {cell.label!r} is not a common class name")
  return image


class SyntheticWbc(base_builder.WbcBuilder, skip_registration=True):
  """Synthetic white-blood-cell images imitating one real domain's staining, optics and class mix."""

  name = "synthetic_wbc"
  CONFIG_CLS = SyntheticConfig

  @property
  def registry_name(self) -> str:
    return f"{self.name}/{self.builder_config.domain}"

  def _candidates(self, dl_manager, report):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    report.source = (f"{GENERATOR_MODULE}.generate_domain({config.domain!r}, scale={config.scale}, "
                     f"seed={config.seed})")
    found_counts: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    cells = generator_module().generate_domain(config.domain, scale=config.scale, seed=config.seed)
    for cell in cells:
      image = _check_image(cell)
      found_counts[cell.label] += 1
      sizes[f"{image.shape[1]}x{image.shape[0]}"] += 1
      group = base_builder.sha1_hex(repr(image.shape).encode() + image.tobytes())
      yield base_builder.Candidate(
          path=str(cell.id), original_label=cell.label, class_name=cell.label,
          px_per_um=float(cell.px_per_um), group=group, load=lambda im=image: im)
    report.found_counts, report.native_sizes = dict(found_counts), dict(sizes)
