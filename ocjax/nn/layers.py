"""Small building blocks shared by the models (NHWC throughout)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ocjax.nn import init

Array = jax.Array

# PyTorch's GroupNorm / LayerNorm epsilon; Flax defaults to 1e-6.
TORCH_NORM_EPS = 1e-5


def torch_linspace(start: float, end: float, num: int) -> np.ndarray:
  """`torch.linspace` in float32, bit for bit.

  Torch computes the first half as ``start + step * i`` and the second half as
  ``end - step * (num - 1 - i)`` with ``step`` rounded to float32; NumPy's and
  jnp's linspace differ from it by up to an ulp, which shifts the semi-conv
  coordinates of the official implementation.
  """
  if num == 1:
    return np.array([start], np.float32)
  # step is rounded to float32; each element is then one fused multiply-add
  # (a single rounding), which float64 arithmetic reproduces exactly here.
  step = np.float64(np.float32((end - start) / (num - 1)))
  i = np.arange(num, dtype=np.float64)
  head = start + step * i
  tail = end - step * (num - 1 - i)
  return np.where(i < num // 2, head, tail).astype(np.float32)


def coordinate_grid(height: int, width: int) -> np.ndarray:
  """Relative pixel coordinates in [-1, 1]: ``[H, W, 2]`` as (row, column)."""
  rows = torch_linspace(-1.0, 1.0, height)
  cols = torch_linspace(-1.0, 1.0, width)
  row_grid, col_grid = np.meshgrid(rows, cols, indexing="ij")
  return np.stack([row_grid, col_grid], axis=-1)  # [H, W, 2]


def clamp_straight_through(x: Array, lower: float, upper: float) -> Array:
  """Clamps the forward value; the gradient passes as if unclamped."""
  return x + jax.lax.stop_gradient(jnp.clip(x, lower, upper) - x)


def downsample_nearest(x: Array) -> Array:
  """Halves H and W keeping the even rows and columns.

  This is torch's ``interpolate(scale_factor=0.5, mode='nearest')``;
  ``jax.image.resize(..., 'nearest')`` would keep the odd ones.
  """
  return x[:, ::2, ::2, :]


def upsample_nearest(x: Array) -> Array:
  """Doubles H and W by repeating each pixel into a 2x2 block."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ConvGNReLU(nn.Module):
  """3x3 convolution (no bias) -> GroupNorm(8) -> ReLU, as in GENESIS-V2."""
  features: int
  kernel_size: int = 3
  num_groups: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    pad = (k - 1) // 2
    x = nn.Conv(self.features, (k, k), padding=((pad, pad), (pad, pad)),
                use_bias=False, dtype=self.dtype,
                kernel_init=init.torch_default(x.shape[-1] * k * k),
                name="conv")(x)
    x = nn.GroupNorm(num_groups=self.num_groups, epsilon=TORCH_NORM_EPS,
                     use_fast_variance=False, dtype=self.dtype,
                     name="norm")(x)
    return nn.relu(x)
