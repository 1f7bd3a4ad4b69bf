"""Objectives: ``build(config.objective)`` by ``config.objective.name``.

An objective has ``init() -> state``,
``__call__(outputs, state) -> (loss, new_state, metrics)`` and
``update(state, metrics, outputs) -> state`` (the state update from metrics
averaged over micro-batches; ``outputs`` may hold shapes only). It reads the
model's named per-example loss terms (``outputs.losses``) and shapes, never
the model's config. Its state (GECO's beta and moving average) lives in the
train state and is checkpointed.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module with `from_config(objective_config)`.
OBJECTIVES: dict[str, str] = {
    "geco": "ocjax.objectives.geco",
    "weighted_sum": "ocjax.objectives.weighted_sum",
}


def build(config: Any):
  """The objective of an ``objective`` config section."""
  name = str(config.name)
  if name not in OBJECTIVES:
    raise ValueError(f"Unknown objective {name!r} (config field "
                     f"objective.name); known: {sorted(OBJECTIVES)}.")
  return importlib.import_module(OBJECTIVES[name]).from_config(config)
