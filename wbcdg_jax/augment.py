"""On-device image augmentation and evaluation preprocessing (inside jit; uint8 host batches in, float32 out).

Training (`augment_batch`), per example with its own random numbers (one [B, NUM_DRAWS] uniform draw from the batch
key, row i for example i; the per-example function is vmapped, so there is no Python loop and the whole batch is one
fused jitted computation):

1. Geometry in ONE bilinear resampling: random resized crop (area fraction U(crop_scale), log aspect ratio
   U(log crop_ratio), side lengths clipped to the image instead of torchvision's rejection loop, centre uniform
   such that the unrotated crop lies inside the image), horizontal / vertical flips (p 0.5 each), rotation by
   U(-rotate_degrees, rotate_degrees) about the crop centre. The output grid is mapped back into the source image;
   points that fall outside it are mirrored back in (`pad_mode='reflect'`, default) or clamped to the edge
   ('nearest'), never filled with black: a smear's background is light. Rotating the crop window (rather than
   rotating the cropped image) pulls real neighbouring pixels into the corners where they exist.
   If the source is much larger than needed (S > out_size / smallest crop side fraction), the batch is first
   resized with an antialiasing filter so the bilinear crop never minifies strongly (no aliasing at small
   out_size such as 64 px from 256 px sources).
2. Color jitter with torchvision ColorJitter semantics, in the fixed order brightness, contrast, saturation, hue
   (torchvision draws a random order; a fixed order avoids computing all orders under vmap):
   brightness factor U(max(0, 1-x), 1+x) multiplies the image; contrast factor U(max(0, 1-x), 1+x) blends with the
   mean of the grayscale image; saturation factor U(max(0, 1-x), 1+x) blends with the per-pixel grayscale;
   hue shift U(-x, x) is a fraction of the hue circle (x <= 0.5). Values are clipped to [0, 1] after each op.
   A value of 0 switches an op off.
3. Random grayscale with probability grayscale_p (rec601 luma, 3 channels).
4. Gaussian blur with probability blur_p, sigma U(blur_sigma) in pixels of the OUTPUT image (scale it with
   out_size: (0.1, 2.0) is the torchvision/SimCLR setting at 224 px), separable kernel truncated at 3 * max sigma
   (radius capped below out_size), reflect-padded at the borders.
5. ImageNet normalization: (x / 255 - mean) / std with mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).

Evaluation (`preprocess_eval`): antialiased bilinear resize to out_size (identity when sizes match) + normalize.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import dm_pix as pix
import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PAD_MODES = ("reflect", "nearest")


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  """Training augmentation settings (hashable: a static argument of the jitted functions).

  Attributes:
    crop_scale: (lo, hi) area fraction of the random resized crop, 0 < lo <= hi <= 1.
    crop_ratio: (lo, hi) aspect ratio width/height range (sampled log-uniformly).
    hflip, vflip: random horizontal / vertical flips with probability 0.5.
    rotate_degrees: maximum absolute rotation angle in degrees (0 = off).
    brightness, contrast, saturation: jitter strengths x (factor U(max(0, 1-x), 1+x)); 0 = off.
    hue: hue shift U(-x, x) as a fraction of the color circle, 0 <= x <= 0.5; 0 = off.
    grayscale_p: probability of converting to grayscale.
    blur_p: probability of a Gaussian blur.
    blur_sigma: (lo, hi) blur sigma in output pixels.
    pad_mode: how samples outside the source image are filled: 'reflect' (mirror) or 'nearest' (edge).
    enabled: False makes `augment_batch` equal to `preprocess_eval`.
  """
  crop_scale: tuple[float, float] = (0.7, 1.0)
  crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
  hflip: bool = True
  vflip: bool = True
  rotate_degrees: float = 180.0
  brightness: float = 0.3
  contrast: float = 0.3
  saturation: float = 0.3
  hue: float = 0.3
  grayscale_p: float = 0.1
  blur_p: float = 0.5
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  pad_mode: str = "reflect"
  enabled: bool = True

  def __post_init__(self):
    for name in ("crop_scale", "crop_ratio", "blur_sigma"):  # Lists (from configs) -> hashable tuples.
      value = tuple(float(v) for v in getattr(self, name))
      if len(value) != 2 or not 0 < value[0] <= value[1]:
        raise ValueError(f"AugmentOptions.{name} must be (lo, hi) with 0 < lo <= hi, got {value}")
      object.__setattr__(self, name, value)
    if self.crop_scale[1] > 1:
      raise ValueError(f"AugmentOptions.crop_scale must be <= 1, got {self.crop_scale}")
    for name in ("rotate_degrees", "brightness", "contrast", "saturation", "hue"):
      if getattr(self, name) < 0:
        raise ValueError(f"AugmentOptions.{name} must be >= 0, got {getattr(self, name)}")
    if self.hue > 0.5:
      raise ValueError(f"AugmentOptions.hue must be <= 0.5 (half the color circle), got {self.hue}")
    for name in ("grayscale_p", "blur_p"):
      if not 0 <= getattr(self, name) <= 1:
        raise ValueError(f"AugmentOptions.{name} must be a probability in [0, 1], got {getattr(self, name)}")
    if self.pad_mode not in _PAD_MODES:
      raise ValueError(f"AugmentOptions.pad_mode must be one of {_PAD_MODES}, got {self.pad_mode!r}")

  @classmethod
  def from_dict(cls, d: Mapping[str, Any] | Any) -> AugmentOptions:
    """Builds options from a mapping (or an ml_collections ConfigDict); unknown keys raise ValueError."""
    if hasattr(d, "to_dict"):
      d = d.to_dict()
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"AugmentOptions.from_dict: unknown keys {unknown}; valid keys are {sorted(known)}")
    return cls(**dict(d))

  @classmethod
  def off(cls) -> AugmentOptions:
    """No augmentation: every transform neutral and enabled=False (augment_batch == preprocess_eval)."""
    return cls(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False, vflip=False, rotate_degrees=0.0,
               brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, grayscale_p=0.0, blur_p=0.0,
               enabled=False)


# An example's random numbers, one uniform [0, 1) draw each, by position in its row of `draws`. All of a batch's
# come from ONE jax.random.uniform call. Drawn per example and transform (a key split B ways, then 3, then up to 7,
# and 14 draws of one number each), every threefry was its own computation: on a CPU a while loop (JAX rolls them
# there), 19 of them and 170 fusions where one loop and 34 remain, and the augmentation of 32 images compiled in
# 3.8 s instead of 2.0 s (2 cores); compiled for an H100, the BoDA step at batch 64 ran 857 kernels, now 848.
NUM_DRAWS = 14
(_AREA, _RATIO, _CENTRE_Y, _CENTRE_X, _FLIP_Y, _FLIP_X, _ROTATION, _BRIGHTNESS, _CONTRAST, _SATURATION, _HUE,
 _GRAYSCALE, _BLUR, _BLUR_SIGMA) = range(NUM_DRAWS)


def draws(key: jax.Array, batch: int) -> jax.Array:
  """float32 [batch, NUM_DRAWS] uniform in [0, 1): row i holds every random number of example i's augmentation."""
  return jax.random.uniform(key, (batch, NUM_DRAWS), jnp.float32)


