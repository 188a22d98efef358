"""Reading microscope images into uint8 RGB and cropping them to a fixed physical field of view.

Every domain (real or synthetic) goes through `crop_to_fov`, so a cell covers the same fraction of the
stored image whatever the camera resolution (REFERENCE.md section 3, "Crop rule"):

  1. `read_image` / `read_image_bytes`: TIFF, JPEG, PNG or BMP -> uint8 [H, W, 3] RGB.
  2. `crop_side_px`: side of the square field of view in pixels, round(fov_um * px_per_um).
  3. `center_crop_or_pad`: centre crop to that side; an axis shorter than the side is padded with the
     image's background colour (never upscaled, which would make its cells look bigger than elsewhere).
  4. `resize_square`: resample the square to S x S with Pillow's Lanczos filter, which widens its kernel by
     the reduction factor when shrinking and therefore antialiases.

Conversions done by `read_image_bytes` (document of record):
  * grayscale (L, 1-bit, 16-bit gray) -> the gray value replicated into R, G and B;
  * palette / CMYK / YCbCr -> Pillow's own RGB conversion;
  * any alpha channel (RGBA, LA, PA, palette transparency) -> composited over white, since slide
    background is bright and transparent pixels carry no tissue;
  * 16-bit samples -> v8 = round(v16 * 255 / 65535) (full-range linear scaling, the same for every image
    so colours stay comparable; a 12-bit image stored in 16 bits therefore comes out dark);
  * 32-bit integer samples are treated as 16-bit (clipped to 0..65535), float samples as [0, 1] when
    their maximum is <= 1 and as [0, 255] otherwise (clipped);
  * multi-page / animated files -> first page; EXIF orientation is ignored (microscope frames have none).
Files whose first bytes are not a TIFF/JPEG/PNG/BMP signature raise `NotAnImageError`; files that have a
signature but fail to decode (truncated, corrupt) raise `ImageReadError`.
"""

from __future__ import annotations

import io
import math
import os
import warnings

import numpy as np
from PIL import Image

# Signatures of the accepted formats: (format name, leading bytes).
_SIGNATURES: tuple[tuple[str, bytes], ...] = (
    ("tiff", b"II*\x00"),
    ("tiff", b"MM\x00*"),
    ("tiff", b"II+\x00"),  # BigTIFF
    ("tiff", b"MM\x00+"),
    ("jpeg", b"\xff\xd8\xff"),
    ("png", b"\x89PNG\r\n\x1a\n"),
    ("bmp", b"BM"),
)


class ImageReadError(ValueError):
  """A file could not be turned into an RGB image; `path` names it and `reason` says why."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = path
    self.reason = reason


class NotAnImageError(ImageReadError):
  """The file's bytes do not start with a TIFF, JPEG, PNG or BMP signature (e.g. a `.DS_Store`)."""


