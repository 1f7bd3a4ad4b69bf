"""Slot Attention's building blocks (Locatello et al., 2020), as Keras has them.

The official implementation (google-research ``slot_attention/model.py``,
TensorFlow 2 / Keras) fixes details a port has to match: Keras's LayerNorm
epsilon (1e-3), its GRU (gates ordered z, r, h; ``reset_after`` with an input
and a recurrent bias row), glorot-uniform kernels and zero biases, the soft
position embedding grid, and 'SAME' transposed convolutions. The parameters
keep Keras's layouts where that costs nothing (Dense ``[in, out]``, the GRU's
``[D, 3F]`` kernels and ``[2, 3F]`` bias); see ``ocjax/convert/slot_attention``
for the mapping of the official weights.

Axis legend: B batch, N inputs (pixels of the feature map), K slots,
D slot size, F features, H height, W width.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ocjax.nn import conv_transpose

Array = jax.Array

# Keras's LayerNormalization epsilon (Flax's default is 1e-6).
KERAS_LAYERNORM_EPS = 1e-3
# Keras's default initialisers: glorot_uniform kernels, zero biases; the GRU's
# recurrent kernel is orthogonal.
glorot_uniform = nn.initializers.glorot_uniform()
zeros = nn.initializers.zeros
orthogonal = nn.initializers.orthogonal()


def layer_norm(epsilon: float, dtype: Any, name: str) -> nn.LayerNorm:
  """Keras's ``LayerNormalization``: two-pass variance, ``epsilon`` inside."""
  return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, dtype=dtype,
                      name=name)


def dense(features: int, dtype: Any, name: str,
          use_bias: bool = True) -> nn.Dense:
  """Keras's ``Dense``: ``x @ kernel + bias``, glorot-uniform, zero bias."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype,
                  kernel_init=glorot_uniform, bias_init=zeros, name=name)


def build_grid(height: int, width: int) -> np.ndarray:
  """The soft position embedding's grid ``[1, H, W, 4]`` (official
  ``build_grid``).

  ``linspace(0, 1)`` per axis (float64, endpoints included), ``ij`` meshgrid,
  cast to float32, then channels ``[row, col, 1 - row, 1 - col]`` with the
  complement computed in float32, as the official code does.
  """
  ranges = [np.linspace(0.0, 1.0, num=n) for n in (height, width)]
  grid = np.stack(np.meshgrid(*ranges, sparse=False, indexing="ij"), axis=-1)
  grid = grid.reshape(height, width, 2)[None].astype(np.float32)
  return np.concatenate([grid, np.float32(1.0) - grid], axis=-1)


class SoftPositionEmbed(nn.Module):
  """``x + Dense(grid)``: a learned projection of the fixed 4-channel grid.

  ``x``: ``[N, H, W, F]`` with ``(H, W) == resolution``.
  """
  features: int
  resolution: tuple[int, int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    grid = jnp.asarray(build_grid(*self.resolution), self.dtype)
    embedding = dense(self.features, self.dtype, "dense")(grid)  # [1,H,W,F]
    self.sow("intermediates", "embedding", embedding)
    return x + embedding


class KerasGRUCell(nn.Module):
  """Keras's ``GRUCell(reset_after=True)`` with its parameter layout.

  Parameters: ``kernel [D_in, 3F]`` (glorot uniform), ``recurrent_kernel
  [F, 3F]`` (orthogonal) and ``bias [2, 3F]`` (row 0 input bias, row 1
  recurrent bias; zeros), gate blocks ordered (z, r, h):

      z = sigmoid(x Wz + b0z + h Uz + b1z)
      r = sigmoid(x Wr + b0r + h Ur + b1r)
      h~ = tanh(x Wh + b0h + r * (h Uh + b1h))
      h' = z * h + (1 - z) * h~            (z weights the old state)
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, h: Array) -> Array:
    f = self.features
    kernel = self.param("kernel", glorot_uniform, (x.shape[-1], 3 * f))
    recurrent = self.param("recurrent_kernel", orthogonal, (f, 3 * f))
    bias = self.param("bias", zeros, (2, 3 * f))
    kernel, recurrent, bias = (jnp.asarray(a, self.dtype)
                               for a in (kernel, recurrent, bias))
    x, h = x.astype(self.dtype), h.astype(self.dtype)
    x_z, x_r, x_h = jnp.split(x @ kernel + bias[0], 3, axis=-1)
    h_z, h_r, h_h = jnp.split(h @ recurrent + bias[1], 3, axis=-1)
    z = jax.nn.sigmoid(x_z + h_z)
    r = jax.nn.sigmoid(x_r + h_r)
    candidate = jnp.tanh(x_h + r * h_h)
    return z * h + (1.0 - z) * candidate


