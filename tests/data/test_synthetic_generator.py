"""Tests of data_pipelines/synthetic_wbc: determinism, class counts, shapes, and physical (um) cell sizes."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from data_pipelines.synthetic_wbc import (DOMAIN_SPECS, DOMAINS, SyntheticCell, domain_class_counts,
                                          generate_cell, generate_cell_with_masks, generate_domain)
from data_pipelines.synthetic_wbc import fields, generator, stains
from wbcdg_jax.classes import CLASS_NAMES

# Real counts after mapping to the common classes, typed in again from REFERENCE.md section 3 (independent of
# the generator's tables).
REAL_COUNTS = {
    "matek19_like": dict(basophil=79, eosinophil=424, erythroblast=78, myeloblast=3268, promyelocyte=70,
                         myelocyte=42, metamyelocyte=15, neutrophil_banded=109, neutrophil_segmented=8484,
                         monocyte=1815, lymphocyte_typical=3937, lymphocyte_atypical=11, smudge_cell=15),
    "acevedo20_like": dict(basophil=1218, eosinophil=3117, erythroblast=1551, promyelocyte=592, myelocyte=1137,
                           metamyelocyte=1015, neutrophil_banded=1633, neutrophil_segmented=1646, monocyte=1420,
                           lymphocyte_typical=1214),
    "int20_like": dict(basophil=616, eosinophil=2448, erythroblast=2071, myeloblast=8606, promyelocyte=745,
                       myelocyte=747, metamyelocyte=483, neutrophil_banded=687, neutrophil_segmented=7170,
                       monocyte=2510, lymphocyte_typical=5532, lymphocyte_atypical=213, smudge_cell=988),
}
NATIVE = {"matek19_like": ((400, 400), 13.8), "acevedo20_like": ((363, 360), 10.0), "int20_like": ((288, 288), 11.52)}


def test_real_counts_and_totals():
  for d in DOMAINS:
    assert dict(DOMAIN_SPECS[d].class_counts) == REAL_COUNTS[d]
  assert sum(REAL_COUNTS["matek19_like"].values()) == 18347
  assert sum(REAL_COUNTS["acevedo20_like"].values()) == 14543


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("scale,min_per_class", [(0.02, 4), (0.1, 0), (0.0013, 2)])
def test_domain_class_counts(domain, scale, min_per_class):
  got = domain_class_counts(domain, scale, min_per_class)
  want = {c: max(int(np.floor(n * scale + 0.5)), min_per_class) for c, n in REAL_COUNTS[domain].items()}
  assert got == want
  assert list(got) == [c for c in CLASS_NAMES if c in want]  # CLASS_NAMES order


@pytest.mark.parametrize("domain", DOMAINS)
def test_proportions_track_real(domain):
  got = domain_class_counts(domain, 0.2, 4)
  real = REAL_COUNTS[domain]
  p_got = np.array([got[c] for c in real], float) / sum(got.values())
  p_real = np.array(list(real.values()), float) / sum(real.values())
  np.testing.assert_allclose(p_got, p_real, atol=0.003)


def test_acevedo_lacks_exactly_three_classes():
  missing = set(CLASS_NAMES) - set(domain_class_counts("acevedo20_like", 0.01))
  assert missing == {"myeloblast", "lymphocyte_atypical", "smudge_cell"}
  for d in ("matek19_like", "int20_like"):
    assert set(domain_class_counts(d, 0.01)) == set(CLASS_NAMES)
  with pytest.raises(ValueError, match="absent from domain 'acevedo20_like'"):
    generate_cell("acevedo20_like", "myeloblast", 0)


def test_bad_arguments():
  with pytest.raises(KeyError, match="unknown synthetic domain"):
    domain_class_counts("matek", 0.1)
  with pytest.raises(ValueError, match="scale must be > 0"):
    domain_class_counts("matek19_like", 0.0)
  with pytest.raises(KeyError, match="unknown class name"):
    generate_cell("matek19_like", "neutrophil", 0)


@pytest.mark.parametrize("domain", DOMAINS)
def test_deterministic_and_seed_dependent(domain):
  a = generate_cell(domain, "monocyte", 3, seed=7)
  b = generate_cell(domain, "monocyte", 3, seed=7)
  assert a.image.tobytes() == b.image.tobytes()
  assert a.id == f"{domain}/monocyte/00003" and a.label == "monocyte"
  assert generate_cell(domain, "monocyte", 3, seed=8).image.tobytes() != a.image.tobytes()
  assert generate_cell(domain, "monocyte", 4, seed=7).image.tobytes() != a.image.tobytes()
  with_masks, _, _ = generate_cell_with_masks(domain, "monocyte", 3, seed=7)
  assert with_masks.image.tobytes() == a.image.tobytes()


@pytest.mark.parametrize("domain", DOMAINS)
def test_generate_domain_counts_order_and_independence(domain):
  cells = list(generate_domain(domain, scale=0.0004, seed=3, min_per_class=1))
  want = domain_class_counts(domain, 0.0004, 1)
  assert collections.Counter(c.label for c in cells) == collections.Counter(want)
  assert [c.label for c in cells] == [c for c, n in want.items() for _ in range(n)]
  assert len({c.id for c in cells}) == len(cells)
  # Any cell regenerated alone (e.g. by another shard) has the same bytes.
  last = cells[-1]
  idx = int(last.id.rsplit("/", 1)[1])
  assert generate_cell(domain, last.label, idx, seed=3).image.tobytes() == last.image.tobytes()


@pytest.mark.parametrize("domain", DOMAINS)
def test_shapes_dtypes_resolution(domain):
  shape, ppu = NATIVE[domain]
  for label in ("neutrophil_segmented", "basophil"):
    cell = generate_cell(domain, label, 0)
    assert isinstance(cell, SyntheticCell)
    assert cell.image.dtype == np.uint8 and cell.image.shape == shape + (3,)
    assert cell.px_per_um == ppu == DOMAIN_SPECS[domain].px_per_um
    assert 40 < cell.image.mean() < 250 and cell.image.std() > 10  # not blank


def test_acevedo_odd_sizes():
  spec = DOMAIN_SPECS["acevedo20_like"]
  (s1, p1), (s2, p2) = spec.odd_shapes
  assert (s1, s2) == ((369, 366), (360, 360))
  # Expected number of odd images over the five classes matches the real 250 + 198 (of 8,520).
  assert sum(REAL_COUNTS["acevedo20_like"][c] for c in spec.odd_classes) == 8520
  assert abs(p1 * 8520 - 250) < 1e-6 and abs(p2 * 8520 - 198) < 1e-6
  assert generator.pick_shape(spec, "eosinophil", 0.5 * p1)[0] == s1
  assert generator.pick_shape(spec, "eosinophil", p1 + 0.5 * p2)[0] == s2
  assert generator.pick_shape(spec, "eosinophil", p1 + p2 + 1e-3)[0] == (363, 360)
  assert generator.pick_shape(spec, "neutrophil_segmented", 0.0)[0] == (363, 360)  # not an odd class
  assert generator.pick_shape(spec, "eosinophil", 0.0)[1] is spec.odd_style


def _um2(mask, ppu):
  return float((mask > 0.5).sum()) / ppu ** 2


@pytest.mark.parametrize("domain", DOMAINS)
def test_true_sizes_in_um(domain):
  """Ground-truth cell outlines: equivalent diameters fall in each class's micrometre range in every domain."""
  ranges = {"lymphocyte_typical": (7.0, 10.0), "promyelocyte": (15.0, 20.0), "neutrophil_segmented": (11.0, 13.5)}
  ppu = DOMAIN_SPECS[domain].px_per_um
  for label, (lo, hi) in ranges.items():
    for i in range(3):
      _, nuc, body = generate_cell_with_masks(domain, label, i)
      diam = 2 * np.sqrt(_um2(body, ppu) / np.pi)
      assert lo - 0.8 < diam < hi + 0.8, (label, i, diam)
      assert 0 < _um2(nuc, ppu) < _um2(body, ppu)


