"""BatchNorm with PyTorch's running statistics (``torch.nn.BatchNorm2d``).

Training mode normalises with the batch's mean and *biased* variance over all
axes but the last (N, H, W for NHWC maps) and, when the ``batch_stats``
collection is mutable, updates

    running_mean <- (1 - momentum) running_mean + momentum mean
    running_var  <- (1 - momentum) running_var  + momentum var n / (n - 1)
    num_batches_tracked <- num_batches_tracked + 1

with torch's ``momentum = 0.1`` and the *unbiased* variance (n values per
channel). Flax's ``nn.BatchNorm`` averages the biased variance, so its running
variance drifts from torch's by n / (n - 1) per step. Evaluation mode
normalises with the running statistics. ``y = (x - mean) / sqrt(var + eps)
gamma + beta`` with ``eps = 1e-5``. (GENESIS fixture README §3.4.)
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

TORCH_MOMENTUM = 0.1
TORCH_EPS = 1e-5


class BatchNorm(nn.Module):
  """``torch.nn.BatchNorm2d`` on the last axis.

  Parameters ``scale`` (torch ``weight``) and ``bias``; ``batch_stats``
  variables ``mean``, ``var`` (torch ``running_mean``/``running_var``) and
  ``num_batches_tracked``. Statistics are computed in at least float32.
  """
  momentum: float = TORCH_MOMENTUM
  epsilon: float = TORCH_EPS
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, use_running_average: bool) -> Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    ra_mean = self.variable("batch_stats", "mean",
                            lambda: jnp.zeros((c,), self.param_dtype))
    ra_var = self.variable("batch_stats", "var",
                           lambda: jnp.ones((c,), self.param_dtype))
    count = self.variable("batch_stats", "num_batches_tracked",
                          lambda: jnp.zeros((), jnp.int32))
    acc = jnp.promote_types(self.dtype, jnp.float32)
    xs = x.astype(acc)
    if use_running_average:
      mean, var = ra_mean.value.astype(acc), ra_var.value.astype(acc)
    else:
      axes = tuple(range(x.ndim - 1))
      n = math.prod(x.shape[:-1])
      mean = jnp.mean(xs, axes)
      var = jnp.mean(jnp.square(xs - mean), axes)  # biased, two-pass
      if (not self.is_initializing()
          and self.is_mutable_collection("batch_stats")):
        m = self.momentum
        unbiased = jax.lax.stop_gradient(var) * (n / max(n - 1, 1))
        new_mean = (1 - m) * ra_mean.value + m * jax.lax.stop_gradient(mean)
        new_var = (1 - m) * ra_var.value + m * unbiased
        ra_mean.value = new_mean.astype(ra_mean.value.dtype)
        ra_var.value = new_var.astype(ra_var.value.dtype)
        count.value = count.value + 1
    y = (xs - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = y * scale.astype(acc) + bias.astype(acc)
    return y.astype(self.dtype)
