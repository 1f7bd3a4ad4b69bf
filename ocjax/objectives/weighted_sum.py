"""A weighted sum of the model's named loss terms (no state).

``loss = sum_t weights.get(t, 1) * mean_b losses[t]`` over every term the
model returns; for models trained on a plain objective (e.g. Slot
Attention's mean squared error, or a beta-VAE with fixed weights).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class WeightedSum:
  """``(outputs, state) -> (loss, state, metrics)``; ``state`` is empty."""
  weights: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def init(self) -> dict:
    return {}

  def __call__(self, outputs: Any, state: dict):
    terms = {k: jnp.mean(v) for k, v in sorted(outputs.losses.items())}
    loss = sum(v if self.weights.get(k, 1.0) == 1.0 else self.weights[k] * v
               for k, v in terms.items())
    return loss, state, dict(loss=loss, **terms)

  def update(self, state: dict, metrics: dict[str, Array],
             outputs: Any) -> dict:
    del metrics, outputs
    return state


def from_config(config: Any) -> WeightedSum:
  weights = config.get("weights", None)
  return WeightedSum(weights=dict(weights.to_dict() if weights is not None
                                  else {}))