def _nucleus_um2_from_image(img: np.ndarray, ppu: float) -> float:
  """Independent image measurement: area (um^2) of the dark violet blob at the centre.

  Optical density per channel against the brightest background; chromatin absorbs red and green strongly,
  red cells absorb almost no red, blue cytoplasm little green. The thresholds are fractions of the darkest
  green OD (99.5th percentile, the chromatin core) because the labs' stain strengths and camera tone curves
  differ (INT-like nuclei are ~3x lighter in OD than Matek-like ones).
  """
  x = img.astype(np.float64) + 1.0
  white = np.percentile(x.reshape(-1, 3), 99.5, axis=0)
  od = -np.log10(x / white)
  core = np.percentile(od[..., 1], 99.5)
  dark = ndimage.binary_opening((od[..., 0] > 0.2 * core) & (od[..., 1] > 0.45 * core), iterations=1)
  lab, n = ndimage.label(dark)
  assert n > 0
  h, w = dark.shape
  sizes = ndimage.sum(dark, lab, index=np.arange(1, n + 1))
  centres = ndimage.center_of_mass(dark, lab, index=np.arange(1, n + 1))
  dist = [np.hypot(y - h / 2, x - w / 2) for y, x in centres]
  # The biggest component not far from the centre (the cell is centred within ~2 um).
  ok = [k for k in range(n) if dist[k] < 8 * ppu]
  k = max(ok, key=lambda k: sizes[k])
  return float(ndimage.binary_fill_holes(lab == k + 1).sum()) / ppu ** 2


