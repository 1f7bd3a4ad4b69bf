"""Gated convolutional VAE layers of GENESIS's mask VAE (Sylvester flows' VAE).

GENESIS (Engelcke et al. 2020) encodes and decodes its mask latents with the
gated convolutional networks of van den Berg et al. (2018) (official code
``third_party/sylvester``; GENESIS fixture README §3.1 and §3.3). A gated
layer convolves to ``2C`` channels, splits them into features ``h`` (first
``C``) and gates ``g`` (last ``C``), normalises each with its own norm layer
and returns ``h * sigmoid(g)`` (no activation on ``h``).

* `GatedEncoder`: five 5x5 gated convolutions (padding 2) with 32, 32, 64, 64,
  64 channels, then a gated convolution whose kernel covers the whole
  remaining map (16x16 at 64x64 inputs) to a 256-vector.
* `GatedDecoder`: a gated transposed convolution of the 1x1 latent to that
  map size, five 5x5 gated transposed convolutions (padding 2, output padding
  ``stride - 1``) with 64, 32, 32, 32, 32 channels, and a 1x1 convolution to
  the output channels.

The full-map layers act on a single pixel, so they are dense layers here
(one matmul): ``[N, k k C_in] x [k k C_in, 2C]`` and ``[N, L] x [L, k k 2C]``.
Stride-2 transposed convolutions use the sub-pixel form
(`ocjax.nn.conv_transpose.ConvTranspose2x`); stride-1 ones are correlations
with the flipped kernel. Kernels of transposed layers are stored in the
scatter layout ``[k, k, C_in, C_out]`` (torch ``weight[i, o, ty, tx]``).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ocjax.nn import batch_norm
from ocjax.nn import conv_transpose
from ocjax.nn import init
from ocjax.nn import layers

Array = jax.Array

NORMS = ("bn", "in", "none")
ENCODER_CHANNELS = (32, 32, 64, 64, 64)
DECODER_CHANNELS = (64, 32, 32, 32, 32)
ENCODER_FEATURES = 256


def mask_vae_layout(image_size: int) -> tuple[int, tuple[int, ...]]:
  """``(k, strides)``: full-map kernel size and the five encoder strides.

  The official code's table (``sylvester/VAE.py``); the decoder uses the
  strides reversed.
  """
  table = {32: (8, (1, 2, 1, 2, 1)), 64: (16, (1, 2, 1, 2, 1)),
           128: (16, (2, 2, 2, 1, 1)), 256: (16, (2, 2, 2, 2, 1))}
  if image_size not in table:
    raise ValueError(f"GENESIS's mask VAE supports images of {sorted(table)} "
                     f"pixels, got {image_size}.")
  return table[image_size]


def _make_norm(kind: str, dtype, name: str):
  if kind not in NORMS:
    raise ValueError(f"Unknown norm {kind!r}; expected one of {NORMS}.")
  if kind == "bn":
    return batch_norm.BatchNorm(dtype=dtype, name=name)
  if kind == "in":
    return nn.GroupNorm(num_groups=None, group_size=1,
                        epsilon=layers.TORCH_NORM_EPS,
                        use_fast_variance=False, dtype=dtype, name=name)
  return None


def _gate(y: Array, h_norm, g_norm, train: bool) -> Array:
  """``h * sigmoid(g)`` with ``[h, g] = y`` split on the channel axis."""
  h, g = jnp.split(y, 2, axis=-1)
  if isinstance(h_norm, batch_norm.BatchNorm):
    h = h_norm(h, use_running_average=not train)
    g = g_norm(g, use_running_average=not train)
  elif h_norm is not None:
    h, g = h_norm(h), g_norm(g)
  return h * jax.nn.sigmoid(g)


class ConvTranspose1x(nn.Module):
  """Stride-1 transposed convolution (torch semantics), same output size.

  ``kernel [k, k, C_in, C_out]`` in the scatter layout; computed as the
  correlation with the spatially flipped kernel, padding ``k - 1 - p``.
  """
  features: int
  kernel_size: int = 5
  padding: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    default = init.torch_default(self.features * k * k)  # torch: C_out k k
    kernel = self.param("kernel", default, (k, k, x.shape[-1], self.features))
    bias = self.param("bias", default, (self.features,))
    pad = k - 1 - self.padding
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel[::-1, ::-1].astype(self.dtype), (1, 1),
        ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


class GatedConv(nn.Module):
  """Gated (transposed) convolution: ``conv -> split -> norms -> h sig(g)``.

  Submodules ``conv`` (``2 features`` outputs), ``h_norm`` and ``g_norm``
  (absent for ``norm="none"``).
  """
  features: int
  kernel_size: int = 5
  stride: int = 1
  padding: int = 2
  transpose: bool = False
  norm: str = "bn"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    k, c2 = self.kernel_size, 2 * self.features
    if not self.transpose:
      fan_in = x.shape[-1] * k * k
      conv = nn.Conv(c2, (k, k), strides=self.stride,
                     padding=((self.padding, self.padding),) * 2,
                     dtype=self.dtype, kernel_init=init.torch_default(fan_in),
                     bias_init=init.torch_default(fan_in), name="conv")
    elif self.stride == 1:
      conv = ConvTranspose1x(c2, k, self.padding, dtype=self.dtype,
                             name="conv")
    elif self.stride == 2:
      conv = conv_transpose.ConvTranspose2x(
          c2, kernel_size=k, padding=self.padding, output_padding=1,
          dtype=self.dtype, name="conv")
    else:
      raise ValueError(f"Transposed stride must be 1 or 2, got {self.stride}.")
    y = conv(x)
    h_norm = _make_norm(self.norm, self.dtype, "h_norm")
    g_norm = _make_norm(self.norm, self.dtype, "g_norm")
    return _gate(y, h_norm, g_norm, train)


class GatedMapToVector(nn.Module):
  """Gated convolution whose kernel covers the map: ``[N, k, k, C] -> [N, F]``.

  ``kernel [k k C, 2F]`` (rows in (H, W, C) order) and ``bias [2F]``; no norm.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.reshape(x.shape[0], -1)
    d = x.shape[-1]
    u = init.torch_default(d)  # torch Conv2d fan_in = C k k
    kernel = self.param("kernel", u, (d, 2 * self.features))
    bias = self.param("bias", u, (2 * self.features,))
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    return _gate(y + bias.astype(self.dtype), None, None, False)


