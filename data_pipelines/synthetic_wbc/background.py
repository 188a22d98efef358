"""The smear around the white cell: plasma film, red blood cells (biconcave discs) and platelets.

Red cells are ~7.5 um discs with a central pallor (thin centre of the biconcave disc) and a faintly darker rim,
placed at a domain-specific density by rejection sampling: mostly touching but not covering each other and
kept off the white cell, with an occasional red cell overlapping the white cell or another red cell (their
optical densities add, as in a real smear). Platelets are 1.5-3 um purple, granular, irregular bodies.
All sizes are in um; drawing is done in small boxes so the cost scales with the number of objects.
"""

from __future__ import annotations

import math

import numpy as np

from data_pipelines.synthetic_wbc import fields
from data_pipelines.synthetic_wbc.stains import Palette

F32 = np.float32


def plasma_film(rng: np.random.Generator, shape: tuple[int, int], px_per_um: float) -> np.ndarray:
  """Relative plasma-film thickness around 1 with a faint ~10 um unevenness: float32 [H, W]."""
  return F32(1.0) + F32(0.25) * fields.smooth_noise(rng, shape, 10.0 * px_per_um)


def place_red_cells(rng: np.random.Generator, shape: tuple[int, int], px_per_um: float, density_per_um2: float,
                    wbc_centre_px: tuple[float, float], wbc_radius_um: float) -> list[tuple[float, float, float]]:
  """Chooses red-cell centres and radii.

  Args:
    rng: random generator (consumed).
    shape: (H, W) image size in pixels.
    px_per_um: resolution.
    density_per_um2: red cells per um^2 of smear (before rejections).
    wbc_centre_px: (y, x) of the white cell.
    wbc_radius_um: white-cell radius; red cells keep off it except for an occasional overlap.
  Returns:
    list of (y_px, x_px, radius_um).
  """
  h_um, w_um = shape[0] / px_per_um, shape[1] / px_per_um
  margin = 3.0
  n_try = int(rng.poisson(density_per_um2 * (h_um + 2 * margin) * (w_um + 2 * margin) * 4.0))
  cand = np.stack([rng.uniform(-margin, h_um + margin, n_try), rng.uniform(-margin, w_um + margin, n_try)], 1)
  radii = rng.normal(3.75, 0.25, n_try).clip(3.2, 4.3)
  wy, wx = wbc_centre_px[0] / px_per_um, wbc_centre_px[1] / px_per_um
  overlap_left = 1 if rng.random() < 0.45 else 0
  target = int(rng.poisson(density_per_um2 * (h_um + 2 * margin) * (w_um + 2 * margin)))
  kept: list[tuple[float, float, float]] = []
  for (y, x), r in zip(cand.tolist(), radii.tolist()):
    if len(kept) >= target:
      break
    d_w = math.hypot(y - wy, x - wx)
    if d_w < wbc_radius_um + 0.9 * r:
      if not overlap_left or d_w < wbc_radius_um + 0.35 * r:
        continue
      overlap_left -= 1
    min_gap = 0.6 if rng.random() < 0.2 else 0.87
    if any(math.hypot(y - ky, x - kx) < min_gap * (r + kr) for ky, kx, kr in kept):
      continue
    kept.append((y, x, r))
  return [(y * px_per_um, x * px_per_um, r) for y, x, r in kept]


def _red_cell_stamp(rng: np.random.Generator, r: float, palette: Palette, px_per_um: float
                    ) -> tuple[np.ndarray, int]:
  """One red cell's thickness map (biconcave profile) centred in a (2*half+1)^2 box: (float32 map, half)."""
  half = int(np.ceil((r * 1.12 + 0.6) * px_per_um))
  ys, xs = fields.grid_um(0, 0, 2 * half + 1, 2 * half + 1, half + 0.5, half + 0.5, px_per_um)
  v, u = fields.rotate(ys, xs, rng.uniform(0, np.pi))
  asp = rng.uniform(0.9, 1.0)
  a, b = r / asp ** 0.5, r * asp ** 0.5
  ua, vb = u * F32(1.0 / a), v * F32(1.0 / b)
  k = np.sqrt(ua * ua + vb * vb)
  body = np.clip(F32(0.5) + (F32(1.0) - k) * F32(r / (0.25 + palette.focus_um)), 0.0, 1.0)
  # Pallor: thin centre, slightly off-centre and of varying size; the rim a touch thicker (biconcave disc).
  pu, pv = ua - F32(rng.normal(0, 0.06)), vb - F32(rng.normal(0, 0.06))
  pr2 = F32(1.0 / rng.uniform(0.28, 0.45) ** 2)
  thick = (F32(1.0) - F32(palette.rbc_pallor * rng.uniform(0.6, 1.2)) * np.exp(-(pu * pu + pv * pv) * pr2)
           + F32(0.1) * np.exp(-((F32(0.85) - k) * F32(6.0)) ** 2))
  return body * thick, half