def test_image_nucleus_area_lymphocyte_vs_promyelocyte_and_across_domains():
  areas = {}
  for d in ("matek19_like", "int20_like"):
    ppu = DOMAIN_SPECS[d].px_per_um
    for label in ("lymphocyte_typical", "promyelocyte"):
      areas[d, label] = np.mean([_nucleus_um2_from_image(generate_cell(d, label, i).image, ppu)
                                 for i in range(4)])
  for d in ("matek19_like", "int20_like"):
    lym, pro = areas[d, "lymphocyte_typical"], areas[d, "promyelocyte"]
    # Lymphocyte nucleus ~ (0.8 * 8.5 um)^2 pi / 4 ~ 36 um^2; promyelocyte ~ (0.62 * 17.5 um)^2 pi / 4 ~ 92 um^2.
    assert 20 < lym < 65, (d, lym)
    assert pro > 1.8 * lym, (d, lym, pro)
  # Same class, same physical size at 13.8 vs 11.52 px/um (pixel areas differ by 1.44x).
  ratio = areas["matek19_like", "lymphocyte_typical"] / areas["int20_like", "lymphocyte_typical"]
  assert 0.75 < ratio < 1.33, ratio


def test_domains_differ_in_colour_statistics():
  """Acevedo-like spreads its colours far more than Matek-like (within-domain stain variation), and the
  domains' mean colours differ."""
  def colour(d, i):  # background (brightest 10% of pixels) colour
    x = generate_cell(d, "neutrophil_segmented", i).image.reshape(-1, 3).astype(np.float64)
    s = x.sum(1)
    return x[s >= np.percentile(s, 90)].mean(0)
  cols = {d: np.array([colour(d, i) for i in range(10)]) for d in ("matek19_like", "acevedo20_like")}
  spread = {d: c.std(axis=0).mean() for d, c in cols.items()}
  assert spread["acevedo20_like"] > 2 * spread["matek19_like"], spread
  assert np.abs(cols["acevedo20_like"].mean(0) - cols["matek19_like"].mean(0)).max() > 10


def _background_colour(img: np.ndarray) -> np.ndarray:
  """Mean RGB of the brightest 10% of pixels (the glass between the cells), float64 [3]."""
  x = img.reshape(-1, 3).astype(np.float64)
  s = x.sum(1)
  return x[s >= np.percentile(s, 90)].mean(0)


def _grey_contrast(img: np.ndarray) -> float:
  """Darkness of the darkest 2% of pixels (nucleus) relative to the glass: 1 - p2 / p90 of the grey level."""
  g = img.astype(np.float64).mean(2)
  return 1.0 - np.percentile(g, 2) / np.percentile(g, 90)


