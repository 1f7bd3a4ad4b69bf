"""APEX's mask normalisation (paper 000, Sec. III-A, Eqs. 7-12) and the
SCALOR-style alternative of its ablation (Table III, "SCALOR-norm").

Both take the foreground objects' mask logits already written into the image
by the STN and return per-pixel masks ``m_1..m_{K-1}`` (foreground) and
``m_bg`` with ``m_k >= 0`` and ``sum_k m_k + m_bg = 1`` at every pixel.

Principled normalisation (Eqs. 8-12), with ``alpha_k = c tanh(CNN(z_what))``
(Eq. 7, in the glimpse decoder):

* ``m_fg = tanh(sum_k STN(softplus(alpha_k) z_pres_k))`` (Eq. 8); the STN
  pads with zeros, so pixels outside every box have ``m_fg = 0``;
* ``alpha_hat_k = STN(alpha_k) + 2 c z_pres_k`` (Eq. 9); here the STN pads
  with ``-c``, the smallest logit (the paper is silent on the padding; zero
  padding would give a present object logit ``2c`` outside its box, in the
  middle of the present objects' range ``[c, 3c]``);
* ``m_hat = softmax_k(alpha_hat)`` (Eq. 10), ``m_k = m_hat_k m_fg`` (Eq.
  11), ``m_bg = 1 - m_fg`` (Eq. 12).

SCALOR-norm: ``a_k = STN(sigmoid(alpha_k) z_pres_k)`` in [0, 1] (zero
padding), ``m_k = a_k^2 / sum_j a_j`` (0 where no box covers the pixel) and
``m_bg = 1 - sum_k m_k`` (``sum_k a_k^2 / sum_j a_j <= max_k a_k <= 1``).

Axis legend: B batch, K foreground objects, H height, W width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def safe_log(x: Array) -> Array:
  """``log x`` with ``log 0 = -inf`` and a zero (not NaN) gradient there."""
  positive = x > 0
  return jnp.where(positive, jnp.log(jnp.where(positive, x, 1.0)), -jnp.inf)


def principled(alpha_img: Array, softplus_img: Array, z_pres: Array,
               c: float) -> tuple[Array, Array, Array]:
  """Eqs. (8)-(12).

  Args:
    alpha_img: ``STN(alpha_k)`` padded with ``-c``, ``[B, K, H, W, 1]``.
    softplus_img: ``STN(softplus(alpha_k))`` padded with 0, same shape.
    z_pres: ``[B, K]`` in [0, 1].
    c: the bound of the mask logits (Eq. 7).
  Returns:
    ``(log_m [B, K, H, W, 1], log_m_bg [B, H, W, 1], m_fg [B, H, W, 1])``.
  """
  pres = z_pres[:, :, None, None, None]
  m_fg = jnp.tanh(jnp.sum(softplus_img * pres, axis=1))  # Eq. (8)
  alpha_hat = alpha_img + 2.0 * c * pres  # Eq. (9)
  log_m_hat = jax.nn.log_softmax(alpha_hat, axis=1)  # Eq. (10)
  log_m = log_m_hat + safe_log(m_fg)[:, None]  # Eq. (11)
  log_m_bg = safe_log(1.0 - m_fg)  # Eq. (12)
  return log_m, log_m_bg, m_fg


def scalor(sigmoid_img: Array, z_pres: Array) -> tuple[Array, Array, Array]:
  """SCALOR-style normalisation of the ablation (module doc).

  Args:
    sigmoid_img: ``STN(sigmoid(alpha_k))`` padded with 0, ``[B, K, H, W,
      1]``.
    z_pres: ``[B, K]``.
  Returns:
    ``(log_m, log_m_bg, m_fg)`` as `principled`.
  """
  a = sigmoid_img * z_pres[:, :, None, None, None]
  total = jnp.sum(a, axis=1, keepdims=True)
  m = a**2 / jnp.where(total > 0, total, 1.0)
  m_fg = jnp.sum(m, axis=1)
  return safe_log(m), safe_log(1.0 - m_fg), m_fg


def entropy(log_m: Array, m_fg: Array) -> Array:
  """The mask entropy loss of Eq. (21) for one frame, per example:
  ``sum_{i,j} sum_k -m_fg m_k log m_k`` -> ``[B]``."""
  m = jnp.exp(log_m)
  m_log_m = jnp.where(m > 0, m * jnp.where(m > 0, log_m, 0.0), 0.0)
  return -jnp.sum(m_fg[:, None] * m_log_m, axis=(1, 2, 3, 4))


def context(scope: Array, softplus_img: Array) -> Array:
  """``p_context`` of Eq. (18): the fraction of each proposed object's mask
  ``tanh(softplus(alpha_k))`` that the scope ``s = 1 - m_p`` leaves
  unexplained.

  Args:
    scope: ``[B, H, W, 1]``.
    softplus_img: ``STN(softplus(alpha_k))`` of the proposals, ``[B, D, H,
      W, 1]``.
  Returns:
    ``[B, D]`` in [0, 1].
  """
  mass = jnp.tanh(softplus_img)
  inside = jnp.sum(scope[:, None] * mass, axis=(2, 3, 4))
  return inside / jnp.maximum(jnp.sum(mass, axis=(2, 3, 4)), 1e-12)
