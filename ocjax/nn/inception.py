"""FID-Inception-v3 in Flax: 2048-d pool features of the 2015-12-05 graph.

The network of the FID reference (TF's ``inception-2015-12-05`` graph, as
pytorch-fid ports it in ``FIDInceptionV3``): torchvision's Inception-v3 up to
the last average pool, with the FID graph's differences:

* the average pools inside the A, C and first E blocks leave the zero padding
  out of the average (``count_include_pad=False``);
* the last E block (``Mixed_7c``) pools its branch with a 3x3 *max* pool.

Inputs are ``[B, H, W, 3]`` in [0, 1]; they are resized to 299x299 with
bilinear interpolation without antialiasing (PyTorch's
``F.interpolate(mode='bilinear', align_corners=False)``) and scaled to
[-1, 1] (``2 x - 1``), as pytorch-fid does. The output is the mean over the
final 8x8 map: ``[B, 2048]``.

Sub-modules carry the PyTorch names (``Mixed_5b/branch1x1/conv``), so
`ocjax.convert.inception` maps a state dict one name at a time.
``width_divisor`` shrinks every layer (for tests: a tiny random extractor
with the same code path); the real weights use 1.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Pad = Sequence[tuple[int, int]]

INPUT_SIZE = 299
BN_EPS = 1e-3  # torchvision's BasicConv2d
FEATURE_DIM = 2048


def _pad(ph: int, pw: int) -> Pad:
  return ((ph, ph), (pw, pw))


class BasicConv(nn.Module):
  """Conv (no bias) -> BatchNorm (running statistics) -> ReLU."""
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Pad = ((0, 0), (0, 0))
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = nn.Conv(self.features, self.kernel_size, self.strides,
                padding=self.padding, use_bias=False, dtype=self.dtype,
                precision=self.precision, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS,
                     dtype=self.dtype, name="bn")(x)
    return nn.relu(x)


def avg_pool_same(x: Array) -> Array:
  """3x3 stride-1 average pool, padding 1, padded zeros not counted."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=_pad(1, 1),
                     count_include_pad=False)


def max_pool_same(x: Array) -> Array:
  """3x3 stride-1 max pool, padding 1 (pads with -inf, like PyTorch)."""
  return nn.max_pool(x, (3, 3), (1, 1), padding=_pad(1, 1))


