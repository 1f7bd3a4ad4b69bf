"""LSTM with PyTorch's gate layout, run as a `lax.scan`.

Gate pre-activations ``W_i x + b_i + W_h h + b_h`` in the order (i, f, g, o);
``c' = sigma(f) c + sigma(i) tanh(g)``, ``h' = sigma(o) tanh(c')``, no
forget-gate bias offset. Two dense layers (``input`` and ``hidden``, both with
bias) keep the parameters one-to-one with ``torch.nn.LSTM``'s.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ocjax.nn import init

Array = jax.Array


class LSTMCell(nn.Module):
  """One step: ``((c, h), x) -> ((c', h'), h')``."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, x):
    c, h = carry
    u = init.torch_default(self.features)  # torch: U(+-1/sqrt(hidden))
    dense = lambda name: nn.Dense(4 * self.features, dtype=self.dtype,
                                  kernel_init=u, bias_init=u, name=name)
    gates = dense("input")(x) + dense("hidden")(h)
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h

  def initial_state(self, batch_size: int):
    zeros = jnp.zeros((batch_size, self.features), jnp.float32)
    return zeros, zeros


class LSTM(nn.Module):
  """Runs `LSTMCell` over axis 1 of ``[B, T, F]`` from a zero state."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs: Array) -> Array:
    scan = nn.scan(LSTMCell, variable_broadcast="params",
                   split_rngs={"params": False}, in_axes=1, out_axes=1)
    cell = scan(self.features, dtype=self.dtype, name="cell")
    zeros = jnp.zeros((xs.shape[0], self.features), xs.dtype)
    _, hs = cell((zeros, zeros), xs)
    return hs  # [B, T, F]