class GatedVectorToMap(nn.Module):
  """Gated transposed convolution of a 1x1 map: ``[N, L] -> [N, k, k, F]``.

  ``y[n, i, j, o] = sum_c z[n, c] W[c, o, i, j] + b[o]`` as one matmul with
  ``kernel [L, k k 2F]`` (columns in (H, W, C) order) and ``bias [2F]``; no
  norm.
  """
  features: int
  kernel_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    k, c2 = self.kernel_size, 2 * self.features
    u = init.torch_default(c2 * k * k)  # torch ConvTranspose2d: C_out k k
    kernel = self.param("kernel", u, (z.shape[-1], k * k * c2))
    bias = self.param("bias", u, (c2,))
    y = jnp.dot(z.astype(self.dtype), kernel.astype(self.dtype))
    y = y.reshape(z.shape[0], k, k, c2) + bias.astype(self.dtype)
    return _gate(y, None, None, False)


class GatedEncoder(nn.Module):
  """``x [N, H, W, C] -> h [N, 256]`` (README §3.1); layers ``layer_0..5``."""
  image_size: int
  norm: str = "bn"
  channels: Sequence[int] = ENCODER_CHANNELS
  out_features: int = ENCODER_FEATURES
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    _, strides = mask_vae_layout(self.image_size)
    for i, (c, s) in enumerate(zip(self.channels, strides)):
      x = GatedConv(c, 5, s, 2, norm=self.norm, dtype=self.dtype,
                    name=f"layer_{i}")(x, train)
      self.sow("intermediates", f"layer{i}", x)
    return GatedMapToVector(self.out_features, dtype=self.dtype,
                            name=f"layer_{len(self.channels)}")(x)


class GatedDecoder(nn.Module):
  """``z [N, L] -> [N, H, W, out_channels]`` (README §3.3).

  Layers ``layer_0`` (1x1 -> k x k), ``layer_1..5`` and the 1x1 ``out``
  convolution (``p_x_mean``).
  """
  image_size: int
  out_channels: int = 1
  norm: str = "bn"
  channels: Sequence[int] = DECODER_CHANNELS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array, train: bool) -> Array:
    k, strides = mask_vae_layout(self.image_size)
    x = GatedVectorToMap(self.channels[0], k, dtype=self.dtype,
                         name="layer_0")(z)
    self.sow("intermediates", "layer0", x)
    for i, (c, s) in enumerate(zip(self.channels, strides[::-1])):
      x = GatedConv(c, 5, s, 2, transpose=True, norm=self.norm,
                    dtype=self.dtype, name=f"layer_{i + 1}")(x, train)
      self.sow("intermediates", f"layer{i + 1}", x)
    fan_in = x.shape[-1]
    return nn.Conv(self.out_channels, (1, 1), dtype=self.dtype,
                   kernel_init=init.torch_default(fan_in),
                   bias_init=init.torch_default(fan_in), name="out")(x)