def _uniform(u: jax.Array, index: int, lo: float | jax.Array, hi: float | jax.Array) -> jax.Array:
  """Draw `index` of u, mapped to U(lo, hi) as jax.random.uniform maps its [0, 1) numbers."""
  return jnp.maximum(lo, u[index] * (hi - lo) + lo)


def _normalize(x: jax.Array) -> jax.Array:
  """float32 [..., 3] in [0, 1] -> ImageNet-normalized float32."""
  return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def _resize(x: jax.Array, size: int) -> jax.Array:
  """float32 [B,H,W,3] -> [B,size,size,3], antialiased bilinear (identity when H == W == size)."""
  if x.shape[1:3] == (size, size):
    return x
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), method="linear", antialias=True)


@functools.partial(jax.jit, static_argnames=("out_size",))
def preprocess_eval(images: jax.Array, *, out_size: int) -> jax.Array:
  """Evaluation preprocessing.

  Args:
    images: uint8 [B, H, W, 3] RGB.
    out_size: output side in pixels.

  Returns:
    float32 [B, out_size, out_size, 3], ImageNet-normalized.
  """
  return _normalize(_resize(images.astype(jnp.float32) / 255.0, out_size))


def _mirror(p: jax.Array, size: int) -> jax.Array:
  """Mirrors pixel coordinates into [0, size - 1] about the edge pixel centres (scipy 'mirror' mode)."""
  if size == 1:
    return jnp.zeros_like(p)
  period = 2.0 * (size - 1)
  t = jnp.mod(p, period)
  return (size - 1) - jnp.abs(t - (size - 1))


