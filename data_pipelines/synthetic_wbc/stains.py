"""Stain colours and camera optics of the synthetic domains (Beer-Lambert absorbance model).

A smear is drawn as optical density (OD, base-10 absorbance) per RGB channel (planar [3, H, W] arrays: NumPy
broadcasting over a trailing axis of 3 is ~20x slower): every stained structure adds
`concentration * stain_vector` to the OD, and the camera sees `I0 * illumination(x, y) * 10 ** (-OD)`.
Overlaps (a red cell under a white cell) then darken naturally, and a domain's "stain protocol" is just a set of
stain vectors and an `I0` white point. Per image, those vectors are jittered (a small jitter for the single-lab
Matek/INT-like domains, a strong one for the Acevedo-like domain); afterwards the optics add vignetting and an
illumination gradient, optical blur, sensor noise and optionally JPEG compression.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Mapping

import numpy as np
from PIL import Image, ImageFilter

F32 = np.float32
LN10 = F32(np.log(10.0))

# Stains every domain must define, with what they colour.
STAIN_NAMES: tuple[str, ...] = (
    "chromatin",      # nuclear DNA: violet-purple (azure B + eosin complex)
    "basophilic",     # RNA-rich cytoplasm: sky/steel blue
    "acidophilic",    # protein-rich cytoplasm: pale pink
    "rbc",            # haemoglobin + eosin: salmon pink
    "eos_granule",    # eosinophil granules: orange-red
    "baso_granule",   # basophil granules: blue-black purple
    "azur_granule",   # azurophilic (primary) granules: red-purple
    "neut_granule",   # specific neutrophil granules: lilac dust
    "platelet",       # platelets: purple
    "plasma",         # background film tint
)


@dataclasses.dataclass(frozen=True)
class DomainStyle:
  """Stain palette and optics of one domain. Ranges are (low, high) for a uniform draw per image.

  Attributes:
    i0_rgb: white point (brightness of empty glass) in 8-bit levels, [3].
    i0_jitter: scale of the per-image white-balance drift (log units; brightness, warm-cool, magenta-green).
    stains: OD per unit concentration, RGB, for every name in STAIN_NAMES.
    stain_jitter: std of the per-image log change of each stain vector channel (hue/saturation drift).
    strength_jitter: std of the per-image log change of each stain's overall strength.
    rbc_pallor: depth of the red-cell central pallor (0 none, 1 empty centre).
    vignette: relative darkening at the image corners.
    gradient: relative illumination change across the image along a random direction.
    focus_um: extra edge softness (defocus) in um added to every edge and granule.
    blur_px: Gaussian blur sigma in pixels applied to the final image (0 disables).
    noise_sigma: std of the sensor noise in 8-bit levels.
    jpeg_quality: JPEG quality range, or None for lossless output (TIFF-like).
    gamma: range of the camera's tone-curve exponent: intensity out = white * (in / white) ** gamma. Below 1 the
      dark structures (nuclei, granules) come out lighter and flatter, above 1 darker and crisper; brightness and
      contrast jitter (linear) cannot undo it, so it is a lasting part of a lab's look.
    defocus_um: range of the sigma (um) of an extra Gaussian blur of the final image (a soft, slightly out of
      focus camera); unlike blur_px it is physical, so it survives resizing to the stored size.
    chromatin_texture: range of a multiplier of the chromatin clump contrast (how a lab's fixation and stain
      render chromatin: coarse and contrasted vs smooth and homogeneous).
  """
  i0_rgb: tuple[float, float, float]
  i0_jitter: float
  stains: Mapping[str, tuple[float, float, float]]
  stain_jitter: float
  strength_jitter: float
  rbc_pallor: tuple[float, float]
  vignette: tuple[float, float]
  gradient: tuple[float, float]
  focus_um: tuple[float, float]
  blur_px: tuple[float, float]
  noise_sigma: tuple[float, float]
  jpeg_quality: tuple[int, int] | None
  gamma: tuple[float, float] = (1.0, 1.0)
  defocus_um: tuple[float, float] = (0.0, 0.0)
  chromatin_texture: tuple[float, float] = (1.0, 1.0)

  def __post_init__(self):
    missing = [n for n in STAIN_NAMES if n not in self.stains]
    if missing:
      raise ValueError(f"DomainStyle.stains lacks {missing}; every style needs all of {STAIN_NAMES}")


@dataclasses.dataclass(frozen=True)
class Palette:
  """The stain colours and optics drawn for one image.

  Attributes:
    i0: white point, float32 [3], 8-bit levels.
    od: stain name -> float32 [3] OD per unit concentration (already jittered).
    rbc_pallor: red-cell central pallor depth.
    focus_um: defocus edge softness in um.
    chromatin_texture: multiplier of the chromatin clump contrast.
  """
  i0: np.ndarray
  od: Mapping[str, np.ndarray]
  rbc_pallor: float
  focus_um: float
  chromatin_texture: float = 1.0


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
  return float(rng.uniform(lo_hi[0], lo_hi[1]))


def sample_palette(rng: np.random.Generator, style: DomainStyle) -> Palette:
  """Draws one image's stain colours from a domain style (see DomainStyle for the jitter model)."""
  # White-balance drift along the axes real lamps/cameras drift: brightness, warm-cool (red vs blue) and a
  # weaker magenta-green; independent per-channel jitter would also make implausible green backgrounds.
  z = rng.normal(0.0, style.i0_jitter, 3)
  log_gain = z[0] * 0.6 + z[1] * np.array([0.7, 0.1, -0.7]) + z[2] * np.array([0.25, -0.35, 0.25])
  i0 = np.asarray(style.i0_rgb, F32) * np.exp(log_gain).astype(F32)
  od = {}
  for name in STAIN_NAMES:
    vec = np.asarray(style.stains[name], F32)
    hue = np.exp(rng.normal(0.0, style.stain_jitter, 3))
    strength = np.exp(rng.normal(0.0, style.strength_jitter))
    od[name] = (vec * hue * strength).astype(F32)
  return Palette(i0=np.minimum(i0, 255.0), od=od, rbc_pallor=_u(rng, style.rbc_pallor),
                 focus_um=_u(rng, style.focus_um), chromatin_texture=_u(rng, style.chromatin_texture))


