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
