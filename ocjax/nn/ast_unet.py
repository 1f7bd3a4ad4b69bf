"""The U-Net feature-map generator of AST-Seg (paper 003, Table 8).

As the official code builds it (``MF_models_encoder.Unet``): every
convolution without bias, BatchNorm (PyTorch's running statistics,
`ocjax.nn.batch_norm`) and CELU (alpha 1):

* ``first_feature_map``: conv 3x3 -> BN -> CELU (``f_0``);
* ``L`` downsample blocks (``L = len(widths) - 1``): conv 4x4 stride 2
  padding 1 -> BN -> CELU, then a residual conv 3x3 -> BN -> CELU ``+ x``
  (the residual is added after the activation) (``f_1 .. f_L``);
* ``center_block``: conv 3x3 -> BN -> CELU;
* upsample blocks ``i = L-1 .. 0`` on ``concat([x, f_{i+1}])`` (decoder
  features first): residual conv 3x3 -> BN -> CELU ``+ x``, then a transposed
  conv 4x4 stride 2 padding 1 (``output_padding`` for odd sizes,
  `output_paddings`) -> BN -> CELU;
* ``last_skip_layer`` on ``concat([x, f_0])``: conv 3x3 -> BN -> CELU; a
  residual conv 3x3 ``+ x`` (no BN, no activation); a 1x1 conv.

The output has the input's resolution. Transposed convolutions that exactly
double the size run as sub-pixel convolutions (`ocjax.nn.conv_transpose`,
the same numbers without the zero-dilated input).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ocjax.nn import batch_norm
from ocjax.nn import conv
from ocjax.nn import conv_transpose
from ocjax.nn import init

Array = jax.Array

# Table 8 (images smaller than 200 pixels) and the official code's widths for
# larger images.
OFFICIAL_WIDTHS = (80, 128, 192, 256, 256, 256)
OFFICIAL_WIDTHS_LARGE = (48, 64, 96, 128, 128, 256, 256)


def default_widths(height: int, width: int) -> tuple[int, ...]:
  """The official widths for an image size (``Unet.__init__``)."""
  if height < 200 and width < 200:
    return OFFICIAL_WIDTHS
  return OFFICIAL_WIDTHS_LARGE


def output_paddings(height: int, width: int,
                    num_layers: int) -> list[tuple[int, int]]:
  """``compute_output_paddings``: per level, (h, w) output padding of the
  transposed conv that undoes the level's 4x4 stride-2 conv."""
  out = []
  h, w = height, width
  for _ in range(num_layers):
    out.append(((h + 2 - 4) % 2, (w + 2 - 4) % 2))
    h, w = 1 + (h + 2 - 4) // 2, 1 + (w + 2 - 4) // 2
  return out


def celu(x: Array) -> Array:
  """``torch.nn.CELU(alpha=1)``."""
  return jnp.where(x > 0, x, jnp.expm1(jnp.minimum(x, 0)))


class Conv(nn.Module):
  """``torch.nn.Conv2d`` without bias (explicit symmetric padding;
  `ocjax.nn.conv.conv2d`)."""
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, p = self.kernel_size, self.padding
    kernel = self.param("kernel", init.torch_default(x.shape[-1] * k * k),
                        (k, k, x.shape[-1], self.features))
    return conv.conv2d(x.astype(self.dtype), kernel.astype(self.dtype),
                       ((p, p), (p, p)), (self.stride, self.stride))


class ConvTranspose(nn.Module):
  """``torch.nn.ConvTranspose2d(k, stride 2, padding, output_padding)``
  without bias; kernel ``[k, k, C_in, C_out]`` (torch ``weight[i, o, ty,
  tx]``)."""
  features: int
  kernel_size: int = 4
  padding: int = 1
  output_padding: tuple[int, int] = (0, 0)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, p = self.kernel_size, self.padding
    # torch computes the fan-in of ConvTranspose2d from C_out.
    kernel = self.param("kernel", init.torch_default(self.features * k * k),
                        (k, k, x.shape[-1], self.features))
    x = x.astype(self.dtype)
    oph, opw = self.output_padding
    if oph == opw and k - 2 * p + oph == 2:
      return conv_transpose.conv_transpose_subpixel(
          x, kernel, p, oph, matmul_grad=jax.default_backend() == "cpu")
    lo = k - 1 - p
    flipped = kernel[::-1, ::-1].astype(self.dtype)
    return jax.lax.conv_general_dilated(
        x, flipped, (1, 1), ((lo, lo + oph), (lo, lo + opw)),
        lhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"))


class ConvBNCELU(nn.Module):
  """Conv (no bias) -> BatchNorm -> CELU (``nn.Sequential`` indices 0, 1)."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: int = 1
  transposed: bool = False
  output_padding: tuple[int, int] = (0, 0)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if self.transposed:
      x = ConvTranspose(self.features, self.kernel_size, self.padding,
                        self.output_padding, self.dtype, name="conv")(x)
    else:
      x = Conv(self.features, self.kernel_size, self.stride, self.padding,
               self.dtype, name="conv")(x)
    x = batch_norm.BatchNorm(dtype=self.dtype, name="bn")(
        x, use_running_average=not train)
    return celu(x)


class Unet(nn.Module):
  """``Unet(H, W, 3, out_channels)`` of the official code (module doc).

  Attributes:
    out_channels: channels of the output map.
    widths: ``nch``, ``L + 1`` widths (f_0 .. f_L); empty: the official ones
      for the input size.
  """
  out_channels: int
  widths: Sequence[int] = ()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    _, h, w, _ = x.shape
    nch = tuple(self.widths) or default_widths(h, w)
    nl = len(nch) - 1
    if nl < 1:
      raise ValueError(f"The U-Net needs at least two widths; got {nch}.")
    pads = output_paddings(h, w, nl)
    dt = self.dtype
    x = ConvBNCELU(nch[0], dtype=dt, name="first_feature_map")(x, train=train)
    features = [x]
    for i in range(nl):
      x = ConvBNCELU(nch[i + 1], 4, 2, 1, dtype=dt,
                     name=f"downsample_{i}_bloc1")(x, train=train)
      x = ConvBNCELU(nch[i + 1], dtype=dt, name=f"downsample_{i}_bloc2")(
          x, train=train) + x
      features.append(x)
    x = ConvBNCELU(nch[nl], dtype=dt, name="center_block")(x, train=train)
    for i in reversed(range(nl)):
      x = jnp.concatenate([x, features[i + 1]], axis=-1)
      x = ConvBNCELU(x.shape[-1], dtype=dt, name=f"upsample_{i}_bloc1")(
          x, train=train) + x
      x = ConvBNCELU(nch[i], 4, 2, 1, transposed=True,
                     output_padding=pads[i], dtype=dt,
                     name=f"upsample_{i}_bloc2")(x, train=train)
    x = jnp.concatenate([x, features[0]], axis=-1)
    x = ConvBNCELU(self.out_channels, dtype=dt, name="last_skip_layer")(
        x, train=train)
    x = Conv(self.out_channels, 3, 1, 1, dt, name="last_residual_layer")(x) + x
    return Conv(self.out_channels, 1, dtype=dt, name="conv1x1")(x)