def _bilinear(img: jax.Array, py: jax.Array, px: jax.Array) -> jax.Array:
  """Samples img [H,W,C] at float pixel coordinates py, px [h,w] (clamped to the image) -> [h,w,C]."""
  h, w = img.shape[:2]
  py = jnp.clip(py, 0.0, h - 1.0)
  px = jnp.clip(px, 0.0, w - 1.0)
  y0 = jnp.floor(py)
  x0 = jnp.floor(px)
  wy = py - y0
  wx = px - x0
  y0 = y0.astype(jnp.int32)
  x0 = x0.astype(jnp.int32)
  y1 = jnp.minimum(y0 + 1, h - 1)
  x1 = jnp.minimum(x0 + 1, w - 1)
  wy, wx = wy[..., None], wx[..., None]
  top = img[y0, x0] * (1 - wx) + img[y0, x1] * wx
  bottom = img[y1, x0] * (1 - wx) + img[y1, x1] * wx
  return top * (1 - wy) + bottom * wy


def _geometry(img: jax.Array, u: jax.Array, out_size: int, opt: AugmentOptions) -> jax.Array:
  """Random resized crop + flips + rotation as one resampling: img [H,W,3], draws u [NUM_DRAWS] -> [out,out,3]."""
  h, w = img.shape[:2]
  area = _uniform(u, _AREA, *opt.crop_scale)
  ratio = jnp.exp(_uniform(u, _RATIO, math.log(opt.crop_ratio[0]), math.log(opt.crop_ratio[1])))
  crop_h = jnp.minimum(jnp.sqrt(area / ratio), 1.0) * h  # Crop sides in source pixels.
  crop_w = jnp.minimum(jnp.sqrt(area * ratio), 1.0) * w
  cy = _uniform(u, _CENTRE_Y, crop_h / 2, h - crop_h / 2)
  cx = _uniform(u, _CENTRE_X, crop_w / 2, w - crop_w / 2)
  if opt.vflip:
    crop_h = jnp.where(u[_FLIP_Y] < 0.5, -crop_h, crop_h)
  if opt.hflip:
    crop_w = jnp.where(u[_FLIP_X] < 0.5, -crop_w, crop_w)
  # Output pixel centres in [-0.5, 0.5], scaled to the (possibly flipped) crop.
  grid = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) / out_size - 0.5
  uy = grid[:, None] * crop_h
  ux = grid[None, :] * crop_w
  if opt.rotate_degrees > 0:
    theta = jnp.deg2rad(_uniform(u, _ROTATION, -opt.rotate_degrees, opt.rotate_degrees))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    uy, ux = cos * uy - sin * ux, sin * uy + cos * ux
  # Continuous coordinates put pixel k's centre at k + 0.5; array coordinates at k.
  py = cy + uy - 0.5
  px = cx + ux - 0.5
  if opt.pad_mode == "reflect":
    py, px = _mirror(py, h), _mirror(px, w)
  return _bilinear(img, jnp.broadcast_to(py, (out_size, out_size)), jnp.broadcast_to(px, (out_size, out_size)))


_LUMA = (0.2989, 0.587, 0.114)  # rec601, torchvision's rgb_to_grayscale weights.

# Between the resampling and the blur an image is held in one of two layouts, whichever the backend runs faster
# (augment_batch picks by platform): a tuple of three [h, w] planes (GPU) or one [3, h, w] array (CPU). On the
# tuple every color op is elementwise on arrays of one shape, and XLA:GPU fuses the chain into three kernels; on an
# array, each op slicing and re-joining the channels, it wrote nine intermediate images. Compiled for an H100, with
# the blur's [h, 3, w] order (`_blur`), 256 images at 224 px move 2.3 GB instead of 3.5 GB. On 2 CPU cores the
# tuple took 1.2x the time (64 images at 224 px from 256; 32 at 64 px), so the CPU keeps the array. The color
# functions take either.
Image = jax.Array | tuple[jax.Array, jax.Array, jax.Array]