_NOISE_TILE: np.ndarray | None = None
_TILE = 512


def _noise_tile() -> np.ndarray:
  """A fixed 3x512x512 tile of unit Gaussian noise (seeded), cropped per image: drawing fresh noise costs ms."""
  global _NOISE_TILE
  if _NOISE_TILE is None:
    _NOISE_TILE = np.random.default_rng(20240607).standard_normal((3, _TILE, _TILE), dtype=F32)
  return _NOISE_TILE


def _sensor_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """Unit-variance noise, planar [3, h, w]: a random window of the fixed tile, randomly flipped/transposed."""
  tile = _noise_tile()
  if rng.integers(2):
    tile = tile.transpose(0, 2, 1)
  ry, rx = tile.shape[1], tile.shape[2]
  if h > ry or w > rx:
    tile = np.tile(tile, (1, int(np.ceil(h / ry)), int(np.ceil(w / rx))))
    ry, rx = tile.shape[1], tile.shape[2]
  oy, ox = int(rng.integers(0, ry - h + 1)), int(rng.integers(0, rx - w + 1))
  patch = tile[:, oy:oy + h, ox:ox + w]
  return patch[:, ::-1] if rng.integers(2) else patch


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
  """Approximate Gaussian blur of a planar image [C, H, W] in place (borders keep their value).

  Separable 3-tap passes [a, 1 - 2a, a] (variance 2a px^2 each, a <= 1/4), as many as needed for sigma up to
  ~1.2 px: a few array operations per pass, far cheaper than a general Gaussian filter.
  """
  var = float(sigma_px) ** 2
  passes = int(np.ceil(var / 0.5))
  if var < 0.02 or passes == 0:
    return img
  a = F32(var / (2.0 * min(passes, 3)))
  for _ in range(min(passes, 3)):
    for x in (img, img.transpose(0, 2, 1)):  # along H, then along W
      t = x[:, :-2] + x[:, 2:]
      t *= a
      x[:, 1:-1] *= F32(1.0) - F32(2.0) * a
      x[:, 1:-1] += t
  return img


