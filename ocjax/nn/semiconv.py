"""Semi-convolutional embedding layer (Novotny et al. 2018; paper 001 Sec. 3).

``zeta = gate * (W h + b) + uv``: a 1x1 convolution scaled by a learnable
scalar gate (0 at initialisation, so the embeddings start as the pixel
coordinates), plus relative pixel coordinates in [-1, 1] added to the last two
of the ``D`` channels (row, then column).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ocjax.nn import init
from ocjax.nn import layers

Array = jax.Array


class SemiConv(nn.Module):
  """Returns ``(zeta [B, H, W, D], delta [B, H, W, 2])``.

  ``delta`` is the gated offset before the coordinates are added: the vector
  the model predicts to move a pixel's embedding towards its object's centre.
  """
  features: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    _, h, w, _ = x.shape
    fan_in = x.shape[-1]
    out = nn.Conv(self.features, (1, 1), dtype=self.dtype,
                  kernel_init=init.torch_default(fan_in),
                  bias_init=init.torch_default(fan_in), name="conv")(x)
    gate = self.param("gate", nn.initializers.zeros, ())
    out = gate * out
    uv = jnp.asarray(layers.coordinate_grid(h, w))  # [H, W, 2]
    uv = jnp.pad(uv, ((0, 0), (0, 0), (self.features - 2, 0)))
    return out + uv.astype(out.dtype), out[..., -2:]
