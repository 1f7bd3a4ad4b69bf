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
