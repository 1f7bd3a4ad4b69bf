"""PyTorch's ``nn.TransformerEncoder`` (post-norm layers), batch first.

``torch.nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward,
dropout, activation='relu', norm_first=False, layer_norm_eps=1e-5)``:

    x = norm1(x + dropout1(self_attn(x)))
    x = norm2(x + dropout2(linear2(dropout(relu(linear1(x))))))

Self-attention is multi-head scaled dot-product attention with the query,
key and value projections packed in one ``in_proj`` (torch
``in_proj_weight [3d, d]``: rows ``[0:d]`` q, ``[d:2d]`` k, ``[2d:3d]`` v;
here the kernel ``[d, 3d]``), heads as contiguous slices of ``d / h``
channels, scores scaled by ``(d / h)^-1/2``, dropout on the attention
weights, and ``out_proj``. No positional encoding and no mask: the layer is
equivariant to permutations of the set. `TransformerEncoder` stacks
independent layers without a final norm (``norm=None``).

Inputs are ``[B, N, d]`` (batch first; torch's default layout is ``[N, B,
d]``: the same computation). Dropout draws from the ``dropout`` rng stream
when ``deterministic`` is False.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ocjax.nn import init

Array = jax.Array

TORCH_LAYERNORM_EPS = 1e-5


def dense(features: int, fan_in: int, dtype, name: str) -> nn.Dense:
  """``torch.nn.Linear``: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` init."""
  return nn.Dense(features, dtype=dtype, kernel_init=init.torch_default(
      fan_in), bias_init=init.torch_default(fan_in), name=name)


class MultiHeadSelfAttention(nn.Module):
  """``torch.nn.MultiheadAttention`` used as self-attention."""
  num_heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
    b, n, d = x.shape
    h = self.num_heads
    if d % h:
      raise ValueError(f"The model width {d} must divide by the number of "
                       f"heads {h}.")
    dh = d // h
    # torch: xavier_uniform in_proj_weight, zero biases, out_proj Linear
    # weight (with a zero bias).
    in_kernel = self.param("in_proj_kernel", nn.initializers.xavier_uniform(),
                           (d, 3 * d))
    in_bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,))
    qkv = jnp.dot(x, in_kernel.astype(self.dtype)) + in_bias.astype(
        self.dtype)
    q, k, v = jnp.split(qkv.reshape(b, n, 3, h, dh), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # [B, N, h, dh]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(
        jnp.asarray(dh, self.dtype))
    weights = jax.nn.softmax(scores, axis=-1)
    if self.dropout > 0 and not deterministic:
      weights = nn.Dropout(self.dropout)(weights, deterministic=False)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, d)
    out = nn.Dense(d, dtype=self.dtype, kernel_init=init.torch_default(d),
                   bias_init=nn.initializers.zeros, name="out_proj")(out)
    self.sow("intermediates", "out", out)
    return out


class TransformerEncoderLayer(nn.Module):
  """``torch.nn.TransformerEncoderLayer`` (post-norm, ReLU)."""
  num_heads: int = 8
  dim_feedforward: int = 2048
  dropout: float = 0.1
  layer_norm_eps: float = TORCH_LAYERNORM_EPS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
    d = x.shape[-1]
    drop = lambda y: (nn.Dropout(self.dropout)(y, deterministic=False)
                      if self.dropout > 0 and not deterministic else y)
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps,
                                     use_fast_variance=False,
                                     dtype=self.dtype, name=name)
    sa = MultiHeadSelfAttention(self.num_heads, self.dropout, self.dtype,
                                name="self_attn")(
                                    x, deterministic=deterministic)
    x = norm("norm1")(x + drop(sa))
    self.sow("intermediates", "after_norm1", x)
    y = dense(self.dim_feedforward, d, self.dtype, "linear1")(x)
    self.sow("intermediates", "after_linear1", y)
    y = dense(d, self.dim_feedforward, self.dtype, "linear2")(
        drop(nn.relu(y)))
    self.sow("intermediates", "after_linear2", y)
    x = norm("norm2")(x + drop(y))
    self.sow("intermediates", "out", x)
    return x


class TransformerEncoder(nn.Module):
  """``torch.nn.TransformerEncoder(layer, num_layers, norm=None)``."""
  num_layers: int = 6
  num_heads: int = 8
  dim_feedforward: int = 2048
  dropout: float = 0.1
  layer_norm_eps: float = TORCH_LAYERNORM_EPS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
    for i in range(self.num_layers):
      x = TransformerEncoderLayer(
          num_heads=self.num_heads, dim_feedforward=self.dim_feedforward,
          dropout=self.dropout, layer_norm_eps=self.layer_norm_eps,
          dtype=self.dtype, name=f"layers_{i}")(
              x, deterministic=deterministic)
    return x
