"""Convolutional glimpse generator of AST-Seg (paper 003, Table 7).

``z_what [N, z] -> [N, G, G, 4]`` (RGB object image and mask, after a
sigmoid), as the official ``get_object_generator``: a 2x2 transposed
convolution on the 1x1 input (``z -> 2G`` channels), then stride-2 4x4
transposed convolutions (padding 1) halving the channels down to 8 and a
last one to 4 channels with a bias; GroupNorm (``max(1, C / 16)`` groups,
eps 1e-5) and CELU after every layer but the last; no bias elsewhere.

G = 32 for images up to 64x64 (channels 64, 32, 16, 8, 4), 64 up to
128x128 (128 ... 4), else 128 (`default_glimpse_size`); other powers of two
follow the same rule (``2G, G, ..., 8, 4``).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ocjax.nn import ast_unet
from ocjax.nn import conv_transpose
from ocjax.nn import init

Array = jax.Array

TORCH_NORM_EPS = 1e-5


def default_glimpse_size(height: int, width: int) -> int:
  """The official glimpse size for an image size."""
  if height <= 64 and width <= 64:
    return 32
  if height <= 128 and width <= 128:
    return 64
  return 128


def glimpse_channels(size: int) -> tuple[int, ...]:
  """Output channels of the layers for a glimpse of ``size`` (a power of two
  >= 4): ``(2 size, size, ..., 8, 4)``."""
  m = math.log2(size)
  if size < 4 or m != int(m):
    raise ValueError(f"The glimpse size must be a power of two >= 4; got "
                     f"{size}.")
  channels = [2 * size]
  while channels[-1] > 8:
    channels.append(channels[-1] // 2)
  return tuple(channels) + (4,)


def num_groups(channels: int) -> int:
  return max(1, channels // 16)


class GlimpseGenerator(nn.Module):
  """Table 7: ``z_what [N, z] -> sigmoid output [N, G, G, 4]``."""
  glimpse_size: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    channels = glimpse_channels(self.glimpse_size)
    dt = self.dtype
    z = z.astype(dt)
    c0 = channels[0]
    # ConvTranspose2d(z, c0, 2, 1, 0) on a 1x1 input: one matmul.
    kernel = self.param("deconv_0", init.torch_default(c0 * 4),
                        (2, 2, z.shape[-1], c0))
    x = jnp.einsum("ni,yxio->nyxo", z, kernel.astype(dt))
    for i, c in enumerate(channels[1:], start=1):
      x = nn.GroupNorm(num_groups=num_groups(x.shape[-1]),
                       epsilon=TORCH_NORM_EPS, use_fast_variance=False,
                       dtype=dt, name=f"norm_{i - 1}")(x)
      x = ast_unet.celu(x)
      last = i == len(channels) - 1
      kernel = self.param(f"deconv_{i}", init.torch_default(c * 16),
                          (4, 4, x.shape[-1], c))
      x = conv_transpose.conv_transpose_subpixel(
          x, kernel.astype(dt), 1, 0,
          matmul_grad=jax.default_backend() == "cpu")
      if last:
        bias = self.param("bias", init.torch_default(c * 16), (c,))
        x = x + bias.astype(dt)
    return jax.nn.sigmoid(x)
