"""Vectorised 2-D field primitives used to draw cells: coordinate grids, smooth noise, signed distances, splats.

Every function works on whole NumPy arrays (no per-pixel Python loops) because a cell must render in a few
milliseconds. Lengths are in micrometres (um) unless a name ends in `_px`; arrays are float32.
Signed distances (SDF) are negative inside a shape and positive outside, in um.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

F32 = np.float32
# Bicubic upsampling of a unit-variance lattice shrinks the variance; this rescales it back to about 1.
_NOISE_GAIN = F32(1.24)


def grid_um(y0: int, x0: int, h: int, w: int, cy_px: float, cx_px: float,
            px_per_um: float) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates of a box, in um relative to a centre point.

  Args:
    y0, x0: top-left pixel of the box in the image.
    h, w: box size in pixels.
    cy_px, cx_px: centre point in image pixels (sub-pixel allowed).
    px_per_um: image resolution.
  Returns:
    (Y [h,1], X [1,w]) float32 in um; broadcast them together to get the [h,w] grid.
  """
  ys = ((np.arange(h, dtype=F32) + F32(y0 + 0.5 - cy_px)) / F32(px_per_um))[:, None]
  xs = ((np.arange(w, dtype=F32) + F32(x0 + 0.5 - cx_px)) / F32(px_per_um))[None, :]
  return ys, xs


def rotate(ys: np.ndarray, xs: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
  """Coordinates in a frame rotated by `angle` radians: returns (v, u), u along the rotated x axis, [h,w]."""
  c, s = F32(np.cos(angle)), F32(np.sin(angle))
  return -xs * s + ys * c, xs * c + ys * s


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], feature_px: float) -> np.ndarray:
  """Smooth random field of about unit variance whose blobs are about `feature_px` pixels wide.

  A random lattice with one node per `feature_px` is upsampled bicubically (Pillow, in C), which is much faster
  than evaluating gradient noise per pixel.
  Args:
    rng: random generator (consumed).
    shape: (h, w) of the output in pixels.
    feature_px: blob size in pixels (>= 1).
  Returns:
    float32 [h, w], read-only (do not modify in place).
  """
  h, w = shape
  f = max(float(feature_px), 1.0)
  gh, gw = int(np.ceil(h / f)) + 4, int(np.ceil(w / f)) + 4
  lattice = rng.standard_normal((gh, gw), dtype=F32) * _NOISE_GAIN
  # Resample a random sub-window of the lattice straight to (h, w): blob positions are not tied to the box.
  oy, ox = rng.uniform(1.0, 2.0, 2)
  box = (float(ox), float(oy), float(ox + w / f), float(oy + h / f))
  up = Image.fromarray(lattice, "F").resize((w, h), Image.BICUBIC, box=box)
  return np.asarray(up)


def streak_noise(rng: np.random.Generator, shape: tuple[int, int], along_px: float, across_px: float,
                 angle: float) -> np.ndarray:
  """Anisotropic smooth noise of about unit variance: streaks `along_px` long and `across_px` wide.

  Args:
    rng: random generator (consumed).
    shape: (h, w) output size in pixels.
    along_px, across_px: blob length along the streaks and width across them, in pixels.
    angle: streak direction in radians.
  Returns:
    float32 [h, w].
  """
  h, w = shape
  side = int(np.ceil(np.hypot(h, w))) + 2
  gh = int(np.ceil(side / max(across_px, 1.0))) + 2
  gw = int(np.ceil(side / max(along_px, 1.0))) + 2
  lattice = rng.standard_normal((gh, gw), dtype=F32)
  up = Image.fromarray(lattice, "F").resize((side, side), Image.BICUBIC)
  up = up.rotate(float(np.degrees(angle)), resample=Image.BILINEAR)
  oy, ox = (side - h) // 2, (side - w) // 2
  return np.asarray(up, dtype=F32)[oy:oy + h, ox:ox + w] * _NOISE_GAIN


def soft_inside(sdf: np.ndarray, edge_um: float) -> np.ndarray:
  """Occupancy in [0, 1] from a signed distance: 1 inside, 0 outside, a linear ramp `edge_um` wide at the edge."""
  return np.clip(F32(0.5) - sdf * F32(1.0 / max(edge_um, 1e-3)), 0.0, 1.0)


def sdf_ellipse(v: np.ndarray, u: np.ndarray, a: float, b: float) -> np.ndarray:
  """Approximate SDF of an axis-aligned ellipse with semi-axes a (along u) and b (along v), in um.

  Uses the first-order estimate (k - 1) / |grad k| with k the normalised radius; exact on the boundary.
  """
  qa, qb = u * F32(1.0 / a), v * F32(1.0 / b)
  k = np.sqrt(qa * qa + qb * qb) + F32(1e-6)
  # |grad k| * k; the 1e-6 terms keep the exact centre at about -max(a, b) instead of 0/0.
  g = np.sqrt((qa * F32(1.0 / a)) ** 2 + (qb * F32(1.0 / b)) ** 2) + F32(1e-6 / max(a, b))
  return k * (k - F32(1.0)) / g