def sniff_format(data: bytes) -> str | None:
  """Returns 'tiff', 'jpeg', 'png' or 'bmp' from the leading bytes of a file, or None if none matches."""
  for name, magic in _SIGNATURES:
    if data.startswith(magic):
      return name
  return None


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
  """Reads an image file as RGB.

  Args:
    path: file path.

  Returns:
    uint8 [H, W, 3] RGB array (conversions listed in the module docstring).

  Raises:
    NotAnImageError: the file is not a TIFF/JPEG/PNG/BMP.
    ImageReadError: the file cannot be read or decoded.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ImageReadError(os.fspath(path), f"cannot read file: {e}") from e
  return read_image_bytes(data, source=os.fspath(path))


def read_image_bytes(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
  """Decodes the bytes of an image file as RGB.

  Args:
    data: the whole file content.
    source: name used in error messages (usually the path).

  Returns:
    uint8 [H, W, 3] RGB array.

  Raises:
    NotAnImageError: no TIFF/JPEG/PNG/BMP signature.
    ImageReadError: decoding failed (truncated or corrupt data, unsupported sample layout).
  """
  fmt = sniff_format(data)
  if fmt is None:
    raise NotAnImageError(source, "not an image file (no TIFF/JPEG/PNG/BMP signature)")
  try:
    return _decode_with_pillow(data)
  except MemoryError:
    raise
  except Exception as pillow_error:  # pylint: disable=broad-except
    # Pillow cannot read some TIFF layouts (e.g. 16-bit RGB); tifffile can.
    if fmt != "tiff":
      raise ImageReadError(source, f"corrupt or unreadable {fmt}: {pillow_error}") from pillow_error
    try:
      return _decode_with_tifffile(data)
    except MemoryError:
      raise
    except Exception as tiff_error:  # pylint: disable=broad-except
      raise ImageReadError(
          source, f"corrupt or unreadable tiff: {pillow_error}; tifffile: {tiff_error}") from tiff_error


def image_header(data: bytes) -> tuple[tuple[int, int] | None, str | None]:
  """Reads (width, height) and the pixel layout from the file header, without decoding pixels.

  Returns:
    ((width, height) or None, mode or None): the mode is Pillow's ('RGB', 'RGBA', 'L', 'I;16', 'P', 'CMYK', ...),
    or for TIFFs Pillow cannot open, tifffile's '<dtype>x<samples per pixel>' (e.g. 'uint16x3'); None where the
    header cannot be read (such files are reported later, by `read_image_bytes`).
  """
  try:
    with warnings.catch_warnings():  # Corrupt files are reported later, by `read_image_bytes`.
      warnings.simplefilter("ignore")
      with Image.open(io.BytesIO(data)) as im:
        return (int(im.size[0]), int(im.size[1])), str(im.mode)
  except Exception:  # pylint: disable=broad-except
    pass
  if sniff_format(data) != "tiff":
    return None, None
  try:
    import tifffile  # pylint: disable=import-outside-toplevel

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
      page = tif.pages[0]
      return (int(page.imagewidth), int(page.imagelength)), f"{page.dtype}x{page.samplesperpixel}"
  except Exception:  # pylint: disable=broad-except
    return None, None


def image_size_from_header(data: bytes) -> tuple[int, int] | None:
  """Returns (width, height) read from the file header without decoding pixels, or None if unknown."""
  return image_header(data)[0]


def _decode_with_pillow(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as im:
    im.seek(0)
    im.load()  # Forces a full decode so truncated files fail here.
    mode = im.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
      return _composite_on_white(np.asarray(im.convert("RGBA")))
    if mode.startswith("I") or mode == "F":
      return as_rgb_uint8(np.asarray(im))
    return np.array(im.convert("RGB"), dtype=np.uint8)


def _decode_with_tifffile(data: bytes) -> np.ndarray:
  import tifffile  # pylint: disable=import-outside-toplevel

  with tifffile.TiffFile(io.BytesIO(data)) as tif:
    page = tif.pages[0]
    array = page.asarray()
    if array.ndim == 3 and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
      array = np.moveaxis(array, 0, -1)  # [C, H, W] -> [H, W, C]
  return as_rgb_uint8(array)


def _to_uint8_values(array: np.ndarray) -> np.ndarray:
  """Maps samples of any depth to uint8 (rules in the module docstring)."""
  if array.dtype == np.uint8:
    return array
  if array.dtype == np.bool_:
    return array.astype(np.uint8) * 255
  if np.issubdtype(array.dtype, np.floating):
    a = np.nan_to_num(array.astype(np.float64))
    if a.size and a.max() <= 1.0:
      a = a * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)
  if np.issubdtype(array.dtype, np.integer):
    if array.dtype.itemsize == 1:  # int8
      return np.clip(array, 0, 255).astype(np.uint8)
    a = np.clip(array.astype(np.int64), 0, 65535)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)
  raise ValueError(f"unsupported sample type {array.dtype}")


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 4] -> uint8 [H, W, 3], alpha-blended over white."""
  rgb = rgba[..., :3].astype(np.float64)
  alpha = rgba[..., 3:4].astype(np.float64) / 255.0
  return np.rint(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def as_rgb_uint8(array: np.ndarray) -> np.ndarray:
  """Converts a decoded sample array to RGB uint8.

  Args:
    array: [H, W] gray, [H, W, 1] gray, [H, W, 2] gray+alpha, [H, W, 3] RGB or [H, W, 4] RGBA, of any
      integer or float dtype (see the module docstring for the depth rules).

  Returns:
    uint8 [H, W, 3].

  Raises:
    ValueError: any other shape.
  """
  a = np.asarray(array)
  if a.ndim == 2:
    a = a[..., None]
  if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
    raise ValueError(f"expected an image [H, W] or [H, W, 1..4], got shape {a.shape}")
  a = _to_uint8_values(a)
  channels = a.shape[-1]
  if channels == 1:
    return np.repeat(a, 3, axis=-1)
  if channels == 2:
    return _composite_on_white(np.concatenate([np.repeat(a[..., :1], 3, axis=-1), a[..., 1:]], -1))
  if channels == 4:
    return _composite_on_white(a)
  return np.ascontiguousarray(a)


def crop_side_px(fov_um: float, px_per_um: float) -> int:
  """Side in pixels of a square field of view.

  Args:
    fov_um: field-of-view side in micrometres (> 0).
    px_per_um: image resolution in pixels per micrometre (> 0).

  Returns:
    round(fov_um * px_per_um), rounding halves up, at least 1. Matek 25 um * 13.8 = 345 px,
    Acevedo 25 * 10 = 250 px, INT_20 25 * 11.52 = 288 px.
  """
  if not (fov_um > 0 and px_per_um > 0):
    raise ValueError(f"fov_um and px_per_um must be positive, got fov_um={fov_um}, px_per_um={px_per_um}")
  # The small tolerance absorbs float error such as 25 * 13.8 = 345.00000000000006.
  return max(1, int(math.floor(fov_um * px_per_um + 0.5 + 1e-9)))


def border_color(image: np.ndarray) -> np.ndarray:
  """Per-channel median of the image's outermost pixel ring: uint8 [3], its background estimate."""
  ring = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]], axis=0)
  return np.median(ring, axis=0).round().astype(np.uint8)


