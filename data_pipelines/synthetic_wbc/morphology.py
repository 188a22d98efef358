"""Per-class white-blood-cell morphology (sizes in micrometres) and the renderer of one white cell.

Cell model. A white cell is a slightly elliptical cytoplasm body (diameter drawn per class, border roughened by
smooth noise) holding a nucleus whose shape is built from signed-distance primitives per class:
round/oval (lymphocyte, blasts, erythroblast, myelocyte), kidney/bean (metamyelocyte), C/U band (banded
neutrophil), 2-5 lobes joined by thin filaments (segmented neutrophil; 2 big lobes for the eosinophil), folded
kidney/horseshoe/lobulated (monocyte), irregular/cleaved (atypical lymphocyte) and a ragged, streaky smear
without cytoplasm (smudge cell). Inside the nucleus, chromatin density is smooth noise whose blob size and
contrast encode maturity (fine and even in blasts, coarse clumps in mature cells), with a darker nuclear rim
and pale nucleoli in blasts/promyelocytes. The cytoplasm carries a blue (basophilic) and pink (acidophilic)
stain load, a light texture, optional perinuclear Golgi clearing and vacuoles (monocyte), and granules drawn
as sub-pixel Gaussian blobs whose stain, diameter, density and overlap with the nucleus are per class
(fine lilac dust in neutrophils, coarse red-purple azurophilic granules in promyelocytes, packed orange
granules in eosinophils, large blue-black granules over the nucleus in basophils).
Every length is in um and converted with the domain's px_per_um, so a class has the same physical size in all
domains. The output is optical density (see stains.py), not RGB.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.synthetic_wbc import fields
from data_pipelines.synthetic_wbc.stains import Palette

F32 = np.float32
Range = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class Granules:
  """One granule population of a class.

  Attributes:
    stain: stain name (stains.STAIN_NAMES) giving the granule colour.
    density_per_um2: granules per um^2 of cell area.
    diameter_um: granule diameter range (about 2.5 Gaussian sigmas).
    weight: peak OD concentration range of one granule.
    on_nucleus: probability that a granule falling over the nucleus is kept (0: cytoplasm only).
    present: probability that the cell has this population at all.
  """
  stain: str
  density_per_um2: Range
  diameter_um: Range
  weight: Range
  on_nucleus: float = 0.0
  present: float = 1.0


@dataclasses.dataclass(frozen=True)
class Morphology:
  """Morphology of one class; ranges are drawn uniformly per cell.

  Attributes:
    cell_diameter_um: cell (cytoplasm outline) diameter; for the smudge cell the smear's long axis.
    nucleus: nucleus kind: round, kidney, band, segmented, folded, irregular, smudge.
    nucleus_fraction: nucleus diameter / cell diameter (round, kidney, folded, irregular kinds).
    eccentricity: nucleus centre offset as a fraction of the free room (cell radius - nucleus radius).
    chromatin: chromatin OD concentration (nucleus darkness).
    clump_um: chromatin clump size; clump_contrast: relative density variation (fine vs coarse chromatin).
    nucleoli: (min, max) number of visible nucleoli; nucleolus_um: their diameter range.
    basophilic, acidophilic: cytoplasm blue and pink stain concentrations.
    granules: granule populations.
    vacuoles: (min, max) number of cytoplasm vacuoles; vacuole_um: diameter range.
    golgi: probability of a pale perinuclear (Golgi) zone.
    outline_um: amplitude of the cell-border roughness.
    aspect: minor/major axis ratio range of the cell body.
    lobes: lobe counts and lobe_p their probabilities (segmented kind); lobe_um lobe diameter; filament_um
      the width of the chromatin filament joining lobes.
    edge_basophilia: extra blue toward the cell border (reactive lymphocytes), relative.
    hemoglobin: haemoglobin (rbc stain) in the cytoplasm, growing with maturity (erythroblasts).
  """
  cell_diameter_um: Range
  nucleus: str
  nucleus_fraction: Range = (0.6, 0.7)
  eccentricity: Range = (0.0, 0.3)
  chromatin: Range = (0.8, 1.0)
  clump_um: float = 0.6
  clump_contrast: float = 0.35
  nucleoli: tuple[int, int] = (0, 0)
  nucleolus_um: Range = (0.8, 1.4)
  basophilic: Range = (0.05, 0.1)
  acidophilic: Range = (0.08, 0.12)
  granules: tuple[Granules, ...] = ()
  vacuoles: tuple[int, int] = (0, 0)
  vacuole_um: Range = (0.5, 1.3)
  golgi: float = 0.0
  outline_um: float = 0.15
  aspect: Range = (0.88, 1.0)
  lobes: tuple[int, ...] = (2,)
  lobe_p: tuple[float, ...] = (1.0,)
  lobe_um: Range = (2.6, 3.4)
  filament_um: Range = (0.3, 0.6)
  edge_basophilia: float = 0.0
  hemoglobin: Range = (0.0, 0.0)


_NEUT_DUST = Granules("neut_granule", (5.0, 7.0), (0.2, 0.35), (0.08, 0.18), on_nucleus=0.0)

MORPHOLOGY: dict[str, Morphology] = {
    "basophil": Morphology(
        cell_diameter_um=(10.0, 14.0), nucleus="segmented", lobes=(1, 2), lobe_p=(0.4, 0.6),
        lobe_um=(3.6, 5.0), filament_um=(0.8, 1.6), chromatin=(0.55, 0.75), clump_contrast=0.2,
        basophilic=(0.04, 0.08), acidophilic=(0.05, 0.09),
        granules=(Granules("baso_granule", (1.2, 2.0), (0.4, 0.95), (0.45, 0.9), on_nucleus=0.9),)),
    "eosinophil": Morphology(
        cell_diameter_um=(12.0, 15.0), nucleus="segmented", lobes=(2, 3), lobe_p=(0.85, 0.15),
        lobe_um=(3.2, 4.2), filament_um=(0.4, 1.0), chromatin=(0.8, 1.0), clump_contrast=0.35,
        basophilic=(0.02, 0.05), acidophilic=(0.08, 0.12),
        granules=(Granules("eos_granule", (2.6, 3.2), (0.55, 0.75), (0.3, 0.45), on_nucleus=0.08),)),
    "erythroblast": Morphology(
        cell_diameter_um=(8.0, 12.0), nucleus="round", nucleus_fraction=(0.42, 0.6), eccentricity=(0.0, 0.6),
        chromatin=(1.15, 1.45), clump_um=0.5, clump_contrast=0.15, basophilic=(0.05, 0.35),
        acidophilic=(0.02, 0.05), hemoglobin=(0.05, 0.7), outline_um=0.08, aspect=(0.92, 1.0)),
    "myeloblast": Morphology(
        cell_diameter_um=(12.0, 18.0), nucleus="round", nucleus_fraction=(0.72, 0.86), eccentricity=(0.0, 0.35),
        chromatin=(0.5, 0.65), clump_um=0.35, clump_contrast=0.12, nucleoli=(2, 4), nucleolus_um=(1.0, 1.7),
        basophilic=(0.22, 0.38), acidophilic=(0.02, 0.05),
        granules=(Granules("azur_granule", (0.02, 0.08), (0.3, 0.5), (0.3, 0.5), present=0.4),)),
    "promyelocyte": Morphology(
        cell_diameter_um=(15.0, 20.0), nucleus="round", nucleus_fraction=(0.55, 0.68), eccentricity=(0.45, 0.85),
        chromatin=(0.55, 0.7), clump_um=0.4, clump_contrast=0.2, nucleoli=(1, 3), nucleolus_um=(1.0, 1.6),
        basophilic=(0.18, 0.32), acidophilic=(0.04, 0.08), golgi=0.7,
        granules=(Granules("azur_granule", (1.4, 2.2), (0.35, 0.6), (0.35, 0.65), on_nucleus=0.75),)),
    "myelocyte": Morphology(
        cell_diameter_um=(12.0, 18.0), nucleus="round", nucleus_fraction=(0.48, 0.6), eccentricity=(0.5, 0.85),
        chromatin=(0.7, 0.85), clump_um=0.5, clump_contrast=0.3, basophilic=(0.06, 0.14),
        acidophilic=(0.1, 0.16), golgi=0.5,
        granules=(_NEUT_DUST, Granules("azur_granule", (0.1, 0.3), (0.4, 0.6), (0.3, 0.5)))),
    "metamyelocyte": Morphology(
        cell_diameter_um=(10.0, 15.0), nucleus="kidney", nucleus_fraction=(0.5, 0.62), eccentricity=(0.2, 0.6),
        chromatin=(0.8, 0.95), clump_um=0.55, clump_contrast=0.35, basophilic=(0.03, 0.07),
        acidophilic=(0.1, 0.15), granules=(_NEUT_DUST,)),
    "neutrophil_banded": Morphology(
        cell_diameter_um=(11.0, 13.5), nucleus="band", chromatin=(0.9, 1.05), clump_um=0.6,
        clump_contrast=0.4, basophilic=(0.02, 0.05), acidophilic=(0.1, 0.15), granules=(_NEUT_DUST,)),
    "neutrophil_segmented": Morphology(
        cell_diameter_um=(11.0, 13.5), nucleus="segmented", lobes=(2, 3, 4, 5), lobe_p=(0.2, 0.45, 0.27, 0.08),
        lobe_um=(3.3, 4.3), filament_um=(0.55, 1.0), chromatin=(0.9, 1.05), clump_um=0.6,
        clump_contrast=0.4, basophilic=(0.02, 0.05), acidophilic=(0.1, 0.15), granules=(_NEUT_DUST,)),
    "monocyte": Morphology(
        cell_diameter_um=(12.0, 20.0), nucleus="folded", nucleus_fraction=(0.55, 0.7), eccentricity=(0.1, 0.5),
        chromatin=(0.5, 0.65), clump_um=0.45, clump_contrast=0.3, basophilic=(0.1, 0.17),
        acidophilic=(0.07, 0.11), vacuoles=(0, 8), vacuole_um=(0.6, 1.5), outline_um=0.35, aspect=(0.8, 1.0),
        granules=(Granules("azur_granule", (1.5, 3.0), (0.2, 0.3), (0.05, 0.12)),)),
    "lymphocyte_typical": Morphology(
        cell_diameter_um=(7.0, 10.0), nucleus="round", nucleus_fraction=(0.74, 0.88), eccentricity=(0.1, 0.5),
        chromatin=(1.0, 1.2), clump_um=0.6, clump_contrast=0.35, basophilic=(0.28, 0.45),
        acidophilic=(0.0, 0.03), outline_um=0.1,
        granules=(Granules("azur_granule", (0.03, 0.1), (0.4, 0.6), (0.4, 0.7), present=0.12),)),
    "lymphocyte_atypical": Morphology(
        cell_diameter_um=(11.0, 17.0), nucleus="irregular", nucleus_fraction=(0.45, 0.62),
        eccentricity=(0.2, 0.6), chromatin=(0.7, 0.85), clump_um=0.5, clump_contrast=0.3, nucleoli=(0, 1),
        basophilic=(0.3, 0.5), acidophilic=(0.0, 0.03), outline_um=0.45, aspect=(0.75, 1.0),
        edge_basophilia=0.9),
    "smudge_cell": Morphology(
        cell_diameter_um=(12.0, 20.0), nucleus="smudge", chromatin=(0.4, 0.6), clump_um=0.5,
        clump_contrast=0.25),
}


@dataclasses.dataclass(frozen=True)
class WbcLayer:
  """A rendered white cell inside its bounding box of the image.

  Attributes:
    od: float32 planar [3, h, w] optical density added by the cell.
    y0, x0: top-left pixel of the box in the image.
    nucleus: float32 [h, w] nucleus occupancy in [0, 1].
    cell: float32 [h, w] whole-cell occupancy in [0, 1] (cytoplasm outline, or the smear).
    radius_um: outer radius of the cell in um (used to place red cells around it).
  """
  od: np.ndarray
  y0: int
  x0: int
  nucleus: np.ndarray
  cell: np.ndarray
  radius_um: float


def _u(rng: np.random.Generator, r: Range) -> float:
  return float(rng.uniform(r[0], r[1]))


def _nucleus_frame(rng, v, u, room_um, m):
  """Moves the frame to an eccentric nucleus centre and a random nucleus orientation."""
  off = _u(rng, m.eccentricity) * max(room_um, 0.0)
  ang = rng.uniform(0, 2 * np.pi)
  v = v - F32(off * np.sin(ang))
  u = u - F32(off * np.cos(ang))
  return fields.rotate(v, u, rng.uniform(0, 2 * np.pi))


# Nucleus builders: (rng, v, u, r_cell, morphology, px_per_um) -> (SDF [h, w] in um over the cell frame (v, u),
# boundary roughness amplitude in um). They draw their own size, eccentric offset and orientation.


def _nuc_round(rng, v, u, r_cell, m, px):
  rn = r_cell * _u(rng, m.nucleus_fraction)
  e = rng.uniform(0.0, 0.12)
  v, u = _nucleus_frame(rng, v, u, r_cell - rn, m)
  d = fields.sdf_ellipse(v, u, rn * (1 + e), rn * (1 - e))
  if rng.random() < 0.3:  # shallow notch (lymphocyte) or flattened side (myelocyte)
    d = -fields.smooth_union(-d, fields.sdf_circle(v, u, 0.0, rn * 1.25, rn * rng.uniform(0.35, 0.6)), 0.5)
  return d, 0.18


def _nuc_kidney(rng, v, u, r_cell, m, px, depth=(0.25, 0.45)):
  rn = r_cell * _u(rng, m.nucleus_fraction)
  a, b = rn * rng.uniform(1.05, 1.2), rn * rng.uniform(0.8, 0.95)
  v, u = _nucleus_frame(rng, v, u, r_cell - rn, m)
  rc = a * rng.uniform(0.55, 0.85)
  dd = 2 * b * _u(rng, depth)
  d = fields.sdf_ellipse(v, u, a, b)
  return -fields.smooth_union(-d, fields.sdf_circle(v, u, b + rc - dd, 0.0, rc), 0.6), 0.15


def _nuc_band(rng, v, u, r_cell, m, px):
  s = r_cell / 5.6
  radius = rng.uniform(2.2, 3.1) * s
  half = rng.uniform(1.3, 2.4)
  width = rng.uniform(1.4, 2.1) * s
  v, u = _nucleus_frame(rng, v, u, 0.8, m)
  squash = rng.uniform(1.0, 1.35)  # U-shaped (elongated) rather than C-shaped bands
  return fields.sdf_arc(v * F32(1.0 / squash), u + F32(radius * 0.35), radius, half, width), 0.12


def _lobe_centres(rng, n, lobe_r, gap, r_cell):
  """Centres (v, u) of n lobes chained along a random arc, centred on their mean and kept inside the cell.

  The arc radius grows with the chain length so that 4-5 lobes curl into a C or ring instead of piling up.
  """
  if n == 1:
    return np.zeros((1, 2))
  chain = (n - 1) * (2 * lobe_r + gap)
  path_r = max(rng.uniform(2.0, 3.6) * (lobe_r / 1.6), chain / rng.uniform(1.2 * np.pi, 1.6 * np.pi))
  step = (2 * lobe_r + gap) / path_r
  ang = (np.arange(n) - (n - 1) / 2) * step + rng.normal(0, 0.1, n)
  pts = np.stack([path_r * np.sin(ang), path_r * np.cos(ang)], 1)
  pts += rng.normal(0, 0.1 * lobe_r, pts.shape)
  pts -= pts.mean(0)
  extent = np.sqrt((pts ** 2).sum(1)).max() + lobe_r
  limit = 0.9 * r_cell
  if extent > limit:
    pts *= max(limit - lobe_r, 0.3 * lobe_r) / max(extent - lobe_r, 1e-6)
  return pts


def _nuc_segmented(rng, v, u, r_cell, m, px):
  n = int(rng.choice(m.lobes, p=m.lobe_p))
  lobe_r = 0.5 * _u(rng, m.lobe_um) * (min(3.0 / n, 1.0)) ** 0.3  # many lobes are smaller
  v, u = _nucleus_frame(rng, v, u, 0.0, m)
  pts = _lobe_centres(rng, n, lobe_r, rng.uniform(0.4, 1.3), r_cell)
  d = None
  for (pv, pu) in pts:
    lv, lu = fields.rotate(v - F32(pv), u - F32(pu), rng.uniform(0, np.pi))
    asp = rng.uniform(0.7, 1.0)
    dl = fields.sdf_ellipse(lv, lu, lobe_r * (2 - asp) ** 0.5, lobe_r * asp ** 0.5)
    d = dl if d is None else fields.smooth_union(d, dl, 0.25)
  for i in range(n - 1):
    fil = fields.sdf_capsule(v, u, tuple(pts[i]), tuple(pts[i + 1]), 0.5 * _u(rng, m.filament_um))
    d = np.minimum(d, fil)
  return d, 0.15


def _nuc_folded(rng, v, u, r_cell, m, px):
  mode = rng.choice(3, p=(0.45, 0.3, 0.25))
  if mode == 0:
    d, _ = _nuc_kidney(rng, v, u, r_cell, m, px, depth=(0.35, 0.6))
  elif mode == 1:  # horseshoe: a thick, short-radius band
    rn = r_cell * _u(rng, m.nucleus_fraction)
    v, u = _nucleus_frame(rng, v, u, r_cell - rn, m)
    radius = rn * rng.uniform(0.45, 0.6)
    d = fields.sdf_arc(v, u + F32(radius * 0.3), radius, rng.uniform(1.5, 2.3), rn * rng.uniform(0.7, 0.9))
  else:  # lobulated: overlapping blobs, smooth union
    rn = r_cell * _u(rng, m.nucleus_fraction)
    v, u = _nucleus_frame(rng, v, u, r_cell - rn, m)
    d = None
    for k in range(3):
      a = 2 * np.pi * k / 3 + rng.normal(0, 0.4)
      rr = rn * rng.uniform(0.5, 0.65)
      dk = fields.sdf_circle(v, u, 0.45 * rn * np.sin(a), 0.45 * rn * np.cos(a), rr)
      d = dk if d is None else fields.smooth_union(d, dk, 0.8)
  return d, 0.3


def _nuc_irregular(rng, v, u, r_cell, m, px):
  rn = r_cell * _u(rng, m.nucleus_fraction)
  asp = rng.uniform(0.75, 1.0)
  v, u = _nucleus_frame(rng, v, u, r_cell - rn, m)
  d = fields.sdf_ellipse(v, u, rn / asp ** 0.5, rn * asp ** 0.5)
  if rng.random() < 0.6:  # cleft / indentation
    d = -fields.smooth_union(-d, fields.sdf_circle(v, u, rn * 1.1, rng.normal(0, 0.3 * rn),
                                                   rn * rng.uniform(0.3, 0.6)), 0.4)
  return d, 0.3


def _nuc_smudge(rng, v, u, r_cell, m, px):
  a = r_cell * rng.uniform(0.75, 1.0)
  b = a * rng.uniform(0.5, 0.85)
  return fields.sdf_ellipse(v, u, a, b), 1.0


_NUCLEUS_BUILDERS = {
    "round": _nuc_round, "kidney": _nuc_kidney, "band": _nuc_band, "segmented": _nuc_segmented,
    "folded": _nuc_folded, "irregular": _nuc_irregular, "smudge": _nuc_smudge,
}


def _scatter_in_cell(rng, n, mask_cell, mask_nuc, keep_on_nucleus, r_box_px, cy, cx):
  """Uniform points in the cell disk (pixels of the box), keeping those inside the cell and, over the nucleus,
  each with probability keep_on_nucleus. Returns (ys, xs) float arrays."""
  if n <= 0:
    return np.zeros(0), np.zeros(0)
  rr = r_box_px * np.sqrt(rng.random(n))
  aa = rng.uniform(0, 2 * np.pi, n)
  ys, xs = cy + rr * np.sin(aa), cx + rr * np.cos(aa)
  h, w = mask_cell.shape
  iy = np.clip(ys.astype(np.int64), 0, h - 1)
  ix = np.clip(xs.astype(np.int64), 0, w - 1)
  inside = mask_cell[iy, ix] > 0.6
  on_nuc = mask_nuc[iy, ix] > 0.4
  keep = inside & (~on_nuc | (rng.random(n) < keep_on_nucleus))
  return ys[keep], xs[keep]


def render_wbc(rng: np.random.Generator, label: str, palette: Palette, px_per_um: float,
               image_shape: tuple[int, int], centre_px: tuple[float, float]) -> WbcLayer:
  """Draws one white cell of class `label` as optical density in its bounding box.

  Args:
    rng: random generator (consumed).
    label: common class name (key of MORPHOLOGY).
    palette: the image's stain palette.
    px_per_um: image resolution.
    image_shape: (H, W) of the whole image; the box is clipped to it.
    centre_px: (y, x) cell centre in image pixels.
  Returns:
    WbcLayer with od float32 [3, h, w] and masks [h, w].
  """
  try:
    m = MORPHOLOGY[label]
  except KeyError:
    raise KeyError(f"no morphology for class {label!r}; known: {sorted(MORPHOLOGY)}") from None
  r_cell = 0.5 * _u(rng, m.cell_diameter_um)
  aspect = _u(rng, m.aspect)
  focus = palette.focus_um
  r_out = r_cell / aspect ** 0.5 + 3 * m.outline_um  # farthest the outline reaches from the centre
  half = int(np.ceil((r_out + (3.5 if m.nucleus == "smudge" else 1.2)) * px_per_um))
  cy, cx = centre_px
  y0, x0 = max(int(cy) - half, 0), max(int(cx) - half, 0)
  y1, x1 = min(int(cy) + half + 1, image_shape[0]), min(int(cx) + half + 1, image_shape[1])
  h, w = y1 - y0, x1 - x0
  ys, xs = fields.grid_um(y0, x0, h, w, cy, cx, px_per_um)
  v, u = fields.rotate(ys, xs, rng.uniform(0, 2 * np.pi))
  um = F32(px_per_um)

  # Nucleus shape and its boundary roughness.
  d_nuc, rough = _NUCLEUS_BUILDERS[m.nucleus](rng, v, u, r_cell, m, px_per_um)
  d_nuc = d_nuc + F32(rough) * fields.smooth_noise(rng, (h, w), (2.5 if rough > 0.5 else 1.2) * um)
  nuc = fields.soft_inside(d_nuc, 0.25 + focus)

  if m.nucleus == "smudge":
    # Smeared, fibrillar chromatin: warped streaks along the smear plus blotches, a denser remnant on one side,
    # fading out over ~1.5 um toward a ragged border without a membrane; no cytoplasm outline.
    streak = fields.streak_noise(rng, (h, w), rng.uniform(4.0, 9.0) * um, rng.uniform(0.5, 1.0) * um,
                                 rng.uniform(0, np.pi))
    blot = fields.smooth_noise(rng, (h, w), rng.uniform(1.2, 2.5) * um)
    _, su = fields.rotate(v, u, rng.uniform(0, 2 * np.pi))
    side = F32(rng.uniform(0.0, 0.35)) * su / F32(r_cell)
    mix = rng.uniform(0.12, 0.32)  # how fibrillar vs blotchy the smear looks
    chrom = F32(_u(rng, m.chromatin)) * np.clip(F32(0.75) + F32(mix) * streak + F32(0.45 - mix) * blot + side,
                                                0.1, 2.0)
    nuc = fields.soft_inside(d_nuc, 1.0 + focus)
    chrom = chrom * np.clip(-d_nuc * F32(0.7), 0.25, 1.0)
    cell = nuc
    cyto = np.zeros((h, w), F32)
    baso = acid = hemo = 0.0
  else:
    # Chromatin density: clumps (two octaves) scaled by contrast, a darker rim under the nuclear membrane.
    clump = (fields.smooth_noise(rng, (h, w), m.clump_um * um)
             + F32(0.5) * fields.smooth_noise(rng, (h, w), 0.5 * m.clump_um * um))
    contrast = F32(m.clump_contrast * palette.chromatin_texture)  # the lab's chromatin rendering scales it
    chrom = F32(_u(rng, m.chromatin)) * np.clip(F32(1.0) + contrast * clump, 0.2, 2.0)
    chrom = chrom * (F32(1.0) + F32(0.25) * np.clip(F32(1.0) + d_nuc * F32(2.0), 0.0, 1.0))
    d_cell = fields.sdf_ellipse(v, u, r_cell / aspect ** 0.5, r_cell * aspect ** 0.5)
    d_cell = d_cell + F32(m.outline_um) * fields.smooth_noise(rng, (h, w), 2.5 * um)
    cell = fields.soft_inside(d_cell, 0.3 + focus)
    cyto = cell * (F32(1.0) + F32(0.12) * fields.smooth_noise(rng, (h, w), 0.8 * um))
    baso, acid = _u(rng, m.basophilic), _u(rng, m.acidophilic)
    hemo = _u(rng, m.hemoglobin)
    if m.hemoglobin[1] > 0:  # erythroblast maturation: blue RNA is replaced by haemoglobin
      t = (hemo - m.hemoglobin[0]) / (m.hemoglobin[1] - m.hemoglobin[0])
      baso = m.basophilic[1] - t * (m.basophilic[1] - m.basophilic[0])
    if m.golgi > 0 and rng.random() < m.golgi:
      # Pale perinuclear zone (Golgi "hof") at the nucleus border facing the cell centre.
      sub = nuc[::3, ::3]
      mass = float(sub.sum()) + 1e-6
      ny_um = float((sub.sum(1) * ys[::3, 0]).sum()) / mass
      nx_um = float((sub.sum(0) * xs[0, ::3]).sum()) / mass
      r_n = np.sqrt(mass * 9 / np.pi) / px_per_um
      dist = np.hypot(ny_um, nx_um) + 1e-6
      gy_um, gx_um = ny_um - ny_um / dist * r_n, nx_um - nx_um / dist * r_n
      g2 = ((ys - F32(gy_um)) ** 2 + (xs - F32(gx_um)) ** 2) * F32(1.0 / (2 * 1.6 ** 2))
      cyto = cyto * (F32(1.0) - F32(0.45) * np.exp(-g2))
    nv = rng.integers(m.vacuoles[0], m.vacuoles[1] + 1)
    if nv:
      vy, vx = _scatter_in_cell(rng, 3 * nv, cell, nuc, 0.0, r_out * px_per_um, cy - y0, cx - x0)
      vy, vx = vy[:nv], vx[:nv]
      vr = 0.5 * rng.uniform(*m.vacuole_um, len(vy)) * px_per_um
      vac = fields.splat((h, w), vy, vx, vr, np.ones(len(vy)), flat=True)
      cyto = cyto * (F32(1.0) - F32(0.8) * np.clip(vac, 0.0, 1.0))
    cyto = cyto * (F32(1.0) - F32(0.6) * nuc)

  # Nucleoli: pale, slightly blue spots inside the nucleus.
  chrom = nuc * chrom
  terms: list[tuple[np.ndarray, np.ndarray]] = []  # (concentration map [h, w], stain OD vector [3])
  n_nl = int(rng.integers(m.nucleoli[0], m.nucleoli[1] + 1))
  if n_nl:
    ny, nx = _scatter_in_cell(rng, 20 * n_nl, nuc, np.zeros_like(nuc), 1.0, r_out * px_per_um, cy - y0,
                              cx - x0)
    deep = nuc[np.clip(ny.astype(int), 0, h - 1), np.clip(nx.astype(int), 0, w - 1)] > 0.95
    ny, nx = ny[deep][:n_nl], nx[deep][:n_nl]
    nr = 0.5 * rng.uniform(*m.nucleolus_um, len(ny)) * px_per_um
    nl = np.clip(fields.splat((h, w), ny, nx, nr, np.ones(len(ny)), flat=True), 0.0, 1.0) * nuc
    chrom = chrom * (F32(1.0) - F32(0.6) * nl)
    terms.append((nl * F32(0.15), palette.od["basophilic"]))
  terms.append((chrom, palette.od["chromatin"]))

  if m.nucleus != "smudge":
    blue = cyto * F32(baso)
    if m.edge_basophilia:
      blue = blue * (F32(1.0) + F32(m.edge_basophilia) * np.clip(F32(1.0) + d_cell * F32(0.5), 0.0, 1.0))
    terms.append((blue, palette.od["basophilic"]))
    terms.append((cyto * F32(acid), palette.od["acidophilic"]))
    if hemo > 0:
      terms.append((cyto * F32(hemo), palette.od["rbc"]))

  # Granules: sub-pixel Gaussian blobs, per population.
  area = np.pi * r_cell * r_cell
  for g in m.granules:
    if rng.random() >= g.present:
      continue
    n = int(rng.poisson(area * _u(rng, g.density_per_um2)))
    gy, gx = _scatter_in_cell(rng, n, cell, nuc, g.on_nucleus, r_out * px_per_um, cy - y0, cx - x0)
    sig_um = rng.uniform(*g.diameter_um, len(gy)) / 2.5
    sig_px = np.sqrt(sig_um ** 2 + (0.5 * focus) ** 2) * px_per_um
    wts = rng.uniform(*g.weight, len(gy)) * (sig_um / np.sqrt(sig_um ** 2 + (0.5 * focus) ** 2)) ** 2
    terms.append((fields.splat((h, w), gy, gx, np.maximum(sig_px, 0.6), wts), palette.od[g.stain]))

  # Sum of concentration x stain vector, per channel (planar; a BLAS matmul with K ~ 5 is slower here).
  od = np.zeros((3, h, w), F32)
  for t, vec in terms:
    for c in range(3):
      od[c] += t * vec[c]
  return WbcLayer(od=od, y0=y0, x0=x0, nucleus=nuc, cell=cell, radius_um=r_cell)