def _split(img: Image) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The r, g, b planes of img: a tuple's items, or an array's [1, h, w] slices."""
  return img if isinstance(img, tuple) else tuple(img[c:c + 1] for c in range(3))


def _map(fn, img: Image) -> Image:
  """fn applied to each plane (a tuple) or to the whole array (the same elementwise op)."""
  return tuple(fn(x) for x in img) if isinstance(img, tuple) else fn(img)


def _gray(r: jax.Array, g: jax.Array, b: jax.Array) -> jax.Array:
  """rec601 luma of the planes r, g, b."""
  # Multiply-adds, not a dot with a 3-vector: XLA:GPU made that a matrix multiply with one output column (2% of a
  # ResNet-50 step at batch 256 on an H100), where multiply-adds fuse into the neighbouring color ops.
  return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


def _adjust_hue(img: Image, delta: jax.Array) -> Image:
  """Shifts the HSV hue of img in [0,1] (either layout) by delta (a fraction of the circle), as dm-pix's adjust_hue.

  The RGB -> HSV step picks each pixel's hue sector by comparing the channels with one another, where dm-pix
  compares each with their maximum (`value == red`). Compiled, XLA may compute a channel twice in different
  kernels, rounded differently (fused multiply-adds), so that no channel equals the maximum and the pixel falls to
  the wrong sector: under jit a default augmentation (CPU) differed from the op-by-op one in a fifth to a third
  of its values, by up to the whole [0, 1] range.
  Comparisons between channels can only pick between neighbouring sectors at a near-tie, where both give the
  same hue. HSV -> RGB is dm-pix's.
  """
  r, g, b = _split(img)
  value = jnp.maximum(jnp.maximum(r, g), b)
  chroma = value - jnp.minimum(jnp.minimum(r, g), b)
  safe_chroma = jnp.where(chroma > 0, chroma, 1.0)
  hue = jnp.where((r >= g) & (r >= b), (g - b) / safe_chroma,
                  jnp.where(g >= b, (b - r) / safe_chroma + 2.0, (r - g) / safe_chroma + 4.0)) / 6.0
  hue = (jnp.where(chroma > 0, hue, 0.0) + delta) % 1.0
  saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
  if isinstance(img, tuple):
    rgb = pix.hsv_to_rgb(jnp.stack([hue, saturation, value], axis=-1))
    return tuple(rgb[..., c] for c in range(3))
  return pix.hsv_to_rgb(jnp.concatenate([hue, saturation, value], axis=0), channel_axis=0)


def _factor(u: jax.Array, index: int, strength: float) -> jax.Array:
  return _uniform(u, index, max(0.0, 1.0 - strength), 1.0 + strength)


def _color(img: Image, u: jax.Array, opt: AugmentOptions) -> Image:
  """Color jitter, random grayscale: img in [0,1] (either layout), draws u [NUM_DRAWS] -> the same layout, in [0,1]."""
  clip = lambda x: jnp.clip(x, 0.0, 1.0)
  if opt.brightness > 0:
    f = _factor(u, _BRIGHTNESS, opt.brightness)
    img = _map(lambda x: clip(f * x), img)
  if opt.contrast > 0:
    f = _factor(u, _CONTRAST, opt.contrast)
    mean = jnp.mean(_gray(*_split(img)))
    img = _map(lambda x: clip(f * x + (1 - f) * mean), img)
  if opt.saturation > 0:
    f = _factor(u, _SATURATION, opt.saturation)
    gray = _gray(*_split(img))
    img = _map(lambda x: clip(f * x + (1 - f) * gray), img)
  if opt.hue > 0:
    delta = _uniform(u, _HUE, -opt.hue, opt.hue)
    img = _map(clip, _adjust_hue(img, delta))
  if opt.grayscale_p > 0:
    to_gray = u[_GRAYSCALE] < opt.grayscale_p
    gray = _gray(*_split(img))
    img = _map(lambda x: jnp.where(to_gray, gray, x), img)
  return img


def _blur_matrix(size: int, sigma: jax.Array, radius: int) -> jax.Array:
  """float32 [size, size] M such that M @ x is x [size, ...] blurred along its first axis by a Gaussian of `sigma`
  pixels truncated at `radius` (< size) taps, with reflect padding (numpy's 'reflect': mirrored about the edge
  pixels, which are not repeated). Each row sums to 1."""
  i = jnp.arange(size, dtype=jnp.float32)[:, None]
  j = jnp.arange(size, dtype=jnp.float32)[None, :]

  def tap(offset):  # the weight of the source pixel `offset` rows below (above if negative) the output's
    return jnp.where(jnp.abs(offset) <= radius, jnp.exp(-0.5 * (offset / sigma) ** 2), 0.0)

  # Source row j is reached directly (offset j - i), or as the mirror image of a row beyond an edge: -j above the
  # first row (j >= 1) or 2 (size - 1) - j below the last (j <= size - 2); radius < size: one reflection at most.
  m = (tap(j - i) + jnp.where(j >= 1, tap(-j - i), 0.0)
       + jnp.where(j <= size - 2, tap(2.0 * (size - 1) - j - i), 0.0))
  return m / jnp.sum(tap(jnp.arange(-radius, radius + 1, dtype=jnp.float32)))


def _blur(img: jax.Array, u: jax.Array, opt: AugmentOptions, channel_axis: int) -> jax.Array:
  """Gaussian blur with probability blur_p; img [3,H,W] (channel_axis 0) or [H,3,W] (1), draws u [NUM_DRAWS] -> the
  same shape."""
  h, w = (img.shape[1], img.shape[2]) if channel_axis == 0 else (img.shape[0], img.shape[2])
  radius = min(int(math.ceil(3 * opt.blur_sigma[1])), h - 1, w - 1)
  if radius < 1:
    return img
  sigma = _uniform(u, _BLUR_SIGMA, *opt.blur_sigma)
  blur = u[_BLUR] < opt.blur_p
  # Separable, and each pass one matrix product (the identity for an image drawn not to be blurred): one dense
  # matmul per pass instead of 2 * radius + 1 shifted slices, which XLA fused into the column pass, recomputing
  # the row pass at every column tap (and a reflect-padded copy, and a select between blurred and not).
  rows = jnp.where(blur, _blur_matrix(h, sigma, radius), jnp.eye(h, dtype=jnp.float32))
  cols = rows if w == h else jnp.where(blur, _blur_matrix(w, sigma, radius), jnp.eye(w, dtype=jnp.float32))
  if channel_axis == 0:
    return jnp.einsum("ij,cjw,kw->cik", rows, img, cols)
  # [H, 3, W]: the column pass multiplies [(H 3), W] rows by a matrix and the row pass [H, (3 W)], in place; on
  # [3, H, W] XLA:GPU transposed the image between the two.
  return jnp.einsum("ij,jck->ick", rows, jnp.einsum("jcw,kw->jck", img, cols))


def _augment_one(img: jax.Array, u: jax.Array, out_size: int, opt: AugmentOptions,
                 separate_planes: bool) -> jax.Array:
  """img [H,W,3], draws u [NUM_DRAWS] -> [3,out,out], or [out,3,out] if `separate_planes` (the color ops then run on
  a tuple of planes; see `Image`)."""
  img = _geometry(img, u, out_size, opt)
  if separate_planes:
    img = jnp.stack(_color(tuple(img[..., c] for c in range(3)), u, opt), axis=1)
  else:
    img = _color(jnp.moveaxis(img, -1, 0), u, opt)
  if opt.blur_p > 0:
    img = _blur(img, u, opt, channel_axis=1 if separate_planes else 0)
  return img


def _augment_images(x: jax.Array, u: jax.Array, out_size: int, opt: AugmentOptions,
                    separate_planes: bool) -> jax.Array:
  """float32 [B,H,W,3] in [0,1], draws u [B, NUM_DRAWS] -> [B,out,out,3], computed per image (row i of u for image
  i) in either layout."""
  y = jax.vmap(_augment_one, in_axes=(0, 0, None, None, None))(x, u, out_size, opt, separate_planes)
  return jnp.moveaxis(y, 2 if separate_planes else 1, -1)


def _working_size(source_size: int, out_size: int, opt: AugmentOptions) -> int:
  """Smallest source side at which the smallest possible crop still has >= out_size pixels per side."""
  min_side = math.sqrt(opt.crop_scale[0] * min(opt.crop_ratio[0], 1.0 / opt.crop_ratio[1]))
  return min(source_size, int(math.ceil(out_size / min(min_side, 1.0))))


@functools.partial(jax.jit, static_argnames=("out_size", "options"))
def augment_batch(images: jax.Array, key: jax.Array, *, out_size: int,
                  options: AugmentOptions = AugmentOptions()) -> jax.Array:
  """Random training augmentation of a batch (see module docstring for the transforms).

  Args:
    images: uint8 [B, H, W, 3] RGB, H == W.
    key: PRNG key; example i uses row i of `draws(key, B)`.
    out_size: output side in pixels.
    options: AugmentOptions (static).

  Returns:
    float32 [B, out_size, out_size, 3], ImageNet-normalized.
  """
  if not options.enabled:
    return preprocess_eval(images, out_size=out_size)
  if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
    raise ValueError(f"augment_batch: images must be [B, S, S, 3], got {images.shape}")
  x = images.astype(jnp.float32) / 255.0
  x = _resize(x, _working_size(images.shape[1], out_size, options))
  u = draws(key, images.shape[0])
  # The same values, computed in the layout each backend runs faster (see `Image`); the platform picks the branch
  # when the step is compiled.
  layout = lambda planes: functools.partial(_augment_images, out_size=out_size, opt=options,
                                            separate_planes=planes)
  x = jax.lax.platform_dependent(x, u, cpu=layout(False), default=layout(True))
  return _normalize(x)
