"""Synthetic single-white-cell images in three domains imitating Matek_19, Acevedo_20 and INT_20/MLL23.

Each image is a field of a stained blood smear centred on one white cell (morphology.py) among red cells and
platelets (background.py), drawn as optical density and photographed by a domain-specific camera (stains.py).
Domains differ the way the real datasets do: native size and resolution (px/um), class set and proportions
(REFERENCE.md section 3 counts after mapping to the 13 common classes), stain palette and its spread within the
domain (strong for Acevedo-like, with a separate colour cluster for the odd-sized images), white point, camera
tone curve, illumination gradient and vignetting, focus blur and defocus, chromatin texture, red-cell density,
sensor noise and JPEG compression (Acevedo-like: variable quality, Matek-like: lossless, INT-like: mild).
Cell sizes (um) and shapes are the same in every domain.

Every cell is a pure function of (domain, label, index, seed): its random stream is seeded from those four
numbers only, so cells can be generated in any order, in parallel or sharded, with identical bytes.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping

import numpy as np

from data_pipelines.synthetic_wbc import background
from data_pipelines.synthetic_wbc.morphology import render_wbc, WbcLayer
from data_pipelines.synthetic_wbc.stains import LN10, DomainStyle, expose, log_exposure, sample_palette
from wbcdg_jax.classes import CLASS_NAMES, class_index

DOMAINS: tuple[str, ...] = ("matek19_like", "acevedo20_like", "int20_like")

# Stain vectors (OD per unit concentration, RGB) shared as a starting point by the domains.
_BASE_STAINS = {
    "chromatin": (0.50, 0.95, 0.22),
    "basophilic": (0.60, 0.38, 0.10),
    "acidophilic": (0.10, 0.50, 0.22),
    "rbc": (0.03, 0.19, 0.18),
    "eos_granule": (0.04, 0.55, 0.75),
    "baso_granule": (0.80, 1.00, 0.45),
    "azur_granule": (0.30, 0.90, 0.35),
    "neut_granule": (0.22, 0.60, 0.25),
    "platelet": (0.40, 0.80, 0.22),
    "plasma": (0.015, 0.03, 0.02),
}


def _stains(scale: Mapping[str, float] | None = None, **override) -> dict[str, tuple[float, float, float]]:
  """Base stains with per-stain strength multipliers (`scale`) and replaced vectors (`override`)."""
  out = {}
  for k, v in _BASE_STAINS.items():
    vec = override.get(k, v)
    s = (scale or {}).get(k, 1.0)
    out[k] = tuple(float(c) * s for c in vec)
  return out


@dataclasses.dataclass(frozen=True)
class DomainSpec:
  """One synthetic domain.

  Attributes:
    name: domain name (one of DOMAINS).
    px_per_um: resolution of the images.
    image_shape: default (H, W) in pixels.
    class_counts: real image counts per common class name (only classes present in the real dataset).
    source: the real dataset imitated.
    style: stain palette and optics (stains.DomainStyle).
    odd_shapes: ((H, W), probability) of odd-sized images, drawn only for classes in odd_classes.
    odd_classes: classes that may come out odd-sized.
    odd_style: palette/optics of the odd-sized images (a separate colour cluster), None to reuse `style`.
    rbc_density_per_um2: red cells per um^2 of smear.
    platelets_per_image: mean number of platelets per image.
    centre_jitter_um: std of the white-cell offset from the image centre.
  """
  name: str
  px_per_um: float
  image_shape: tuple[int, int]
  class_counts: Mapping[str, int]
  source: str
  style: DomainStyle
  odd_shapes: tuple[tuple[tuple[int, int], float], ...] = ()
  odd_classes: tuple[str, ...] = ()
  odd_style: DomainStyle | None = None
  rbc_density_per_um2: float = 0.012
  platelets_per_image: float = 0.6
  centre_jitter_um: float = 0.8

  def __post_init__(self):
    bad = [c for c in self.class_counts if c not in CLASS_NAMES]
    if bad:
      raise ValueError(f"DomainSpec {self.name!r}: class_counts has unknown classes {bad}")


# Matek_19 counts mapped to the common classes: MOB + MON -> monocyte, PMB dropped (REFERENCE.md 3).
_MATEK_COUNTS = {
    "basophil": 79, "eosinophil": 424, "erythroblast": 78, "myeloblast": 3268, "promyelocyte": 70,
    "myelocyte": 42, "metamyelocyte": 15, "neutrophil_banded": 109, "neutrophil_segmented": 8484,
    "monocyte": 26 + 1789, "lymphocyte_typical": 3937, "lymphocyte_atypical": 11, "smudge_cell": 15,
}
# Acevedo_20 prefix counts; IG_, NEUTROPHIL_ and PLATELET_ dropped; no myeloblast/atypical/smudge.
_ACEVEDO_COUNTS = {
    "basophil": 1218, "eosinophil": 3117, "erythroblast": 1551, "promyelocyte": 592, "myelocyte": 1137,
    "metamyelocyte": 1015, "neutrophil_banded": 1633, "neutrophil_segmented": 1646, "monocyte": 1420,
    "lymphocyte_typical": 1214,
}
# MLL23 counts mapped: normoblast -> erythroblast, band -> banded, lymphocyte -> typical,
# neoplastic + reactive -> atypical; hairy cell, atypical promyelocyte, LGL and plasma cell dropped.
_INT_COUNTS = {
    "basophil": 616, "eosinophil": 2448, "erythroblast": 2071, "myeloblast": 8606, "promyelocyte": 745,
    "myelocyte": 747, "metamyelocyte": 483, "neutrophil_banded": 687, "neutrophil_segmented": 7170,
    "monocyte": 2510, "lymphocyte_typical": 5532, "lymphocyte_atypical": 180 + 33, "smudge_cell": 988,
}

# The three labs differ the way real labs do (REFERENCE.md: the largest losses come from stain, camera and
# preparation, not from the cells): each has its own stain balance, white point, camera tone curve, focus and
# chromatin/granule rendering, while the cells' sizes (um) and shapes are the same everywhere.
# Matek-like: bright lilac-pink glass, crisp focus, contrasted coarse chromatin, lossless TIFF.
_MATEK_STYLE = DomainStyle(
    i0_rgb=(236.0, 228.0, 234.0), i0_jitter=0.01,
    stains=_stains({"rbc": 1.05, "chromatin": 1.0}, chromatin=(0.55, 0.95, 0.28)),
    stain_jitter=0.04, strength_jitter=0.06, rbc_pallor=(0.35, 0.6), vignette=(0.03, 0.08),
    gradient=(0.0, 0.04), focus_um=(0.05, 0.12), blur_px=(0.3, 0.7), noise_sigma=(1.0, 2.0), jpeg_quality=None,
    gamma=(1.0, 1.1), chromatin_texture=(1.0, 1.25))
# Acevedo-like: warm beige glass, and a wide spread of everything (many smears and sessions over years).
_ACEVEDO_STYLE = DomainStyle(
    i0_rgb=(232.0, 222.0, 206.0), i0_jitter=0.05,
    stains=_stains({"rbc": 0.85}, rbc=(0.03, 0.2, 0.21), chromatin=(0.45, 0.95, 0.2)),
    stain_jitter=0.16, strength_jitter=0.18, rbc_pallor=(0.2, 0.55), vignette=(0.0, 0.1),
    gradient=(0.0, 0.08), focus_um=(0.05, 0.25), blur_px=(0.3, 1.2), noise_sigma=(1.5, 3.5),
    jpeg_quality=(70, 95), gamma=(0.9, 1.2), defocus_um=(0.0, 0.15), chromatin_texture=(0.8, 1.3))
# The odd-sized Acevedo images form their own colour cluster: greyer, bluer and darker.
_ACEVEDO_ODD_STYLE = dataclasses.replace(
    _ACEVEDO_STYLE, i0_rgb=(212.0, 212.0, 222.0),
    stains=_stains({"rbc": 0.9, "chromatin": 1.1}, rbc=(0.06, 0.2, 0.14), chromatin=(0.62, 0.9, 0.3)),
    stain_jitter=0.08, strength_jitter=0.1)
# INT-like: a dim camera with a grey-green (khaki) white point and a flat tone curve, like the real smear in
# shared/real_smear; soft focus; smooth, homogeneous chromatin; a thicker smear (more red cells, little central
# pallor); and an acidic, under-stained buffer (the classic lab-to-lab Romanowsky variation): pale, redder
# nuclei, weak cytoplasmic basophilia (blue cytoplasm comes out pale grey-lilac), pinker acidophilic cytoplasm,
# bright orange-red eosinophil granules, faint neutrophil granules, redder red cells.
_INT_STYLE = DomainStyle(
    i0_rgb=(186.0, 180.0, 160.0), i0_jitter=0.02,
    stains=_stains({"chromatin": 0.6, "basophilic": 0.3, "acidophilic": 1.5, "eos_granule": 1.2,
                    "baso_granule": 0.85, "neut_granule": 0.6, "rbc": 1.15},
                   chromatin=(0.42, 0.95, 0.3), rbc=(0.02, 0.2, 0.2), basophilic=(0.5, 0.4, 0.15)),
    stain_jitter=0.05, strength_jitter=0.07, rbc_pallor=(0.1, 0.3), vignette=(0.05, 0.12),
    gradient=(0.0, 0.05), focus_um=(0.15, 0.3), blur_px=(0.5, 1.0), noise_sigma=(2.0, 3.5),
    jpeg_quality=(75, 88), gamma=(0.62, 0.72), defocus_um=(0.25, 0.4), chromatin_texture=(0.35, 0.55))

DOMAIN_SPECS: dict[str, DomainSpec] = {
    "matek19_like": DomainSpec(
        name="matek19_like", px_per_um=13.8, image_shape=(400, 400), class_counts=_MATEK_COUNTS,
        source="Matek_19 (AML-Cytomorphology_LMU)", style=_MATEK_STYLE, rbc_density_per_um2=0.02,
        platelets_per_image=0.5),
    "acevedo20_like": DomainSpec(
        # Acevedo's "360x363" is width x height as image libraries report it: arrays are 363 rows x 360 columns.
        name="acevedo20_like", px_per_um=10.0, image_shape=(363, 360), class_counts=_ACEVEDO_COUNTS,
        source="Acevedo_20 (PBC_dataset_normal_DIB)", style=_ACEVEDO_STYLE,
        # 250 of 366x369 and 198 of 360x360 among the 8,520 BA/EO/LY/MO/ERB images.
        odd_shapes=(((369, 366), 250 / 8520), ((360, 360), 198 / 8520)),
        odd_classes=("basophil", "eosinophil", "lymphocyte_typical", "monocyte", "erythroblast"),
        odd_style=_ACEVEDO_ODD_STYLE, rbc_density_per_um2=0.016, platelets_per_image=1.0),
    "int20_like": DomainSpec(
        name="int20_like", px_per_um=11.52, image_shape=(288, 288), class_counts=_INT_COUNTS,
        source="INT_20 / MLL23 (Munich Leukemia Laboratory)", style=_INT_STYLE, rbc_density_per_um2=0.03,
        platelets_per_image=0.4),
}


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticCell:
  """One generated image.

  Attributes:
    id: "<domain>/<label>/<index:05d>", unique within a seed.
    image: uint8 [H, W, 3] at the domain's native size.
    label: common class name (wbcdg_jax.classes.CLASS_NAMES).
    px_per_um: resolution of `image`.
  """
  id: str
  image: np.ndarray
  label: str
  px_per_um: float


def _spec(domain: str) -> DomainSpec:
  try:
    return DOMAIN_SPECS[domain]
  except KeyError:
    raise KeyError(f"unknown synthetic domain {domain!r}; known: {', '.join(DOMAINS)}") from None


def domain_class_counts(domain: str, scale: float, min_per_class: int = 4) -> dict[str, int]:
  """Number of images per class to generate for a domain.

  Args:
    domain: one of DOMAINS.
    scale: fraction of the real dataset size (> 0); counts are real * scale rounded half up.
    min_per_class: floor for every class present in the real dataset (absent classes stay absent).
  Returns:
    {class name: count} in CLASS_NAMES order, only classes present in the domain.
  """
  if not scale > 0:
    raise ValueError(f"domain_class_counts: scale must be > 0, got {scale!r}")
  counts = _spec(domain).class_counts
  return {c: max(int(np.floor(counts[c] * scale + 0.5)), int(min_per_class)) for c in CLASS_NAMES if c in counts}


def pick_shape(spec: DomainSpec, label: str, r: float) -> tuple[tuple[int, int], DomainStyle]:
  """Image (H, W) and style of a cell given a uniform draw r in [0, 1).

  Odd sizes (with their own colour cluster) are drawn only for spec.odd_classes, each with its probability.
  """
  if label in spec.odd_classes:
    for odd_shape, p in spec.odd_shapes:
      if r < p:
        return odd_shape, spec.odd_style or spec.style
      r -= p
  return spec.image_shape, spec.style


def _draw(domain: str, label: str, index: int, seed: int) -> tuple[SyntheticCell, WbcLayer]:
  spec = _spec(domain)
  label_index = class_index(label)  # KeyError naming the valid classes
  if label not in spec.class_counts:
    raise ValueError(f"class {label!r} is absent from domain {domain!r} (as in {spec.source}); present: "
                     f"{', '.join(spec.class_counts)}")
  if index < 0 or seed < 0:
    raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
  rng = np.random.default_rng(np.random.SeedSequence([seed, DOMAINS.index(domain), label_index, index]))
  shape, style = pick_shape(spec, label, float(rng.random()))
  ppu = spec.px_per_um
  palette = sample_palette(rng, style)
  centre = tuple(s / 2 + rng.normal(0, spec.centre_jitter_um) * ppu for s in shape)
  film = background.plasma_film(rng, shape, ppu)
  layer = render_wbc(rng, label, palette, ppu, shape, centre)
  hemoglobin = np.zeros(shape, np.float32)
  reds = background.place_red_cells(rng, shape, ppu, spec.rbc_density_per_um2, centre, layer.radius_um)
  background.add_red_cells(hemoglobin, rng, reds, palette, ppu)
  log_illum, log_i0 = log_exposure(rng, style, palette, shape, film)
  # Log intensity = log_illum + log_i0 - ln10 * OD, planar [3, H, W] (contiguous per-channel operations).
  log_int = np.empty((3,) + shape, np.float32)
  a_rbc = -LN10 * palette.od["rbc"]
  for c in range(3):
    np.multiply(hemoglobin, a_rbc[c], out=log_int[c])
    log_int[c] += log_illum
    log_int[c] += log_i0[c]
  background.add_platelets(log_int, rng, -LN10 * palette.od["platelet"], ppu, centre, layer.radius_um + 1.0,
                           spec.platelets_per_image, palette.focus_um)
  hh, ww = layer.od.shape[1:]
  np.multiply(layer.od, -LN10, out=layer.od)
  log_int[:, layer.y0:layer.y0 + hh, layer.x0:layer.x0 + ww] += layer.od
  image = expose(log_int, style, rng, ppu, log_i0)
  cell = SyntheticCell(id=f"{domain}/{label}/{index:05d}", image=image, label=label, px_per_um=ppu)
  return cell, layer


def generate_cell(domain: str, label: str, index: int, *, seed: int = 0) -> SyntheticCell:
  """Generates one image; a pure function of (domain, label, index, seed).

  Args:
    domain: one of DOMAINS.
    label: a common class name present in the domain (ValueError otherwise).
    index: image number within (domain, label), >= 0.
    seed: dataset seed, >= 0.
  Returns:
    SyntheticCell with image uint8 [H, W, 3] at the domain's native size and px_per_um.
  """
  return _draw(domain, label, index, seed)[0]


def generate_cell_with_masks(domain: str, label: str, index: int, *, seed: int = 0
                             ) -> tuple[SyntheticCell, np.ndarray, np.ndarray]:
  """Like generate_cell (same image bytes) plus the white cell's ground-truth masks (for tests/diagnostics).

  Returns:
    (cell, nucleus, body): nucleus and body are float32 [H, W] occupancies in [0, 1] of the full image.
  """
  cell, layer = _draw(domain, label, index, seed)
  h, w = cell.image.shape[:2]
  masks = []
  for m in (layer.nucleus, layer.cell):
    full = np.zeros((h, w), np.float32)
    full[layer.y0:layer.y0 + m.shape[0], layer.x0:layer.x0 + m.shape[1]] = m
    masks.append(full)
  return cell, masks[0], masks[1]


def generate_domain(domain: str, *, scale: float = 0.02, seed: int = 0, min_per_class: int = 4
                    ) -> Iterator[SyntheticCell]:
  """Yields a domain's images: classes in CLASS_NAMES order, counts from domain_class_counts, index 0..n-1.

  Args:
    domain: one of DOMAINS.
    scale: fraction of the real dataset size.
    seed: dataset seed.
    min_per_class: floor per present class.
  Yields:
    SyntheticCell, each identical to generate_cell(domain, label, index, seed=seed).
  """
  for label, n in domain_class_counts(domain, scale, min_per_class).items():
    for i in range(n):
      yield generate_cell(domain, label, i, seed=seed)
