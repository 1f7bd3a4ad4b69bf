"""Autoregressive slot prior of GENESIS (paper 001 Eq. 2, App. B).

``p(z_1:K) = prod_k p(z_k | z_1:k-1)``: ``p(z_1) = N(0, I)`` and, for k > 1,
an LSTM reads ``z_1 .. z_k-1`` and a linear layer gives
``mu_k = tanh(.)`` and ``sigma_k = sigmoid(. + 4) + 1e-4`` (sigma bounded to
[1e-4, 1 + 1e-4], starting close to 1). Both the likelihood path (all
posterior samples known) and ancestral sampling are one `nn.scan`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ocjax.nn import init
from ocjax.nn import lstm

Array = jax.Array

SIGMA_BIAS = 4.0
SIGMA_EPS = 1e-4


class AutoregressivePrior(nn.Module):
  """LSTM(L -> hidden) + Dense(hidden -> 2 L)."""
  latent_dim: int
  hidden: int = 256
  dtype: Any = jnp.float32

  def setup(self):
    self.lstm = lstm.LSTMCell(self.hidden, dtype=self.dtype)
    u = init.torch_default(self.hidden)
    self.linear = nn.Dense(2 * self.latent_dim, dtype=self.dtype,
                           kernel_init=u, bias_init=u)

  def _stats(self, h: Array, tanh_mean: bool = True) -> tuple[Array, Array]:
    mu, sigma = jnp.split(self.linear(h), 2, axis=-1)
    if tanh_mean:
      mu = jnp.tanh(mu)
    return mu, jax.nn.sigmoid(sigma + SIGMA_BIAS) + SIGMA_EPS

  def _zero_state(self, batch: int, dtype):
    zeros = jnp.zeros((batch, self.hidden), dtype)
    return zeros, zeros

  def __call__(self, z: Array) -> dict[str, Array]:
    """Prior statistics of every slot given the latents ``z [B, K, L]``.

    Returns ``mu`` and ``sigma`` ``[B, K, L]`` (slot 0: 0 and 1) and the LSTM
    outputs ``h`` ``[B, K-1, hidden]``.
    """
    def body(mdl, state, z_prev):
      state, h = mdl.lstm(state, z_prev)
      return state, (h, *mdl._stats(h))

    scan = nn.scan(body, variable_broadcast="params",
                   split_rngs={"params": False}, in_axes=1, out_axes=1)
    _, (h, mu, sigma) = scan(self, self._zero_state(z.shape[0], z.dtype), z[:, :-1])
    b, _, l = z.shape
    mu = jnp.concatenate([jnp.zeros((b, 1, l), mu.dtype), mu], axis=1)
    sigma = jnp.concatenate([jnp.ones((b, 1, l), sigma.dtype), sigma], axis=1)
    return dict(mu=mu, sigma=sigma, h=h)

  def sample(self, eps: Array, *, tanh_mean: bool = True) -> dict[str, Array]:
    """Ancestral sampling: ``z_1 = eps_1``, ``z_k = eps_k * sigma_k + mu_k``.

    Args:
      eps: standard-normal draws ``[B, K, L]``.
      tanh_mean: squash ``mu_k`` with tanh as in the likelihood path. The
        official GENESIS (v1) sampler uses the linear layer's output raw
        (GENESIS fixture README §3.12): pass False to reproduce it.

    Returns:
      ``z``, ``mu``, ``sigma`` ``[B, K, L]`` and LSTM outputs ``h``.
    """
    def body(mdl, carry, e):
      state, z_prev = carry
      state, h = mdl.lstm(state, z_prev)
      mu, sigma = mdl._stats(h, tanh_mean)
      z = e * sigma + mu
      return (state, z), (z, mu, sigma, h)

    scan = nn.scan(body, variable_broadcast="params",
                   split_rngs={"params": False}, in_axes=1, out_axes=1)
    z0 = eps[:, 0]
    _, (z, mu, sigma, h) = scan(
        self, (self._zero_state(eps.shape[0], eps.dtype), z0), eps[:, 1:])
    b, _, l = eps.shape
    z = jnp.concatenate([z0[:, None], z], axis=1)
    mu = jnp.concatenate([jnp.zeros((b, 1, l), mu.dtype), mu], axis=1)
    sigma = jnp.concatenate([jnp.ones((b, 1, l), sigma.dtype), sigma], axis=1)
    return dict(z=z, mu=mu, sigma=sigma, h=h)
