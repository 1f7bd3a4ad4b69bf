"""Stick breaking in log space over slot logits (MONet, GENESIS).

Given logits ``a_0 .. a_{K-1}``, the scope starts at one and each step takes
the fraction ``sigmoid(a_k)`` of what is left:

    log m_k     = log s_k + log sigmoid(a_k)
    log s_{k+1} = log s_k + log sigmoid(-a_k),       log s_0 = 0,

computed with ``log_sigmoid`` (no clamping, no renormalisation) as the official
GENESIS code does (``attention.SimpleSBP`` / ``LatentSBP``; MONet's
``prior_mode='scope'``). The last mask is the remaining scope, ``log m_{K-1} =
log s_{K-1}``, so the K masks sum to one and the last logit enters no mask
(GENESIS fixture README §3.5, MONet-G fixture README §3.2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def log_stick_breaking(logits: Array, axis: int = 1) -> tuple[Array, Array]:
  """``(log_m, log_s)`` of ``logits`` (K along ``axis``).

  Returns the K log masks and the K + 1 log scopes ``s_0 .. s_K`` (``s_K``,
  what the last logit would leave, is computed but enters no mask).
  """
  logits = jnp.moveaxis(logits, axis, 0)
  log_neg = jax.nn.log_sigmoid(-logits)
  log_s = jnp.concatenate([jnp.zeros_like(logits[:1]),
                           jnp.cumsum(log_neg, axis=0)], axis=0)
  log_m = jnp.concatenate(
      [log_s[:-2] + jax.nn.log_sigmoid(logits[:-1]), log_s[-2:-1]], axis=0)
  return jnp.moveaxis(log_m, 0, axis), jnp.moveaxis(log_s, 0, axis)
