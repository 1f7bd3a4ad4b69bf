"""PyTorch's default initialisation, so training starts where the papers' did.

``torch.nn.Linear`` / ``Conv2d`` draw weights and biases from
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (kaiming_uniform with a = sqrt(5)); for
``ConvTranspose2d`` torch computes ``fan_in`` from the weight's second axis,
i.e. ``C_out * k * k``; ``LSTM`` uses ``U(-1/sqrt(hidden), 1/sqrt(hidden))``
for every weight and bias. Flax's defaults (LeCun normal, zero bias) have
three times the variance and no bias, which changes early training dynamics
(and GECO's trajectory) of models without normalisation layers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def uniform(bound: float):
  """Initializer drawing from ``U(-bound, bound)``."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_default(fan_in: int):
  """Weight and bias initializer of torch's Linear/Conv2d for ``fan_in``."""
  return uniform(1.0 / max(fan_in, 1) ** 0.5)