class SlotAttentionIteration(nn.Module):
  """One round of attention and slot update (paper Alg. 1, lines 3-8).

  Called as ``((slots, attention), k, v) -> ((slots', attention'), None)``
  so that `SlotAttention` can scan it; ``attention`` is the softmax over
  slots ``[B, N, K]`` (the last round's is the attention segmentation).
  Every intermediate is sown into ``intermediates`` (stacked over rounds).
  """
  slot_size: int
  mlp_hidden_size: int
  epsilon: float = 1e-8
  layernorm_epsilon: float = KERAS_LAYERNORM_EPS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, k: Array, v: Array):
    slots_prev, _ = carry  # [B, K, D]                     Alg. 1 line 3
    d, dt = self.slot_size, self.dtype
    sow = lambda name, value: self.sow("intermediates", name, value)
    slots_norm = layer_norm(self.layernorm_epsilon, dt, "norm_slots")(
        slots_prev)  # line 4
    # Eq. (1), line 5: attention logits k q^T / sqrt(D) (q scaled after the
    # projection; no biases), softmax over the *slots*.
    q = dense(d, dt, "project_q", use_bias=False)(slots_norm)  # [B, K, D]
    q_scaled = q * jnp.asarray(d ** -0.5, dt)
    attn_logits = jnp.einsum("bnd,bkd->bnk", k, q_scaled)  # [B, N, K]
    attn = jax.nn.softmax(attn_logits, axis=-1)
    # Eq. (2), line 6: weighted mean over the *inputs*, eps added to the
    # attention before the normalisation.
    attn_eps = attn + jnp.asarray(self.epsilon, dt)
    attn_renorm = attn_eps / jnp.sum(attn_eps, axis=-2, keepdims=True)
    updates = jnp.einsum("bnk,bnd->bkd", attn_renorm, v)  # [B, K, D]
    # Line 7: GRU from the un-normalised slots; line 8: residual MLP.
    gru_out = KerasGRUCell(d, dtype=dt, name="gru")(updates, slots_prev)
    mlp_norm = layer_norm(self.layernorm_epsilon, dt, "norm_mlp")(gru_out)
    hidden = nn.relu(dense(self.mlp_hidden_size, dt, "mlp_0")(mlp_norm))
    mlp_out = dense(d, dt, "mlp_1")(hidden)
    slots = gru_out + mlp_out
    for name, value in (("slots_prev", slots_prev), ("slots_norm", slots_norm),
                        ("q", q), ("q_scaled", q_scaled),
                        ("attn_logits", attn_logits), ("attn_softmax", attn),
                        ("attn_renorm", attn_renorm), ("updates", updates),
                        ("gru_out", gru_out), ("mlp_norm", mlp_norm),
                        ("mlp_out", mlp_out), ("slots_out", slots)):
      sow(name, value)
    return (slots, attn), None


