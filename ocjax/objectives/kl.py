"""KL terms: Monte-Carlo latent KL and the categorical mask KL."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ocjax.objectives import likelihood

Array = jax.Array


def monte_carlo_kl(z: Array, q_mu: Array, q_sigma: Array, p_mu: Array,
                   p_sigma: Array, *,
                   difference_first: bool = False) -> dict[str, Array]:
  """Single-sample estimate ``log q(z) - log p(z)``, summed over the last axis.

  The KL estimator of papers 001/002 (an estimate, so it can be negative
  for one sample). Returns ``kl``, ``log_q`` and ``log_p``, each of the
  input's shape without the last axis. The reference codes round differently:
  GENESIS-V2's and GENESIS's mask-latent KL sum each density first, the
  component KL of GENESIS and MONet-G subtracts elementwise and then sums
  (``difference_first``); ``log_q`` and ``log_p`` are the separate sums.
  """
  log_q_d = likelihood.gaussian_log_prob(z, q_mu, q_sigma)
  log_p_d = likelihood.gaussian_log_prob(z, p_mu, p_sigma)
  log_q = jnp.sum(log_q_d, axis=-1)
  log_p = jnp.sum(log_p_d, axis=-1)
  kl = jnp.sum(log_q_d - log_p_d, axis=-1) if difference_first else (
      log_q - log_p)
  return dict(kl=kl, log_q=log_q, log_p=log_p)


def mask_kl(log_m: Array, log_pi: Array, floor: float = 1e-5) -> Array:
  """``KL(m || pi)`` per pixel between categorical distributions over slots.

  The auxiliary mask-consistency term of paper 001 Eq. (7), summed over pixels.
  Both distributions are floored at ``floor`` and renormalised (as the official
  implementation does) so that empty slots give finite values.

  Args:
    log_m: log attention masks ``[B, K, H, W, 1]``.
    log_pi: log decoder masks ``[B, K, H, W, 1]`` (pass it through
      ``stop_gradient`` for the paper's ``nograd(pi)``).

  Returns:
    ``[B]``.
  """
  m = jnp.maximum(jnp.exp(log_m), floor)
  pi = jnp.maximum(jnp.exp(log_pi), floor)
  m = m / jnp.sum(m, axis=1, keepdims=True)
  pi = pi / jnp.sum(pi, axis=1, keepdims=True)
  kl_pixel = jnp.sum(m * (jnp.log(m) - jnp.log(pi)), axis=1)  # [B, H, W, 1]
  return jnp.sum(kl_pixel, axis=(1, 2, 3))


def gaussian_kl(q_mu: Array, q_log_sigma: Array, p_mu: Array | float = 0.0,
                p_log_sigma: Array | float = 0.0) -> Array:
  """Analytic ``KL(N(q_mu, q_sigma^2) || N(p_mu, p_sigma^2))``, summed over
  the last axis (diagonal Gaussians; the KL of paper 004 Eq. 3).

  ``log(p_sigma / q_sigma) + (q_sigma^2 + (q_mu - p_mu)^2) / (2 p_sigma^2)
  - 1/2`` per dimension.
  """
  p_mu = jnp.asarray(p_mu, jnp.result_type(q_mu))
  p_log_sigma = jnp.asarray(p_log_sigma, jnp.result_type(q_mu))
  var_ratio = jnp.exp(2.0 * (q_log_sigma - p_log_sigma))
  mean_term = ((q_mu - p_mu) * jnp.exp(-p_log_sigma)) ** 2
  kl = p_log_sigma - q_log_sigma + 0.5 * (var_ratio + mean_term) - 0.5
  return jnp.sum(kl, axis=-1)
