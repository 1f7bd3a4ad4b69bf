"""Pixel likelihoods: the spatial Gaussian mixture model (paper 001 Eq. 1)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

_LOG_SQRT_2PI = math.log(math.sqrt(2.0 * math.pi))


def gaussian_log_prob(x: Array, mu: Array, sigma: Array | float) -> Array:
  """``log N(x; mu, sigma^2)``, elementwise (torch's ``Normal.log_prob``)."""
  sigma = jnp.asarray(sigma, jnp.result_type(mu))
  return (-((x - mu) ** 2) / (2.0 * sigma**2) - jnp.log(sigma)
          - _LOG_SQRT_2PI)


def sgmm_nll(x: Array, log_pi: Array, mu: Array, sigma_x: float) -> Array:
  """Negative log-likelihood of the SGMM, Eq. (1), summed per image.

  ``-log p(x | z) = -sum_{i,j,c} log sum_k pi_ijk N(x_ijc; mu_ijkc, sigma_x^2)``

  Args:
    x: image ``[B, H, W, C]``.
    log_pi: log mixing weights (decoder masks) ``[B, K, H, W, 1]``.
    mu: component means ``[B, K, H, W, C]``.
    sigma_x: the shared standard deviation (0.7 in paper 001).

  Returns:
    ``[B]``.
  """
  log_mx = log_pi + gaussian_log_prob(x[:, None], mu, sigma_x)  # [B,K,H,W,C]
  nll_ppc = -jax.nn.logsumexp(log_mx, axis=1)  # [B, H, W, C]
  return jnp.sum(nll_ppc, axis=(1, 2, 3))


def pixel_mixture_log_probs(x: Array, mask_logits: Array, mu: Array,
                            sigma: float) -> tuple[Array, Array]:
  """The per-pixel spatial Gaussian mixture of paper 004 Eq. (1) (IODINE's).

  ``p(x_i | z) = sum_k m_ik N(x_i; mu_ik, sigma^2 I)``: each component is a
  Gaussian over the pixel's channel vector (the channels' densities are
  multiplied inside the mixture, unlike `sgmm_nll`'s per-channel mixture),
  ``m = softmax_k(mask_logits)``.

  Args:
    x: image ``[..., H, W, C]``.
    mask_logits: ``[..., K, H, W, 1]``.
    mu: component means ``[..., K, H, W, C]``.
    sigma: the fixed standard deviation.

  Returns:
    ``(log_p [..., H, W], joint [..., K, H, W])``: the pixel log-likelihood
    and each slot's ``log m_ik + log N(x_i; mu_ik, sigma^2 I)``.
  """
  log_m = jax.nn.log_softmax(mask_logits[..., 0], axis=-3)  # [..., K, H, W]
  log_n = jnp.sum(gaussian_log_prob(jnp.expand_dims(x, -4), mu, sigma),
                  axis=-1)  # [..., K, H, W]
  joint = log_m + log_n
  return jax.nn.logsumexp(joint, axis=-3), joint