def max_pool_reduce(x: Array) -> Array:
  """3x3 stride-2 max pool without padding."""
  return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class _Block(nn.Module):
  """Shared helpers of the mixed blocks."""
  width_divisor: int = 1
  dtype: Any = jnp.float32
  precision: Any = None

  def ch(self, c: int) -> int:
    return max(1, c // self.width_divisor)

  def conv(self, name: str, c: int, k=(1, 1), s=(1, 1), p=(0, 0)):
    return BasicConv(self.ch(c), tuple(k), tuple(s), _pad(*p),
                     dtype=self.dtype, precision=self.precision, name=name)


class InceptionA(_Block):
  """Mixed_5b/c/d (FID variant: average pool without padding count)."""
  pool_features: int = 32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b1 = self.conv("branch1x1", 64)(x)
    b5 = self.conv("branch5x5_1", 48)(x)
    b5 = self.conv("branch5x5_2", 64, (5, 5), p=(2, 2))(b5)
    b3 = self.conv("branch3x3dbl_1", 64)(x)
    b3 = self.conv("branch3x3dbl_2", 96, (3, 3), p=(1, 1))(b3)
    b3 = self.conv("branch3x3dbl_3", 96, (3, 3), p=(1, 1))(b3)
    bp = self.conv("branch_pool", self.pool_features)(avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
  """Mixed_6a: grid reduction 35 -> 17."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b3 = self.conv("branch3x3", 384, (3, 3), (2, 2))(x)
    bd = self.conv("branch3x3dbl_1", 64)(x)
    bd = self.conv("branch3x3dbl_2", 96, (3, 3), p=(1, 1))(bd)
    bd = self.conv("branch3x3dbl_3", 96, (3, 3), (2, 2))(bd)
    return jnp.concatenate([b3, bd, max_pool_reduce(x)], axis=-1)


class InceptionC(_Block):
  """Mixed_6b-e with factorised 7x7 convolutions (FID variant pool)."""
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c7 = self.channels_7x7
    b1 = self.conv("branch1x1", 192)(x)
    b7 = self.conv("branch7x7_1", c7)(x)
    b7 = self.conv("branch7x7_2", c7, (1, 7), p=(0, 3))(b7)
    b7 = self.conv("branch7x7_3", 192, (7, 1), p=(3, 0))(b7)
    bd = self.conv("branch7x7dbl_1", c7)(x)
    bd = self.conv("branch7x7dbl_2", c7, (7, 1), p=(3, 0))(bd)
    bd = self.conv("branch7x7dbl_3", c7, (1, 7), p=(0, 3))(bd)
    bd = self.conv("branch7x7dbl_4", c7, (7, 1), p=(3, 0))(bd)
    bd = self.conv("branch7x7dbl_5", 192, (1, 7), p=(0, 3))(bd)
    bp = self.conv("branch_pool", 192)(avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
  """Mixed_7a: grid reduction 17 -> 8."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b3 = self.conv("branch3x3_1", 192)(x)
    b3 = self.conv("branch3x3_2", 320, (3, 3), (2, 2))(b3)
    b7 = self.conv("branch7x7x3_1", 192)(x)
    b7 = self.conv("branch7x7x3_2", 192, (1, 7), p=(0, 3))(b7)
    b7 = self.conv("branch7x7x3_3", 192, (7, 1), p=(3, 0))(b7)
    b7 = self.conv("branch7x7x3_4", 192, (3, 3), (2, 2))(b7)
    return jnp.concatenate([b3, b7, max_pool_reduce(x)], axis=-1)


class InceptionE(_Block):
  """Mixed_7b (average pool, no padding count) / Mixed_7c (max pool)."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b1 = self.conv("branch1x1", 320)(x)
    b3 = self.conv("branch3x3_1", 384)(x)
    b3 = jnp.concatenate([
        self.conv("branch3x3_2a", 384, (1, 3), p=(0, 1))(b3),
        self.conv("branch3x3_2b", 384, (3, 1), p=(1, 0))(b3)], axis=-1)
    bd = self.conv("branch3x3dbl_1", 448)(x)
    bd = self.conv("branch3x3dbl_2", 384, (3, 3), p=(1, 1))(bd)
    bd = jnp.concatenate([
        self.conv("branch3x3dbl_3a", 384, (1, 3), p=(0, 1))(bd),
        self.conv("branch3x3dbl_3b", 384, (3, 1), p=(1, 0))(bd)], axis=-1)
    pooled = max_pool_same(x) if self.max_pool else avg_pool_same(x)
    bp = self.conv("branch_pool", 192)(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_bilinear(images: Array, size: int = INPUT_SIZE) -> Array:
  """``[B, H, W, C]`` -> ``[B, size, size, C]``, bilinear, no antialiasing.

  Half-pixel centres with edge clamping: PyTorch's
  ``F.interpolate(mode='bilinear', align_corners=False)``.
  """
  b, h, w, c = images.shape
  if (h, w) == (size, size):
    return images
  return jax.image.resize(images, (b, size, size, c), "bilinear",
                          antialias=False)


def feature_dim(width_divisor: int = 1) -> int:
  """Width of the pool features (2048 for the real network)."""
  widths = (320, 384, 384, 384, 384, 192)  # Mixed_7c's concatenation
  return sum(max(1, c // width_divisor) for c in widths)


class FIDInceptionV3(nn.Module):
  """Images ``[B, H, W, 3]`` in [0, 1] -> pool3 features ``[B, D]``.

  Attributes:
    width_divisor: divides every layer's width (1: the real network, D =
      2048).
    resize_input: resize to 299x299 first (pytorch-fid's default).
    normalize_input: map [0, 1] to [-1, 1].
    dtype: compute dtype.
    precision: convolution precision (e.g. ``"highest"`` to avoid TF32 on
      GPUs).
  """
  width_divisor: int = 1
  resize_input: bool = True
  normalize_input: bool = True
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, images: Array) -> Array:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"Expected images [B, H, W, 3], got {images.shape}.")
    x = images.astype(jnp.float32)
    if self.resize_input:
      x = resize_bilinear(x)
    if self.normalize_input:
      x = 2.0 * x - 1.0
    x = x.astype(self.dtype)
    kw = dict(width_divisor=self.width_divisor, dtype=self.dtype,
              precision=self.precision)

    def conv(name, c, k, s=(1, 1), p=(0, 0)):
      return BasicConv(max(1, c // self.width_divisor), k, s, _pad(*p),
                       dtype=self.dtype, precision=self.precision, name=name)

    x = conv("Conv2d_1a_3x3", 32, (3, 3), (2, 2))(x)  # [B, 149, 149, 32]
    x = conv("Conv2d_2a_3x3", 32, (3, 3))(x)  # [B, 147, 147, 32]
    x = conv("Conv2d_2b_3x3", 64, (3, 3), p=(1, 1))(x)  # [B, 147, 147, 64]
    x = max_pool_reduce(x)  # [B, 73, 73, 64]
    x = conv("Conv2d_3b_1x1", 80, (1, 1))(x)  # [B, 73, 73, 80]
    x = conv("Conv2d_4a_3x3", 192, (3, 3))(x)  # [B, 71, 71, 192]
    x = max_pool_reduce(x)  # [B, 35, 35, 192]
    x = InceptionA(pool_features=32, name="Mixed_5b", **kw)(x)  # 256
    x = InceptionA(pool_features=64, name="Mixed_5c", **kw)(x)  # 288
    x = InceptionA(pool_features=64, name="Mixed_5d", **kw)(x)  # 288
    x = InceptionB(name="Mixed_6a", **kw)(x)  # [B, 17, 17, 768]
    x = InceptionC(channels_7x7=128, name="Mixed_6b", **kw)(x)
    x = InceptionC(channels_7x7=160, name="Mixed_6c", **kw)(x)
    x = InceptionC(channels_7x7=160, name="Mixed_6d", **kw)(x)
    x = InceptionC(channels_7x7=192, name="Mixed_6e", **kw)(x)  # 768
    x = InceptionD(name="Mixed_7a", **kw)(x)  # [B, 8, 8, 1280]
    x = InceptionE(max_pool=False, name="Mixed_7b", **kw)(x)  # 2048
    x = InceptionE(max_pool=True, name="Mixed_7c", **kw)(x)  # 2048
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # [B, D]
