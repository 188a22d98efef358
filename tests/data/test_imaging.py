"""Tests for data_pipelines/imaging.py: decoding rules, um-based crop geometry, antialiased resize."""

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from data_pipelines import imaging


def _encode(array_or_image, fmt, **kwargs) -> bytes:
  image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
  buf = io.BytesIO()
  image.save(buf, format=fmt, **kwargs)
  return buf.getvalue()


def _rgb(h=7, w=5, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- crop geometry in micrometres -------------------------------------------------------------------------


@pytest.mark.parametrize("fov_um, px_per_um, side", [
    (25.0, 13.8, 345),   # Matek: 400 px image -> centre 345 px.
    (25.0, 10.0, 250),   # Acevedo.
    (25.0, 11.52, 288),  # INT_20 / MLL23: whole image.
    (2.0, 13.8, 28),     # 27.6 -> 28.
    (0.25, 10.0, 3),     # 2.5 -> 3 (halves round up, not to even).
])
def test_crop_side_px(fov_um, px_per_um, side):
  assert imaging.crop_side_px(fov_um, px_per_um) == side


def test_crop_side_px_rejects_non_positive():
  with pytest.raises(ValueError, match="px_per_um"):
    imaging.crop_side_px(25.0, 0.0)


def test_matek_crop_is_centre_345():
  image = _rgb(400, 400)
  out = imaging.center_crop_or_pad(image, imaging.crop_side_px(25.0, 13.8))
  np.testing.assert_array_equal(out, image[27:372, 27:372])  # (400 - 345) // 2 = 27.


def test_acevedo_crop_is_centre_250x250():
  image = _rgb(363, 360)  # 360 wide x 363 high.
  out = imaging.center_crop_or_pad(image, imaging.crop_side_px(25.0, 10.0))
  assert out.shape == (250, 250, 3)
  np.testing.assert_array_equal(out, image[56:306, 55:305])  # (363-250)//2 = 56, (360-250)//2 = 55.


def test_int20_keeps_the_whole_288_image():
  image = _rgb(288, 288)
  np.testing.assert_array_equal(imaging.crop_to_fov(image, px_per_um=11.52, fov_um=25.0, size=288), image)


def test_small_image_is_padded_with_border_median_not_upscaled():
  image = np.full((10, 6, 3), 200, np.uint8)
  image[0, 0] = (0, 0, 0)  # One dark border pixel must not change the median background.
  image[4:6, 2:4] = (10, 20, 30)
  out = imaging.center_crop_or_pad(image, 8)
  assert out.shape == (8, 8, 3)
  # Rows: 10 -> 8 cropped from row 1; columns: 6 -> 8 padded by one column each side.
  np.testing.assert_array_equal(out[:, 1:7], image[1:9])
  np.testing.assert_array_equal(out[:, 0], np.full((8, 3), 200))
  np.testing.assert_array_equal(out[:, 7], np.full((8, 3), 200))


def test_resize_antialiases_a_checkerboard_to_gray():
  yy, xx = np.mgrid[:32, :32]
  board = np.where((yy + xx) % 2 == 0, 255, 0).astype(np.uint8)
  image = np.repeat(board[..., None], 3, axis=-1)
  out = imaging.resize_square(image, 16)
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  # Plain subsampling would give all 0 or all 255; a low-pass filter gives mid-gray inside the image.
  inner = out[2:-2, 2:-2].astype(float)
  assert abs(inner.mean() - 127.5) < 3 and inner.std() < 3


def test_resize_keeps_a_constant_image_constant():
  out = imaging.crop_to_fov(np.full((40, 40, 3), 77, np.uint8), px_per_um=13.8, fov_um=2.0, size=16)
  np.testing.assert_array_equal(out, np.full((16, 16, 3), 77))


# --- decoding --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_rgb_round_trip(fmt):
  image = _rgb()
  np.testing.assert_array_equal(imaging.read_image_bytes(_encode(image, fmt)), image)


def test_jpeg_decodes_close_to_source():
  image = np.full((16, 16, 3), (200, 100, 50), np.uint8)
  out = imaging.read_image_bytes(_encode(image, "JPEG", quality=95))
  assert out.shape == (16, 16, 3) and np.abs(out.astype(int) - image).max() <= 3


def test_grayscale_is_replicated():
  gray = np.arange(35, dtype=np.uint8).reshape(7, 5)
  out = imaging.read_image_bytes(_encode(gray, "PNG"))
  np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=-1))


