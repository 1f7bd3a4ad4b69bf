"""Instance Colouring Stick-Breaking Process (GENESIS-V2, Sec. 3.1-3.2).

Algorithm 1 of paper 001: starting from a scope ``s = 1``, repeatedly pick the
pixel maximising ``s * c`` (``c ~ U(0, 1)`` seed scores drawn once) as a
cluster seed, compute a soft mask ``alpha = psi(zeta, zeta_seed)`` with a
distance kernel (Eq. 3), emit ``m_k = s * alpha`` and shrink the scope
``s <- s * (1 - alpha)``; the remaining scope is the last mask. Everything is
in log space; the loop is one `lax.scan`.

Flexible K (Sec. 4.1): at inference the process may stop for an image as soon
as a new mask has a mass below ``min_mask_pixels`` (20 in the paper); the
scope at that point becomes that image's last mask and the slots after it are
empty. The scan still runs K - 1 steps (shapes stay static) and reports the
number of slots each image used.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ocjax.nn import layers

Array = jax.Array

KERNELS = ("gaussian", "laplacian", "epanechnikov")
# Log-mask value of the empty slots of flexible K (exp() is exactly 0).
EMPTY_LOG_MASK = -1e10


def initial_sigma(kernel: str, num_slots: int) -> float:
  """Kernel scale at initialisation, Eq. (4) / App. C Eq. (8).

  Chosen so that ``psi(0, 1/sqrt(K)) = 0.5``: K initial masks of about equal
  area when the embeddings are the pixel coordinates.
  """
  if kernel == "gaussian":
    return 1.0 / (num_slots * math.log(2.0))
  if kernel == "laplacian":
    return 1.0 / (math.sqrt(num_slots) * math.log(2.0))
  if kernel == "epanechnikov":
    return 2.0 / num_slots
  raise ValueError(f"Unknown IC-SBP kernel {kernel!r}; expected one of "
                   f"{KERNELS}.")


def distance_kernel(kernel: str, sq_dist: Array, sigma: Array) -> Array:
  """Kernels psi_G, psi_L, psi_E of Eq. (3) given squared distances."""
  if kernel == "gaussian":
    return jnp.exp(-sq_dist / sigma)
  if kernel == "laplacian":
    # sqrt of the distance clamped away from 0 (value only), so that the
    # gradient at the seed pixel (distance 0) is finite.
    sq_dist = layers.clamp_straight_through(sq_dist, 1e-10, 1e10)
    return jnp.exp(-jnp.sqrt(sq_dist) / sigma)
  if kernel == "epanechnikov":
    return nn.relu(1.0 - sq_dist / sigma)
  raise ValueError(f"Unknown IC-SBP kernel {kernel!r}; expected one of "
                   f"{KERNELS}.")


def icsbp(zeta: Array, seed_scores: Array, sigma: Array, num_slots: int,
          kernel: str = "gaussian", *, flexible: bool = False,
          min_mask_pixels: float = 20.0,
          alpha_clamp: tuple[float, float] = (0.01, 0.99)) -> dict[str, Array]:
  """Runs Algorithm 1 for K = ``num_slots`` masks.

  Args:
    zeta: pixel embeddings ``[B, H, W, D]``.
    seed_scores: ``c ~ U(0, 1)``, ``[B, H, W]``.
    sigma: kernel scale (scalar).
    num_slots: K, the number of masks (K - 1 seeds plus the final scope).
    kernel: "gaussian", "laplacian" or "epanechnikov".
    flexible: stop per image when a new mask's mass < ``min_mask_pixels``.
    min_mask_pixels: threshold of the flexible-K heuristic.
    alpha_clamp: the alpha masks are clamped (straight-through) to this range
      for numerical stability, as in the official implementation.

  Returns:
    dict with ``log_masks`` ``[B, K, H, W]`` (log m_k; they sum to one over
    K), ``log_scopes`` ``[B, K, H, W]`` (log s_k before step k),
    ``seed_index`` ``[B, K-1]`` (flat row-major pixel index), ``seeds``
    ``[B, K-1, D]`` and ``num_slots_used`` ``[B]``.
  """
  b, h, w, d = zeta.shape
  zeta_flat = zeta.reshape(b, h * w, d)  # [B, HW, D]
  scores_flat = seed_scores.reshape(b, h * w)  # [B, HW]

  def step(carry, _):
    log_scope, active = carry  # [B, HW], [B] bool
    # Seed: argmax of scope * seed score (pixels already explained are not
    # picked again); the first maximum wins ties.
    index = jnp.argmax(scores_flat * jnp.exp(log_scope), axis=1)  # [B]
    seed = jnp.take_along_axis(zeta_flat, index[:, None, None], axis=1)
    sq_dist = jnp.sum((zeta_flat - seed) ** 2, axis=-1)  # [B, HW]
    alpha = distance_kernel(kernel, sq_dist, sigma)
    alpha = layers.clamp_straight_through(alpha, *alpha_clamp)
    log_mask = log_scope + jnp.log(alpha)  # m_k = s * alpha
    next_log_scope = log_scope + jnp.log(1.0 - alpha)  # s <- s * (1 - alpha)
    if flexible:
      mass = jnp.sum(jnp.exp(log_mask), axis=1)  # [B]
      active = active & (mass >= min_mask_pixels)
      log_mask = jnp.where(active[:, None], log_mask, EMPTY_LOG_MASK)
      next_log_scope = jnp.where(active[:, None], next_log_scope, log_scope)
    out = dict(log_mask=log_mask, log_scope=log_scope, seed_index=index,
               seed=seed[:, 0], active=active)
    return (next_log_scope, active), out

  init = (jnp.zeros((b, h * w), zeta.dtype), jnp.ones((b,), bool))
  (final_log_scope, _), outs = jax.lax.scan(
      step, init, None, length=num_slots - 1)
  # outs[...]: [K-1, B, ...]
  log_masks = jnp.concatenate(
      [outs["log_mask"], final_log_scope[None]], axis=0)  # [K, B, HW]
  log_scopes = jnp.concatenate(
      [outs["log_scope"], final_log_scope[None]], axis=0)
  num_used = 1 + jnp.sum(outs["active"], axis=0)  # [B]
  if flexible:
    # The remaining scope takes the slot right after the last accepted mask.
    slot = jnp.arange(num_slots)[:, None, None]  # [K, 1, 1]
    last = (num_used - 1)[None, :, None]  # [1, B, 1]
    log_masks = jnp.where(slot == last, final_log_scope[None], log_masks)
    log_masks = jnp.where(slot > last, EMPTY_LOG_MASK, log_masks)
  to_bk = lambda a: jnp.moveaxis(a, 0, 1)
  return dict(
      log_masks=to_bk(log_masks).reshape(b, num_slots, h, w),
      log_scopes=to_bk(log_scopes).reshape(b, num_slots, h, w),
      seed_index=to_bk(outs["seed_index"]),
      seeds=to_bk(outs["seed"]),
      num_slots_used=num_used.astype(jnp.int32))


class ICSBP(nn.Module):
  """The IC-SBP with its one learnable parameter, ``log_sigma``."""
  num_slots: int
  kernel: str = "gaussian"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, zeta: Array, seed_scores: Array, *,
               flexible: bool = False,
               min_mask_pixels: float = 20.0) -> dict[str, Array]:
    sigma0 = initial_sigma(self.kernel, self.num_slots)
    log_sigma = self.param(
        "log_sigma", lambda _: jnp.asarray(math.log(sigma0), jnp.float32))
    return icsbp(zeta.astype(self.dtype), seed_scores.astype(self.dtype),
                 jnp.exp(log_sigma.astype(self.dtype)),
                 self.num_slots, self.kernel, flexible=flexible,
                 min_mask_pixels=min_mask_pixels)
