"""UNet backbone of GENESIS-V2 (paper 002, App. B "Backbone").

Filters [64, 64, 128, 128, 128] on the way down and the reverse on the way up
for 64x64 inputs (``log2(H) - 1`` blocks; more blocks for larger images), GN8
after every convolution, nearest-neighbour down/up-sampling by two between
blocks and an MLP with two hidden layers of 128 units at the 4x4 bottleneck.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ocjax.nn import init
from ocjax.nn import layers

Array = jax.Array


def unet_channels(num_blocks: int, filter_start: int):
  """Per-block (down, up) output channels of the GENESIS UNet."""
  c = filter_start
  if num_blocks == 4:
    return [c, 2 * c, 2 * c, 2 * c], [2 * c, 2 * c, c, c]
  if num_blocks == 5:
    return [c, c, 2 * c, 2 * c, 2 * c], [2 * c, 2 * c, c, c, c]
  if num_blocks == 6:
    return [c, c, c, 2 * c, 2 * c, 2 * c], [2 * c, 2 * c, c, c, c, c]
  raise ValueError(
      f"The GENESIS UNet has 4, 5 or 6 blocks (images of 32, 64 or 128 "
      f"pixels); got {num_blocks}.")


def num_unet_blocks(image_size: int) -> int:
  """``log2(image_size) - 1``: the bottleneck is always 4x4."""
  n = math.log2(image_size)
  if n != int(n):
    raise ValueError(f"image_size must be a power of two, got {image_size}.")
  return int(n) - 1


class UNet(nn.Module):
  """GENESIS UNet with GroupNorm; returns the ``[B, H, W, C]`` feature map.

  With ``norm_groups=None`` the norms are InstanceNorms (GroupNorm with one
  group per channel), as in MONet-G's attention network.
  """
  down_channels: Sequence[int]
  up_channels: Sequence[int]
  mlp_hidden: int = 128
  dtype: Any = jnp.float32
  # Groups of every GroupNorm; None: one group per channel, i.e. the
  # InstanceNorm of the UNet in the official MONet re-implementation.
  norm_groups: int | None = 8

  @nn.compact
  def __call__(self, x: Array) -> Array:
    skips = []
    for i, c in enumerate(self.down_channels):
      x = layers.ConvGNReLU(c, num_groups=self.norm_groups or c,
                            dtype=self.dtype, name=f"down_{i}")(x)
      skips.append(x)
      if i < len(self.down_channels) - 1:
        x = layers.downsample_nearest(x)
    b, h, w, c = x.shape  # [B, 4, 4, C]
    x = x.reshape(b, h * w * c)  # flattened in (H, W, C) order
    for i, units in enumerate((self.mlp_hidden, self.mlp_hidden, h * w * c)):
      x = nn.relu(_dense(units, x.shape[-1], self.dtype, f"mlp_{i}")(x))
    x = x.reshape(b, h, w, c)
    for i, c in enumerate(self.up_channels):
      x = jnp.concatenate([x, skips[-1 - i]], axis=-1)
      x = layers.ConvGNReLU(c, num_groups=self.norm_groups or c,
                            dtype=self.dtype, name=f"up_{i}")(x)
      if i < len(self.up_channels) - 1:
        x = layers.upsample_nearest(x)
    return x


def _dense(units: int, fan_in: int, dtype, name: str) -> nn.Dense:
  return nn.Dense(units, dtype=dtype, kernel_init=init.torch_default(fan_in),
                  bias_init=init.torch_default(fan_in), name=name)