def test_rgba_is_composited_on_white():
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[0, 0] = (10, 20, 30, 255)   # Opaque: unchanged.
  rgba[0, 1] = (10, 20, 30, 0)     # Transparent: white.
  rgba[1, 0] = (0, 100, 200, 128)  # Half: c * a + 255 * (1 - a).
  out = imaging.read_image_bytes(_encode(rgba, "PNG"))
  a = 128 / 255
  np.testing.assert_array_equal(out[0, 0], (10, 20, 30))
  np.testing.assert_array_equal(out[0, 1], (255, 255, 255))
  np.testing.assert_array_equal(out[1, 0], np.rint(np.array([0, 100, 200]) * a + 255 * (1 - a)))


def test_16bit_gray_png_is_scaled_full_range():
  gray16 = np.array([[0, 257, 32896, 65535]], np.uint16)
  out = imaging.read_image_bytes(_encode(Image.fromarray(gray16), "PNG"))
  np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
  np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_16bit_rgb_tiff_uses_tifffile_and_scales():
  rgb16 = np.zeros((3, 4, 3), np.uint16)
  rgb16[0, 0] = (65535, 257, 0)
  buf = io.BytesIO()
  tifffile.imwrite(buf, rgb16, photometric="rgb")
  out = imaging.read_image_bytes(buf.getvalue())
  assert out.shape == (3, 4, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[0, 0], (255, 1, 0))


def test_rgba_tiff_drops_alpha():
  rgba = np.zeros((3, 3, 4), np.uint8)
  rgba[..., :3] = (40, 50, 60)
  rgba[..., 3] = 255
  rgba[1, 1, 3] = 0
  out = imaging.read_image_bytes(_encode(rgba, "TIFF"))
  assert out.shape == (3, 3, 3)
  np.testing.assert_array_equal(out[0, 0], (40, 50, 60))
  np.testing.assert_array_equal(out[1, 1], (255, 255, 255))


def test_palette_png_converts_to_rgb():
  image = Image.fromarray(_rgb()).convert("P")
  np.testing.assert_array_equal(imaging.read_image_bytes(_encode(image, "PNG")),
                                np.asarray(image.convert("RGB")))


def test_non_image_raises_not_an_image():
  with pytest.raises(imaging.NotAnImageError, match="not an image"):
    imaging.read_image_bytes(b"\x00\x00\x00\x01Bud1\x00" * 10, source=".DS_Store.jpg")


def test_truncated_jpeg_raises_read_error_naming_the_file():
  data = _encode(_rgb(64, 64), "JPEG")
  with pytest.raises(imaging.ImageReadError, match="cell.jpg") as info:
    imaging.read_image_bytes(data[: len(data) // 2], source="cell.jpg")
  assert not isinstance(info.value, imaging.NotAnImageError)


def test_corrupt_tiff_raises_read_error():
  with pytest.raises(imaging.ImageReadError, match="tiff"):
    imaging.read_image_bytes(b"II*\x00" + b"\xff" * 50)


def test_read_image_from_path(tmp_path):
  image = _rgb()
  path = tmp_path / "x.png"
  path.write_bytes(_encode(image, "PNG"))
  np.testing.assert_array_equal(imaging.read_image(path), image)
  with pytest.raises(imaging.ImageReadError, match="cannot read"):
    imaging.read_image(tmp_path / "missing.png")


def test_sniff_format():
  assert imaging.sniff_format(b"II*\x00rest") == "tiff"
  assert imaging.sniff_format(b"\xff\xd8\xff\xe0") == "jpeg"
  assert imaging.sniff_format(b"\x89PNG\r\n\x1a\nxx") == "png"
  assert imaging.sniff_format(b"BM....") == "bmp"
  assert imaging.sniff_format(b"Bud1") is None


def test_as_rgb_uint8_rejects_bad_shapes():
  with pytest.raises(ValueError, match="shape"):
    imaging.as_rgb_uint8(np.zeros((4, 4, 5), np.uint8))