def test_domains_differ_by_a_clear_margin():
  """The three labs look clearly different (the domain shift the benchmark needs): background colours are
  pairwise far apart (more than the within-domain spread), INT-like glass is grey-green (green and red above
  blue, dimmer than the others), Matek-like glass is lilac (blue above green), and INT-like's flat tone curve
  makes nuclei less dark against the glass than Matek-like's."""
  labels = ("neutrophil_segmented", "lymphocyte_typical", "monocyte")
  cells = {d: [generate_cell(d, l, i).image for l in labels for i in range(3)] for d in DOMAINS}
  bg = {d: np.array([_background_colour(im) for im in ims]) for d, ims in cells.items()}
  mean = {d: b.mean(0) for d, b in bg.items()}
  # Measured: Matek-Acevedo ~28 levels apart, INT-like ~75-95 from both; within-domain std ~3 (Acevedo ~10).
  for a, b, margin in (("matek19_like", "acevedo20_like", 20), ("matek19_like", "int20_like", 50),
                       ("acevedo20_like", "int20_like", 50)):
    dist = np.linalg.norm(mean[a] - mean[b])
    assert dist > margin, (a, b, mean[a], mean[b])
  r, g, b = mean["int20_like"]
  assert g > b + 8 and r > b + 8 and max(r, g, b) < 200, mean["int20_like"]
  assert mean["matek19_like"][2] > mean["matek19_like"][1] + 3, mean["matek19_like"]
  assert mean["int20_like"].sum() < min(mean["matek19_like"].sum(), mean["acevedo20_like"].sum()) - 60
  contrast = {d: np.mean([_grey_contrast(im) for im in ims]) for d, ims in cells.items()}
  assert contrast["int20_like"] < contrast["matek19_like"] - 0.1, contrast


def test_tone_curve_pivots_on_white():
  """stains.expose with gamma g and no blur/noise: intensity = white * (in / white) ** g, per channel."""
  style = generator.DOMAIN_SPECS["matek19_like"].style
  style = dataclasses.replace(style, gamma=(0.7, 0.7), blur_px=(0.0, 0.0), noise_sigma=(0.0, 0.0),
                              defocus_um=(0.0, 0.0), jpeg_quality=None)
  white = np.array([200.0, 180.0, 160.0])
  levels = np.array([200.0, 120.0, 60.0, 20.0])
  inp = np.broadcast_to(levels[None, None, :] * (white / 200.0)[:, None, None], (3, 4, 4))
  got = stains.expose(np.log(inp).astype(np.float32), style, np.random.default_rng(0),
                      log_white=np.log(white).astype(np.float32))
  want = white[None, None, :] * (inp.transpose(1, 2, 0) / white) ** 0.7
  np.testing.assert_allclose(got.astype(np.float64), want, atol=1.0)
  assert got[0, 0].tolist() == np.round(white).astype(int).tolist()  # glass unchanged


def test_splat_matches_reference():
  """fields.splat against a direct per-pixel evaluation of the Gaussian sum."""
  rng = np.random.default_rng(0)
  ys, xs = rng.uniform(5, 35, 6), rng.uniform(5, 35, 6)
  rad, wt = rng.uniform(1.0, 2.5, 6), rng.uniform(0.2, 1.0, 6)
  got = fields.splat((40, 40), ys, xs, rad, wt)
  yy, xx = np.mgrid[0:40, 0:40] + 0.5
  want = sum(w * np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / r ** 2) for y, x, r, w in zip(ys, xs, rad, wt))
  # Blobs are cut off at 3 sigmas of the largest one: exp(-4.5) ~ 1.1% of a peak at most.
  np.testing.assert_allclose(got, want, atol=0.012 * wt.max())
  np.testing.assert_allclose(got.sum(), want.sum(), rtol=0.01)


def test_sdf_primitives():
  v, u = np.mgrid[-10:11, -10:11].astype(np.float32)
  np.testing.assert_allclose(fields.sdf_circle(v, u, 0.0, 0.0, 3.0), np.hypot(v, u) - 3.0, atol=1e-5)
  e = fields.sdf_ellipse(v, u, 6.0, 3.0)
  assert e[10, 16] == pytest.approx(0.0, abs=1e-4) and e[13, 10] == pytest.approx(0.0, abs=1e-4)
  assert e[10, 10] < 0 and e[10, 18] > 0
  c = fields.sdf_capsule(v, u, (0.0, -4.0), (0.0, 4.0), 1.0)
  assert c[10, 10] == pytest.approx(-1.0) and c[10, 20] == pytest.approx(5.0) and c[13, 10] == pytest.approx(2.0)