class SlotAttention(nn.Module):
  """The Slot Attention module: ``(inputs [B, N, F], noise [B, K, D]) ->
  (slots [B, K, D], attention [B, N, K], slots_init [B, K, D])``.

  ``slots_init = mu + exp(log_sigma) * noise`` with ``mu``, ``log_sigma``
  ``[1, 1, D]`` shared by all slots (glorot-uniform, as the official code).
  The ``num_iterations`` rounds are one `nn.scan` (shared parameters, under
  ``iteration``); k and v are computed once, outside it.
  """
  num_iterations: int = 3
  slot_size: int = 64
  mlp_hidden_size: int = 128
  epsilon: float = 1e-8
  layernorm_epsilon: float = KERAS_LAYERNORM_EPS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, noise: Array):
    d, dt = self.slot_size, self.dtype
    inputs = layer_norm(self.layernorm_epsilon, dt, "norm_inputs")(
        inputs)  # Alg. 1 line 1
    self.sow("intermediates", "inputs_norm", inputs)
    k = dense(d, dt, "project_k", use_bias=False)(inputs)  # [B, N, D]
    v = dense(d, dt, "project_v", use_bias=False)(inputs)  # [B, N, D]
    mu = self.param("slots_mu", glorot_uniform, (1, 1, d))
    log_sigma = self.param("slots_log_sigma", glorot_uniform, (1, 1, d))
    slots = (jnp.asarray(mu, dt)
             + jnp.exp(jnp.asarray(log_sigma, dt)) * noise.astype(dt))
    self.sow("intermediates", "slots_init", slots)
    scan = nn.scan(SlotAttentionIteration, variable_broadcast="params",
                   variable_axes={"intermediates": 0},
                   split_rngs={"params": False},
                   in_axes=(nn.broadcast, nn.broadcast),
                   length=self.num_iterations)
    step = scan(d, self.mlp_hidden_size, epsilon=self.epsilon,
                layernorm_epsilon=self.layernorm_epsilon, dtype=dt,
                name="iteration")
    b, n, num_slots = inputs.shape[0], inputs.shape[1], noise.shape[1]
    attn0 = jnp.zeros((b, n, num_slots), dt)
    (slots_out, attn), _ = step((slots, attn0), k, v)
    return slots_out, attn, slots


def transposed_same_padding(kernel_size: int) -> tuple[int, int]:
  """TF 'SAME' stride-2 transposed conv as ``(padding, output_padding)`` of
  the scatter form of `ocjax.nn.conv_transpose` (output exactly 2x input).

  TF's transposed conv is the gradient of a stride-2 'SAME' convolution that
  pads ``(k - 2) // 2`` before; k = 5 gives (1, -1): the dilated input is
  padded 3 before and 2 after.
  """
  p = (kernel_size - 2) // 2
  return p, 2 - kernel_size + 2 * p


class SpatialBroadcastDecoder(nn.Module):
  """Slots ``[N, D]`` -> ``[N, H, W, channels[-1]]``.

  Each slot is tiled onto an ``initial_size`` grid, a soft position embedding
  is added, then one layer per ``channels`` entry: stride 2 is Keras's
  ``Conv2DTranspose(padding='SAME')`` (as a sub-pixel convolution,
  `ConvTranspose2x`; ``subpixel=False`` computes the zero-dilated form),
  stride 1 an ordinary 'SAME' convolution (a stride-1 transposed conv is a
  convolution with the flipped kernel; the converter flips it). ReLU after
  every layer but the last.
  """
  initial_size: tuple[int, int]
  channels: Sequence[int]
  kernel_sizes: Sequence[int]
  strides: Sequence[int]
  subpixel: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, slots: Array) -> Array:
    n, d = slots.shape
    h0, w0 = self.initial_size
    x = jnp.broadcast_to(slots[:, None, None, :].astype(self.dtype),
                         (n, h0, w0, d))
    self.sow("intermediates", "broadcast", x)
    x = SoftPositionEmbed(d, (h0, w0), dtype=self.dtype, name="pos_embed")(x)
    self.sow("intermediates", "pos", x)
    last = len(self.channels) - 1
    for i, (c, k, s) in enumerate(zip(self.channels, self.kernel_sizes,
                                      self.strides)):
      if s == 2:
        p, op = transposed_same_padding(k)
        x = conv_transpose.ConvTranspose2x(
            c, kernel_size=k, padding=p, output_padding=op,
            subpixel=self.subpixel, kernel_init=glorot_uniform,
            bias_init=zeros, dtype=self.dtype, name=f"conv_{i}")(x)
      else:
        x = nn.Conv(c, (k, k), padding="SAME", dtype=self.dtype,
                    kernel_init=glorot_uniform, bias_init=zeros,
                    name=f"conv_{i}")(x)
      if i < last:
        x = nn.relu(x)
      self.sow("intermediates", f"out_{i}", x)
    return x
