"""Tests of wbcdg_jax/augment.py against NumPy references on tiny images."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from wbcdg_jax import augment

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
LUMA = np.array([0.2989, 0.587, 0.114], np.float32)


def _normalize(x_uint8):
  return (x_uint8.astype(np.float32) / 255.0 - MEAN) / STD


def _unnormalize(y):
  return (np.asarray(y) * STD + MEAN) * 255.0


def _images(b=4, s=16, lo=0, hi=256, seed=0):
  return np.random.default_rng(seed).integers(lo, hi, (b, s, s, 3), dtype=np.uint8)


def _neutral(**changes):
  """Everything off but enabled, then `changes` switched on."""
  return dataclasses.replace(augment.AugmentOptions.off(), enabled=True, **changes)


def test_default_output_shape_dtype_finite():
  y = augment.augment_batch(_images(), jax.random.key(0), out_size=16)
  assert y.shape == (4, 16, 16, 3) and y.dtype == np.float32
  assert np.isfinite(np.asarray(y)).all()


def test_large_source_is_prereduced_and_finite():
  y = augment.augment_batch(_images(b=2, s=96), jax.random.key(0), out_size=16)
  assert y.shape == (2, 16, 16, 3) and np.isfinite(np.asarray(y)).all()


def test_deterministic_per_key_and_different_per_key():
  x = _images()
  a = augment.augment_batch(x, jax.random.key(1), out_size=16)
  b = augment.augment_batch(x, jax.random.key(1), out_size=16)
  c = augment.augment_batch(x, jax.random.key(2), out_size=16)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(a), np.asarray(c))


def test_each_example_gets_its_own_randomness():
  x = np.repeat(_images(b=1), 4, axis=0)
  y = np.asarray(augment.augment_batch(x, jax.random.key(3), out_size=16))
  for i in range(4):
    for j in range(i + 1, 4):
      assert np.abs(y[i] - y[j]).max() > 1e-3, (i, j)


def test_off_equals_preprocess_eval_and_numpy_normalize():
  x = _images(s=16)
  off = augment.augment_batch(x, jax.random.key(0), out_size=16, options=augment.AugmentOptions.off())
  np.testing.assert_array_equal(np.asarray(off), np.asarray(augment.preprocess_eval(x, out_size=16)))
  np.testing.assert_allclose(np.asarray(off), _normalize(x), atol=1e-6)
  assert not augment.AugmentOptions.off().enabled


def test_neutral_enabled_path_is_identity():
  x = _images(s=16)
  y = augment.augment_batch(x, jax.random.key(0), out_size=16, options=_neutral())
  np.testing.assert_allclose(np.asarray(y), _normalize(x), atol=1e-5)


def test_neutral_upsampling_matches_eval_resize_with_edge_padding():
  x = _images(s=8)
  y = augment.augment_batch(x, jax.random.key(0), out_size=16, options=_neutral(pad_mode="nearest"))
  np.testing.assert_allclose(np.asarray(y), np.asarray(augment.preprocess_eval(x, out_size=16)), atol=1e-4)


def test_preprocess_eval_resize_keeps_constant_image():
  x = np.full((2, 32, 32, 3), 180, np.uint8)
  y = np.asarray(augment.preprocess_eval(x, out_size=12))
  assert y.shape == (2, 12, 12, 3) and y.dtype == np.float32
  np.testing.assert_allclose(y, np.broadcast_to(_normalize(x[:, :1, :1]), y.shape), atol=1e-5)


@pytest.mark.parametrize("flag,axis", [("hflip", 2), ("vflip", 1)])
def test_flips_are_exact_mirrors_with_both_outcomes(flag, axis):
  x = np.repeat(_images(b=1, s=8), 32, axis=0)
  y = np.asarray(augment.augment_batch(x, jax.random.key(4), out_size=8, options=_neutral(**{flag: True})))
  plain, mirrored = _normalize(x[0]), _normalize(np.flip(x[0], axis=axis - 1))
  is_plain = [np.allclose(e, plain, atol=1e-5) for e in y]
  is_mirror = [np.allclose(e, mirrored, atol=1e-5) for e in y]
  assert all(p or m for p, m in zip(is_plain, is_mirror))
  assert any(is_plain) and any(is_mirror)


def test_crop_of_ramp_has_expected_slope():
  s = 32
  ramp = np.broadcast_to((4 * np.arange(s, dtype=np.uint8))[None, :, None], (s, s, 3))  # value = 4 * column.
  x = np.repeat(ramp[None], 8, axis=0)
  opts = _neutral(crop_scale=(0.25, 0.25))  # Crop side s/2, inside the image: slope 4 * (s/2) / s = 2.
  y = _unnormalize(augment.augment_batch(x, jax.random.key(5), out_size=s, options=opts))
  # The outermost output pixels may sample between the last pixel centre and the border (edge-clamped).
  inner = y[:, 1:-1, 1:-1]
  np.testing.assert_allclose(np.diff(inner, axis=2), 2.0, atol=1e-3)
  np.testing.assert_allclose(np.diff(inner, axis=1), 0.0, atol=1e-3)


def test_rotation_fills_corners_from_the_image_not_black():
  x = _images(b=16, s=16, lo=120, hi=200)
  for mode in ("reflect", "nearest"):
    opts = _neutral(rotate_degrees=180.0, crop_scale=(0.7, 1.0), pad_mode=mode)
    y = _unnormalize(augment.augment_batch(x, jax.random.key(6), out_size=16, options=opts))
    assert y.min() > 120 - 1e-3 and y.max() < 200 + 1e-3  # Convex combinations of source pixels only.
  const = np.full((4, 16, 16, 3), 200, np.uint8)
  y = _unnormalize(augment.augment_batch(const, jax.random.key(7), out_size=16, options=_neutral(rotate_degrees=90.0)))
  np.testing.assert_allclose(y, 200.0, atol=1e-3)


def _per_example_fit(x, y, reference):
  """Least-squares factor f in y - reference = f * (x - reference), and the fit residual."""
  a, b = (x - reference).ravel(), (y - reference).ravel()
  f = a @ b / (a @ a)
  return f, np.abs(b - f * a).max()


def test_brightness_contrast_saturation_follow_torchvision_formulas():
  x = _images(b=8, s=8, lo=40, hi=150).astype(np.float32)  # x * 1.3 stays below 255: no clipping.
  key = jax.random.key(8)
  y = _unnormalize(augment.augment_batch(x.astype(np.uint8), key, out_size=8, options=_neutral(brightness=0.3)))
  for xi, yi in zip(x, y):
    f, res = _per_example_fit(xi, yi, 0.0)
    assert 0.7 - 1e-4 <= f <= 1.3 + 1e-4 and res < 1e-2
  y = _unnormalize(augment.augment_batch(x.astype(np.uint8), key, out_size=8, options=_neutral(contrast=0.3)))
  for xi, yi in zip(x, y):
    f, res = _per_example_fit(xi, yi, (xi @ LUMA).mean())
    assert 0.7 - 1e-4 <= f <= 1.3 + 1e-4 and res < 1e-2
  y = _unnormalize(augment.augment_batch(x.astype(np.uint8), key, out_size=8, options=_neutral(saturation=0.3)))
  for xi, yi in zip(x, y):
    f, res = _per_example_fit(xi, yi, (xi @ LUMA)[..., None])
    assert 0.7 - 1e-4 <= f <= 1.3 + 1e-4 and res < 1e-2


def test_hue_shift_keeps_value_and_changes_colors():
  x = _images(b=4, s=8, lo=30, hi=220)
  y = _unnormalize(augment.augment_batch(x, jax.random.key(9), out_size=8, options=_neutral(hue=0.5)))
  np.testing.assert_allclose(y.max(-1), x.max(-1).astype(np.float32), atol=1e-2)  # HSV value unchanged.
  assert np.abs(y - x).max() > 1.0


def test_grayscale_always_gives_numpy_luma():
  x = _images(b=3, s=8)
  y = _unnormalize(augment.augment_batch(x, jax.random.key(10), out_size=8, options=_neutral(grayscale_p=1.0)))
  expected = x.astype(np.float32) @ LUMA
  for c in range(3):
    np.testing.assert_allclose(y[..., c], expected, atol=1e-2)


def test_blur_keeps_constant_images_and_smooths_noise():
  const = np.full((2, 12, 12, 3), 210, np.uint8)
  y = _unnormalize(augment.augment_batch(const, jax.random.key(11), out_size=12,
                                         options=_neutral(blur_p=1.0, blur_sigma=(1.0, 2.0))))
  np.testing.assert_allclose(y, 210.0, atol=1e-2)  # Reflect padding: no dark borders.
  noise = _images(b=2, s=12)
  y = _unnormalize(augment.augment_batch(noise, jax.random.key(12), out_size=12,
                                         options=_neutral(blur_p=1.0, blur_sigma=(1.0, 2.0))))
  assert y.std() < 0.6 * noise.astype(np.float32).std()
  np.testing.assert_allclose(y.mean(), noise.mean(), rtol=0.05)


def _reference_blur(x, sigma, radius):
  """NumPy: x [B, S, S, 3] float, reflect-padded, blurred by rows then columns with normalized Gaussian taps."""
  taps = np.arange(-radius, radius + 1)
  w = np.exp(-0.5 * (taps / sigma) ** 2)
  w /= w.sum()
  s = x.shape[1]
  padded = np.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
  rows = sum(w[i] * padded[:, i:i + s] for i in range(len(w)))
  return sum(w[i] * rows[:, :, i:i + s] for i in range(len(w)))


@pytest.mark.parametrize("size,sigma,radius", [(12, 1.5, 5), (7, 2.0, 6), (16, 0.4, 2)])
def test_blur_matrix_is_the_reflect_padded_gaussian(size, sigma, radius):
  m = np.asarray(augment._blur_matrix(size, np.float32(sigma), radius))  # pylint: disable=protected-access
  np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
  x = np.random.default_rng(0).random((1, size, size, 3)).astype(np.float32)
  # Rows then columns: M x M^T per channel.
  np.testing.assert_allclose(np.einsum("ij,jwc,kw->ikc", m, x[0], m), _reference_blur(x, sigma, radius)[0],
                             atol=1e-5)


def test_blur_of_the_batch_matches_numpy_and_is_off_when_not_drawn():
  x = _images(b=3, s=12)
  sigma = 1.3  # lo == hi: the drawn sigma is known
  y = _unnormalize(augment.augment_batch(x, jax.random.key(5), out_size=12,
                                         options=_neutral(blur_p=1.0, blur_sigma=(sigma, sigma))))
  radius = min(int(np.ceil(3 * sigma)), 11)
  np.testing.assert_allclose(y, _reference_blur(x.astype(np.float32), sigma, radius), atol=2e-2)
  same = _unnormalize(augment.augment_batch(x, jax.random.key(5), out_size=12,
                                            options=_neutral(blur_p=1e-9, blur_sigma=(sigma, sigma))))
  np.testing.assert_allclose(same, x.astype(np.float32), atol=2e-2)


def test_compiled_augmentation_equals_the_op_by_op_one():
  """Under jit XLA may compute a value twice, rounded differently; the hue sector must not hinge on an exact tie
  (dm-pix's `value == red` sent a third of the values to the wrong sector, by up to the whole [0, 1] range)."""
  x = _images(b=4, s=32, seed=5)
  compiled = np.asarray(augment.augment_batch(x, jax.random.key(21), out_size=32))
  with jax.disable_jit():
    op_by_op = np.asarray(augment.augment_batch(x, jax.random.key(21), out_size=32))
  np.testing.assert_allclose(compiled, op_by_op, atol=2e-3)


@pytest.mark.parametrize("delta", [0.1, -0.25, 0.45])
@pytest.mark.parametrize("separate_planes", [False, True], ids=["array", "planes"])
def test_hue_shift_matches_dm_pix_op_by_op(delta, separate_planes):
  import dm_pix as pix  # pylint: disable=import-outside-toplevel

  rgb = np.random.default_rng(3).random((3, 16, 16)).astype(np.float32)
  rgb[1, :4] = rgb[0, :4]  # ties between the largest channels
  with jax.disable_jit():
    expected = pix.adjust_hue(rgb, delta, channel_axis=0)
  shifted = augment._adjust_hue(tuple(rgb) if separate_planes else rgb, delta)  # pylint: disable=protected-access
  assert isinstance(shifted, tuple) == separate_planes
  np.testing.assert_allclose(np.stack(shifted) if separate_planes else shifted, expected, atol=1e-5)


@pytest.mark.parametrize("options", [
    augment.AugmentOptions(),
    augment.AugmentOptions(grayscale_p=1.0, blur_p=1.0, pad_mode="nearest"),
    augment.AugmentOptions(rotate_degrees=0.0, hue=0.5, saturation=0.9, blur_p=0.0)], ids=["default", "gray_blur",
                                                                                         "hue"])
def test_the_gpu_layout_computes_what_the_cpu_layout_does(options):
  """augment_batch runs the color ops on one [3, h, w] array on a CPU and on a tuple of planes elsewhere (a GPU),
  with the blur on [3, h, w] or [h, 3, w]: both, run here, give the same images."""
  images = _images(b=6, s=40, seed=2)
  x = images.astype(np.float32) / 255.0
  draws = augment.draws(jax.random.key(4), 6)
  run = jax.jit(augment._augment_images,  # pylint: disable=protected-access
                static_argnames=("out_size", "opt", "separate_planes"))
  array = np.asarray(run(x, draws, out_size=32, opt=options, separate_planes=False))
  planes = np.asarray(run(x, draws, out_size=32, opt=options, separate_planes=True))
  assert array.shape == planes.shape == (6, 32, 32, 3)
  np.testing.assert_allclose(planes, array, atol=1e-5)
  # augment_batch computes the same values in this platform's layout (the array on a CPU), normalized.
  np.testing.assert_allclose(augment.augment_batch(images, jax.random.key(4), out_size=32, options=options),
                             (array - MEAN) / STD, atol=1e-5)


def test_an_example_depends_only_on_its_row_of_draws():
  """Row i of `draws(key, B)` is all of example i's randomness: permuting images and rows together permutes the
  outputs, and equal rows give equal augmentations of equal images."""
  images = _images(b=4, s=24, seed=6).astype(np.float32) / 255.0
  u = np.asarray(augment.draws(jax.random.key(7), 4))
  assert u.shape == (4, augment.NUM_DRAWS) and u.min() >= 0.0 and u.max() < 1.0
  run = jax.jit(augment._augment_images,  # pylint: disable=protected-access
                static_argnames=("out_size", "opt", "separate_planes"))
  opts = augment.AugmentOptions()
  y = np.asarray(run(images, u, out_size=16, opt=opts, separate_planes=False))
  perm = np.array([2, 0, 3, 1])
  np.testing.assert_allclose(run(images[perm], u[perm], out_size=16, opt=opts, separate_planes=False), y[perm],
                             atol=1e-6)
  same = np.asarray(run(images[[1, 1]], u[[1, 1]], out_size=16, opt=opts, separate_planes=False))
  np.testing.assert_array_equal(same[0], same[1])
  np.testing.assert_allclose(same[0], y[1], atol=1e-6)


def test_uniform_maps_draws_to_the_range_as_jax_random_does():
  u = augment.draws(jax.random.key(3), 5)
  lo, hi, hue = -2.0, 3.5, augment._HUE  # pylint: disable=protected-access
  mapped = np.stack([augment._uniform(row, hue, lo, hi) for row in u])  # pylint: disable=protected-access
  np.testing.assert_allclose(mapped, lo + np.asarray(u)[:, hue] * (hi - lo), rtol=1e-6)
  assert (mapped >= lo).all() and (mapped < hi).all()


@pytest.mark.parametrize("separate_planes", [False, True], ids=["array", "planes"])
def test_blur_of_either_layout_is_the_reflect_padded_gaussian(separate_planes):
  x = np.random.default_rng(5).random((12, 10, 3)).astype(np.float32)  # [H, W, 3], H != W
  opts = _neutral(blur_p=1.0, blur_sigma=(1.1, 1.1))
  layout = (0, 2, 1) if separate_planes else (2, 0, 1)  # [H, 3, W] or [3, H, W]
  u = augment.draws(jax.random.key(0), 1)[0]
  y = augment._blur(np.transpose(x, layout), u, opts,  # pylint: disable=protected-access
                    channel_axis=1 if separate_planes else 0)
  y = np.transpose(np.asarray(y), np.argsort(layout))
  rows = np.asarray(augment._blur_matrix(12, np.float32(1.1), 4))  # pylint: disable=protected-access
  cols = np.asarray(augment._blur_matrix(10, np.float32(1.1), 4))  # pylint: disable=protected-access
  np.testing.assert_allclose(y, np.einsum("ij,jwc,kw->ikc", rows, x, cols), atol=1e-5)


def test_options_from_dict_off_and_validation():
  opts = augment.AugmentOptions.from_dict({"crop_scale": [0.5, 1.0], "hue": 0.1})
  assert opts.crop_scale == (0.5, 1.0) and opts.hue == 0.1 and opts.enabled
  hash(opts)  # Usable as a static jit argument.
  with pytest.raises(ValueError, match="unknown keys"):
    augment.AugmentOptions.from_dict({"colour": 0.3})
  with pytest.raises(ValueError, match="hue"):
    augment.AugmentOptions(hue=0.6)
  with pytest.raises(ValueError, match="grayscale_p"):
    augment.AugmentOptions(grayscale_p=1.5)
  with pytest.raises(ValueError, match="crop_scale"):
    augment.AugmentOptions(crop_scale=(0.5, 1.2))
  with pytest.raises(ValueError, match="pad_mode"):
    augment.AugmentOptions(pad_mode="constant")
