"""APEX's high-resolution scene encoder (paper 000, Sec. III-C): a deep layer
aggregation (DLA) backbone whose features are aggregated up to stride 4,
followed by a ConvLSTM over time, giving ``e_t [H/4, W/4, F]``.

The paper names DLA (Yu et al. 2018, as used for tracking by CenterTrack)
and a ConvLSTM but gives no widths or depths; this is a small DLA of the same
structure with widths from the config:

* a 3x3 stem at full resolution, then one level per entry of ``channels``,
  level ``l`` at stride ``2^(l+1)``: a stride-2 3x3 convolution and a
  residual block (two 3x3 convolutions), GroupNorm and CELU throughout;
* iterative deep aggregation up to stride 4 (DLA-up): from the deepest
  level, ``y = node(upsample(proj(y)) + proj(level))`` at each shallower
  level down to stride 4, ``node`` a 3x3 convolution;
* a ConvLSTM (3x3 gates over ``[e, h]``) over the frames; its hidden state is
  the feature map.

Axis legend: B batch, T frames, H height, W width, C channels, F features.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ocjax.nn import layers

Array = jax.Array


def _groups(channels: int) -> int:
  return max(1, min(8, channels // 4))


class ConvNormAct(nn.Module):
  """Convolution -> GroupNorm -> CELU."""
  features: int
  kernel: int = 3
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = nn.Conv(self.features, (self.kernel, self.kernel),
                strides=(self.stride, self.stride), padding="SAME",
                use_bias=False, dtype=self.dtype, name="conv")(x)
    x = nn.GroupNorm(num_groups=_groups(self.features), dtype=self.dtype,
                     name="norm")(x)
    return nn.celu(x)


class Level(nn.Module):
  """One DLA level: stride-2 convolution and a residual block."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = ConvNormAct(self.features, stride=2, dtype=self.dtype,
                    name="down")(x)
    y = ConvNormAct(self.features, dtype=self.dtype, name="res_0")(x)
    y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False,
                dtype=self.dtype, name="res_1")(y)
    y = nn.GroupNorm(num_groups=_groups(self.features), dtype=self.dtype,
                     name="res_norm")(y)
    return nn.celu(x + y)


class DLAEncoder(nn.Module):
  """``[N, H, W, 3] -> [N, H/4, W/4, F]`` (module doc)."""
  channels: Sequence[int] = (32, 64, 128, 128)
  features: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if len(self.channels) < 2:
      raise ValueError(f"The DLA encoder needs at least 2 levels (stride 4); "
                       f"got encoder channels {tuple(self.channels)}.")
    x = ConvNormAct(self.channels[0] // 2, dtype=self.dtype, name="stem")(x)
    levels = []
    for i, c in enumerate(self.channels):
      x = Level(c, dtype=self.dtype, name=f"level_{i}")(x)
      levels.append(x)  # stride 2^(i+1)
    y = levels[-1]
    for i in range(len(levels) - 2, 0, -1):  # aggregate up to stride 4
      up = ConvNormAct(self.features, kernel=1, dtype=self.dtype,
                       name=f"up_proj_{i}")(y)
      up = layers.upsample_nearest(up)
      skip = ConvNormAct(self.features, kernel=1, dtype=self.dtype,
                         name=f"skip_proj_{i}")(levels[i])
      y = ConvNormAct(self.features, dtype=self.dtype,
                      name=f"node_{i}")(up + skip)
    if len(levels) == 2:
      y = ConvNormAct(self.features, kernel=1, dtype=self.dtype,
                      name="out_proj")(y)
    return y


class ConvLSTMCell(nn.Module):
  """``((c, h), x) -> ((c', h'), h')`` with 3x3 convolutional gates (i, f,
  g, o) over ``[x, h]``."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, x):
    c, h = carry
    gates = nn.Conv(4 * self.features, (3, 3), padding="SAME",
                    dtype=self.dtype, name="gates")(
                        jnp.concatenate([x, h.astype(x.dtype)], axis=-1))
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h


class SceneEncoder(nn.Module):
  """Frames ``[B, T, H, W, 3]`` -> feature maps ``e [B, T, H/4, W/4, F]``:
  the DLA on every frame, then the ConvLSTM over time (from a zero state).

  ``unroll``: frames unrolled per iteration of the ConvLSTM's loop; 0: all
  (XLA's CPU backend runs a convolution's weight gradient inside a rolled
  loop several times slower).
  """
  channels: Sequence[int] = (32, 64, 128, 128)
  features: int = 64
  dtype: Any = jnp.float32
  unroll: int = 0

  @nn.compact
  def __call__(self, video: Array) -> Array:
    b, t = video.shape[:2]
    feats = DLAEncoder(tuple(self.channels), self.features, self.dtype,
                       name="dla")(video.reshape((b * t,) + video.shape[2:]))
    feats = feats.reshape((b, t) + feats.shape[1:])
    scan = nn.scan(ConvLSTMCell, variable_broadcast="params",
                   split_rngs={"params": False}, in_axes=1, out_axes=1,
                   unroll=self.unroll or t)
    zeros = jnp.zeros((b,) + feats.shape[2:4] + (self.features,),
                      jnp.float32)
    _, e = scan(self.features, self.dtype, name="conv_lstm")(
        (zeros, zeros), feats)
    return e