def log_exposure(rng: np.random.Generator, style: DomainStyle, palette: Palette, shape: tuple[int, int],
                 film: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Log of the light reaching the camera through empty glass: illumination map and white point.

  Illumination is quadratic vignetting plus a linear gradient in a random direction; the plasma film's
  unevenness is folded in as a grey absorbance (its mean tint goes into the white point).
  Args:
    rng: random generator (consumed).
    style: the domain's optics ranges.
    palette: the image's palette.
    shape: (H, W).
    film: optional float32 [H, W] relative plasma-film thickness around 1.
  Returns:
    (log_illum float32 [H, W], log_i0 float32 [3]); log intensity = log_illum + log_i0 - ln(10) * OD.
  """
  h, w = shape
  yy = np.linspace(-1.0, 1.0, h, dtype=F32)[:, None]
  xx = np.linspace(-1.0, 1.0, w, dtype=F32)[None, :]
  vig, grad, ang = _u(rng, style.vignette), _u(rng, style.gradient), rng.uniform(0, 2 * np.pi)
  illum = (F32(1.0) - F32(vig * 0.5) * (yy * yy + xx * xx)
           + F32(grad * 0.5 * np.sin(ang)) * yy + F32(grad * 0.5 * np.cos(ang)) * xx)
  log_illum = np.log(np.maximum(illum, F32(0.05)))
  plasma = palette.od["plasma"]
  if film is not None:
    log_illum = log_illum - (film - F32(1.0)) * F32(LN10 * plasma.mean())
  return log_illum.astype(F32), (np.log(palette.i0) - LN10 * plasma).astype(F32)


def expose(log_intensity: np.ndarray, style: DomainStyle, rng: np.random.Generator, px_per_um: float = 10.0,
           log_white: np.ndarray | None = None) -> np.ndarray:
  """The camera: tone curve, intensity, optical blur, defocus, sensor noise, 8-bit quantisation, optional JPEG.

  Args:
    log_intensity: float32 planar [3, H, W] natural log of the intensity in 8-bit levels (overwritten).
    style: the domain's optics ranges.
    rng: random generator (consumed).
    px_per_um: image resolution (converts style.defocus_um to pixels).
    log_white: float32 [3] log of the white point the tone curve pivots on (glass stays glass); None: 255.
  Returns:
    uint8 [H, W, 3].
  """
  _, h, w = log_intensity.shape
  gamma = _u(rng, style.gamma)
  if gamma != 1.0:
    # In the log domain the power law is an affine map: free compared with a per-pixel power.
    pivot = np.full(3, np.log(255.0), F32) if log_white is None else np.asarray(log_white, F32)
    for c in range(3):
      log_intensity[c] *= F32(gamma)
      log_intensity[c] += F32((1.0 - gamma) * pivot[c])
  img = np.exp(log_intensity, out=log_intensity)
  _blur(img, _u(rng, style.blur_px))
  img += _sensor_noise(rng, h, w) * F32(_u(rng, style.noise_sigma))
  out = np.clip(img, 0.0, 255.0, out=img).transpose(1, 2, 0).astype(np.uint8)
  defocus_px = _u(rng, style.defocus_um) * px_per_um
  if defocus_px > 0.3:
    # Pillow's Gaussian blur (box-filter passes in C) is ~1 ms at these sizes, whatever the radius.
    out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(defocus_px)))
  if style.jpeg_quality is not None:
    out = jpeg_roundtrip(out, int(rng.integers(style.jpeg_quality[0], style.jpeg_quality[1] + 1)))
  return out


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
  """Encodes uint8 [H, W, 3] as JPEG at `quality` (4:2:0 chroma, like microscope cameras) and decodes it."""
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
  return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
