"""MONet's component VAE, shared by MONet-G and GENESIS (v1).

Burgess et al. (2019) encode each slot from the image and the slot's log
attention mask, and decode it with a spatial broadcast decoder (Watters et al.
2019) that uses stride-1 "valid" convolutions on a grid that is larger than
the image by two pixels per layer. GENESIS-V2 (paper 002 App. B "Component
decoder") contrasts its stride-2 deconvolution decoder with this one. The
exact arithmetic is the official GENESIS code's (``modules/component_vae.py``,
``encoders.MONetCompEncoder``, ``decoders.BroadcastDecoder``) as described in
the reference fixtures' READMEs (``monet_g_reference`` §3.3-3.4,
``genesis_reference`` §3.6):

* encoder: four 3x3 stride-2 convolutions (padding 1, bias) with ``C, C, 2C,
  2C`` channels, each followed by the activation; flatten; a hidden dense layer
  of ``max(256, 2 L)`` units with the activation; a dense layer to ``2 L``
  statistics. ``mu`` is the first half, ``sigma = softplus(. + 0.5) + 1e-8``.
* decoder: ``z`` tiled over ``(H + 2 n) x (W + 2 n)`` pixels plus (row,
  column) coordinates in [-1, 1]; ``n`` 3x3 valid convolutions with the
  activation; a 1x1 convolution to the output channels; optionally a sigmoid.

The activation is ReLU for MONet-G and ELU for GENESIS. Arrays are NHWC; the
torch model flattens NCHW maps, which the converters account for.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ocjax.nn import broadcast_decoder
from ocjax.nn import init

Array = jax.Array

# sigma = softplus(raw + 0.5) + 1e-8 (official ``blocks.to_sigma``).
SIGMA_SHIFT = 0.5
SIGMA_EPS = 1e-8

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu, "elu": nn.elu}


def activation(name: str) -> Callable[[Array], Array]:
  """The activation function called ``name`` ("relu" or "elu")."""
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; expected one of "
                     f"{sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def to_sigma(raw: Array) -> Array:
  """``softplus(raw + 0.5) + 1e-8``: the posterior scale of the VAEs."""
  return jax.nn.softplus(raw + SIGMA_SHIFT) + SIGMA_EPS


def pixel_stds(num_slots: int, std1: float, std2: float, dtype) -> Array:
  """Per-slot sigma_x ``[K, 1, 1, 1]`` of the mixture likelihood.

  ``std1`` for slot 0 and ``std2`` for the others (the official
  ``pixel_std1``/``pixel_std2``), rounded to float32 first as the reference
  keeps them in a float32 buffer (its float64 run uses float64(float32(0.7));
  MONet-G README §1).
  """
  std = np.full((num_slots,), np.float32(std2), np.float32)
  std[0] = np.float32(std1)
  return jnp.asarray(std.reshape(num_slots, 1, 1, 1), dtype)


def _conv(features: int, kernel: int, fan_in: int, dtype, name: str, *,
          strides: int = 1, padding: Any = "VALID") -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=strides, padding=padding,
                 dtype=dtype, kernel_init=init.torch_default(fan_in),
                 bias_init=init.torch_default(fan_in), name=name)


def _dense(features: int, fan_in: int, dtype, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype,
                  kernel_init=init.torch_default(fan_in),
                  bias_init=init.torch_default(fan_in), name=name)


class ComponentEncoder(nn.Module):
  """``[N, H, W, C_in] -> [N, 2 L]`` raw posterior statistics.

  Parameters ``conv_0 .. conv_3`` (3x3, stride 2), ``hidden`` and ``out``.
  The hidden layer reads the ``[N, H/16, W/16, 2C]`` map flattened in (H, W,
  C) order.
  """
  latent_dim: int = 16
  channels: int = 32
  activation: str = "relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    act = activation(self.activation)
    c = self.channels
    for i, features in enumerate((c, c, 2 * c, 2 * c)):
      x = act(_conv(features, 3, x.shape[-1] * 9, self.dtype, f"conv_{i}",
                    strides=2, padding=((1, 1), (1, 1)))(x))
    x = x.reshape(x.shape[0], -1)  # [N, (H/16) (W/16) 2C]
    hidden = max(256, 2 * self.latent_dim)
    x = act(_dense(hidden, x.shape[-1], self.dtype, "hidden")(x))
    return _dense(2 * self.latent_dim, hidden, self.dtype, "out")(x)


class BroadcastConvDecoder(nn.Module):
  """``z [N, L] -> [N, H, W, out_channels]`` with stride-1 valid convolutions.

  The broadcast grid is ``image_size + 2 num_layers`` pixels wide; each 3x3
  valid convolution removes one pixel per side. Coordinates are torch's
  float32 ``linspace(-1, 1, size)`` (row channel, then column channel) after
  the ``L`` latent channels. Parameters ``conv_0 .. conv_{n-1}`` and ``out``.
  """
  image_size: int
  out_channels: int
  channels: int = 32
  num_layers: int = 4
  activation: str = "relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    act = activation(self.activation)
    size = self.image_size + 2 * self.num_layers
    x = act(BroadcastConv(self.channels, size, dtype=self.dtype,
                          name="conv_0")(z))
    for i in range(1, self.num_layers):
      x = act(_conv(self.channels, 3, x.shape[-1] * 9, self.dtype,
                    f"conv_{i}")(x))
    return _conv(self.out_channels, 1, self.channels, self.dtype, "out")(x)


class BroadcastConv(nn.Module):
  """A 3x3 valid convolution of the spatial broadcast of ``z``, factorised.

  ``conv(broadcast(z) ++ coords)`` with ``kernel [3, 3, L + 2, C]`` equals
  ``z . sum_taps(kernel[:, :, :L]) + conv(coords, kernel[:, :, L:])``: the
  latent part is constant over the grid, so it is one matmul per sample, and
  the coordinate part is the same for every sample. Same parameters and
  numbers (up to float rounding) as the plain convolution of the official
  decoder's first layer, without its per-sample convolution over L + 2
  channels.
  """
  features: int
  size: int  # the broadcast grid's side
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    n, l = z.shape
    u = init.torch_default((l + 2) * 9)
    kernel = self.param("kernel", u, (3, 3, l + 2, self.features))
    bias = self.param("bias", u, (self.features,))
    kernel = kernel.astype(self.dtype)
    coords = broadcast_decoder.spatial_broadcast(
        jnp.zeros((1, 0), self.dtype), self.size)  # [1, s, s, 2]
    coord_part = jax.lax.conv_general_dilated(
        coords, kernel[:, :, l:], (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))  # [1, s-2, s-2, C]
    latent_part = jnp.dot(z.astype(self.dtype),
                          jnp.sum(kernel[:, :, :l], axis=(0, 1)))  # [N, C]
    return (coord_part + latent_part[:, None, None, :]
            + bias.astype(self.dtype))


class ComponentVAE(nn.Module):
  """Encoder and broadcast decoder of the component VAE.

  Attributes:
    image_size: H = W of the inputs and outputs.
    out_channels: decoder output channels (MONet: RGB + mask logit = 4;
      GENESIS: 3).
    latent_dim: L (``comp_ldim``, 16).
    encoder_channels: C of the encoder (``comp_enc_channels``, 32).
    decoder_channels: width of the decoder (``comp_dec_channels``, 32).
    decoder_layers: number of 3x3 decoder layers (``comp_dec_layers``, 4).
    activation: "relu" (MONet) or "elu" (GENESIS).
    sigmoid: squash every decoder output with a sigmoid (GENESIS's
      ``pixel_bound``; MONet applies it to the RGB channels itself).
  """
  image_size: int
  out_channels: int
  latent_dim: int = 16
  encoder_channels: int = 32
  decoder_channels: int = 32
  decoder_layers: int = 4
  activation: str = "relu"
  sigmoid: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    if self.image_size % 16:
      raise ValueError("The component encoder halves the image four times; "
                       f"image_size must be a multiple of 16, got "
                       f"{self.image_size}.")
    self.encoder = ComponentEncoder(self.latent_dim, self.encoder_channels,
                                    self.activation, dtype=self.dtype)
    self.decoder = BroadcastConvDecoder(
        self.image_size, self.out_channels, self.decoder_channels,
        self.decoder_layers, self.activation, dtype=self.dtype)

  def encode(self, x: Array) -> tuple[Array, Array, Array]:
    """``x [N, H, W, C_in]`` -> ``(mu, sigma [N, L], raw [N, 2L])``."""
    raw = self.encoder(x)
    mu, sigma_raw = jnp.split(raw, 2, axis=-1)
    return mu, to_sigma(sigma_raw), raw

  def decode(self, z: Array) -> Array:
    """``z [N, L]`` -> ``[N, H, W, out_channels]``."""
    out = self.decoder(z)
    return jax.nn.sigmoid(out) if self.sigmoid else out

  def __call__(self, x: Array, eps: Array):
    """Encodes, samples ``z = mu + eps sigma`` and decodes (for init)."""
    mu, sigma, _ = self.encode(x)
    return self.decode(mu + eps * sigma)