def sdf_circle(v: np.ndarray, u: np.ndarray, cv: float, cu: float, r: float) -> np.ndarray:
  """SDF of a disk of radius r centred at (cv, cu), in um."""
  return np.sqrt((u - F32(cu)) ** 2 + (v - F32(cv)) ** 2) - F32(r)


def sdf_capsule(v: np.ndarray, u: np.ndarray, p0: tuple[float, float], p1: tuple[float, float],
                r: float) -> np.ndarray:
  """SDF of a capsule (segment p0-p1 given as (v, u) points, thickened by radius r), in um."""
  dv, du = p1[0] - p0[0], p1[1] - p0[1]
  ll = max(dv * dv + du * du, 1e-9)
  pv, pu = v - F32(p0[0]), u - F32(p0[1])
  t = np.clip((pv * F32(dv) + pu * F32(du)) * F32(1.0 / ll), 0.0, 1.0)
  return np.sqrt((pv - t * F32(dv)) ** 2 + (pu - t * F32(du)) ** 2) - F32(r)


def sdf_arc(v: np.ndarray, u: np.ndarray, radius: float, half_angle: float, width: np.ndarray | float
            ) -> np.ndarray:
  """SDF of a thick circular arc centred at the origin, symmetric about the +u axis, with round ends.

  Args:
    v, u: coordinates in um.
    radius: arc (mid-line) radius in um.
    half_angle: half of the arc's angular extent in radians (pi gives a full ring).
    width: band thickness in um (scalar or array broadcastable to the grid).
  Returns:
    float32 SDF in um.
  """
  phi = np.arctan2(v, u)
  d_arc = np.abs(np.sqrt(u * u + v * v) - F32(radius))
  eu, ev = F32(radius * np.cos(half_angle)), F32(radius * np.sin(half_angle))
  d_end = np.sqrt((u - eu) ** 2 + (np.abs(v) - ev) ** 2)
  return np.where(np.abs(phi) <= half_angle, d_arc, d_end) - F32(0.5) * width


def smooth_union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
  """Smooth minimum of two SDFs (blend radius k um): joins shapes with a fillet instead of a crease."""
  if k <= 0:
    return np.minimum(a, b)
  h = np.clip(F32(k) - np.abs(a - b), 0.0, None) * F32(1.0 / k)
  return np.minimum(a, b) - h * h * F32(k * 0.25)


def splat(shape: tuple[int, int], ys_px: np.ndarray, xs_px: np.ndarray, radius_px: np.ndarray,
          weight: np.ndarray, *, flat: bool = False) -> np.ndarray:
  """Sum of small round blobs (granules, vacuoles, nucleoli) drawn at sub-pixel positions.

  Each blob is evaluated on its own (2k+1)^2 pixel window and accumulated with `np.bincount`, so the cost is
  proportional to the number of blobs times their area, never to the image size.
  Args:
    shape: (h, w) output size in pixels.
    ys_px, xs_px: [N] blob centres in pixels (float).
    radius_px: [N] blob radius in pixels (Gaussian sigma if not `flat`, disk radius if `flat`); blobs are cut
      off at 3 sigmas (1.6 radii if flat) of the largest blob.
    weight: [N] peak value of each blob.
    flat: False for Gaussian blobs; True for flat-topped disks (profile exp(-(r/R)^4)).
  Returns:
    float32 [h, w].
  """
  h, w = shape
  out = np.zeros(h * w, dtype=F32)
  n = len(ys_px)
  if n == 0:
    return out.reshape(h, w)
  rad = np.asarray(radius_px, dtype=F32)
  k = int(np.ceil(float(rad.max()) * (1.6 if flat else 3.0))) + 1
  off = np.arange(-k, k + 1, dtype=np.int32)
  cy = np.floor(ys_px).astype(np.int32)
  cx = np.floor(xs_px).astype(np.int32)
  iy = cy[:, None, None] + off[None, :, None]  # [N, K, 1]
  ix = cx[:, None, None] + off[None, None, :]  # [N, 1, K]
  dy = (iy + F32(0.5) - np.asarray(ys_px, F32)[:, None, None]) / rad[:, None, None]
  dx = (ix + F32(0.5) - np.asarray(xs_px, F32)[:, None, None]) / rad[:, None, None]
  r2 = dy * dy + dx * dx
  val = np.exp(-r2 * r2) if flat else np.exp(F32(-0.5) * r2)
  val = val * np.asarray(weight, F32)[:, None, None]
  ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
  flat_idx = np.broadcast_to(iy * w + ix, ok.shape)[ok]
  out += np.bincount(flat_idx, weights=val[ok], minlength=h * w).astype(F32)
  return out.reshape(h, w)