def add_red_cells(load: np.ndarray, rng: np.random.Generator, cells: list[tuple[float, float, float]],
                  palette: Palette, px_per_um: float, n_shapes: int = 4) -> None:
  """Adds biconcave red cells to `load`, the haemoglobin concentration map (float32 [H, W]), in place.

  `n_shapes` distinct red-cell maps are drawn per image and pasted (whole-pixel positions, own stain load per
  cell): drawing every red cell separately would cost several ms per image for no visible gain.
  """
  hh, ww = load.shape
  stamps = [_red_cell_stamp(rng, r, palette, px_per_um) for (_, _, r) in cells[:n_shapes]]
  for i, (cy, cx, _) in enumerate(cells):
    stamp, half = stamps[i % len(stamps)]
    y0, x0 = int(round(cy)) - half, int(round(cx)) - half
    sy0, sx0 = max(-y0, 0), max(-x0, 0)
    y1, x1 = min(y0 + stamp.shape[0], hh), min(x0 + stamp.shape[1], ww)
    if y1 <= max(y0, 0) or x1 <= max(x0, 0):
      continue
    patch = stamp[sy0:sy0 + y1 - max(y0, 0), sx0:sx0 + x1 - max(x0, 0)]
    load[max(y0, 0):y1, max(x0, 0):x1] += patch * F32(rng.normal(1.0, 0.07))


def add_platelets(img: np.ndarray, rng: np.random.Generator, vec: np.ndarray, px_per_um: float,
                  avoid_px: tuple[float, float], avoid_um: float, mean_count: float, focus_um: float = 0.1) -> None:
  """Adds a Poisson number of platelets, away from the white cell, to a float32 planar [3, H, W] image in place.

  Args:
    img: the image to add to ([3, H, W], e.g. OD or log intensity).
    rng: random generator (consumed).
    vec: [3] what one unit of platelet stain adds per channel (the platelet OD vector, or -ln10 times it).
    px_per_um: resolution.
    avoid_px: (y, x) of the white cell; avoid_um: keep-out radius around it.
    mean_count: mean number of platelets.
    focus_um: defocus edge softness.
  """
  hh, ww = img.shape[1:]
  n = int(rng.poisson(mean_count))
  for _ in range(n):
    cy, cx = rng.uniform(0, hh), rng.uniform(0, ww)
    if np.hypot(cy - avoid_px[0], cx - avoid_px[1]) < avoid_um * px_per_um:
      continue
    r = rng.uniform(0.7, 1.5)
    half = int(np.ceil((r + 1.0) * px_per_um))
    y0, x0 = max(int(cy) - half, 0), max(int(cx) - half, 0)
    y1, x1 = min(int(cy) + half + 1, hh), min(int(cx) + half + 1, ww)
    if y1 <= y0 or x1 <= x0:
      continue
    ys, xs = fields.grid_um(y0, x0, y1 - y0, x1 - x0, cy, cx, px_per_um)
    v, u = fields.rotate(ys, xs, rng.uniform(0, np.pi))
    asp = rng.uniform(0.55, 1.0)
    d = fields.sdf_ellipse(v, u, r / asp ** 0.5, r * asp ** 0.5)
    d = d + F32(0.25 * r) * fields.smooth_noise(rng, d.shape, 0.6 * px_per_um)
    body = fields.soft_inside(d, 0.25 + focus_um)
    gran = F32(1.0) + F32(0.6) * fields.smooth_noise(rng, d.shape, 0.3 * px_per_um)
    load = body * np.clip(gran, 0.2, 2.0) * F32(rng.uniform(0.35, 0.6))
    for c in range(3):
      img[c, y0:y1, x0:x1] += load * F32(vec[c])
