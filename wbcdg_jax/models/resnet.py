"""torchvision-compatible ResNet (v1.5) encoders in Flax Linen.

The layout mirrors torchvision's `resnet18/34/50/101/152` module for module, so that a converted ImageNet
state_dict gives the same outputs (REFERENCE.md section 2):

* stem: `conv1` 7x7 stride 2 pad 3 -> `bn1` -> ReLU -> max pool 3x3 stride 2 pad 1;
* stages `layer1` .. `layer4` of basic (18/34) or bottleneck (50+) blocks; v1.5 puts the stride on the 3x3 conv;
* the first block of a stage that changes shape has a projection shortcut `downsample_conv`/`downsample_bn`.

Padding is always explicit and symmetric: Flax's 'SAME' pads (0, 1) for stride 2 on even sizes, which shifts every
feature map by a pixel relative to PyTorch and breaks converted weights.

Batch norm has two modes. 'frozen' (the method's setting, DomainBed style) always normalises with the stored
running statistics, which never change, while scale and bias stay trainable. 'train' uses batch statistics in
training and updates the running averages (the `batch_stats` collection must then be mutable).

Frozen batch norm is a per-channel affine map y * m + t, so by default (`fold_frozen_bn`) it is folded into the
convolution before it: conv(x, W * m) + t. The function, the variables (names, shapes, initial values) and the
gradients are the same; the activations are read and written once less per layer in each direction, and the
conv + bias (+ residual) + ReLU chain is one that GPU convolution libraries fuse.

The stem's 3x3 stride-2 max pool has four implementations with the same outputs:
* 'window': Flax's `max_pool` (`lax.reduce_window`); its gradient is a select-and-scatter, which XLA:CPU expands
  into a variadic reduce-window over four full-size index arrays and a scatter (a quarter of a CPU train step);
* 'taps': the same forward, with a custom gradient computed from the nine window taps by
  elementwise selects and interior padding, which XLA fuses; it sends each output's gradient to the first
  maximum of its window in row-major order, as select-and-scatter does, so the gradients match 'window' exactly;
* 'slices': the maximum of the nine strided slices, differentiated by JAX; ties inside a window (zeros after the
  ReLU) split the gradient, which the ReLU then zeroes, so parameter gradients match too;
* 'index' (the default): the maximum of the slices, which also records (one byte per output) which tap was the first
  maximum; the gradient is read from that index alone: for the stem's 3x3 stride-2 pool each input pixel sums only
  the 1, 2 or 4 taps that can reach it (`_pool_3x3_s2_gradient`), other windows use 'taps'' sum of interior-padded
  selects. 'taps' keeps x and y and compares the nine taps again in the backward pass: on an H100 that pass over the
  stem's 112x112x64 map (and the seven masks XLA kept for it) took 6% of a step at batch 256. ERM's step with
  'index' ran 1.04x as fast as with 'taps' on one H100 at batch 256 (session 13), and 1.04x on 2 CPU cores.

`relu_grad_from_output` (the default) takes the ReLU's derivative from its output (y > 0, as PyTorch does)
rather than its input (jax.nn.relu); the derivative is the same, since y > 0 exactly where x > 0. With the input's
derivative the backward pass reads the pre-activation, so XLA:GPU kept each convolution's pre-activation and ran
every ReLU as a separate pass (9.5% of a ResNet-50 step on an H100); read from the output, the pre-activation has
one reader, the pattern XLA fuses into the cuDNN convolution (conv + bias (+ residual) + ReLU). The test y > 0 is
made on y's bits (`_positive`): written as a float comparison, XLA's simplifier turns `max(x, 0) > 0` back into
`x > 0` (an H100 run of the plain comparison still had all 47 separate ReLUs).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

# Blocks per stage for each supported depth, and whether the depth uses bottleneck blocks.
STAGE_SIZES: dict[int, tuple[Sequence[int], bool]] = {
    10: ((1, 1, 1, 1), False),  # not a torchvision model: a tiny encoder for CPU smoke runs and tests
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
BN_MODES = ("frozen", "train")
MAX_POOLS = ("taps", "window", "slices", "index")

# torchvision initialises convolutions with kaiming_normal_(mode='fan_out', nonlinearity='relu').
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def feature_dim(depth: int, width: int = 64) -> int:
  """Width of the pooled features z for a ResNet of `depth` (2048 for ResNet-50, 512 for ResNet-18)."""
  _, bottleneck = STAGE_SIZES[depth]
  return width * 8 * (4 if bottleneck else 1)


def _per_channel(v, y):
  """float32 per-channel values v [C] broadcast to y [B, H, W, C], in y's dtype.

  Broadcast in float32, then cast: v's gradient is then the transpose, a float32 sum over batch and pixels of the
  (bfloat16) gradient. Cast first, it would be a bfloat16 sum (XLA:GPU accumulates a reduction in its operand's
  type), ~10^5-10^6 terms a channel rounded to 8 bits as they add up. The forward is the same elementwise op,
  which XLA still fuses into the cuDNN convolution as its bias.
  """
  return jnp.broadcast_to(v, y.shape).astype(y.dtype)


def conv2d(x, kernel, strides: int = 1, padding: int = 0, multiplier=None, space_to_depth: bool = False):
  """NHWC x [B, H, W, Cin] * HWIO kernel [kh, kw, Cin, Cout], symmetric zero padding -> [B, Ho, Wo, Cout], computed
  in x's dtype.

  `multiplier` [Cout] (optional) scales the output channels; it is applied to the kernel (kernel * multiplier,
  so that GPU libraries fuse the rest of a folded batch norm as a bias) except on the patches path below.

  A convolution whose output is smaller than its window (a 3x3 kernel on the 2x2 maps of layer4 at 64 px) is
  computed as one matmul over the extracted patches: XLA:CPU ran the convolution form of that case up to 80 times
  slower (3x3, 512 channels, 2x2 output, batch 32: 389 ms forward + backward, against 5 ms as patches), which
  made it most of a CPU train step at the quick preset. Both forms are the same sum; larger maps use the
  convolution. There the output is smaller than the kernel, so the multiplier scales the output instead.

  `space_to_depth` computes a stride-2 convolution as a stride-1 one over 2x2 pixel blocks (below).
  """
  kh, kw, cin, cout = kernel.shape
  ho, wo = _output_size(x.shape[1], kh, strides, padding), _output_size(x.shape[2], kw, strides, padding)
  patches_path = kh * kw > 1 and (ho < kh or wo < kw)
  if multiplier is not None and not patches_path:
    kernel = kernel * multiplier
  kernel = kernel.astype(x.dtype)
  if patches_path:
    patches = jnp.concatenate(_window_taps(x, kh, kw, strides, padding, 0.0), axis=-1)
    out = jnp.einsum("bhwk,ko->bhwo", patches, kernel.reshape(kh * kw * cin, cout))
    return out if multiplier is None else out * _per_channel(multiplier, out)
  if space_to_depth and strides == 2 and kh * kw > 1:
    return _conv_stride2_space_to_depth(x, kernel, padding)
  return jax.lax.conv_general_dilated(x, kernel, (strides, strides), ((padding, padding), (padding, padding)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_stride2_space_to_depth(x, kernel, padding: int):
  """Stride-2 convolution of x [B, H, W, Cin] as a stride-1 convolution over its 2x2 pixel blocks.

  The stem's 7x7 stride-2 convolution reads 3 channels, which fill a GPU's tensor-core tiles (and XLA:CPU's
  vector lanes) badly, in both its forward and its weight-gradient pass. Regrouping each 2x2 block of the padded
  image into 4 x Cin channels, and the kernel (zero-padded to even sides) likewise, gives the same sums as a
  ceil(k/2) x ceil(k/2) stride-1 convolution over 4 x Cin channels (the MLPerf ResNet stem transform).
  """
  b, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  ho, wo = _output_size(h, kh, 2, padding), _output_size(w, kw, 2, padding)
  # Pad to the rows and columns the windows read, rounded up to whole blocks (extra zeros meet zero kernel taps).
  hp, wp = 2 * (ho + (kh + 1) // 2 - 1), 2 * (wo + (kw + 1) // 2 - 1)
  # lax.pad: a negative high edge crops trailing rows that no window reads.
  xp = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (padding, hp - h - padding, 0),
                                              (padding, wp - w - padding, 0), (0, 0, 0)))
  blocks = xp.reshape(b, hp // 2, 2, wp // 2, 2, cin).transpose(0, 1, 3, 2, 4, 5).reshape(b, hp // 2, wp // 2,
                                                                                           4 * cin)
  # Kernel tap (2a + p, 2c + q) becomes block tap (a, c), channel (p, q, cin), as in the blocks above.
  kp = jnp.pad(kernel, ((0, kh % 2), (0, kw % 2), (0, 0), (0, 0)))
  kb = kp.reshape((kh + 1) // 2, 2, (kw + 1) // 2, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5)
  kb = kb.reshape((kh + 1) // 2, (kw + 1) // 2, 4 * cin, cout)
  return jax.lax.conv_general_dilated(blocks, kb, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _output_size(size: int, window: int, strides: int, padding: int) -> int:
  return (size + 2 * padding - window) // strides + 1


def _window_taps(x, kh: int, kw: int, strides: int, padding: int, pad_value: float) -> list:
  """The kh * kw strided views of x [B, H, W, C] (padded with pad_value) that a window of that size visits, in
  (row, column) order: tap (i, j) [B, Ho, Wo, C] holds the input under window position (i, j) of every output."""
  b, h, w, c = x.shape
  ho, wo = _output_size(h, kh, strides, padding), _output_size(w, kw, strides, padding)
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=pad_value)
  return [jax.lax.slice(xp, (0, i, j, 0), (b, i + strides * (ho - 1) + 1, j + strides * (wo - 1) + 1, c),
                        (1, strides, strides, 1)) for i in range(kh) for j in range(kw)]


class _Conv(nn.Module):
  """Bias-free convolution with nn.Conv's kernel (name 'kernel', HWIO float32, same init), computed by conv2d.

  `multiplier` [Cout] scales the output channels through the kernel (a folded frozen batch norm).
  """

  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  dtype: Any = jnp.float32
  space_to_depth: bool = False

  @nn.compact
  def __call__(self, x, multiplier=None):
    k = self.kernel_size
    kernel = self.param("kernel", _conv_init, (k, k, x.shape[-1], self.features), jnp.float32)
    # conv2d scales the float32 kernel before casting it to the compute dtype, so the folded kernel rounds once.
    return conv2d(jnp.asarray(x, self.dtype), kernel, self.strides, self.padding, multiplier,
                  space_to_depth=self.space_to_depth)


class _FrozenNormAffine(nn.Module):
  """Frozen batch norm as its affine map: (multiplier [C], shift [C]) float32, norm(y) = y * multiplier + shift.

  The variables are nn.BatchNorm's: params 'scale' and 'bias', batch_stats 'mean' and 'var'.
  """

  features: int
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self):
    shape = (self.features,)
    scale = self.param("scale", nn.initializers.ones, shape, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, shape, jnp.float32)
    mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(shape, jnp.float32)).value
    var = self.variable("batch_stats", "var", lambda: jnp.ones(shape, jnp.float32)).value
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    return multiplier, bias - mean * multiplier


@dataclasses.dataclass(frozen=True)
class _ConvNorm:
  """conv (no bias) -> batch norm of one layer; creates the two submodules `conv_name`, `bn_name` in the calling
  module, folded into one convolution with a bias when `fold` (frozen statistics only)."""

  dtype: Any
  fold: bool
  use_running_average: bool

  def __call__(self, x, features: int, kernel: int, *, conv_name: str, bn_name: str, strides: int = 1,
               padding: int = 0, space_to_depth: bool = False):
    conv = _Conv(features, kernel, strides=strides, padding=padding, dtype=self.dtype,
                 space_to_depth=space_to_depth, name=conv_name)
    if not self.fold:
      # torchvision: eps 1e-5, momentum 0.1 on the new value == Flax momentum 0.9 on the old value.
      return nn.BatchNorm(use_running_average=self.use_running_average, momentum=0.9, epsilon=1e-5,
                          dtype=self.dtype, param_dtype=jnp.float32, name=bn_name)(conv(x))
    multiplier, shift = _FrozenNormAffine(features, name=bn_name)()
    y = conv(x, multiplier)
    return y + _per_channel(shift, y)


@jax.custom_jvp
def relu_grad_from_output(x):
  """max(x, 0), whose derivative (1 where the output is positive, else 0) is read from the output (see above)."""
  return jnp.maximum(x, jnp.zeros((), x.dtype))


def _positive(y):
  """y > 0 (false at NaN), decided on y's bits so that XLA cannot rewrite it into a test of the ReLU's input.

  XLA's algebraic simplifier turns `max(x, 0) > 0` into `x > 0`; the backward pass then reads the pre-activation,
  which leaves it two readers and the ReLU outside the cuDNN convolution (measured on an H100: 47 separate ReLU
  passes, 9.5% of a ResNet-50 step). It has no rule for integer comparisons of a bitcast: non-negative floats
  order like their bit patterns read as signed integers, +inf is the largest of them and NaNs lie above it.
  """
  bits_dtype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[jnp.dtype(y.dtype).itemsize]
  bits = jax.lax.bitcast_convert_type(y, bits_dtype)
  inf = jax.lax.bitcast_convert_type(jnp.asarray(jnp.inf, y.dtype), bits_dtype)
  return (bits > 0) & (bits <= inf)


relu_grad_from_output.defjvps(lambda t, y, x: jnp.where(_positive(y), t, jnp.zeros((), t.dtype)))


def _max_pool_window(x, window: int, strides: int, padding: int):
  return nn.max_pool(x, (window, window), strides=(strides, strides), padding=((padding, padding),) * 2)


def _max_pool_slices(x, window: int, strides: int, padding: int):
  return functools.reduce(jnp.maximum, _window_taps(x, window, window, strides, padding, -jnp.inf))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_taps(x, window: int, strides: int, padding: int):
  """Square max pool of [B, H, W, C] (-inf padding) whose gradient is built from the window taps (see above)."""
  return _max_pool_window(x, window, strides, padding)


def _max_pool_taps_fwd(x, window, strides, padding):
  y = _max_pool_window(x, window, strides, padding)
  return y, (x, y)


def _tap_gradient(g, won, k: int, window: int, strides: int, padding: int, size: tuple[int, int]):
  """The input gradient [B, H, W, C] (size = (H, W)) that tap k of the windows sends: g [B, Ho, Wo, C] where `won`
  (that tap holds its window's maximum), placed on the input pixels the tap read, zero elsewhere."""
  i, j = divmod(k, window)
  h, w = size
  zero = jnp.zeros((), g.dtype)
  # Output (r, s) read input (strides*r + i - padding, strides*s + j - padding): interior padding spreads the
  # tap's gradient back onto that grid (negative edge padding crops the rows and columns of the padding).
  rows = (i - padding, h - (i - padding + strides * (g.shape[1] - 1) + 1), strides - 1)
  cols = (j - padding, w - (j - padding + strides * (g.shape[2] - 1) + 1), strides - 1)
  return jax.lax.pad(jnp.where(won, g, zero), zero, ((0, 0, 0), rows, cols, (0, 0, 0)))


def _max_pool_taps_bwd(window, strides, padding, residuals, g):
  x, y = residuals
  taken = jnp.zeros(y.shape, bool)
  dx = jnp.zeros(x.shape, g.dtype)
  for k, tap in enumerate(_window_taps(x, window, window, strides, padding, -jnp.inf)):
    first = (tap == y) & ~taken  # this tap holds the window's maximum and no earlier tap did
    taken = taken | first
    dx = dx + _tap_gradient(g, first, k, window, strides, padding, x.shape[1:3])
  return (dx,)


_max_pool_taps.defvjp(_max_pool_taps_fwd, _max_pool_taps_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool_index(x, window: int, strides: int, padding: int, size: tuple[int, int]):
  """Square max pool of x [B, H, W, C] (-inf padding; size = (H, W)) that keeps, for its gradient, only which tap
  of each window won (see above)."""
  return _max_pool_slices(x, window, strides, padding)


def _max_pool_index_fwd(x, window, strides, padding, size):
  del size
  taps = _window_taps(x, window, window, strides, padding, -jnp.inf)
  y = functools.reduce(jnp.maximum, taps)
  # The first tap (row-major) equal to the maximum, as select-and-scatter picks it; window**2 for none (a NaN
  # window), which then sends its gradient nowhere. One byte per output: the residual instead of x and y.
  first = jnp.full(y.shape, window * window, jnp.int8)
  for k in reversed(range(window * window)):
    first = jnp.where(taps[k] == y, jnp.int8(k), first)
  return y, first


def _max_pool_index_bwd(window, strides, padding, size, first, g):
  if (window, strides, padding) == (3, 2, 1):
    return (_pool_3x3_s2_gradient(g, first, size),)
  terms = (_tap_gradient(g, first == k, k, window, strides, padding, size) for k in range(window * window))
  return (functools.reduce(jnp.add, terms),)


def _pool_3x3_s2_gradient(g, first, size: tuple[int, int]):
  """The input gradient [B, H, W, C] of the 3x3 stride-2 max pool (padding 1) from g [B, Ho, Wo, C] and the
  winning tap `first` (tap i * 3 + j, row i, column j of the window), built per parity of the input pixel.

  Output (r, s) reads input (2r + i - 1, 2s + j - 1): an even input row 2m is row i = 1 of output row m; an odd
  one 2m + 1 is row i = 0 of output row m + 1 and row i = 2 of output row m (columns alike). So each input pixel
  sums 1, 2 or 4 taps' gradients, each from an output or its neighbour below or to the right, and the four parity
  classes interleave by a reshape. The nine interior-padded taps summed at every input pixel (`_tap_gradient`)
  give the same sums; on a GPU that form cost its fusion about 3x its memory time (1.68 ms a step at batch 256
  on an H100, with the 'taps' masks).
  """
  zero = jnp.zeros((), g.dtype)

  def tap(k: int, below: bool, right: bool):  # g where tap k won, read from output (r + below, s + right)
    t = jnp.where(first == k, g, zero)
    if below:
      t = jnp.pad(t[:, 1:], ((0, 0), (0, 1), (0, 0), (0, 0)))
    if right:
      t = jnp.pad(t[:, :, 1:], ((0, 0), (0, 0), (0, 1), (0, 0)))
    return t

  even_even = tap(4, False, False)
  even_odd = tap(3, False, True) + tap(5, False, False)
  odd_even = tap(1, True, False) + tap(7, False, False)
  odd_odd = tap(0, True, True) + tap(2, True, False) + tap(6, False, True) + tap(8, False, False)
  dx = jnp.stack([jnp.stack([even_even, even_odd], axis=3), jnp.stack([odd_even, odd_odd], axis=3)], axis=2)
  b, ho, _, wo, _, c = dx.shape  # [B, Ho, row parity, Wo, column parity, C]: row-major, that is [B, 2Ho, 2Wo, C]
  return dx.reshape(b, 2 * ho, 2 * wo, c)[:, :size[0], :size[1]]  # 2Ho is H, or H + 1 for an odd H


_max_pool_index.defvjp(_max_pool_index_fwd, _max_pool_index_bwd)


def _max_pool_3x3_s2(x, impl: str):
  """Max pool, window 3, stride 2, padding 1 (-inf) over H and W of [B, H, W, C]."""
  if impl == "window":
    return _max_pool_window(x, 3, 2, 1)
  if impl == "taps":
    return _max_pool_taps(x, 3, 2, 1)
  if impl == "index":
    return _max_pool_index(x, 3, 2, 1, x.shape[1:3])
  return _max_pool_slices(x, 3, 2, 1)


class _Block(nn.Module):
  """One residual block; `bottleneck` selects the 1x1-3x3-1x1 (x4) form, otherwise 3x3-3x3."""

  features: int
  strides: int
  bottleneck: bool
  conv_norm: _ConvNorm
  relu: Callable[[jax.Array], jax.Array] = nn.relu

  @nn.compact
  def __call__(self, x):
    cn, f = self.conv_norm, self.features
    out_features = f * (4 if self.bottleneck else 1)
    if self.bottleneck:
      y = self.relu(cn(x, f, 1, conv_name="conv1", bn_name="bn1"))
      y = self.relu(cn(y, f, 3, strides=self.strides, padding=1, conv_name="conv2", bn_name="bn2"))
      y = cn(y, out_features, 1, conv_name="conv3", bn_name="bn3")
    else:
      y = self.relu(cn(x, f, 3, strides=self.strides, padding=1, conv_name="conv1", bn_name="bn1"))
      y = cn(y, f, 3, padding=1, conv_name="conv2", bn_name="bn2")
    shortcut = x
    if self.strides != 1 or x.shape[-1] != out_features:
      shortcut = cn(x, out_features, 1, strides=self.strides, conv_name="downsample_conv", bn_name="downsample_bn")
    return self.relu(y + shortcut)


class ResNetEncoder(nn.Module):
  """ResNet trunk with global average pooling.

  Attributes:
    depth: 10, 18, 34, 50, 101 or 152.
    bn_mode: 'frozen' (running statistics fixed, scale/bias trained) or 'train'.
    dtype: compute dtype (e.g. jnp.bfloat16); parameters are always float32.
    width: channels of the first stage (64 in torchvision).
    fold_frozen_bn: with bn_mode 'frozen', apply each batch norm folded into its convolution (same function).
    max_pool: the stem's max pool, 'taps', 'window', 'slices' or 'index' (same function).
    stem_space_to_depth: compute the stem's 7x7 stride-2 convolution over 2x2 pixel blocks (same function).
    relu_grad_from_output: take each ReLU's derivative from its output rather than its input (same function).
  """

  depth: int = 50
  bn_mode: str = "frozen"
  dtype: Any = jnp.float32
  width: int = 64
  fold_frozen_bn: bool = True
  max_pool: str = "index"
  stem_space_to_depth: bool = True
  relu_grad_from_output: bool = True

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    """Maps normalised images [B, H, W, 3] (any float dtype) to pooled features z [B, D] in float32."""
    if self.depth not in STAGE_SIZES:
      raise ValueError(f"model.depth={self.depth} is not supported; choose one of {sorted(STAGE_SIZES)}")
    if self.bn_mode not in BN_MODES:
      raise ValueError(f"model.bn_mode={self.bn_mode!r} is not one of {BN_MODES}")
    if self.max_pool not in MAX_POOLS:
      raise ValueError(f"model.max_pool={self.max_pool!r} is not one of {MAX_POOLS}")
    stage_sizes, bottleneck = STAGE_SIZES[self.depth]
    frozen = self.bn_mode == "frozen"
    cn = _ConvNorm(dtype=self.dtype, fold=frozen and self.fold_frozen_bn, use_running_average=frozen or not train)
    x = jnp.asarray(images, self.dtype)
    relu = relu_grad_from_output if self.relu_grad_from_output else nn.relu
    x = relu(cn(x, self.width, 7, strides=2, padding=3, conv_name="conv1", bn_name="bn1",
                space_to_depth=self.stem_space_to_depth))
    x = _max_pool_3x3_s2(x, self.max_pool)
    for stage, num_blocks in enumerate(stage_sizes):
      for block in range(num_blocks):
        x = _Block(self.width * 2**stage, strides=2 if stage > 0 and block == 0 else 1, bottleneck=bottleneck,
                   conv_norm=cn, relu=relu, name=f"layer{stage + 1}_{block}")(x)
    # Pool in float32: the mean over H*W positions loses precision in bfloat16.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