def center_crop_or_pad(image: np.ndarray, side: int) -> np.ndarray:
  """Centre-crops (or pads) each axis of an image to `side` pixels.

  An axis longer than `side` is cropped, dropping floor((n - side) / 2) pixels at the start; an axis
  shorter than `side` is padded on both sides (the extra pixel, if odd, at the end) with `border_color`.

  Args:
    image: uint8 [H, W, 3].
    side: output side in pixels.

  Returns:
    uint8 [side, side, 3].
  """
  h, w = image.shape[:2]
  top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
  out = image[top:top + min(h, side), left:left + min(w, side)]
  if out.shape[0] == side and out.shape[1] == side:
    return np.ascontiguousarray(out)
  canvas = np.empty((side, side, 3), np.uint8)
  canvas[...] = border_color(image)
  oy, ox = (side - out.shape[0]) // 2, (side - out.shape[1]) // 2
  canvas[oy:oy + out.shape[0], ox:ox + out.shape[1]] = out
  return canvas


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
  """Resamples a square uint8 [n, n, 3] image to uint8 [size, size, 3] with Lanczos (antialiased)."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  resized = Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS)
  return np.asarray(resized, dtype=np.uint8)


def crop_to_fov(image: np.ndarray, *, px_per_um: float, fov_um: float, size: int) -> np.ndarray:
  """Centre field of view of `fov_um` x `fov_um` micrometres, resampled to size x size pixels.

  Args:
    image: uint8 [H, W, 3] RGB at `px_per_um` pixels per micrometre.
    px_per_um: resolution of `image`.
    fov_um: side of the physical field of view to keep, in micrometres.
    size: output side in pixels (S).

  Returns:
    uint8 [size, size, 3].
  """
  side = crop_side_px(fov_um, px_per_um)
  return resize_square(center_crop_or_pad(as_rgb_uint8(image), side), size)
